"""The fake OpenAI's side of a call's sideband: the WebSockets a server
opens to a call it started (Realtime ``GET /v1/realtime?call_id=rtc_...``,
GPT-Live ``GET /v1/live/sessions/{id}/attach``), the one session a call's
data channel and sidebands share, what the fake records of them, and the
controls with which a test plays OpenAI's part (the model calls a function,
a response finishes, the far end hangs up, the socket drops).

:class:`FakeRealtimeWebRTC` is made of this and of its peer connections
(``webrtc.py``); its docstring is where a user reads what it promises. All
of a call's state lives on the event loop that answers the fake's requests;
the controls run there (from a test's thread, they wait for it), and the
records are guarded by one lock a test's waits watch.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, MutableMapping, Sequence
from contextlib import suppress
from typing import Any, Final
from urllib.parse import parse_qsl, unquote

import attrs

from . import sideband_events as events
from .scripted import _error_reply, _Reply, _unauthorized

REALTIME_SIDEBAND_PATH: Final = "/v1/realtime"
_ATTACH_PATH: Final = re.compile(r"/v1/live/sessions/(?P<id>[^/]+)/attach/?")
DEFAULT_WAIT_SECONDS: Final = 10.0
# Closed when the fake itself goes away: a code after which OpenAI's own
# client reconnects, as a server's sideband should.
_GOING_AWAY: Final = 1001


class _Socket:
    """One accepted sideband WebSocket: the ASGI ``send`` and a lock, so
    that events sent from several tasks (a control, a session update, the
    socket's own answers) go out whole and in order, and none after its
    close."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self._lock = asyncio.Lock()
        self.closed = False

    async def send_event(self, event: Mapping[str, Any]) -> bool:
        """Send ``event``; False once the socket is closed or gone."""
        async with self._lock:
            if self.closed:
                return False
            try:
                await self._send({"type": "websocket.send", "text": json.dumps(event)})
            except Exception:  # the client went away: the server says so in many ways
                self.closed = True
                return False
            return True

    async def close(self, code: int) -> None:
        async with self._lock:
            if self.closed:
                return
            self.closed = True
            with suppress(Exception):
                await self._send({"type": "websocket.close", "code": code})


@attrs.define(eq=False)
class _Call:
    """One live call (Realtime) or session (Live): its session as OpenAI
    reports it, its data channel once open, its open sidebands, and Live's
    cumulative usage."""

    kind: events.Kind
    call_id: str
    session: dict[str, Any]
    channel: Any = None
    sockets: list[_Socket] = attrs.field(factory=list)
    seconds: float = 0.0
    sequence: int = 0
    # For a scripted model: what the browser last typed, and a function's
    # output the next response reports.
    heard: str = ""
    answered: str | None = None


# A scripted model: given what the browser typed and the session's function
# tools, a function to call (its name and arguments), words to say, or None.
ScriptedModel = Callable[[str, Sequence[str]], "tuple[str, dict[str, Any]] | str | None"]


def _typed(item: Mapping[str, Any]) -> str:
    """The text of a user's typed message item ('' for any other item)."""
    if item.get("type") != "message" or item.get("role") != "user":
        return ""
    parts = item.get("content")
    return " ".join(
        str(part.get("text", ""))
        for part in (parts if isinstance(parts, list) else [])
        if isinstance(part, dict) and part.get("type") == "input_text"
    ).strip()


class _EventFinder:
    """A predicate over the recorded events: is there one of this type
    (that ``where`` likes)? The first such is kept in :attr:`found`."""

    def __init__(
        self,
        recorded: Mapping[str, list[dict[str, Any]]],
        call_id: str,
        kind: str,
        where: Callable[[dict[str, Any]], bool] | None,
    ) -> None:
        self._recorded, self._call_id, self._kind, self._where = recorded, call_id, kind, where
        self.found: dict[str, Any] = {}

    def __call__(self) -> bool:
        for event in self._recorded.get(self._call_id, ()):
            if event.get("type") == self._kind and (self._where is None or self._where(event)):
                self.found = event
                return True
        return False


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _refusal(status: int, call_id: str) -> _Reply:
    """OpenAI's error body for an attach refused with ``status``."""
    if status == 404:
        return _error_reply(404, f"Call with id '{call_id}' not found.", "invalid_request_error")
    if status == 429:
        return _error_reply(429, "Rate limit reached.", "rate_limit_error")
    if status >= 500:
        return _error_reply(status, "The server had an error.", "server_error")
    return _error_reply(status, "The request was refused.", "invalid_request_error")


async def _refuse(scope: MutableMapping[str, Any], send: Any, reply: _Reply) -> None:
    """Refuse a WebSocket's handshake with ``reply`` when the server can
    send an HTTP answer to one (ASGI's ``websocket.http.response``, which
    uvicorn offers); otherwise close it before accepting (a 403)."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        pairs = [*reply.headers, ("content-length", str(len(reply.body)))]
        headers = [(k.encode(), v.encode()) for k, v in pairs]
        start = {"type": "websocket.http.response.start", "status": reply.status}
        await send({**start, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": reply.body})
    else:
        await send({"type": "websocket.close", "code": 1008})


class _SidebandSide:
    """The sidebands and shared sessions of :class:`FakeRealtimeWebRTC`
    (see its docstring for the public names)."""

    api_key: str | None
    closes: list[str]
    hangups: list[str]

    def _init_sidebands(self) -> None:
        self.sideband_events: dict[str, list[dict[str, Any]]] = {}
        self.sideband_attaches: dict[str, int] = {}
        self.sideband_refusals: list[tuple[str, int]] = []
        self._calls: dict[str, _Call] = {}
        self._open: dict[str, int] = {}
        self._refusals: dict[str, deque[int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._changed = threading.Condition()
        self._pokes: set[Callable[[], None]] = set()
        self.model: ScriptedModel | None = None

    async def _close_peer(self, peer_id: str) -> None:
        raise NotImplementedError

    def _reset_sidebands(self) -> None:
        with self._changed:
            self.sideband_events.clear()
            self.sideband_attaches.clear()
            self.sideband_refusals.clear()
            self._refusals.clear()

    # -- the state a test waits on ------------------------------------------------

    def _note_loop(self) -> None:
        self._loop = asyncio.get_running_loop()

    def _notify(self) -> None:
        """Something a test may wait for changed."""
        with self._changed:
            self._changed.notify_all()
            for poke in list(self._pokes):
                poke()

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def open_sidebands(self, call_id: str) -> int:
        """How many sidebands of ``call_id`` are open now."""
        return self._open.get(call_id, 0)

    def wait_until(
        self, predicate: Callable[[], bool], *, timeout: float = DEFAULT_WAIT_SECONDS
    ) -> None:
        """Block until ``predicate()`` is true; it is checked again whenever
        the fake records something (an event, a sideband opened or closed, a
        peer's state). :class:`TimeoutError` after ``timeout`` seconds. Not
        on the fake's own loop (it would stop it): :meth:`await_until` there."""
        running = _running_loop()
        if running is not None and running is self._loop:
            raise RuntimeError(
                "FakeRealtimeWebRTC.wait_until() would block the fake's own event loop: "
                "await fake.await_until(...) there"
            )
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise TimeoutError(f"FakeRealtimeWebRTC: not so within {timeout} s")

    async def await_until(
        self, predicate: Callable[[], bool], *, timeout: float = DEFAULT_WAIT_SECONDS
    ) -> None:
        """:meth:`wait_until`, awaited: on any loop, the fake's own included."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def poke() -> None:
            with suppress(RuntimeError):  # that loop is closed: nobody waits any more
                loop.call_soon_threadsafe(changed.set)

        deadline = loop.time() + timeout
        with self._changed:
            self._pokes.add(poke)
        try:
            while True:
                with self._changed:
                    if predicate():
                        return
                    changed.clear()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"FakeRealtimeWebRTC: not so within {timeout} s")
                with suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        finally:
            with self._changed:
                self._pokes.discard(poke)

    def wait_for_event(
        self,
        call_id: str,
        kind: str,
        *,
        where: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = DEFAULT_WAIT_SECONDS,
    ) -> dict[str, Any]:
        """The first client event of type ``kind`` (and for which
        ``where(event)`` is true, when given) a sideband of ``call_id``
        received; waits for it as :meth:`wait_until` does."""
        finder = _EventFinder(self.sideband_events, call_id, kind, where)
        self.wait_until(finder, timeout=timeout)
        return finder.found

    async def await_for_event(
        self,
        call_id: str,
        kind: str,
        *,
        where: Callable[[dict[str, Any]], bool] | None = None,
        timeout: float = DEFAULT_WAIT_SECONDS,
    ) -> dict[str, Any]:
        """:meth:`wait_for_event`, awaited."""
        finder = _EventFinder(self.sideband_events, call_id, kind, where)
        await self.await_until(finder, timeout=timeout)
        return finder.found

    # -- calls: made, joined by a data channel, ended -------------------------------

    def _add_call(self, kind: events.Kind, call_id: str, session: dict[str, Any]) -> None:
        self._calls[call_id] = _Call(kind=kind, call_id=call_id, session=session)

    def _channel_open(self, call_id: str, channel: Any) -> None:
        """The browser's data channel opened: OpenAI greets it with the
        call's session as it is now."""
        call = self._calls.get(call_id)
        if call is None:
            return
        call.channel = channel
        if call.kind == "realtime":
            channel.send(json.dumps(events.session_created(call.session)))
        else:
            channel.send(json.dumps(events.session_started(call.session)))

    def _channel_event(self, call_id: str, event: object) -> None:
        """A client event from the browser's data channel (already recorded)."""
        call = self._calls.get(call_id)
        if call is not None and call.kind == "realtime" and isinstance(event, dict):
            kind, update, item = event.get("type"), event.get("session"), event.get("item")
            if kind == "session.update" and isinstance(update, dict):
                self._spawn(self._broadcast(call, self._merge(call, update)))
            elif kind == "conversation.item.create" and isinstance(item, dict):
                call.heard = _typed(item) or call.heard
                self._spawn(self._broadcast(call, events.item_added(item)))
            elif kind == "response.create":
                self._spawn(self._respond(call))
        self._notify()

    async def _respond(self, call: _Call) -> None:
        """A response, as the scripted model gives it: the output of the
        function it called, else what it makes of what it heard."""
        if self.model is None:
            return
        if call.answered is not None:
            answered, call.answered = call.answered, None
            await self._broadcast(call, events.assistant_text(f"The server says: {answered}"))
            return
        tools = [
            tool["name"]
            for tool in call.session.get("tools") or ()
            if isinstance(tool, dict) and tool.get("type") == "function" and "name" in tool
        ]
        decision = self.model(call.heard, tools)
        if isinstance(decision, tuple):
            name, arguments = decision
            event = events.realtime_function_call(name, arguments, events.new_id("call"))
            await self._broadcast(call, event)
        elif isinstance(decision, str):
            await self._broadcast(call, events.assistant_text(decision))

    def _merge(self, call: _Call, update: Mapping[str, Any]) -> dict[str, Any]:
        """Merge a ``session.update`` into the call's session (now, so that
        updates apply in the order they came); the ``session.updated`` to
        send."""
        events.merge_session(call.session, update)
        return events.session_updated(call.session)

    async def _broadcast(self, call: _Call, event: Mapping[str, Any]) -> None:
        """Send ``event`` where OpenAI sends a call's server events: its data
        channel (once open) and every open sideband."""
        channel = call.channel
        if channel is not None and channel.readyState == "open":
            with suppress(Exception):  # closing under us: the browser is gone
                channel.send(json.dumps(event))
        for socket in list(call.sockets):
            if not await socket.send_event(event):
                with suppress(ValueError):
                    call.sockets.remove(socket)

    async def _end(
        self,
        call_id: str,
        *,
        code: int = 1000,
        live_reason: events.LiveCloseReason | None = None,
    ) -> bool:
        """End a call: a Live session says ``session.closed`` first (when
        given its reason), every sideband is closed with ``code``, then the
        peer connection. False when it had ended already."""
        call = self._calls.pop(call_id, None)
        if call is None:
            await self._close_peer(call_id)
            return False
        if call.kind == "live" and live_reason is not None:
            await self._broadcast(call, events.live_closed(call.session, call.seconds, live_reason))
        for socket in call.sockets:
            await socket.close(code)
        call.sockets.clear()
        await self._close_peer(call_id)
        self._notify()
        return True

    async def _end_all(self) -> None:
        """The fake goes away: every sideband closes as a server's does when
        it stops, then every peer connection."""
        while self._calls:
            await self._end(next(iter(self._calls)), code=_GOING_AWAY)

    # -- the sideband WebSocket -------------------------------------------------------

    async def _websocket(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = unquote(scope.get("path", ""))
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        attach = _ATTACH_PATH.fullmatch(path)
        kind: events.Kind
        if path.rstrip("/") == REALTIME_SIDEBAND_PATH:
            kind, call_id = "realtime", query.get("call_id", "")
        elif attach is not None:
            kind, call_id = "live", attach["id"]
        else:
            reply = _error_reply(404, f"Invalid URL (GET {path})", "invalid_request_error")
            await _refuse(scope, send, reply)
            return
        refused = _unauthorized(headers, self.api_key)
        if refused is None and not call_id:
            refused = _error_reply(
                400,
                "Missing required parameter: 'call_id' (the fake serves a call's sideband only).",
                "invalid_request_error",
            )
        call = self._calls.get(call_id)
        if refused is None and (call is None or call.kind != kind):
            refused = _refusal(404, call_id)
        if refused is None:
            with self._changed:
                queued = self._refusals.get(call_id)
                status = queued.popleft() if queued else None
            if status is not None:
                refused = _refusal(status, call_id)
        if refused is not None or call is None:
            refused = refused or _refusal(404, call_id)
            with self._changed:
                self.sideband_refusals.append((call_id, refused.status))
            await _refuse(scope, send, refused)
            self._notify()
            return
        await self._attached(call, receive, send)

    async def _attached(self, call: _Call, receive: Any, send: Any) -> None:
        socket = _Socket(send)
        await send({"type": "websocket.accept"})
        with self._changed:
            self.sideband_attaches[call.call_id] = self.sideband_attaches.get(call.call_id, 0) + 1
            self._open[call.call_id] = self._open.get(call.call_id, 0) + 1
            self.sideband_events.setdefault(call.call_id, [])
        try:
            if call.call_id not in self._calls:
                await socket.close(1000)  # it ended while the handshake went out
                return
            call.sockets.append(socket)
            self._notify()
            if call.kind == "realtime":
                await socket.send_event(events.session_created(call.session))
            while True:
                message = await receive()
                if message["type"] != "websocket.receive":
                    return  # websocket.disconnect
                if not await self._received(call, socket, message):
                    return
        finally:
            socket.closed = True
            with suppress(ValueError):
                call.sockets.remove(socket)
            with self._changed:
                self._open[call.call_id] -= 1
            self._notify()

    async def _received(self, call: _Call, socket: _Socket, message: Mapping[str, Any]) -> bool:
        """One frame from a sideband; False once the socket is done."""
        try:
            event = json.loads(message.get("text") or message.get("bytes") or b"")
        except ValueError:
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            await socket.send_event(events.error("Expected a JSON object with a string type."))
            return True
        with self._changed:
            self.sideband_events.setdefault(call.call_id, []).append(event)
        self._notify()
        kind = event["type"]
        if call.kind == "realtime" and kind == "session.update":
            update = event.get("session")
            if not isinstance(update, dict):
                await socket.send_event(events.error("session must be an object."))
            else:
                await self._broadcast(call, self._merge(call, update))
        elif call.kind == "realtime" and kind == "conversation.item.create":
            item = event.get("item")
            if isinstance(item, dict):
                if item.get("type") == "function_call_output":
                    call.answered = str(item.get("output", ""))
                await self._broadcast(call, events.item_added(item))
        elif call.kind == "realtime" and kind == "response.create":
            await self._respond(call)
        elif call.kind == "live" and kind == "session.close":
            self.closes.append(call.call_id)
            await self._end(call.call_id, live_reason="close_requested")
            return False
        return True
