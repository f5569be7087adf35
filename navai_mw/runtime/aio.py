"""Event-loop helpers for the I/O layer: which loop runs (asyncio or trio), a
deadline for one attempt, a value bound to one event loop (``LoopBound``),
an event loop on a thread of its own, and a way to wait for a thread's
result without blocking the loop."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

import anyio


def is_async_hook(hook: object) -> bool:
    """Whether ``hook`` must be awaited (a coroutine function, or an object
    whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
        getattr(hook, "__call__", None)  # noqa: B004 - a callable object's own method
    )


def _running_loop() -> object:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # trio: one loop per run, nothing to tell apart
        return None


def on_asyncio() -> bool:
    """Whether an asyncio loop runs this code (else trio): one C call, cheap
    enough to ask per request."""
    return _running_loop() is not None


# asyncio.timeout came with Python 3.11.
_asyncio_timeout: Callable[[float], AbstractAsyncContextManager[object]] | None = getattr(
    asyncio, "timeout", None
)


def attempt_deadline(seconds: float) -> AbstractAsyncContextManager[object]:
    """A TimeoutError once ``seconds`` have passed: asyncio's own timeout on
    asyncio (a fraction of anyio's cost per attempt), anyio's elsewhere."""
    if _asyncio_timeout is not None and on_asyncio():
        return _asyncio_timeout(seconds)
    return _AnyioDeadline(seconds)


class _AnyioDeadline:
    """``anyio.fail_after``, entered and left with ``async with``."""

    __slots__ = ("_scope",)

    def __init__(self, seconds: float) -> None:
        self._scope = anyio.fail_after(seconds)

    async def __aenter__(self) -> object:
        return self._scope.__enter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return self._scope.__exit__(*exc_info)


C = TypeVar("C")


class LoopBound(Generic[C]):
    """One ``C`` per event loop: a pooled client, or the connections of one.

    Without a given one, each event loop that uses it gets its own, made on
    first use (:meth:`_current`): the server's loop, and the calls' store's
    own loop that ends calls at their time cap, each keep theirs. One
    belongs to the event loop that made it and is closed on that loop when
    the loop shuts down (``asyncio.run``, trio and the store's loop finalize
    it with their async generators), or by :meth:`aclose`, which closes every
    loop's; a fresh one is made on the next use (a server's second lifespan,
    a test harness that runs each request on a loop of its own). The one of
    a loop that was closed without that is forgotten when another loop makes
    its own. ``is_closed`` is True from :meth:`aclose` until the next use.
    """

    def __init__(self, given: C | None) -> None:
        self._given = given
        # The loop (None under trio) -> its client and an async generator
        # whose ``finally`` closes it; the loop that ran its first step
        # finalizes it when it shuts down.
        self._clients: dict[object, tuple[C, AsyncGenerator[None, None]]] = {}
        self.is_closed = False

    def _make(self) -> C:
        raise NotImplementedError

    async def _close(self, client: C) -> None:
        raise NotImplementedError

    @property
    def _client(self) -> C | None:
        """The client of the running loop, if it has one."""
        if self._given is not None:
            return self._given
        entry = self._clients.get(_running_loop())
        return None if entry is None else entry[0]

    async def _current(self) -> C:
        if self._given is not None:
            return self._given
        loop = _running_loop()
        entry = self._clients.get(loop)
        if entry is None:
            self._forget_dead_loops()
            client = self._make()
            closer = self._closes_with_its_loop(loop, client)
            entry = self._clients[loop] = (client, closer)
            await closer.__anext__()
        self.is_closed = False
        return entry[0]

    async def _closes_with_its_loop(self, loop: object, client: C) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            entry = self._clients.get(loop)
            if entry is not None and entry[0] is client:
                del self._clients[loop]
            await self._close(client)

    def _forget_dead_loops(self) -> None:
        """Drop the clients of loops that were closed without finalizing
        them: nothing can run on those loops any more."""
        for loop in list(self._clients):
            if isinstance(loop, asyncio.AbstractEventLoop) and loop.is_closed():
                self._clients.pop(loop, None)

    async def aclose(self) -> None:
        """Close every loop's client: this loop's here, another running
        loop's on that loop (waited for, within a bound)."""
        entries, self._clients = self._clients, {}
        self.is_closed = True
        here = _running_loop()
        for loop, (_, closer) in entries.items():
            if loop is here:
                await closer.aclose()
            elif isinstance(loop, asyncio.AbstractEventLoop) and loop.is_running():
                with contextlib.suppress(RuntimeError):  # it stopped meanwhile
                    done = asyncio.run_coroutine_threadsafe(closer.aclose(), loop)
                    await _wait(done, _CLOSE_ELSEWHERE_SECONDS)
            # A loop that ran to its end finalized the closer already; one that
            # was stopped without that cannot run anything more.
        if not entries and self._given is not None:
            await self._close(self._given)


