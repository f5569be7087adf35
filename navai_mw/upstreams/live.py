"""GPT-Live ``/live/sessions``, sans-IO: the session built, the request, the
answer read, and the effect that closes a session over its sideband.

Live takes its session in a JSON body beside the browser's offer
(``{"session": ..., "transport": {"type": "webrtc", "sdp": ...}}``), and
the safety identifier inside the session. A session ends with a
``session.close`` sent over its sideband WebSocket
(``{api base, ws scheme}/live/sessions/{id}/attach``), which a performer
opens: :class:`~navai_mw.core.effects.CloseLive`.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping
from typing import Any, Final

from ..core.client_requests import CreateClientSecretRequest
from ..core.effects import Attempt, CloseLive, Outcome
from ..core.errors import OptionsError, RequestError, UpstreamError
from ..core.exchange import attempts, upstream_failure, upstream_message
from ..core.http import Credential, HttpRequest, HttpResponse, compact_json
from ..core.options import DEFAULT_VOICE, NavaiVoiceBackendOptions
from ..core.sessions import check_live_session, merge_session
from ..core.urls import websocket_url
from ..core.values import outside
from .openai_secrets import MAX_CLIENT_SECRET_RESPONSE_BYTES, session_instructions
from .realtime_calls import AcceptedCall, RelayedCall, answer_phone_call, is_call_id

__all__ = [
    "DEFAULT_LIVE_MODEL",
    "LIVE",
    "accept_live",
    "accept_session",
    "build_live_session",
    "check_live_model",
    "close_live",
    "end_live",
    "live_model",
    "live_request",
    "parse_live_response",
    "refer_live",
    "reject_live",
    "relay_live",
    "with_fields",
]

DEFAULT_LIVE_MODEL: Final = "gpt-live-1"
LIVE: Final = "OpenAI live sessions"
# What an app may set for one call beside a template's fields.
_APP_FIELDS: Final = frozenset({"model", "instructions", "audio"})
# What a phone call's Live session takes (``SessionAcceptParams``): no data
# channel, no wake policy, no idle timeout; those are a browser's.
_ACCEPT_FIELDS: Final = frozenset(
    {
        "model",
        "type",
        "audio",
        "delegation",
        "input",
        "instructions",
        "safety_identifier",
        "store",
        "triggers",
    }
)


def live_model(opts: NavaiVoiceBackendOptions, req: CreateClientSecretRequest) -> str:
    """The model a Live session gets: the request's, else ``live_model``,
    else the built-in one."""
    return req.model or opts.live_model or DEFAULT_LIVE_MODEL


def check_live_model(opts: NavaiVoiceBackendOptions, model: str) -> None:
    """Refuse (403) a Live session's model outside ``allowed_models``: the
    request's (refused already by the request policy) or the server's own
    (``live_model``, else the built-in one), which the options do not hold
    to the list, since a deployment that never relays to Live must start."""
    if outside(model, opts.allowed_models):
        raise RequestError(
            f"Model {model[:64]!r} is not allowed for GPT-Live. "
            f"Allowed: {', '.join(opts.allowed_models or ())}.",
            status=403,
        )


def build_live_session(
    opts: NavaiVoiceBackendOptions,
    req: CreateClientSecretRequest,
    *,
    safety_identifier: str | None = None,
) -> dict[str, Any]:
    """The Live session for ``req``: the ``live_session`` template, with the
    model (within ``allowed_models``: a 403 otherwise), instructions and
    voice as for Realtime; the safety identifier, when there is one, in the
    body (where Live takes it)."""
    model = live_model(opts, req)
    check_live_model(opts, model)
    session: dict[str, Any] = {
        **(opts.live_session or {}),
        "model": model,
        "instructions": session_instructions(opts, req),
        "audio": {"output": {"voice": req.voice or opts.default_voice or DEFAULT_VOICE}},
    }
    if safety_identifier is not None:
        session["safety_identifier"] = safety_identifier
    return session


def live_request(
    opts: NavaiVoiceBackendOptions,
    offer: str,
    session: Mapping[str, Any],
    *,
    credential: Credential,
) -> HttpRequest:
    """``POST {api base}/live/sessions``: the session and the offer, as JSON."""
    body = {"session": session, "transport": {"type": "webrtc", "sdp": offer}}
    return HttpRequest(
        method="POST",
        url=f"{opts.api_base_url}/live/sessions",
        headers=(credential.header, ("Content-Type", "application/json")),
        body=compact_json(body),
        max_response_bytes=MAX_CLIENT_SECRET_RESPONSE_BYTES,
        secret=credential.secret,
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
    if not isinstance(session_id, str) or not is_call_id(session_id):
        raise UpstreamError(f"{LIVE} answered without a session id.")
    if not isinstance(answer, str) or not answer.startswith("v=0"):
        raise UpstreamError(f"{LIVE} answered with no SDP answer.")
    return RelayedCall(session_id, answer)


def relay_live(
    opts: NavaiVoiceBackendOptions,
    offer: str,
    session: Mapping[str, Any],
    *,
    credential: Credential,
    budget: float | None = None,
) -> Generator[Attempt, Outcome, RelayedCall]:
    """Start a Live session upstream, within ``budget`` seconds (as
    ``relay_call``'s): never retried (a second POST could start a second
    session)."""
    request = live_request(opts, offer, session, credential=credential)
    response = yield from attempts(
        request,
        budget=opts.upstream_timeout_seconds if budget is None else budget,
        max_retries=0,
        what=LIVE,
    )
    return parse_live_response(response, secret=request.secret)


def close_live(
    opts: NavaiVoiceBackendOptions, session_id: str, *, credential: Credential
) -> CloseLive:
    """The effect that ends a Live session: ``session.close`` on its sideband."""
    url = websocket_url(f"{opts.api_base_url}/live/sessions/{session_id}/attach")
    return CloseLive(url, (credential.header,), opts.upstream_timeout_seconds)


def end_live(
    opts: NavaiVoiceBackendOptions, session_id: str, *, credential: Credential
) -> Generator[Any, Any, None]:
    """End a Live session; a 502 naming what failed when it could not be."""
    failure = yield close_live(opts, session_id, credential=credential)
    if failure is not None:
        raise UpstreamError(f"{LIVE} could not be closed: {type(failure).__name__}.")


# -- a phone call's answer (docs/phone.md) -------------------------------------------------


def with_fields(
    opts: NavaiVoiceBackendOptions, session: Mapping[str, Any], fields: Mapping[str, Any]
) -> dict[str, Any]:
    """``fields`` (an app's, for one call) laid over the Live ``session``
    navai_mw built, and checked: each a field a Live session takes, of its
    JSON kind (as ``live_session=``'s), the model within ``allowed_models``
    and the voice within ``allowed_voices``. An :class:`OptionsError`
    saying what is wrong."""
    check_live_session({k: v for k, v in fields.items() if k not in _APP_FIELDS})
    merged = merge_session(session, dict(fields))
    model = merged.get("model")
    audio = merged.get("audio")
    output = audio.get("output") if isinstance(audio, Mapping) else None
    voice = output.get("voice") if isinstance(output, Mapping) else None
    if not isinstance(model, str) or outside(model, opts.allowed_models):
        raise OptionsError(f"model {model!r} is not in allowed_models")
    if not isinstance(merged.get("instructions"), str):
        raise OptionsError("instructions must be a string")
    if not isinstance(voice, str) or outside(voice, opts.allowed_voices):
        raise OptionsError(f"voice {voice!r} is not in allowed_voices")
    return merged


def accept_session(session: Mapping[str, Any]) -> dict[str, Any]:
    """A Live session as a phone call's accept takes it: of type ``live``,
    without what only a browser's session has (its data channel, its wake
    policy and idle timeout)."""
    kept = {name: value for name, value in session.items() if name in _ACCEPT_FIELDS}
    return {**kept, "type": "live"}


def accept_live(
    opts: NavaiVoiceBackendOptions,
    session_id: str,
    session: Mapping[str, Any],
    *,
    credential: Credential,
    budget: float | None = None,
) -> Generator[Attempt, Outcome, AcceptedCall]:
    """Accept the phone call ``session_id`` on GPT-Live with ``session``
    (its safety identifier inside, where Live takes it): never retried."""
    yield from answer_phone_call(
        opts,
        f"/live/sessions/{session_id}/accept",
        {"session": accept_session(session)},
        credential=credential,
        what=LIVE,
        retried=False,
        budget=budget,
    )
    return AcceptedCall(session_id)


def reject_live(
    opts: NavaiVoiceBackendOptions,
    session_id: str,
    status_code: int,
    *,
    credential: Credential,
    budget: float | None = None,
) -> Generator[Attempt, Outcome, None]:
    """Refuse the phone call ``session_id`` with the SIP ``status_code``."""
    yield from answer_phone_call(
        opts,
        f"/live/sessions/{session_id}/reject",
        {"status_code": status_code},
        credential=credential,
        what=LIVE,
        retried=True,
        budget=budget,
    )


def refer_live(
    opts: NavaiVoiceBackendOptions,
    session_id: str,
    target: str,
    *,
    credential: Credential,
    budget: float | None = None,
) -> Generator[Attempt, Outcome, None]:
    """Transfer the phone call ``session_id`` to ``target``: never retried."""
    yield from answer_phone_call(
        opts,
        f"/live/sessions/{session_id}/refer",
        {"target_uri": target},
        credential=credential,
        what=LIVE,
        retried=False,
        budget=budget,
    )
