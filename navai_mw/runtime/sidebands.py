"""The sidebands this process holds: one WebSocket to OpenAI per relayed
call, opened right after the call's 201 and held until the call ends.

Each runs as a task on the calls' store's loop (``navai-calls``), under
either shell, so a sideband outlives the request that started its call. The
task only moves events: OpenAI's go into the call's
:class:`~navai_mw.core.effects.SidebandSession` (the sans-IO protocol), and
the actions it answers come out here:

* :class:`~navai_mw.core.effects.SendEvent`: sent on the socket (kept, a
  few at most, while a dropped socket reconnects);
* :class:`~navai_mw.core.effects.RunFunction`: a backend function run as the
  execute route runs it, on the same pool of workers (an async one on the
  loop the shell runs async functions on), its outcome handed back;
* the end: the report, logged in one line and given to ``on_call_end``.

Everything is bounded: opening a socket (:data:`CONNECT_SECONDS`), an event's
size (the protocol's ``MAX_EVENT_BYTES``; aiohttp refuses a larger frame
before buffering it), the sidebands held at once (``limit``), reconnects
(:data:`MAX_RECONNECTS`, with backoff), and how long an ended call's
sideband waits for OpenAI to close it (:data:`END_GRACE_SECONDS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future
from typing import Any, Final

from ..core.effects import (
    AttachSideband,
    BudgetCount,
    ChargeCall,
    EndCall,
    FunctionOutcome,
    RunFunction,
    SendEvent,
    SettleCall,
    SidebandAction,
)
from ..core.errors import log_safe
from ..core.options import DEFAULT_MAX_SIDEBANDS
from ..core.reports import CallReport, EndReason
from .aio import _running_loop, _wait, is_async_hook
from .async_transports import WebSocketRefused
from .call_store import CallStore
from .function_workers import FunctionWorkers, _finished, _outcome_of
from .observe import Observer
from .sideband import SidebandConnector, SidebandSocket

__all__ = ["Sidebands"]

logger = logging.getLogger("navai_mw")
# Reconnections' jitter, from a generator of its own: the random module's
# shared state is the app's (and its tests').
_JITTER: Final = random.Random()  # noqa: S311 - a jitter, not a secret

# Opening a sideband (TCP, TLS, the upgrade) within this.
CONNECT_SECONDS: Final = 10.0
# A dropped sideband is opened again at most this many times in a row (the
# count starts over once one opens), waiting 0.5 s, 1 s, 2 s... up to 8 s
# between tries, as openai-python's own client does.
MAX_RECONNECTS: Final = 5
FIRST_BACKOFF_SECONDS: Final = 0.5
MAX_BACKOFF_SECONDS: Final = 8.0
# Once the server ends a call (a hangup, its time cap), OpenAI closes the
# sideband, after the call's last events; if it does not within this, the
# server closes it.
END_GRACE_SECONDS: Final = 5.0
# How long an on_call_end hook may take before it is given up on (logged).
REPORT_HOOK_SECONDS: Final = 10.0
# Events kept while a dropped sideband reconnects (a function's answer); the
# oldest go first past this.
MAX_PENDING_EVENTS: Final = 32
# How long stopping may wait for the sidebands' last reports.
STOP_SECONDS: Final = REPORT_HOOK_SECONDS + 5.0
# WebSocket close code 1009 (a frame too large): aiohttp's own when OpenAI
# sends one larger than the bound. The call lives on: open it again.
_TOO_LARGE: Final = 1009
# Not a close code: the handshake's 404 (the call is over).
_GONE: Final = -404


def _close_code(code: int | None) -> int | None:
    """The close code as the protocol reads it: a frame too large is a
    broken socket, not the call's end."""
    return None if code == _TOO_LARGE else code