# How long closing another loop's client may hold aclose(): that loop may be
# busy, or stopping.
_CLOSE_ELSEWHERE_SECONDS = 5.0


# What a forked child inherited from its parent's event loops (the loops
# and the clients made on them), kept here and never finalized: closing an
# inherited connection takes its socket out of the epoll set the two
# processes share, and the parent then waits for replies it is never told
# of. Fork happens once per worker, so this holds a handful of objects.
_INHERITED: list[object] = []


def keep_inherited(thing: object) -> None:
    """In a forked child: keep the parent's ``thing`` (a loop or a client
    made on one) from ever being finalized here."""
    if thing is not None:
        _INHERITED.append(thing)


class _LoopThread:
    """An event loop on a daemon thread, started on first use (again in a
    forked child, and after :meth:`stop`): for async backend functions called
    from WSGI, and the calls' store's timers, deadlines and hangups. When it
    stops, its async generators are finalized (the clients made on it close
    there) and the loop is closed."""

    def __init__(self, name: str = "navai-function-loop") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread()  # not started: none alive yet
        self._pid = 0

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            thread = self._thread
            if self._loop is None or self._pid != os.getpid() or not thread.is_alive():
                if self._pid != os.getpid():
                    keep_inherited(self._loop)
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=_run_until_stopped, args=(loop,), name=self._name, daemon=True
                )
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            return self._loop

    def running(self) -> asyncio.AbstractEventLoop | None:
        """The loop, if it runs in this process (without starting one)."""
        with self._lock:
            alive = self._pid == os.getpid() and self._thread.is_alive()
            return self._loop if alive else None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and wait (within ``timeout``) for its thread to
        finish it; the next :meth:`loop` starts a fresh one."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = None
        if loop is None or self._pid != os.getpid():
            return
        with contextlib.suppress(RuntimeError):  # closed already
            loop.call_soon_threadsafe(loop.stop)
        if thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)


def _run_until_stopped(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            # What is still scheduled is cancelled, and the clients bound to
            # this loop close on it (their closers are async generators).
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


async def _wait(future: Future[Any], timeout: float) -> bool:
    """Wait for a worker's ``future`` without blocking the event loop; False
    when ``timeout`` passed first."""
    done = anyio.Event()
    notify = _threadsafe_notifier()
    future.add_done_callback(lambda _: notify(done.set))
    with anyio.move_on_after(timeout):
        await done.wait()
    return future.done()


def _threadsafe_notifier() -> Callable[[Callable[[], object]], None]:
    """A way for another thread to run a callback on this event loop."""
    if on_asyncio():
        loop = asyncio.get_running_loop()

        def notify_asyncio(callback: Callable[[], object]) -> None:
            # The loop may have closed: then nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(callback)

        return notify_asyncio
    import trio

    token = trio.lowlevel.current_trio_token()

    def on_trio(callback: Callable[[], object]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(callback)

    return on_trio
