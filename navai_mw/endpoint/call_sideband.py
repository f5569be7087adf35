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

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from ..backend_functions.calling import bind_call, function_reply
from ..backend_functions.registry import FunctionContext, FunctionRegistry
from ..core.effects import FunctionOutcome, RunFunction, SidebandAction
from ..core.errors import NavaiError
from ..core.http import RequestInfo
from ..core.reports import CallReport, EndReason
from ..upstreams.sideband import FunctionCalled, Sideband

__all__ = ["CallSideband"]


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
    ) -> None:
        self._functions = functions
        self._timeout = function_timeout
        self._request = request
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

    def receive(self, data: str | bytes) -> list[SidebandAction]:
        return self._bound(self.protocol.receive(data))

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
