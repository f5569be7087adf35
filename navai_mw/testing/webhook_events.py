"""The webhook events the fake OpenAI sends, shaped as openai-python 3.63's
``openai.types.webhooks`` read them (``UnwrapWebhookEvent``): a phone call
ringing on Realtime or GPT-Live, a safety identifier blocked, a safety
warning, or any other event by its type.

Every function here is pure but for the ids it makes up and the clock
``created_at`` reads.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "event",
    "live_transport_incoming",
    "realtime_call_incoming",
    "safety_identifier_blocked",
    "safety_warning_issued",
]


def event(kind: str, data: Mapping[str, Any], *, object_field: bool = True) -> dict[str, Any]:
    """A webhook event of type ``kind`` with ``data``: its own id
    (``evt_...``), ``created_at`` now, ``object: "event"``."""
    made: dict[str, Any] = {
        "id": f"evt_{secrets.token_hex(12)}",
        "created_at": int(time.time()),
        "type": kind,
        "data": dict(data),
    }
    if object_field:
        made["object"] = "event"
    return made


def _sip_headers(headers: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in headers]


def realtime_call_incoming(
    call_id: str,
    sip_headers: Iterable[tuple[str, str]] = (),
    *,
    media_security: str | None = "srtp",
) -> dict[str, Any]:
    """``realtime.call.incoming``: the phone call ``call_id`` (``rtc_...``)
    waits for a Realtime accept, reject or refer."""
    data: dict[str, Any] = {"call_id": call_id, "sip_headers": _sip_headers(sip_headers)}
    if media_security is not None:
        data["sip_media_security"] = media_security
    return event("realtime.call.incoming", data)


def live_transport_incoming(
    session_id: str,
    sip_headers: Iterable[tuple[str, str]] = (),
    *,
    media_security: str | None = "srtp",
) -> dict[str, Any]:
    """``live.transport.incoming``: the same kind of call, waiting for a
    GPT-Live accept under its own id (``live_...``)."""
    data: dict[str, Any] = {
        "session_id": session_id,
        "sip_headers": _sip_headers(sip_headers),
        "type": "sip",
    }
    if media_security is not None:
        data["sip_media_security"] = media_security
    return event("live.transport.incoming", data)


def safety_identifier_blocked(
    identifier: str, category: str = "cyber", *, model: str | None = "gpt-realtime"
) -> dict[str, Any]:
    """``safety_identifier.blocked``: OpenAI blocked the user behind
    ``identifier`` (the ``OpenAI-Safety-Identifier`` a server sent)."""
    data: dict[str, Any] = {"safety_identifier": identifier, "safety_category": category}
    if model is not None:
        data["model"] = model
    return event("safety_identifier.blocked", data)


def safety_warning_issued(case_id: str) -> dict[str, Any]:
    """``safety.warning_issued``: a warning, with the case to look up."""
    return event("safety.warning_issued", {"id": case_id})
