"""The WebRTC relay, sans-IO: the browser's SDP offer in, OpenAI's answer out.

For ``POST /navai/realtime/calls`` the browser posts its offer; the server
adds the session (the same one the client-secret route would mint) and its
own key, and posts both to OpenAI's ``/realtime/calls`` as
``multipart/form-data``. No secret reaches the page; the server learns the
call's id, and with it the one way to end a call early (a hangup).

Everything here is pure: the multipart boundary is derived from the
content (so the same input gives the same bytes, and the boundary cannot
occur in the parts it separates).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl

import attrs

from ._core import (
    MAX_CLIENT_SECRET_RESPONSE_BYTES,
    compact_json,
    upstream_failure,
    upstream_message,
)
from ._errors import OptionsError, RequestError, UpstreamError
from ._models import WIRE_NAMES, HttpRequest, HttpResponse, NavaiVoiceBackendOptions

__all__ = [
    "DEFAULT_LIVE_MODEL",
    "DEFAULT_MAX_OFFER_SIZE",
    "CallRegistry",
    "CloseLive",
    "RelayedCall",
    "calls_request",
    "check_offer",
    "hangup_request",
    "multipart",
    "overrides_from_query",
    "parse_calls_response",
]

# A browser's offer is a few KiB; 32 KiB leaves room for many candidates.
DEFAULT_MAX_OFFER_SIZE: Final = 32 * 1024
CALLS: Final = "OpenAI realtime calls"
# OpenAI's call ids, as they come back in the Location header.
_CALL_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
_QUERY_FIELDS: Final = frozenset(WIRE_NAMES.values()) - {"apiKey"}


def check_offer(body: bytes) -> str:
    """The body as an SDP offer's text, or a 400: SDP starts with ``v=0``
    and describes at least one media section."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("Request body is not an SDP offer: it is not UTF-8 text.") from None
    lines = text.replace("\r\n", "\n").split("\n")
    if lines[0].strip() != "v=0" or not any(line.startswith("m=") for line in lines):
        raise RequestError("Request body is not an SDP offer (v=0 and an m= line).")
    return text


def overrides_from_query(query: str) -> dict[str, str]:
    """The per-request overrides (``?language=Spanish&voice=marin``, wire
    names). ``apiKey`` is refused: URLs end up in access logs."""
    fields: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "apiKey":
            raise RequestError(
                "apiKey is not allowed in a URL (URLs end up in access logs); "
                "the relay uses the server's key."
            )
        if name not in _QUERY_FIELDS:
            raise RequestError(
                f"Unknown query parameter {name[:64]!r}. Allowed: "
                f"{', '.join(sorted(_QUERY_FIELDS))}."
            )
        fields[name] = value
    return fields


def multipart(parts: Mapping[str, tuple[str, bytes]]) -> tuple[str, bytes]:
    """``multipart/form-data`` of ``parts`` (name → content type, bytes):
    the Content-Type header's value and the body."""
    seed = hashlib.sha256()
    for name, (kind, content) in parts.items():
        seed.update(name.encode() + b"\0" + kind.encode() + b"\0" + content)
    boundary = f"navai-{seed.hexdigest()[:32]}"
    body = bytearray()
    for name, (kind, content) in parts.items():
        body += f"--{boundary}\r\n".encode()
        body += f'Content-Disposition: form-data; name="{name}"\r\n'.encode()
        body += f"Content-Type: {kind}\r\n\r\n".encode()
        body += content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", bytes(body)


def calls_request(
    opts: NavaiVoiceBackendOptions,
    offer: str,
    session: Mapping[str, Any],
    *,
    credential: tuple[str, str],
    safety_identifier: str | None = None,
) -> HttpRequest:
    """``POST {base}/realtime/calls`` with the offer and the session."""
    content_type, body = multipart(
        {
            "sdp": ("application/sdp", offer.encode()),
            "session": ("application/json", compact_json(session)),
        }
    )
    return HttpRequest(
        method="POST",
        url=f"{_base(opts)}/realtime/calls",
        headers=(
            credential,
            ("Content-Type", content_type),
            ("Accept", "application/sdp"),
            *((("OpenAI-Safety-Identifier", safety_identifier),) if safety_identifier else ()),
        ),
        body=body,
        max_response_bytes=MAX_CLIENT_SECRET_RESPONSE_BYTES,
    )


