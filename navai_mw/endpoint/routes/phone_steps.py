"""A ringing phone call, answered after the webhook that announced it
(docs/phone.md): the app's ``accept_call`` hook decides (else
``sip_accept`` accepts with the session template, else the call is
refused with 603), and the answer goes to OpenAI.

An accepted call is held as a relayed one is (``relay_steps``): room for
its sideband and its caller's budget first, then the accept, then its
owner, time cap and sideband (server functions, a pinned session, its
usage and report). What refuses it before the accept (a blocked caller, a
spent budget, no room) refuses the ringing call with a SIP status; an
accept OpenAI does not confirm is logged and reported (``accept_failed``),
never sent again: OpenAI may have taken it.

Promises: every path ends with one answer to OpenAI (or a log line saying
why none could be sent); the hook is awaited at most
:data:`ACCEPT_HOOK_SECONDS`; no SIP header reaches a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Mapping
from typing import Any, Final, TypeVar

from ...core.client_requests import CreateClientSecretRequest
from ...core.effects import CallHook, HookResult, ReadClock, ReportCall
from ...core.errors import NavaiError, OptionsError, log_safe
from ...core.http import Credential, RequestInfo
from ...core.identity import APP_SCHEME, Identity
from ...core.reports import CallReport, CallUsage
from ...core.sessions import merge_session
from ...core.sip import Accept, IncomingCall, Refer, Reject
from ...upstreams.live import accept_live, build_live_session, refer_live, reject_live, with_fields
from ...upstreams.mint import checked_session, credential_for
from ...upstreams.openai_secrets import build_session
from ...upstreams.realtime_calls import accept_call, refer_call, reject_call
from ..call_sideband import with_server_side
from ..route import Call, Settings
from .relay_steps import hold_call, started

__all__ = ["ACCEPT_HOOK_SECONDS", "answer_phone_call"]

logger = logging.getLogger("navai_mw")

# A phone rings for half a minute or so: the hook has a third of it.
ACCEPT_HOOK_SECONDS: Final = 10.0
# SIP statuses navai_mw answers with itself: the hook failed (500), a
# refused caller (403), no room or a store down (503).
_HOOK_FAILED: Final = 500
_FORBIDDEN: Final = 403
_UNAVAILABLE: Final = 503
T = TypeVar("T")


def answer_phone_call(
    settings: Settings, incoming: IncomingCall, request: RequestInfo
) -> Generator[Any, Any, None]:
    """Answer ``incoming`` (announced by the webhook ``request``)."""
    answer = yield from _decided(settings, incoming)
    opts = settings.opts
    try:
        credential, budget = yield from credential_for(opts, opts.openai_api_key)
    except NavaiError as exc:  # no key, or Azure's token provider failed
        logger.error(
            "navai_mw: call %s cannot be answered: %s", incoming.call_id, log_safe(exc.message)
        )
        return
    if isinstance(answer, Reject):
        yield from _refuse(settings, incoming, answer.status_code, credential, budget)
    elif isinstance(answer, Refer):
        yield from _transfer(settings, incoming, answer.target, credential, budget)
    else:
        yield from _accept(settings, incoming, answer, request, credential, budget)


def _decided(settings: Settings, incoming: IncomingCall) -> Generator[Any, Any, Any]:
    """The app's answer: its hook's (a failed hook refuses the call), else
    an accept when ``sip_accept`` is set, else a 603."""
    hooks = settings.webhooks
    if hooks.accept_call is None:
        return Accept() if hooks.sip_accept is not None else Reject()
    result: HookResult = yield CallHook(hooks.accept_call, (incoming,), timeout=ACCEPT_HOOK_SECONDS)
    if result.timed_out:
        logger.error(
            "navai_mw: accept_call did not answer call %s within %g seconds; it is refused",
            incoming.call_id,
            ACCEPT_HOOK_SECONDS,
        )
        return Reject(_HOOK_FAILED)
    if result.error is not None:
        logger.error(
            "navai_mw: accept_call raised %s on call %s; it is refused",
            type(result.error).__name__,
            incoming.call_id,
            exc_info=result.error,
        )
        return Reject(_HOOK_FAILED)
    if not isinstance(result.value, (Accept, Reject, Refer)):
        logger.error(
            "navai_mw: accept_call returned %s on call %s, not Accept, Reject or Refer; "
            "it is refused",
            type(result.value).__name__,
            incoming.call_id,
        )
        return Reject(_HOOK_FAILED)
    return result.value


def _refuse(
    settings: Settings, incoming: IncomingCall, status: int, credential: Credential, budget: float
) -> Generator[Any, Any, None]:
    opts, call_id = settings.opts, incoming.call_id
    yield from _tell_openai(
        reject_call(opts, call_id, status, credential=credential, budget=budget)
        if incoming.kind == "realtime"
        else reject_live(opts, call_id, status, credential=credential, budget=budget),
        f"refusing call {call_id}",
        f"call {call_id} is refused (SIP {status})",
    )


def _transfer(
    settings: Settings, incoming: IncomingCall, target: str, credential: Credential, budget: float
) -> Generator[Any, Any, None]:
    opts, call_id = settings.opts, incoming.call_id
    yield from _tell_openai(
        refer_call(opts, call_id, target, credential=credential, budget=budget)
        if incoming.kind == "realtime"
        else refer_live(opts, call_id, target, credential=credential, budget=budget),
        f"transferring call {call_id}",
        f"call {call_id} is transferred",
    )


def _tell_openai(
    steps: Generator[Any, Any, None], doing: str, done: str
) -> Generator[Any, Any, None]:
    """Send a ringing call's answer (a refusal, a transfer); a failure is
    logged, never raised: OpenAI's 200 went out long ago."""
    try:
        yield from steps
    except NavaiError as exc:
        logger.warning("navai_mw: %s failed: %s", doing, log_safe(exc.message))
        return
    logger.info("navai_mw: %s", done)


