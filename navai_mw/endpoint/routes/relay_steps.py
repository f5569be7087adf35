"""What the WebRTC relays (and a phone call the webhook route accepts)
share: the SDP offer and its query overrides, a call's admission (room for
its sideband, its caller's budget), what the server holds around a call
OpenAI started (its owner, its time cap, its sideband), asking who owns
one, and ending one (a hangup, or a Live session's close)."""

from __future__ import annotations

from collections.abc import Generator, Mapping
from typing import Any, Final, Literal, TypeVar
from urllib.parse import parse_qsl

import attrs

from ...core.client_requests import WIRE_NAMES, CreateClientSecretRequest, structure_request
from ...core.effects import CallOwned, EndSideband, ForgetCall, RememberCall, Reservation
from ...core.errors import NavaiError, RequestError
from ...core.http import Credential
from ...core.identity import identity_key
from ...core.reports import EndReason
from ...upstreams.live import end_live
from ...upstreams.mint import credential_for
from ...upstreams.openai_secrets import check_policy
from ...upstreams.realtime_calls import RelayedCall, hang_up
from ..budget_steps import admit_call, release
from ..call_sideband import attach_sideband, sideband_room
from ..route import Call, Reply, Settings

__all__ = [
    "DEFAULT_MAX_OFFER_SIZE",
    "LIVE_PREFIX",
    "Admitted",
    "admit",
    "check_offer",
    "end_relayed",
    "hold_call",
    "overrides_from_query",
    "owned",
    "relay_and_answer",
    "relay_request",
    "relayed_reply",
    "started",
]

# A browser's offer is a few KiB; 32 KiB leaves room for many candidates.
DEFAULT_MAX_OFFER_SIZE: Final = 32 * 1024
_QUERY_FIELDS: Final = frozenset(WIRE_NAMES.values()) - {"apiKey"}
# How a Live session is told apart from a Realtime call in the calls' store.
LIVE_PREFIX: Final = "live:"
T = TypeVar("T")


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


def relay_request(settings: Settings, call: Call) -> CreateClientSecretRequest:
    """The relayed call's request fields (from the query), within the
    request policy; the relay needs the server's own key."""
    req = structure_request(overrides_from_query(call.query))
    check_policy(settings.opts, req)
    opts = settings.opts
    if opts.openai_api_key is None and not opts.uses_azure:
        # A request's key cannot ride in a URL: the relay needs the server's.
        raise RequestError(
            "Missing API key. The relay uses the server's key: configure openai_api_key."
        )
    return req


@attrs.frozen
class Admitted:
    """What a call about to start holds: whether it gets a sideband (room
    for one in this process), and the caller's budget reservation."""

    metered: bool
    reservation: Reservation | None


def admit(settings: Settings, call: Call) -> Generator[Any, Any, Admitted]:
    """Room for the call's sideband and the caller's budget, before anything
    is asked of OpenAI: a 503 (no room for a required sideband, a store
    down) or a 429 (a budget spent) refuses it."""
    metered = yield from sideband_room(settings)
    reservation = yield from admit_call(settings.budgets, call, cap=settings.max_call_seconds)
    return Admitted(metered, reservation)


def started(
    settings: Settings, call: Call, start: Generator[Any, Any, T]
) -> Generator[Any, Any, tuple[Admitted, T]]:
    """Admit the call, then ``start`` it upstream (a relay, an accept): what
    it holds, and what OpenAI answered. A start that fails gives the
    reservation back."""
    admitted = yield from admit(settings, call)
    try:
        upstream = yield from start
    except Exception:
        yield from release(admitted.reservation)
        raise
    return admitted, upstream


def hold_call(
    settings: Settings,
    call: Call,
    admitted: Admitted,
    *,
    kind: Literal["realtime", "live"],
    call_id: str,
    session: Mapping[str, Any],
    credential: Credential,
) -> Generator[Any, Any, str]:
    """What the server holds around a call OpenAI started (relayed, or a
    phone call accepted): its owner, its time cap (the reservation's
    seconds, when shorter), and its sideband. Its key in the calls' store."""
    key = call_id if kind == "realtime" else f"{LIVE_PREFIX}{call_id}"
    deadline = settings.max_call_seconds
    reservation = admitted.reservation
    if reservation is not None and reservation.granted is not None:
        deadline = reservation.granted
    yield RememberCall(key, identity_key(call.identity), deadline)
    if admitted.metered:
        yield from attach_sideband(
            settings,
            call,
            kind=kind,
            key=key,
            call_id=call_id,
            session=session,
            credential=credential,
            reservation=reservation,
        )
    return key


def relay_and_answer(
    settings: Settings,
    call: Call,
    relay: Generator[Any, Any, RelayedCall],
    *,
    kind: Literal["realtime", "live"],
    session: Mapping[str, Any],
    credential: Credential,
) -> Generator[Any, Any, Reply]:
    """Relay the call (``relay``: the upstream steps) and answer the browser,
    with what the server holds around it (:func:`admit`, :func:`hold_call`)."""
    admitted, relayed = yield from started(settings, call, relay)
    yield from hold_call(
        settings,
        call,
        admitted,
        kind=kind,
        call_id=relayed.call_id,
        session=session,
        credential=credential,
    )
    return relayed_reply(call, relayed)


def relayed_reply(call: Call, relayed: RelayedCall) -> Reply:
    """The browser's answer: the SDP answer, and where to end the call."""
    location = f"{call.mount}{call.info.path.rstrip('/')}/{relayed.call_id}"
    return Reply(
        201,
        None,
        raw=relayed.answer.encode(),
        content_type="application/sdp",
        headers=(("Location", location),),
    )


def owned(key: str, identity: str | None, what: str) -> Generator[Any, Any, None]:
    """Go on only when ``identity`` started ``key``: a 404 otherwise (another
    identity's call does not exist, as far as this caller can tell), a 503
    when the calls' store cannot be asked."""
    answer = yield CallOwned(key, identity_key(identity))
    if answer is None:
        raise NavaiError(
            "Calls cannot be looked up right now; try again shortly.",
            status=503,
            headers=(("Retry-After", "5"),),
        )
    if not answer:
        raise RequestError(f"Unknown {what}.", status=404)


def end_relayed(settings: Settings, key: str, reason: EndReason) -> Generator[Any, Any, None]:
    """End a relayed call (hang it up) or Live session (``live:{id}``:
    ``session.close`` on its sideband), for ``reason`` (its owner's
    ``"hangup"``, or its ``"time_cap"``), and forget it."""
    opts = settings.opts
    if settings.sideband is not None:
        yield EndSideband(key, reason)
    credential, budget = yield from credential_for(opts, opts.openai_api_key)
    if key.startswith(LIVE_PREFIX):
        # The close has its own bound, in its performer.
        yield from end_live(opts, key.removeprefix(LIVE_PREFIX), credential=credential)
    else:
        yield from hang_up(opts, key, credential=credential, budget=budget)
    yield ForgetCall(key)