def backoff(failures: int) -> float:
    """Seconds to wait before reconnecting after ``failures`` failures in a
    row: doubling from :data:`FIRST_BACKOFF_SECONDS`, at most
    :data:`MAX_BACKOFF_SECONDS`, with a quarter of jitter (so the sidebands a
    network blip dropped do not all come back at once)."""
    delay = min(FIRST_BACKOFF_SECONDS * 2.0 ** (failures - 1), MAX_BACKOFF_SECONDS)
    return float(delay * (0.75 + _JITTER.random() / 4))


class _Held:
    """One call's sideband, as the process holds it (touched on the store's
    loop only)."""

    __slots__ = (
        "effect",
        "functions",
        "grace",
        "pending",
        "reason",
        "socket",
        "span",
        "started_at",
        "task",
    )

    def __init__(self, effect: AttachSideband, started_at: float) -> None:
        self.effect = effect
        self.started_at = started_at
        self.socket: SidebandSocket | None = None
        # Set when the server ends the call (or stops): the report's reason.
        self.reason: EndReason | None = None
        self.grace: asyncio.TimerHandle | None = None
        self.pending: deque[str] = deque(maxlen=MAX_PENDING_EVENTS)
        self.functions: set[asyncio.Task[None]] = set()
        self.task: asyncio.Task[None] | None = None
        self.span: Any = None


class _Life:
    """How one socket went: whether it opened, whether OpenAI said anything
    on it, and its close code (None: no close frame; :data:`_GONE`: OpenAI
    refused it with 404, the call is over)."""

    __slots__ = ("code", "heard", "opened")

    def __init__(self) -> None:
        self.opened = False
        self.heard = False
        self.code: int | None = None