def hangup_request(
    opts: NavaiVoiceBackendOptions, call_id: str, *, credential: tuple[str, str]
) -> HttpRequest:
    """``POST {base}/realtime/calls/{call_id}/hangup``."""
    return HttpRequest(
        method="POST",
        url=f"{_base(opts)}/realtime/calls/{call_id}/hangup",
        headers=(credential, ("Content-Type", "application/json")),
        body=b"{}",
        max_response_bytes=64 * 1024,
    )


def _base(opts: NavaiVoiceBackendOptions) -> str:
    return f"{opts.azure_endpoint}/openai/v1" if opts.uses_azure else opts.openai_base_url


class RelayedCall:
    """OpenAI's answer to a relayed offer: the call's id and the SDP answer."""

    __slots__ = ("answer", "call_id")

    def __init__(self, call_id: str, answer: str) -> None:
        self.call_id = call_id
        self.answer = answer


def parse_calls_response(response: HttpResponse, *, secret: str | None) -> RelayedCall:
    """The call's id (the last segment of ``Location``) and the answer."""
    if not 200 <= response.status < 300:
        raise upstream_failure(CALLS, response, upstream_message(response.body), secret)
    call_id = (response.header("location") or "").rstrip("/").rsplit("/", 1)[-1]
    if _CALL_ID.fullmatch(call_id) is None:
        raise UpstreamError(f"{CALLS} answered without a call id.")
    try:
        answer = response.body.decode("utf-8")
    except UnicodeDecodeError:
        raise UpstreamError(f"{CALLS} answered with an SDP that is not text.") from None
    if not answer.startswith("v=0"):
        raise UpstreamError(f"{CALLS} answered with no SDP answer.")
    return RelayedCall(call_id, answer)


# How many relayed calls a process remembers (oldest forgotten first): a
# bound on memory, far above the calls one process relays in an hour.
MAX_REMEMBERED_CALLS: Final = 10_000


