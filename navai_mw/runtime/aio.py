"""Event-loop helpers for the I/O layer: which loop runs (asyncio or trio), a
deadline for one attempt, a value bound to one event loop (``LoopBound``),
an event loop on a thread of its own, and a way to wait for a thread's
result without blocking the loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

import anyio


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

    Without a given one, it is made on first use (:meth:`_current`). It
    belongs to the event loop that made it, and is closed on that loop when
    the loop shuts down (``asyncio.run`` and trio finalize it with their
    async generators), when another loop takes over while it still runs, or
    by :meth:`aclose`; a fresh one is made on the next use (a server's second
    lifespan, a test harness that runs each request on a loop of its own).
    ``is_closed`` is True from :meth:`aclose` until the next use.
    """

    def __init__(self, given: C | None) -> None:
        self._given = given
        self._client = given
        self._loop: object = None
        # An async generator whose ``finally`` closes the client; the loop
        # that ran its first step finalizes it when it shuts down.
        self._closer: AsyncGenerator[None, None] | None = None
        self.is_closed = False

    def _make(self) -> C:
        raise NotImplementedError

    async def _close(self, client: C) -> None:
        raise NotImplementedError

    async def _current(self) -> C:
        if self._given is not None:
            return self._given
        loop = _running_loop()
        client = self._client
        if client is None or self._loop is not loop:
            self._retire()
            client = self._make()
            self._client, self._loop = client, loop
            self._closer = self._closes_with_its_loop(client)
            await self._closer.__anext__()
        self.is_closed = False
        return client

    async def _closes_with_its_loop(self, client: C) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if self._client is client:
                self._client = None
            await self._close(client)

    def _retire(self) -> None:
        """Close the client of another loop on that loop, while it runs."""
        closer, loop, self._closer = self._closer, self._loop, None
        if closer is None:
            return
        if isinstance(loop, asyncio.AbstractEventLoop) and loop.is_running():
            asyncio.run_coroutine_threadsafe(closer.aclose(), loop)
        # A loop that ran to its end finalized the closer already; one that
        # was stopped without that cannot run anything more.

    async def aclose(self) -> None:
        closer, self._closer = self._closer, None
        self.is_closed = True
        if closer is not None:
            await closer.aclose()
        elif self._given is not None:
            await self._close(self._given)


class _LoopThread:
    """An event loop on a daemon thread, for async backend functions called
    from WSGI; started on first use (again in a forked child)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread()  # not started: none alive yet
        self._pid = 0

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            thread = self._thread
            if self._loop is None or self._pid != os.getpid() or not thread.is_alive():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="navai-function-loop", daemon=True
                )
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
            return self._loop


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