def _accept(
    settings: Settings,
    incoming: IncomingCall,
    answer: Accept,
    request: RequestInfo,
    credential: Credential,
    budget: float,
) -> Generator[Any, Any, None]:
    identity = None if answer.identity is None else Identity(answer.identity, APP_SCHEME)
    # The call's functions see the webhook's route and path, and no header:
    # OpenAI's signature headers are nobody's business.
    info = RequestInfo(method="POST", route=request.route, path=request.path, headers={})
    call = Call({}, info, identity)
    identifier = settings.guard.safety_identifier(identity)
    refused = yield from settings.guard.suspended(identifier)
    if refused is not None:
        logger.warning("navai_mw: call %s is refused: %s", incoming.call_id, refused.message)
        status = _FORBIDDEN if refused.status == 403 else _UNAVAILABLE
        yield from _refuse(settings, incoming, status, credential, budget)
        return
    try:
        session = _session(settings, incoming, answer.session, identifier)
    except NavaiError as exc:
        logger.error(
            "navai_mw: call %s is refused: its session cannot be sent: %s",
            incoming.call_id,
            log_safe(exc.message),
        )
        yield from _refuse(settings, incoming, _HOOK_FAILED, credential, budget)
        return
    opts = settings.opts
    accept = (
        accept_call(
            opts,
            incoming.call_id,
            session,
            credential=credential,
            safety_identifier=identifier,
            budget=budget,
        )
        if incoming.kind == "realtime"
        else accept_live(opts, incoming.call_id, session, credential=credential, budget=budget)
    )
    sent: list[bool] = []
    try:
        admitted, _ = yield from started(settings, call, _sending(accept, sent))
    except NavaiError as exc:
        if not sent:  # refused before OpenAI heard of it: the call still rings
            logger.warning(
                "navai_mw: call %s is refused: %s", incoming.call_id, log_safe(exc.message)
            )
            status = _FORBIDDEN if exc.status in (403, 429) else _UNAVAILABLE
            yield from _refuse(settings, incoming, status, credential, budget)
            return
        logger.error(
            "navai_mw: accepting call %s failed (never sent again: OpenAI may have taken it): %s",
            incoming.call_id,
            log_safe(exc.message),
        )
        yield from _report_unstarted(settings, incoming, identity, session)
        return
    key = yield from hold_call(
        settings,
        call,
        admitted,
        kind=incoming.kind,
        call_id=incoming.call_id,
        session=session,
        credential=credential,
    )
    logger.info("navai_mw: call %s is accepted (%s)", key, incoming.kind)


def _sending(steps: Generator[Any, Any, T], sent: list[bool]) -> Generator[Any, Any, T]:
    """``steps``, noting in ``sent`` that they began (the accept went out)."""
    sent.append(True)
    return (yield from steps)


def _report_unstarted(
    settings: Settings, incoming: IncomingCall, identity: str | None, session: Mapping[str, Any]
) -> Generator[Any, Any, None]:
    now = yield ReadClock(settings.webhooks.clock)
    model = session.get("model")
    report = CallReport(
        call_id=incoming.call_id,
        kind=incoming.kind,
        identity=identity,
        model=model if isinstance(model, str) else "",
        started_at=now,
        ended_at=now,
        end_reason="accept_failed",
        metered=False,
        usage=CallUsage(),
    )
    yield ReportCall(report)


def _session(
    settings: Settings,
    incoming: IncomingCall,
    fields: Mapping[str, Any] | None,
    identifier: str | None,
) -> dict[str, Any]:
    """The accepted call's session: the template's (as a relayed call's,
    with no request to choose), the hook's fields laid over it and checked
    as a hook's session is (a 500 the caller never sees, logged, when it
    will not do), and the server's functions among its tools."""
    opts = settings.opts
    request = CreateClientSecretRequest()
    try:
        if incoming.kind == "realtime":
            session = build_session(opts, request)
            if fields is not None:
                session = checked_session(opts, "realtime", merge_session(session, dict(fields)))
        else:
            session = build_live_session(opts, request, safety_identifier=identifier)
            if fields is not None:
                session = with_fields(opts, session, fields)
    except OptionsError as exc:
        raise NavaiError(exc.message) from None
    return with_server_side(settings, session, incoming.kind)