class CallRegistry:
    """The calls this process relayed, and who started each: only those can
    be hung up, and (with the guard on) only by their owner. In memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[str, str] = {}

    def remember(self, key: str, owner: str | None) -> None:
        with self._lock:
            if len(self._owners) >= MAX_REMEMBERED_CALLS:
                del self._owners[next(iter(self._owners))]
            self._owners[key] = owner_mark(owner)

    def known(self, key: str, owner: str | None) -> bool:
        """Whether ``owner`` may end ``key`` (it exists here, and it is theirs)."""
        with self._lock:
            return self._owners.get(key) == owner_mark(owner)

    def forget(self, key: str) -> bool:
        with self._lock:
            return self._owners.pop(key, None) is not None


def owner_mark(owner: str | None) -> str:
    """How an owner is stored: ``id:<identity>``, or ``-`` for nobody (no guard)."""
    return "-" if owner is None else f"id:{owner}"


# -- effects: the calls' store --------------------------------------------------------------


@attrs.frozen
class RememberCall:
    """Remember ``key`` as started by ``owner``; when ``deadline`` (seconds
    from now) is set, end it then. Send back None."""

    key: str
    owner: str | None
    deadline: float | None = None


@attrs.frozen
class CallOwned:
    """Whether ``owner`` started ``key`` (and it is not over); send back a bool."""

    key: str
    owner: str | None


@attrs.frozen
class ForgetCall:
    """``key`` has ended: forget it and its deadline. Send back None."""

    key: str


def is_call_id(value: str) -> bool:
    return _CALL_ID.fullmatch(value) is not None


# -- GPT-Live -----------------------------------------------------------------------------

DEFAULT_LIVE_MODEL: Final = "gpt-live-1"
LIVE: Final = "OpenAI live sessions"
# What a live_session template may set: everything but navai's own fields.
LIVE_TEMPLATE_FIELDS: Final = frozenset(
    {"delegation", "input", "client", "idle_timeout_s", "store", "triggers", "wake_policy"}
)
LIVE_NAVAI_FIELDS: Final = {
    "model": "use live_model",
    "instructions": "use default_instructions",
    "audio": "use default_voice",
    "safety_identifier": "remove it: the guard sets it per caller",
}


_DELEGATIONS: Final = ("client", "responses", "decisions")


def check_live_session(template: object) -> dict[str, Any] | None:
    """The ``live_session`` template, checked: the fields of a Live session
    navai does not set itself, each of the right JSON kind."""
    if template is None:
        return None
    if not isinstance(template, Mapping):
        raise OptionsError("live_session must be a JSON object of Live session fields.")
    for name in template:
        if name in LIVE_NAVAI_FIELDS:
            raise OptionsError(
                f"live_session sets {name}, which navai sets itself; {LIVE_NAVAI_FIELDS[name]}."
            )
        if name not in LIVE_TEMPLATE_FIELDS:
            raise OptionsError(
                f"live_session has an unknown field {name!r}. Known: "
                f"{', '.join(sorted(LIVE_TEMPLATE_FIELDS))}."
            )
    kinds: dict[str, tuple[type, ...]] = {
        "delegation": (dict,),
        "input": (list,),
        "client": (dict,),
        "idle_timeout_s": (int,),
        "store": (bool,),
        "triggers": (list,),
        "wake_policy": (dict,),
    }
    for name, value in template.items():
        wanted = kinds[name]
        if not isinstance(value, wanted) or (int in wanted and isinstance(value, bool)):
            raise OptionsError(f"live_session.{name} must be a JSON {wanted[0].__name__}.")
    delegation = template.get("delegation")
    if delegation is not None and delegation.get("type") not in (
        "client",
        "responses",
        "decisions",
    ):
        raise OptionsError(
            "live_session.delegation.type must be 'client', 'responses' or 'decisions'."
        )
    if not all(isinstance(item, dict) for item in template.get("input", [])):
        raise OptionsError("live_session.input must be a list of items (JSON objects).")
    return dict(template)


def live_request(
    opts: NavaiVoiceBackendOptions,
    offer: str,
    session: Mapping[str, Any],
    *,
    credential: tuple[str, str],
) -> HttpRequest:
    """``POST {base}/live/sessions``: the session and the offer, as JSON."""
    body = {"session": session, "transport": {"type": "webrtc", "sdp": offer}}
    return HttpRequest(
        method="POST",
        url=f"{_base(opts)}/live/sessions",
        headers=(credential, ("Content-Type", "application/json")),
        body=compact_json(body),
        max_response_bytes=MAX_CLIENT_SECRET_RESPONSE_BYTES,
    )


def parse_live_response(response: HttpResponse, *, secret: str | None) -> RelayedCall:
    """The Live session's id and the SDP answer."""
    if not 200 <= response.status < 300:
        raise upstream_failure(LIVE, response, upstream_message(response.body), secret)
    try:
        payload = json.loads(response.body)
    except (ValueError, RecursionError):
        payload = None
    session = payload.get("session") if isinstance(payload, dict) else None
    transport = payload.get("transport") if isinstance(payload, dict) else None
    session_id = session.get("id") if isinstance(session, dict) else None
    answer = transport.get("sdp") if isinstance(transport, dict) else None
    if not isinstance(session_id, str) or _CALL_ID.fullmatch(session_id) is None:
        raise UpstreamError(f"{LIVE} answered without a session id.")
    if not isinstance(answer, str) or not answer.startswith("v=0"):
        raise UpstreamError(f"{LIVE} answered with no SDP answer.")
    return RelayedCall(session_id, answer)


@attrs.frozen
class CloseLive:
    """Open the Live session's sideband WebSocket (``url``, ``headers``),
    send ``session.close`` and close; send back None, or the exception."""

    url: str
    headers: tuple[tuple[str, str], ...] = attrs.field(repr=False)


def close_live(
    opts: NavaiVoiceBackendOptions, session_id: str, *, credential: tuple[str, str]
) -> CloseLive:
    base = _base(opts)
    scheme, _, rest = base.partition("://")
    ws_scheme = "wss" if scheme == "https" else "ws"
    return CloseLive(f"{ws_scheme}://{rest}/live/sessions/{session_id}/attach", (credential,))
