"""OpenAI's webhooks as a test plays them: events shaped as openai-python
3.63's webhook types read them (``openai.types.webhooks``), signed with a
secret as OpenAI signs them (Standard Webhooks), and POSTed to a URL::

    from navai_mw.testing import WebhookSender, webhook_events

    sender = WebhookSender("whsec_...", "http://127.0.0.1:8000/navai/webhooks/openai")
    answer = sender.send(webhook_events.safety_identifier_blocked("3f2a..."))
    assert answer.status_code == 200
    sender.redeliver()  # the same delivery again, re-signed now (200: a duplicate)

A test can send any event, and any delivery OpenAI would never send: a
tampered body (``body=``), a wrong or extra signature (``signature=``), an
old or future timestamp (``timestamp=``), a missing header
(``drop=("webhook-id",)``), or the last delivery replayed byte for byte
(:meth:`WebhookSender.replay`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import httpx

__all__ = ["Delivery", "WebhookSender", "sign"]

# A bound against a hang, never a timing a test relies on.
SEND_TIMEOUT_SECONDS = 30.0


def sign(secret: str, webhook_id: str, timestamp: str, body: bytes) -> str:
    """``v1,<base64>``: the HMAC-SHA256 of ``{id}.{timestamp}.{body}`` with
    the secret's key (the base64 after ``whsec_``, else its own bytes)."""
    key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


@attrs.frozen
class Delivery:
    """One POST the sender made: the headers it sent (``webhook-id``,
    ``webhook-timestamp``, ``webhook-signature``, ``content-type``), the
    body, and the status it got back."""

    headers: dict[str, str] = attrs.field(repr=False)
    body: bytes = attrs.field(repr=False)
    status: int

    @property
    def webhook_id(self) -> str | None:
        return self.headers.get("webhook-id")


class WebhookSender:
    """Signs events with ``secret`` and POSTs them to ``url``, as OpenAI
    delivers webhooks; records every :class:`Delivery` in
    :attr:`deliveries`. ``clock`` gives the UNIX time a delivery is signed
    at (the real one by default)."""

    def __init__(self, secret: str, url: str, *, clock: Callable[[], float] = time.time) -> None:
        self.secret = secret
        self.url = url
        self.clock = clock
        self.deliveries: list[Delivery] = []
        self._last: tuple[bytes, str] | None = None  # body, webhook id

    def prepare(
        self,
        event: Mapping[str, Any] | None = None,
        *,
        raw: bytes | None = None,
        body: bytes | None = None,
        webhook_id: str | None = None,
        timestamp: str | int | None = None,
        signature: str | None = None,
        extra_signatures: Iterable[str] = (),
        drop: Iterable[str] = (),
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of a delivery of ``event``, without sending
        it. The signature is made over ``event``'s JSON (or over ``raw``,
        bytes sent as they are); ``body``, when given, is sent instead (a
        tampered delivery). ``signature`` replaces the right one;
        ``extra_signatures`` go before it; ``drop`` leaves headers out."""
        signed = raw if raw is not None else json.dumps(dict(event or {})).encode()
        webhook_id = webhook_id if webhook_id is not None else f"wh_{secrets.token_hex(12)}"
        stamp = str(int(self.clock()) if timestamp is None else timestamp)
        good = sign(self.secret, webhook_id, stamp, signed)
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": stamp,
            "webhook-signature": " ".join([*extra_signatures, signature or good]),
        }
        for name in drop:
            headers.pop(name, None)
        self._last = (signed, webhook_id)
        return (signed if body is None else body), headers

    def post(self, body: bytes, headers: Mapping[str, str]) -> httpx.Response:
        """POST a delivery as it is (blocking)."""
        answer = httpx.post(
            self.url, content=body, headers=dict(headers), timeout=SEND_TIMEOUT_SECONDS
        )
        self.deliveries.append(Delivery(dict(headers), body, answer.status_code))
        return answer

    async def apost(self, body: bytes, headers: Mapping[str, str]) -> httpx.Response:
        """:meth:`post`, awaited."""
        async with httpx.AsyncClient(timeout=SEND_TIMEOUT_SECONDS) as client:
            answer = await client.post(self.url, content=body, headers=dict(headers))
        self.deliveries.append(Delivery(dict(headers), body, answer.status_code))
        return answer

    def send(self, event: Mapping[str, Any] | None = None, **bent: Any) -> httpx.Response:
        """Sign ``event`` and POST it (blocking); ``bent`` as :meth:`prepare`'s."""
        return self.post(*self.prepare(event, **bent))

    async def asend(self, event: Mapping[str, Any] | None = None, **bent: Any) -> httpx.Response:
        """:meth:`send`, awaited."""
        return await self.apost(*self.prepare(event, **bent))

    def replay(self) -> httpx.Response:
        """The last delivery again, byte for byte (its timestamp and
        signature too): what an attacker who saw one can send."""
        last = self.deliveries[-1]
        return self.post(last.body, last.headers)

    def redelivery(self) -> tuple[bytes, dict[str, str]]:
        """The last event, with its ``webhook-id``, signed again now: what
        OpenAI sends when it did not hear a 2xx in time."""
        if self._last is None:
            raise LookupError("WebhookSender has sent nothing to redeliver")
        body, webhook_id = self._last
        return self.prepare(raw=body, webhook_id=webhook_id)

    def redeliver(self) -> httpx.Response:
        """Send :meth:`redelivery` (blocking)."""
        return self.post(*self.redelivery())

    async def aredeliver(self) -> httpx.Response:
        """:meth:`redeliver`, awaited."""
        return await self.apost(*self.redelivery())
