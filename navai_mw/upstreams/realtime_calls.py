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
import re
from collections.abc import Generator, Mapping
from typing import Any, Final

import attrs

from ..core.effects import Attempt, Outcome
from ..core.errors import UpstreamError
from ..core.exchange import MAX_RETRIES, attempts, upstream_failure, upstream_message
from ..core.http import Credential, HttpRequest, HttpResponse, compact_json
from ..core.options import NavaiVoiceBackendOptions
from .openai_secrets import MAX_CLIENT_SECRET_RESPONSE_BYTES

__all__ = [
    "CALLS",
    "AcceptedCall",
    "RelayedCall",
    "accept_call",
    "answer_phone_call",
    "calls_request",
    "hang_up",
    "hangup_request",
    "is_call_id",
    "multipart",
    "parse_calls_response",
    "refer_call",
    "reject_call",
    "relay_call",
    "sip_request",
]

CALLS: Final = "OpenAI realtime calls"
# OpenAI's call ids, as they come back in the Location header.
_CALL_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
# A hangup's answer (and an accept's, a reject's, a refer's) is empty or a
# small JSON error.
_MAX_HANGUP_RESPONSE_BYTES: Final = 64 * 1024


def is_call_id(value: str) -> bool:
    """Whether ``value`` can be an upstream call's (or Live session's) id."""
    return _CALL_ID.fullmatch(value) is not None


@attrs.frozen
class RelayedCall:
    """OpenAI's answer to a relayed offer: the call's id and the SDP answer."""

    call_id: str
    answer: str = attrs.field(repr=False)


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
    credential: Credential,
    safety_identifier: str | None = None,
) -> HttpRequest:
    """``POST {api base}/realtime/calls`` with the offer and the session."""
    content_type, body = multipart(
        {
            "sdp": ("application/sdp", offer.encode()),
            "session": ("application/json", compact_json(session)),
        }
    )
    return HttpRequest(
        method="POST",
        url=f"{opts.api_base_url}/realtime/calls",
        headers=(
            credential.header,
            ("Content-Type", content_type),
            ("Accept", "application/sdp"),
            *((("OpenAI-Safety-Identifier", safety_identifier),) if safety_identifier else ()),
        ),
        body=body,
        max_response_bytes=MAX_CLIENT_SECRET_RESPONSE_BYTES,
        secret=credential.secret,
    )


def parse_calls_response(response: HttpResponse, *, secret: str | None) -> RelayedCall:
    """The call's id (the last segment of ``Location``) and the answer."""
    if not 200 <= response.status < 300:
        raise upstream_failure(CALLS, response, upstream_message(response.body), secret)
    call_id = (response.header("location") or "").rstrip("/").rsplit("/", 1)[-1]
    if not is_call_id(call_id):
        raise UpstreamError(f"{CALLS} answered without a call id.")
    try:
        answer = response.body.decode("utf-8")
    except UnicodeDecodeError:
        raise UpstreamError(f"{CALLS} answered with an SDP that is not text.") from None
    if not answer.startswith("v=0"):
        raise UpstreamError(f"{CALLS} answered with no SDP answer.")
    return RelayedCall(call_id, answer)


def relay_call(
    opts: NavaiVoiceBackendOptions,
    offer: str,
    session: Mapping[str, Any],
    *,
    credential: Credential,
    safety_identifier: str | None = None,
    budget: float | None = None,
) -> Generator[Attempt, Outcome, RelayedCall]:
    """Start a call upstream with the browser's offer: never retried, since a
    second POST could start a second call. ``budget`` is the seconds it may
    take (``upstream_timeout_seconds``, less what a token provider took)."""
    request = calls_request(
        opts, offer, session, credential=credential, safety_identifier=safety_identifier
    )
    response = yield from attempts(
        request,
        budget=opts.upstream_timeout_seconds if budget is None else budget,
        max_retries=0,
        what=CALLS,
    )
    return parse_calls_response(response, secret=request.secret)


def hangup_request(
    opts: NavaiVoiceBackendOptions, call_id: str, *, credential: Credential
) -> HttpRequest:
    """``POST {api base}/realtime/calls/{call_id}/hangup``."""
    return HttpRequest(
        method="POST",
        url=f"{opts.api_base_url}/realtime/calls/{call_id}/hangup",
        headers=(credential.header, ("Content-Type", "application/json")),
        body=b"{}",
        max_response_bytes=_MAX_HANGUP_RESPONSE_BYTES,
        secret=credential.secret,
    )


