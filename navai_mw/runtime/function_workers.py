"""Daemon threads for sync backend functions: at most ``size`` busy at once,
made as calls need them, and a call refused at once when all are busy."""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from queue import SimpleQueue
from typing import Any, Final

from ..core.effects import FunctionOutcome
from ..core.errors import OptionsError

DEFAULT_FUNCTION_WORKERS: Final = 16

_WORKER_POOLS: weakref.WeakSet[FunctionWorkers] = weakref.WeakSet()


class FunctionWorkers:
    """Daemon threads for sync backend functions, at most ``size``, made as
    calls need them. A call that finds every one busy is refused at once
    (the core answers 503) instead of waiting in a queue."""

    def __init__(self, size: int = DEFAULT_FUNCTION_WORKERS) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise OptionsError(f"function_workers must be a positive integer. Received: {size!r}")
        self.size = size
        self._reset()
        _WORKER_POOLS.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._jobs: SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = SimpleQueue()
        self._threads = 0
        self.busy = 0

    def submit(self, run: Callable[[], Any]) -> Future[Any] | None:
        """``run`` on a free worker; None when there is none."""
        with self._lock:
            if self.busy >= self.size:
                return None
            self.busy += 1
            if self.busy > self._threads:
                self._threads += 1
                threading.Thread(target=self._work, name="navai-function", daemon=True).start()
        future: Future[Any] = Future()
        self._jobs.put((run, future))
        return future

    def _work(self) -> None:
        while True:
            run, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                self._free()
                continue
            try:
                value = run()
            except BaseException as exc:  # handed to the caller, whatever it is
                # Free before the caller hears: its answer may bring the next
                # call at once, which must find this worker free.
                self._free()
                future.set_exception(exc)
            else:
                self._free()
                future.set_result(value)

    def _free(self) -> None:
        with self._lock:
            self.busy -= 1


def _reset_pools_in_child() -> None:
    # The parent's workers do not exist in a forked child.
    for pool in list(_WORKER_POOLS):
        pool._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pools_in_child)


def _finished(future: Future[Any]) -> FunctionOutcome:
    if future.cancelled():
        return FunctionOutcome(timed_out=True)
    exc = future.exception()
    if exc is not None:
        return FunctionOutcome(error=exc)
    value = future.result()
    return value if isinstance(value, FunctionOutcome) else FunctionOutcome(value=value)


async def _outcome_of(awaitable: Awaitable[Any]) -> FunctionOutcome:
    """What an async function gave, on the performer's loop thread. Even a
    SystemExit is the function's failure here: let out, it would stop the
    loop that every later call needs."""
    try:
        return FunctionOutcome(value=await awaitable)
    except asyncio.CancelledError:
        raise  # the call's timeout
    except BaseException as exc:
        return FunctionOutcome(error=exc)
