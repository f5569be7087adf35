"""The controls with which a test plays OpenAI's part in a call the fake
answered: the model calls a function, a response finishes with its usage,
the browser changes the session, the sideband drops or is refused, the far
end hangs up. Each runs on the fake's event loop: from a test's thread it
waits for it there; its ``a``-prefixed twin is awaited on any loop."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine, Mapping
from typing import Any, Final, TypeVar

from . import sideband_events as events
from .sidebands import _Call, _running_loop, _SidebandSide

# A bound on a control waiting for the fake's loop: a guard against a hang,
# never a timing the fake relies on.
CONTROL_TIMEOUT_SECONDS: Final = 30.0

T = TypeVar("T")


class _SidebandControls(_SidebandSide):
    """The controls of :class:`FakeRealtimeWebRTC` (see its docstring)."""

    def _live_call(self, call_id: str, kind: events.Kind | None = None) -> _Call:
        call = self._calls.get(call_id)
        if call is None:
            raise LookupError(f"FakeRealtimeWebRTC has no live call {call_id!r}")
        if kind is not None and call.kind != kind:
            raise ValueError(f"{call_id!r} is a {call.kind} call; this is for {kind} calls")
        return call

    def _control(self, name: str, call_id: str, work: Coroutine[Any, Any, T]) -> T:
        """Run a control on the fake's loop from another thread, and wait."""
        loop = self._loop
        if call_id not in self._calls or loop is None or loop.is_closed():
            work.close()
            raise LookupError(f"FakeRealtimeWebRTC has no live call {call_id!r}")
        if _running_loop() is loop:
            work.close()
            raise RuntimeError(
                f"FakeRealtimeWebRTC.{name}() would block the fake's own event loop: "
                f"await fake.a{name}(...) there"
            )
        return asyncio.run_coroutine_threadsafe(work, loop).result(CONTROL_TIMEOUT_SECONDS)

    async def _acontrol(self, work: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None or loop.is_closed() or _running_loop() is loop:
            return await work  # raises for a call it does not know, on no loop
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, loop))

    async def _call_function(
        self, call_id: str, name: str, arguments: Mapping[str, Any], tool_call_id: str | None
    ) -> str:
        call = self._live_call(call_id)
        tool_call_id = tool_call_id or events.new_id("call")
        if call.kind == "realtime":
            event = events.realtime_function_call(name, arguments, tool_call_id)
        else:
            call.sequence += 1
            event = events.live_function_call(
                name, arguments, tool_call_id, sequence_number=call.sequence
            )
        await self._broadcast(call, event)
        return tool_call_id

    def call_function(
        self,
        call_id: str,
        name: str,
        arguments: Mapping[str, Any],
        *,
        tool_call_id: str | None = None,
    ) -> str:
        """The model calls the function ``name`` with ``arguments``: Realtime's
        ``response.done`` (completed, a ``function_call`` output item), Live's
        ``response.event`` (a Responses ``response.output_item.done`` with
        the ``function_call``), to every sideband of the call and its data
        channel. The tool call's id (``tool_call_id``, or a new ``call_...``)."""
        work = self._call_function(call_id, name, arguments, tool_call_id)
        return self._control("call_function", call_id, work)

    async def acall_function(
        self,
        call_id: str,
        name: str,
        arguments: Mapping[str, Any],
        *,
        tool_call_id: str | None = None,
    ) -> str:
        """:meth:`call_function`, awaited."""
        return await self._acontrol(self._call_function(call_id, name, arguments, tool_call_id))

    async def _send(self, call_id: str, kind: events.Kind, event: dict[str, Any]) -> None:
        await self._broadcast(self._live_call(call_id, kind), event)

    def finish_response(self, call_id: str, usage: Mapping[str, Any]) -> None:
        """Realtime: a response completes, with ``usage`` (a
        ``RealtimeResponseUsage``: ``input_tokens``, ``output_tokens``,
        ``input_token_details``...) in its ``response.done``."""
        event = events.response_done(output=[], usage=usage)
        self._control("finish_response", call_id, self._send(call_id, "realtime", event))

    async def afinish_response(self, call_id: str, usage: Mapping[str, Any]) -> None:
        """:meth:`finish_response`, awaited."""
        event = events.response_done(output=[], usage=usage)
        await self._acontrol(self._send(call_id, "realtime", event))

    def transcribed(
        self, call_id: str, usage: Mapping[str, Any], *, transcript: str = "Hello."
    ) -> None:
        """Realtime: the input audio was transcribed, with ``usage``
        (``{"type": "duration", "seconds": ...}`` or ``{"type": "tokens",
        ...}``): ``conversation.item.input_audio_transcription.completed``."""
        event = events.transcription_completed(usage, transcript)
        self._control("transcribed", call_id, self._send(call_id, "realtime", event))

    async def atranscribed(
        self, call_id: str, usage: Mapping[str, Any], *, transcript: str = "Hello."
    ) -> None:
        """:meth:`transcribed`, awaited."""
        event = events.transcription_completed(usage, transcript)
        await self._acontrol(self._send(call_id, "realtime", event))

    async def _report_usage(self, session_id: str, seconds: float) -> None:
        call = self._live_call(session_id, "live")
        call.seconds = float(seconds)
        await self._broadcast(call, events.live_usage(call.seconds))

    def report_usage(self, session_id: str, seconds: float) -> None:
        """Live: ``session.usage.updated`` with ``seconds``, the session's
        cumulative billable total (not an increment, as with OpenAI); the
        session's ``session.closed`` carries the last one."""
        self._control("report_usage", session_id, self._report_usage(session_id, seconds))

    async def areport_usage(self, session_id: str, seconds: float) -> None:
        """:meth:`report_usage`, awaited."""
        await self._acontrol(self._report_usage(session_id, seconds))

    async def _change_session(self, call_id: str, fields: Mapping[str, Any]) -> None:
        call = self._live_call(call_id, "realtime")
        await self._broadcast(call, self._merge(call, fields))

    def change_session(self, call_id: str, fields: Mapping[str, Any]) -> None:
        """Realtime: the browser changes the session, as a ``session.update``
        on its data channel does: ``fields`` are merged into the call's
        session and ``session.updated`` goes to the data channel and every
        sideband. (Not recorded in the call's ``events``: no browser sent it.)"""
        self._control("change_session", call_id, self._change_session(call_id, fields))

    async def achange_session(self, call_id: str, fields: Mapping[str, Any]) -> None:
        """:meth:`change_session`, awaited."""
        await self._acontrol(self._change_session(call_id, fields))

    async def _drop_sidebands(self, call_id: str, code: int) -> int:
        call = self._live_call(call_id)
        sockets, call.sockets[:] = list(call.sockets), []
        for socket in sockets:
            await socket.close(code)
        return len(sockets)

    def drop_sidebands(self, call_id: str, code: int = 1012) -> int:
        """Close the call's open sidebands with ``code`` (1012, "service
        restart", by default: a drop after which a server reconnects); the
        call goes on. How many were closed."""
        return self._control("drop_sidebands", call_id, self._drop_sidebands(call_id, code))

    async def adrop_sidebands(self, call_id: str, code: int = 1012) -> int:
        """:meth:`drop_sidebands`, awaited."""
        return await self._acontrol(self._drop_sidebands(call_id, code))

    def refuse_sidebands(self, call_id: str, status: int = 503, *, times: int = 1) -> None:
        """Refuse the next ``times`` attaches to ``call_id`` with ``status``
        and OpenAI's JSON error body (404 says the call is gone; the call
        itself goes on). Recorded in ``sideband_refusals``."""
        with self._changed:
            self._refusals.setdefault(call_id, deque()).extend([status] * times)

    async def _end_call(self, call_id: str) -> None:
        self._live_call(call_id)
        await self._end(call_id, live_reason="remote_hangup")

    def end_call(self, call_id: str) -> None:
        """The far end hangs up: Live sends ``session.closed`` (reason
        ``remote_hangup``, with the usage); every sideband is closed with
        1000 and the peer connection closes. The call is then unknown (an
        attach gets 404)."""
        self._control("end_call", call_id, self._end_call(call_id))

    async def aend_call(self, call_id: str) -> None:
        """:meth:`end_call`, awaited."""
        await self._acontrol(self._end_call(call_id))