def hang_up(
    opts: NavaiVoiceBackendOptions,
    call_id: str,
    *,
    credential: Credential,
    budget: float | None = None,
) -> Generator[Attempt, Outcome, None]:
    """Hang a call up upstream, within ``budget`` seconds (as
    :func:`relay_call`'s); one that is already over (404) is fine."""
    request = hangup_request(opts, call_id, credential=credential)
    response = yield from attempts(
        request, budget=opts.upstream_timeout_seconds if budget is None else budget, what=CALLS
    )
    if response.status != 404 and not 200 <= response.status < 300:
        raise upstream_failure(CALLS, response, upstream_message(response.body), request.secret)


# -- a phone call's answer (docs/phone.md) -------------------------------------------------


@attrs.frozen
class AcceptedCall:
    """A phone call OpenAI accepted on the server's word: its id."""

    call_id: str


def sip_request(
    opts: NavaiVoiceBackendOptions,
    path: str,
    body: Mapping[str, Any],
    *,
    credential: Credential,
    safety_identifier: str | None = None,
) -> HttpRequest:
    """``POST {api base}{path}`` with a JSON ``body``: a ringing call's
    accept, reject or refer (Realtime's or GPT-Live's)."""
    return HttpRequest(
        method="POST",
        url=f"{opts.api_base_url}{path}",
        headers=(
            credential.header,
            ("Content-Type", "application/json"),
            ("Accept", "*/*"),
            *((("OpenAI-Safety-Identifier", safety_identifier),) if safety_identifier else ()),
        ),
        body=compact_json(dict(body)),
        max_response_bytes=_MAX_HANGUP_RESPONSE_BYTES,
        secret=credential.secret,
    )


def answer_phone_call(
    opts: NavaiVoiceBackendOptions,
    path: str,
    body: Mapping[str, Any],
    *,
    credential: Credential,
    what: str,
    retried: bool,
    budget: float | None = None,
    safety_identifier: str | None = None,
) -> Generator[Attempt, Outcome, None]:
    """Answer a ringing call (``path``: its accept, reject or refer) within
    ``budget`` seconds; retried on a failure only when ``retried`` (a
    refusal said twice refuses once, but an accept that OpenAI took before
    failing to say so must not be sent again). A 502 or 429 naming ``what``
    when OpenAI refuses."""
    request = sip_request(
        opts, path, body, credential=credential, safety_identifier=safety_identifier
    )
    response = yield from attempts(
        request,
        budget=opts.upstream_timeout_seconds if budget is None else budget,
        max_retries=MAX_RETRIES if retried else 0,
        what=what,
    )
    if not 200 <= response.status < 300:
        raise upstream_failure(what, response, upstream_message(response.body), request.secret)


def accept_call(
    opts: NavaiVoiceBackendOptions,
    call_id: str,
    session: Mapping[str, Any],
    *,
    credential: Credential,
    safety_identifier: str | None = None,
    budget: float | None = None,
) -> Generator[Attempt, Outcome, AcceptedCall]:
    """Accept the phone call ``call_id`` with ``session`` (a Realtime
    session: the accept's body): never retried."""
    yield from answer_phone_call(
        opts,
        f"/realtime/calls/{call_id}/accept",
        session,
        credential=credential,
        what=CALLS,
        retried=False,
        budget=budget,
        safety_identifier=safety_identifier,
    )
    return AcceptedCall(call_id)


def reject_call(
    opts: NavaiVoiceBackendOptions,
    call_id: str,
    status_code: int,
    *,
    credential: Credential,
    budget: float | None = None,
) -> Generator[Attempt, Outcome, None]:
    """Refuse the phone call ``call_id`` with the SIP ``status_code``."""
    yield from answer_phone_call(
        opts,
        f"/realtime/calls/{call_id}/reject",
        {"status_code": status_code},
        credential=credential,
        what=CALLS,
        retried=True,
        budget=budget,
    )


def refer_call(
    opts: NavaiVoiceBackendOptions,
    call_id: str,
    target: str,
    *,
    credential: Credential,
    budget: float | None = None,
) -> Generator[Attempt, Outcome, None]:
    """Transfer the phone call ``call_id`` to ``target`` (``tel:``/``sip:``):
    never retried (a transfer must not happen twice)."""
    yield from answer_phone_call(
        opts,
        f"/realtime/calls/{call_id}/refer",
        {"target_uri": target},
        credential=credential,
        what=CALLS,
        retried=False,
        budget=budget,
    )