class Sidebands:
    """The sidebands of one handler (see the module docstring).

    ``store`` is the calls' store: its loop runs the sidebands (unless
    :meth:`run_on` gives the server's), and a call whose required sideband
    is lost is hung up through it. ``workers`` run
    sync backend functions; ``user_loop()`` gives the loop async functions
    and an async ``on_call_end`` run on (None: the store's own).
    """

    def __init__(
        self,
        store: CallStore,
        connector: SidebandConnector,
        workers: FunctionWorkers,
        *,
        user_loop: Callable[[], asyncio.AbstractEventLoop | None] = lambda: None,
        on_call_end: Callable[[CallReport], Any] | None = None,
        limit: int = DEFAULT_MAX_SIDEBANDS,
        budgets: Callable[[Any], Awaitable[object]] | None = None,
        observer: Observer | None = None,
    ) -> None:
        self._store = store
        self._connector = connector
        self._workers = workers
        self._user_loop = user_loop
        self.on_call_end = on_call_end
        self.limit = limit
        # Performs the calls' budget effects (a charge, the settling).
        self._budgets = budgets
        self._observer = observer or Observer(metrics=False)
        self._lock = threading.Lock()
        self._count = 0  # sidebands held, or about to open
        self._held: dict[str, _Held] = {}  # on their loop only
        self._home: asyncio.AbstractEventLoop | None = None
        self._starting: set[asyncio.Task[None]] = set()
        # Closed: a sideband attached from now on is not held (a request in
        # flight at the close relayed its call); a new run_on opens again.
        self._stopped = False

    # -- from any thread ------------------------------------------------------------

    @property
    def held(self) -> int:
        """Sidebands held now (or about to open)."""
        return self._count

    def room(self) -> bool:
        """Whether the process may hold one more (a relay asks first; calls
        relayed at the same moment may pass the limit by as many)."""
        return self._count < self.limit

    def run_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hold the sidebands on ``loop`` from now on: the ASGI server's own
        (asyncio, for the server's life), so that they share the requests'
        thread instead of contending with it for the interpreter."""
        self._home = loop
        self._stopped = False

    def _loop(self, *, start: bool = True) -> asyncio.AbstractEventLoop | None:
        """Where the sidebands run: the server's loop when given one (and it
        still runs), else the calls' store's (started when ``start``)."""
        home = self._home
        if home is not None and not home.is_closed():
            return home
        return self._store.loop() if start else self._store.running_loop()

    def attach(self, effect: AttachSideband) -> None:
        """Open and hold the sideband of ``effect.key``; returns at once."""
        with self._lock:
            self._count += 1
        loop = self._loop()
        assert loop is not None
        if _running_loop() is loop:
            task = loop.create_task(self._start(effect))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)
        else:
            asyncio.run_coroutine_threadsafe(self._start(effect), loop)

    def end(self, key: str, reason: EndReason) -> None:
        """The server is ending ``key`` for ``reason``: its sideband reports
        it so, and closes once OpenAI has (or after the grace)."""
        loop = self._loop(start=False)
        if loop is None:
            return  # no sideband runs in this process
        if _running_loop() is loop:
            self._end(key, reason)
            return
        with contextlib.suppress(RuntimeError):  # stopping meanwhile
            loop.call_soon_threadsafe(self._end, key, reason)

    def report(self, report: CallReport) -> None:
        """Report a call that never had a sideband (a phone call whose
        accept failed): logged now, and given to ``on_call_end`` on the
        sidebands' loop; returns at once."""
        _log_report(report)
        if self.on_call_end is None:
            return
        loop = self._loop()
        assert loop is not None
        if _running_loop() is loop:
            task = loop.create_task(self._deliver(report))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)
        else:
            asyncio.run_coroutine_threadsafe(self._deliver(report), loop)

    def close(self) -> None:
        """End every sideband (``shutdown``) and wait, within
        :data:`STOP_SECONDS`, for their reports; blocking (not on their loop)."""
        self._stopped = True
        loop = self._loop(start=False)
        if loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop_all(), loop).result(STOP_SECONDS)

    async def aclose(self) -> None:
        """:meth:`close`, awaited (on their loop, or any other)."""
        self._stopped = True
        loop = self._loop(start=False)
        if loop is None:
            return
        if _running_loop() is loop:
            await self._stop_all()
            return
        future = asyncio.run_coroutine_threadsafe(self._stop_all(), loop)
        if not await _wait(future, STOP_SECONDS):
            future.cancel()

    # -- on their loop -----------------------------------------------------------------

    async def _start(self, effect: AttachSideband) -> None:
        held = _Held(effect, time.time())
        held.task = asyncio.current_task()
        self._held[effect.key] = held
        self._observer.call_held(1)
        session = effect.session
        with self._observer.span(
            "navai sideband",
            **{
                "gen_ai.operation.name": "realtime",
                "gen_ai.system": "openai",
                "navai.call_id": session.call_id,
            },
        ) as span:
            held.span = span
            await self._hold(held)

    def _end(self, key: str, reason: EndReason) -> None:
        held = self._held.get(key)
        if held is None or held.reason is not None:
            return
        held.reason = reason
        if held.task is not None:
            held.grace = asyncio.get_running_loop().call_later(END_GRACE_SECONDS, held.task.cancel)

    async def _stop_all(self) -> None:
        self._stopped = True
        tasks = []
        for held in self._held.values():
            held.reason = held.reason or "shutdown"
            if held.task is not None:
                held.task.cancel()
                tasks.append(held.task)
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_SECONDS)

    async def _hold(self, held: _Held) -> None:
        """Open the call's sideband, feed it, open it again when it drops,
        until the call ends; then report."""
        session = held.effect.session
        attached: bool | None = None  # whether the first try opened
        gone = False
        failures = 0
        reason: EndReason = "remote"
        try:
            while True:
                if self._stopped:  # attached after the close, or waiting to open again
                    held.reason = held.reason or "shutdown"
                    break
                life = await self._run_socket(held)
                if attached is None:
                    attached = life.opened
                gone = life.code == _GONE
                if held.reason is not None or session.ended or gone:
                    break  # ended by the server, or OpenAI says the call is over
                if life.heard:
                    failures = 0  # it worked: a drop starts the count over
                if life.opened and session.closed(_close_code(life.code)) == "ended":
                    break
                failures += 1
                if failures > MAX_RECONNECTS:
                    reason = "sideband_lost"
                    break
                await asyncio.sleep(backoff(failures))
        except asyncio.CancelledError:
            # The grace after the server ended the call ran out, or a stop.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            held.reason = held.reason or "shutdown"
        finally:
            await self._finish(held, reason, attached=bool(attached), gone=gone)

    async def _run_socket(self, held: _Held) -> _Life:
        """One socket's life, from opening it to its close."""
        effect, session = held.effect, held.effect.session
        life = _Life()
        try:
            async with self._connector.connect(
                effect.url, effect.headers, timeout=CONNECT_SECONDS
            ) as socket:
                held.socket, life.opened = socket, True
                self._observer.sideband(1)
                await self._perform(held, session.opened())
                while held.pending:
                    await socket.send_text(held.pending.popleft())
                while not session.ended:
                    data = await socket.receive_text()
                    if data is None:
                        life.code = getattr(socket, "close_code", None)
                        break
                    life.heard = True
                    self._observer.sideband_event(data)
                    await self._perform(held, session.receive(data))
        except WebSocketRefused as exc:
            life.code = _GONE if exc.status == 404 else None
        except (OSError, TimeoutError) as exc:
            if not life.opened:
                logger.warning(
                    "navai_mw: the sideband of call %s did not open: %s",
                    session.call_id,
                    type(exc).__name__,
                )
            life.code = None  # no close frame: a broken socket
        finally:
            if life.opened:
                self._observer.sideband(-1)
            held.socket = None
        return life

    async def _perform(self, held: _Held, actions: Iterable[SidebandAction]) -> None:
        for action in actions:
            if isinstance(action, SendEvent):
                await self._send(held, action.event)
            elif isinstance(action, RunFunction):
                task = asyncio.get_running_loop().create_task(self._run_function(held, action))
                held.functions.add(task)
                task.add_done_callback(held.functions.discard)
            elif isinstance(action, ChargeCall):
                counts = await self._budgets(action) if self._budgets is not None else None
                await self._perform(held, held.effect.session.charged(_counts_or_none(counts)))
            elif isinstance(action, EndCall):
                self._end_call(held, action.reason)
            # CallEnded: the session now says it is over; the socket loop stops.

    def _end_call(self, held: _Held, reason: EndReason) -> None:
        """The server ends the call (its caller's budget is spent): hung up
        as its time cap would, and reported with ``reason``."""
        if held.reason is not None:
            return
        logger.warning(
            "navai_mw: call %s is hung up: %s", held.effect.session.call_id, _SAID[reason]
        )
        held.reason = reason
        self._store.end_now(held.effect.key)
        if held.task is not None:
            loop = asyncio.get_running_loop()
            held.grace = loop.call_later(END_GRACE_SECONDS, held.task.cancel)

    async def _send(self, held: _Held, event: object) -> None:
        text = json.dumps(event, separators=(",", ":"))
        socket = held.socket
        if socket is None:
            held.pending.append(text)  # sent once the sideband is open again
            return
        try:
            await socket.send_text(text)
        except Exception:  # the socket broke: its reader hears it and reconnects
            held.pending.append(text)

    async def _run_function(self, held: _Held, action: RunFunction) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with self._observer.function_span(action.name):
            outcome = await self._outcome(action)
        seconds = loop.time() - started
        self._observer.function(action.name, outcome.kind, seconds)
        await self._perform(held, held.effect.session.function_done(action, outcome, seconds))

    async def _outcome(self, action: RunFunction) -> FunctionOutcome:
        """Run a backend function as the execute route does: a sync one on
        the workers (busy when none is free), an async one on the shell's
        loop for async functions; within its timeout."""
        future: Future[Any] | None
        if action.is_async:
            target = self._user_loop()
            if target is None or target is asyncio.get_running_loop():
                try:
                    return await asyncio.wait_for(_outcome_of(action.run()), action.timeout)
                except TimeoutError:
                    return FunctionOutcome(timed_out=True)
            future = asyncio.run_coroutine_threadsafe(_outcome_of(action.run()), target)
        else:
            future = self._workers.submit(action.run)
            if future is None:
                return FunctionOutcome(busy=True)
        if not await _wait(future, action.timeout):
            future.cancel()  # an async function stops at its next await
            return FunctionOutcome(timed_out=True)
        return _finished(future)

    async def _finish(self, held: _Held, reason: EndReason, *, attached: bool, gone: bool) -> None:
        """The call is over for this process: stop its functions, hang it up
        when its sideband was required and lost, report it."""
        effect = held.effect
        if held.grace is not None:
            held.grace.cancel()
        for task in list(held.functions):
            task.cancel()
        self._held.pop(effect.key, None)
        with self._lock:
            self._count -= 1
        final = held.reason or reason
        lost = final == "sideband_lost" or (not attached and not gone)
        report = effect.session.report(
            started_at=held.started_at,
            ended_at=time.time(),
            reason=final,
            metered=attached and final not in ("sideband_lost", "shutdown"),
        )
        if lost and effect.required and held.reason is None:
            logger.warning(
                "navai_mw: call %s is hung up: its sideband is required and was lost",
                effect.session.call_id,
            )
            self._store.end_now(effect.key)
        reservation = effect.session.reservation
        if reservation is not None and self._budgets is not None:
            await self._budgets(SettleCall(reservation, report.seconds))
        _log_report(report)
        self._observer.call_held(-1)
        self._observer.call_reported(report, held.span)
        self._observer.reverts(effect.session.reverts)
        await self._deliver(report)

    async def _deliver(self, report: CallReport) -> None:
        hook = self.on_call_end
        if hook is None:
            return
        try:
            if not is_async_hook(hook):
                # It may write to a database: not on the loop.
                await asyncio.wait_for(asyncio.to_thread(hook, report), REPORT_HOOK_SECONDS)
                return
            target = self._user_loop()
            if target is None or target is asyncio.get_running_loop():
                await asyncio.wait_for(hook(report), REPORT_HOOK_SECONDS)
                return
            future = asyncio.run_coroutine_threadsafe(hook(report), target)
            if not await _wait(future, REPORT_HOOK_SECONDS):
                future.cancel()
                raise TimeoutError
            future.result()
        except Exception as exc:
            logger.error(
                "navai_mw: on_call_end failed for call %s: %s", report.call_id, type(exc).__name__
            )


_SAID: Final = {
    "accept_failed": "OpenAI did not accept it",
    "budget": "its caller's budget is spent",
    "time_cap": "its time is up",
    "hangup": "its owner hung up",
    "remote": "it ended",
    "sideband_lost": "its sideband was lost",
    "shutdown": "the server stops",
}


def _counts_or_none(value: object) -> tuple[BudgetCount, ...] | None:
    return value if isinstance(value, tuple) else None


def _log_report(report: CallReport) -> None:
    """One line per call: who, how it ended, what it used and cost."""
    usage = report.usage
    if report.kind == "live":
        used = f"{usage.seconds:g} billed seconds"
    else:
        used = f"{usage.input_tokens} input and {usage.output_tokens} output tokens"
    cost = "cost unknown" if report.cost_usd is None else f"${report.cost_usd:.4f}"
    logger.info(
        "navai_mw: call %s (%s, %s) of %s ended: %s after %.1f s; %s; %s, %s; %d function calls",
        report.call_id,
        report.kind,
        log_safe(report.model),
        log_safe(report.identity or "anonymous"),
        report.end_reason,
        report.seconds,
        "metered" if report.metered else "not metered",
        used,
        cost,
        len(report.function_calls),
    )
