"""Work a request leaves for after its answer: what a webhook asks (an app's
hook, a phone call's accept) runs once OpenAI has its ``200``, since OpenAI
retries a delivery that is not answered within seconds.

The work is a generator of effects, as a request's steps are; the
composition root (``views.py``) gives each holder the driver that runs it
(:meth:`SyncAfterAnswers.start`, :meth:`AsyncAfterAnswers.start`), as it
gives the calls' store the driver that ends a call. Under WSGI each piece
runs on a thread of a small pool; under ASGI as a task on the server's
event loop (asyncio, once its lifespan has started) or else on the calls'
store's loop. At most ``limit`` pieces run at once: past it, the work is
refused (the webhook route answers 503, and OpenAI delivers it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Final

from ..core.effects import AfterAnswer
from .aio import _running_loop
from .call_store import CallStore
from .function_workers import FunctionWorkers

__all__ = ["DEFAULT_AFTER_ANSWERS", "AsyncAfterAnswers", "SyncAfterAnswers"]

logger = logging.getLogger("navai_mw")

# Pieces of work running at once per process: phone calls ringing and hooks
# in progress. A burst beyond it is OpenAI's to deliver again.
DEFAULT_AFTER_ANSWERS: Final = 32

Steps = Generator[Any, Any, None]


def _failed(effect: AfterAnswer, exc: BaseException) -> None:
    logger.error(
        "navai_mw: %s failed after its answer: %s", effect.what, type(exc).__name__, exc_info=exc
    )


class SyncAfterAnswers:
    """For the WSGI shell: each piece on a pool thread, driven by the
    blocking driver :meth:`start` was given."""

    def __init__(self, limit: int = DEFAULT_AFTER_ANSWERS) -> None:
        self._workers = FunctionWorkers(limit)
        self._drive: Callable[[Steps], object] | None = None

    def start(self, drive: Callable[[Steps], object]) -> None:
        self._drive = drive

    def take(self, effect: AfterAnswer) -> bool:
        """Run ``effect.steps`` on a free thread; False when none is free."""
        drive = self._drive
        if drive is None:  # pragma: no cover - views.py wires it with the handler
            raise RuntimeError("no driver for the work after an answer")

        def run() -> None:
            try:
                drive(effect.steps)
            except Exception as exc:
                _failed(effect, exc)

        future = self._workers.submit(run)
        if future is None:
            effect.steps.close()
            return False
        return True


class AsyncAfterAnswers:
    """For the ASGI shell: each piece a task on the server's loop (see
    :meth:`run_on`) or the calls' store's, driven by the coroutine driver
    :meth:`start` was given."""

    def __init__(self, store: CallStore, limit: int = DEFAULT_AFTER_ANSWERS) -> None:
        self._store = store
        self.limit = limit
        self._lock = threading.Lock()
        self._running = 0
        self._home: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._drive: Callable[[Steps], Awaitable[object]] | None = None

    def start(self, drive: Callable[[Steps], Awaitable[object]]) -> None:
        self._drive = drive

    def run_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the work on ``loop`` from now on: the ASGI server's own."""
        self._home = loop

    def _loop(self, *, start: bool = True) -> asyncio.AbstractEventLoop | None:
        home = self._home
        if home is not None and not home.is_closed():
            return home
        return self._store.loop() if start else self._store.running_loop()

    def take(self, effect: AfterAnswer) -> bool:
        """Start ``effect.steps``; False when ``limit`` pieces run already."""
        with self._lock:
            if self._running >= self.limit:
                effect.steps.close()
                return False
            self._running += 1
        loop = self._loop()
        assert loop is not None
        if _running_loop() is loop:
            self._track(loop.create_task(self._run(effect)))
        else:
            asyncio.run_coroutine_threadsafe(self._run(effect), loop)
        return True

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, effect: AfterAnswer) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._track(task)
        try:
            drive = self._drive
            if drive is None:  # pragma: no cover - views.py wires it with the handler
                raise RuntimeError("no driver for the work after an answer")
            await drive(effect.steps)
        except asyncio.CancelledError:
            raise  # the server stops
        except Exception as exc:
            _failed(effect, exc)
        finally:
            with self._lock:
                self._running -= 1

    async def aclose(self) -> None:
        """Cancel the work still running (the server stops)."""
        loop = self._loop(start=False)
        tasks = list(self._tasks)
        if loop is None or not tasks:
            return
        if _running_loop() is loop:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=5.0)
            return
        for task in tasks:
            with contextlib.suppress(RuntimeError):  # that loop stopped meanwhile
                loop.call_soon_threadsafe(task.cancel)
