"""A relayed call's sideband as the server keeps it: OpenAI's protocol
(:mod:`navai_mw.upstreams.sideband`) with the server's backend functions
bound to it, run exactly as ``POST /navai/functions/execute`` runs them
(the same arguments' rules, timeout, pool and answers), with the context of
the request that started the call.

The socket loop (``runtime/``) drives it through the
:class:`~navai_mw.core.effects.SidebandSession` protocol, and knows nothing
of functions: it runs what :class:`~navai_mw.core.effects.RunFunction` says
and hands the outcome back.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable, Mapping
from typing import Any, Final, Literal

from ..backend_functions.calling import bind_call, function_reply
from ..backend_functions.registry import FunctionContext, FunctionRegistry
from ..backend_functions.schema import function_tools
from ..core.effects import (
    AttachSideband,
    BudgetCount,
    ChargeCall,
    EndCall,
    FunctionOutcome,
    Reservation,
    RunFunction,
    SidebandAction,
    SidebandRoom,
)
from ..core.errors import NavaiError, OptionsError
from ..core.http import Credential, RequestInfo
from ..core.reports import CallReport, CallUsage, EndReason
from ..core.values import flag
from ..upstreams.sideband import FunctionCalled, Sideband, sideband_target
from .route import Call, Settings, SidebandSettings

__all__ = [
    "LIVE_CLIENT_EVENTS",
    "CallSideband",
    "attach_sideband",
    "sideband_room",
    "sideband_settings",
    "with_server_side",
]

logger = logging.getLogger("navai_mw")

# What a pinned GPT-Live session's browser may still send on its data
# channel: mute and unmute its microphone, and end the session. Nothing that
# changes the session, injects text, or answers the model for the server.
LIVE_CLIENT_EVENTS: Final = (
    "session.input_audio.mute",
    "session.input_audio.unmute",
    "session.close",
)
Kind = Literal["realtime", "live"]


def sideband_settings(
    *,
    sideband: object,
    server_functions: object,
    pin_session: object,
    required: object,
    relay: bool,
    functions: FunctionRegistry,
) -> SidebandSettings | None:
    """The relayed calls' sideband settings, from the keywords (None: no
    sideband). ``server_functions``, ``pin_session`` and ``required`` each
    imply the sideband; all of them need the relay (the calls they attach
    to)."""
    serve = flag(server_functions, "server_functions")
    pin = flag(pin_session, "pin_session")
    need = flag(required, "sideband_required")
    if not (flag(sideband, "sideband") or serve or pin or need):
        return None
    if not relay:
        raise OptionsError(
            "sideband (and server_functions, pin_session, sideband_required) attaches to the "
            "calls navai_mw relays: switch the relay on (relay=True, NAVAI_RELAY=true)."
        )
    if serve and not functions.by_name:
        logger.warning("navai_mw: server_functions is on, but no backend function is loaded")
    tools = tuple(function_tools(functions.by_name.values())) if serve else ()
    return SidebandSettings(server_functions=serve, tools=tools, pin_session=pin, required=need)


def with_server_side(settings: Settings, session: dict[str, Any], kind: Kind) -> dict[str, Any]:
    """The session as the server sends it with its sideband settings: the
    backend functions among its tools (Realtime: the session's ``tools``;
    GPT-Live: its Responses delegation's, the only tools Live has, so a
    ``live_session`` without ``delegation`` of type ``responses`` gets
    none), and a pinned Live session's data channel limited to
    :data:`LIVE_CLIENT_EVENTS`."""
    sideband = settings.sideband
    if sideband is None:
        return session
    if sideband.tools:
        if kind == "realtime":
            session = {**session, "tools": _merged(session.get("tools"), sideband.tools)}
        else:
            session = _with_delegated_tools(session, sideband.tools)
    if kind == "live" and sideband.pin_session:
        client = _mapping(session.get("client"))
        channel = {
            **_mapping(client.get("data_channel")),
            "allowed_client_events": list(LIVE_CLIENT_EVENTS),
        }
        session = {**session, "client": {**client, "data_channel": channel}}
    return session


def _merged(theirs: object, ours: tuple[dict[str, Any], ...]) -> list[Any]:
    """A template's own tools, then the server's functions (a template's
    tool of the same name gives way: the server runs that name)."""
    names = {tool["name"] for tool in ours}
    kept = [
        tool
        for tool in (theirs if isinstance(theirs, list) else [])
        if not (isinstance(tool, Mapping) and tool.get("name") in names)
    ]
    return [*kept, *ours]


def _with_delegated_tools(
    session: dict[str, Any], tools: tuple[dict[str, Any], ...]
) -> dict[str, Any]:
    delegation = _mapping(session.get("delegation"))
    responses = delegation.get("responses")
    if delegation.get("type") != "responses" or not isinstance(responses, Mapping):
        return session
    responses = {**responses, "tools": _merged(responses.get("tools"), tools)}
    return {**session, "delegation": {**delegation, "responses": responses}}


def _mapping(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def sideband_room(settings: Settings) -> Generator[Any, Any, bool]:
    """Whether the call about to be relayed gets a sideband: with the
    sideband on and room for one more in this process. No room: a required
    sideband refuses the call (503), else it is relayed unmetered."""
    sideband = settings.sideband
    if sideband is None:
        return False
    room = yield SidebandRoom()
    if room:
        return True
    if sideband.required:
        raise NavaiError(
            "This server holds as many calls as it may; try again shortly.",
            status=503,
            headers=(("Retry-After", "30"),),
        )
    logger.warning("navai_mw: a call is relayed without its sideband: this process holds its most")
    return False


def attach_sideband(
    settings: Settings,
    call: Call,
    *,
    kind: Kind,
    key: str,
    call_id: str,
    session: Mapping[str, Any],
    credential: Credential,
    reservation: Reservation | None = None,
) -> Generator[Any, Any, None]:
    """Hold a sideband to the relayed call ``call_id`` (``key`` in the
    calls' store) for as long as it lasts; with the caller's budget
    ``reservation``, charge the call's usage to it."""
    sideband = settings.sideband
    if sideband is None:
        return
    target = sideband_target(settings.opts, kind, call_id, credential=credential)
    model = session.get("model")
    state = CallSideband(
        kind=kind,
        call_id=call_id,
        identity=call.identity,
        model=model if isinstance(model, str) else "",
        session=session,
        request=call.info,
        pin=sideband.pin_session,
        functions=settings.functions if sideband.server_functions else None,
        function_timeout=settings.function_timeout,
        reservation=reservation,
    )
    yield AttachSideband(key, target.url, target.headers, state, required=sideband.required)


class CallSideband:
    """One relayed call's sideband (see the module docstring)."""

    def __init__(
        self,
        *,
        kind: Literal["realtime", "live"],
        call_id: str,
        identity: str | None,
        model: str,
        session: Mapping[str, Any] | None,
        request: RequestInfo,
        pin: bool,
        functions: FunctionRegistry | None,
        function_timeout: float,
        reservation: Reservation | None = None,
    ) -> None:
        self._functions = functions
        self._timeout = function_timeout
        self._request = request
        self._reservation = reservation
        # The caller's tokens and USD limits, charged as the usage comes.
        units = {limit.unit for limit in reservation.limits} if reservation is not None else set()
        self._meters = units & {"tokens", "USD"}
        self._charged_for: CallUsage | None = None
        self._charged = (0.0, 0.0)  # tokens, USD
        self.protocol = Sideband(
            kind=kind,
            call_id=call_id,
            identity=identity,
            model=model,
            session=session,
            pin=pin,
            functions=frozenset(functions.by_name) if functions is not None else None,
        )

    @property
    def call_id(self) -> str:
        return self.protocol.call_id

    @property
    def ended(self) -> bool:
        return self.protocol.ended

    def opened(self) -> list[SidebandAction]:
        return self._bound(self.protocol.opened())

    @property
    def reservation(self) -> Reservation | None:
        return self._reservation

    @property
    def reverts(self) -> int:
        """Changes to the pinned session reverted so far."""
        return self.protocol.reverts

    def receive(self, data: str | bytes) -> list[SidebandAction]:
        actions = self._bound(self.protocol.receive(data))
        return actions + self._charge() if self._meters else actions

    def _charge(self) -> list[SidebandAction]:
        """What the call used since the last charge, to charge to the
        caller's tokens and USD limits (nothing when it did not change)."""
        usage = self.protocol.usage
        if usage == self._charged_for or self._reservation is None:
            return []
        self._charged_for = usage
        tokens = float(
            usage.input_tokens
            + usage.output_tokens
            + usage.transcription_input_tokens
            + usage.transcription_output_tokens
        )
        usd = 0.0
        if "USD" in self._meters:
            # A model without a price is charged nothing: logged once, when
            # the call is reported (its cost_usd is None).
            usd = self.protocol.cost() or self._charged[1]
        more_tokens, more_usd = tokens - self._charged[0], usd - self._charged[1]
        if more_tokens <= 0 and more_usd <= 0:
            return []
        self._charged = (tokens, usd)
        return [ChargeCall(self._reservation, tokens=max(0.0, more_tokens), usd=max(0.0, more_usd))]

    def charged(self, counts: tuple[BudgetCount, ...] | None) -> list[SidebandAction]:
        """A charge was counted: a tokens or USD limit with nothing left ends
        the call (a store that could not be reached ends nothing)."""
        for count in counts or ():
            if count.limit.unit in self._meters and count.remaining <= 0:
                return [EndCall("budget")]
        return []

    def closed(self, code: int | None) -> Literal["reconnect", "ended"]:
        return self.protocol.closed(code)

    def function_done(
        self, action: RunFunction, outcome: FunctionOutcome, seconds: float
    ) -> list[SidebandAction]:
        """A function has run: the model gets what the execute route would
        answer (a function that failed, timed out or found every worker busy
        gives an error output: the call goes on)."""
        function = self._functions.get(action.name) if self._functions is not None else None
        if function is None:  # pragma: no cover - only functions it knows are run
            return []
        try:
            status, payload = function_reply(function, outcome, self._timeout)
        except NavaiError as exc:
            status, payload = exc.status, {"ok": False, "error": exc.message}
        ok = status == 200 and isinstance(payload, dict) and payload.get("ok") is True
        return list(
            self.protocol.answer(action.tool_call_id, action.name, payload, ok=ok, seconds=seconds)
        )

    def report(
        self, *, started_at: float, ended_at: float, reason: EndReason, metered: bool
    ) -> CallReport:
        return self.protocol.report(
            started_at=started_at, ended_at=ended_at, reason=reason, metered=metered
        )

    def _bound(self, actions: Iterable[Any]) -> list[SidebandAction]:
        """The protocol's actions, a function call bound to its function (or
        answered at once when its arguments do not fit)."""
        bound: list[SidebandAction] = []
        for action in actions:
            if not isinstance(action, FunctionCalled):
                bound.append(action)
                continue
            function = self._functions.get(action.name) if self._functions is not None else None
            if function is None:  # pragma: no cover - the protocol asks only for these
                continue
            context = FunctionContext(
                function=function.name,
                identity=self.protocol.identity,
                client=self._request.client,
                headers=self._request.headers,
                request=self._request,
            )
            try:
                run = bind_call(function, action.arguments or {}, context)
            except NavaiError as exc:  # the arguments do not fit: the model hears why
                bound += self.protocol.answer(
                    action.tool_call_id,
                    function.name,
                    {"ok": False, "error": exc.message},
                    ok=False,
                    seconds=0.0,
                )
                continue
            bound.append(
                RunFunction(
                    action.tool_call_id, function.name, run, function.is_async, self._timeout
                )
            )
        return bound
