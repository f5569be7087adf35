"""GPT-Live ``/live/sessions``, sans-IO: the session built, the request, the
answer read, and the effect that closes a session over its sideband."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from ..core.effects import CloseLive
from ..core.errors import UpstreamError
from ..core.exchange import upstream_failure, upstream_message
from ..core.http import HttpRequest, HttpResponse, compact_json
from ..core.options import NavaiVoiceBackendOptions
from .openai_secrets import MAX_CLIENT_SECRET_RESPONSE_BYTES
from .realtime_calls import _CALL_ID, RelayedCall, _base

DEFAULT_LIVE_MODEL: Final = "gpt-live-1"


LIVE: Final = "OpenAI live sessions"


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


def close_live(
    opts: NavaiVoiceBackendOptions, session_id: str, *, credential: tuple[str, str]
) -> CloseLive:
    base = _base(opts)
    scheme, _, rest = base.partition("://")
    ws_scheme = "wss" if scheme == "https" else "ws"
    return CloseLive(f"{ws_scheme}://{rest}/live/sessions/{session_id}/attach", (credential,))
