"""Where the relayed calls live: who started each, and when each must end.

One store per handler. It owns an asyncio event loop on a daemon thread of
its own (``navai-calls``), which outlives requests: the time caps' timers,
the Redis client and its deadline poller, and the hangups of the ASGI shell
all run there, so that no request's event loop (an async view under a WSGI
server runs each request on a loop that closes when it returns) ever holds
the store's state.

In memory by default (one process): a timer per capped call on the store's
loop. With a shared Redis (``rate_limit_storage="redis://..."``, the
guard's storage) they live there instead (:mod:`.call_deadlines`), so that
any worker can hang a call up and a restart forgets no deadline: every
worker polls for the deadlines that have passed and claims them with a
lease.

Hangups run concurrently, at most :data:`HANGUPS_AT_ONCE` at a time per
worker (the rest wait their turn): under WSGI ``end(key)`` blocks, and runs
on a small pool of long-lived threads (so their upstream clients are
reused); under ASGI it is a coroutine, run on the store's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from queue import SimpleQueue
from typing import Any, Final, TypeVar

import anyio.to_thread

from ..core.effects import CallOwned, ForgetCall, RememberCall
from ..core.storage import redis_client_url, shown_url
from .aio import _LoopThread, _running_loop, _wait, attempt_deadline, keep_inherited
from .call_deadlines import RedisCalls, owner_mark

__all__ = [
    "HANGUPS_AT_ONCE",
    "AsyncCalls",
    "SyncCalls",
]

logger = logging.getLogger("navai_mw")

# How often each worker looks for deadlines that have passed.
POLL_SECONDS: Final = 0.5
# Hangups at once per worker: one slow hangup must not hold the others.
HANGUPS_AT_ONCE: Final = 16
# A lease lasts the hangup's own bound and this: a worker that still has not
# finished by then is taken for dead, and another ends the call.
LEASE_MARGIN_SECONDS: Final = 5.0
# How long a store operation may take, Redis's answer included.
STORE_TIMEOUT_SECONDS: Final = 2.0
# How long closing may wait for the store's loop to finish its work.
_CLOSE_SECONDS: Final = 5.0

Effect = RememberCall | CallOwned | ForgetCall
R = TypeVar("R")


def _ended(key: str, exc: BaseException) -> None:
    logger.warning("navai_mw: ending call %s at its time cap failed: %s", key, type(exc).__name__)


def _poll_failed(where: str, exc: BaseException, failing: bool) -> bool:
    """Log a failure to read the deadlines once, not twice a second."""
    if not failing:
        logger.warning(
            "navai_mw: reading call deadlines from %s failed: %s", where, type(exc).__name__
        )
    return True


class _Hangups:
    """Where due calls are ended: at most ``size`` at once, the others in
    turn. :meth:`start` is called on the store's loop."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.waiting = 0  # started and not finished (running, or in turn)

    def free(self) -> int:
        return self.size - self.waiting

    def start(self, key: str) -> None:
        raise NotImplementedError

    def cancel(self) -> None:
        """Drop what has not started (the store is closing)."""


class _ThreadHangups(_Hangups):
    """``end(key)`` blocks (WSGI): run on up to ``size`` long-lived daemon
    threads, made as needed and kept until the store closes, so their
    upstream clients are kept too."""

    def __init__(self, end: Callable[[str], None], size: int) -> None:
        super().__init__(size)
        self._end = end
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._jobs: SimpleQueue[tuple[int, str] | None] = SimpleQueue()
        self._threads = 0
        self._generation = 0
        self.waiting = 0

    def start(self, key: str) -> None:
        with self._lock:
            self.waiting += 1
            if self._threads < min(self.waiting, self.size):
                self._threads += 1
                threading.Thread(target=self._work, name="navai-hangup", daemon=True).start()
            self._jobs.put((self._generation, key))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return  # the store closed: one thread fewer
            generation, key = job
            try:
                if generation == self._generation:
                    self._end(key)
            except Exception as exc:
                _ended(key, exc)
            finally:
                with self._lock:
                    self.waiting -= 1

    def cancel(self) -> None:
        """Drop the hangups not yet started and let the threads end (from
        any thread; a later call makes new ones)."""
        with self._lock:
            self._generation += 1
            threads, self._threads = self._threads, 0
            for _ in range(threads):
                self._jobs.put(None)


class _LoopHangups(_Hangups):
    """``end(key)`` is a coroutine (ASGI): a task on the store's loop each,
    at most ``size`` running, each bounded by ``seconds``."""

    def __init__(self, end: Callable[[str], Awaitable[None]], size: int, seconds: float) -> None:
        super().__init__(size)
        self._end = end
        self._seconds = seconds
        self._turns: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, key: str) -> None:
        self.waiting += 1
        task = asyncio.get_running_loop().create_task(self._run(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: str) -> None:
        try:
            if self._turns is None:  # made on the store's loop, which runs this
                self._turns = asyncio.Semaphore(self.size)
            async with self._turns, attempt_deadline(self._seconds):
                await self._end(key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _ended(key, exc)
        finally:
            self.waiting -= 1

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._turns = None  # the next loop makes its own


class CallStore:
    """The relayed calls of one handler (its shell's face below).

    ``uri`` names a shared Redis, or nothing (memory). ``hangup_seconds``
    bounds one hangup (the upstream timeout): a Redis lease lasts that and
    :data:`LEASE_MARGIN_SECONDS`.
    """

    def __init__(self, uri: str | None, *, hangup_seconds: float = 30.0) -> None:
        self._registry = CallRegistry()
        # Where the calls are kept, as a log line may name it (no credentials).
        self.where = shown_url(uri) if uri is not None else "memory://"
        self._loop = _LoopThread("navai-calls")
        self._timers: dict[str, asyncio.TimerHandle] = {}  # touched on the store's loop only
        self._fork_hooks: list[Callable[[], None]] = []
        self._lease = hangup_seconds + LEASE_MARGIN_SECONDS
        shared = redis_client_url(uri)
        self._redis = None if shared is None else RedisCalls(shared, lease_seconds=self._lease)
        self._hangups: _Hangups | None = None
        self._poller: asyncio.Task[None] | None = None  # on the store's loop
        self._polling = False  # whether this process should poll
        _STORES.add(self)

    # -- starting and stopping ----------------------------------------------------

    def _start(self, hangups: _Hangups) -> None:
        self._hangups = hangups
        if self._redis is not None:
            self.ensure_polling()

    def ensure_polling(self) -> None:
        """With Redis, poll for deadlines from now on (a worker that has only
        just started must still end the calls its predecessor relayed); again
        after a close, or in a forked child."""
        if self._redis is None or self._hangups is None:
            return
        self._polling = True
        poller = self._poller
        if self._loop.running() is not None and poller is not None and not poller.done():
            return
        loop = self._loop.loop()
        with contextlib.suppress(RuntimeError):  # stopped meanwhile: the next call starts it
            loop.call_soon_threadsafe(self._begin_polling)

    def _begin_polling(self) -> None:
        if self._polling and (self._poller is None or self._poller.done()):
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        assert self._redis is not None
        assert self._hangups is not None
        failing = False
        while True:
            free = self._hangups.free()
            if free > 0:
                try:
                    claimed = await self._redis.claim(free)
                    failing = False
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failing = _poll_failed(self.where, exc, failing)
                    claimed = []
                for key in claimed:
                    self._hangups.start(key)
            await asyncio.sleep(POLL_SECONDS)

    async def _shutdown(self) -> None:
        """On the store's loop: stop polling, cancel the timers and the
        hangups not yet done, close the Redis client."""
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if isinstance(self._hangups, _LoopHangups):
            self._hangups.cancel()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()

    def _stop_blocking(self) -> None:
        """Cancel this process's timers and stop polling (the deadlines in
        Redis stay, for the other workers and the next start); the store's
        loop stops, and the clients made on it close there."""
        self._polling = False
        if isinstance(self._hangups, _ThreadHangups):
            self._hangups.cancel()
        loop = self._loop.running()
        if loop is None:
            return
        with contextlib.suppress(Exception):  # a loop that stopped, or a slow close
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_CLOSE_SECONDS)
        self._loop.stop(_CLOSE_SECONDS)
        if self._redis is not None:  # a client of the stopped loop is of no more use
            self._redis.forget_client()

    async def _stop(self) -> None:
        """:meth:`_stop_blocking`, awaited from an event loop."""
        self._polling = False
        loop = self._loop.running()
        if loop is None:
            return
        if _running_loop() is loop:  # never from its own loop: it would wait on itself
            await self._shutdown()
            return
        with contextlib.suppress(RuntimeError):
            await _wait(asyncio.run_coroutine_threadsafe(self._shutdown(), loop), _CLOSE_SECONDS)
        await anyio.to_thread.run_sync(self._loop.stop, _CLOSE_SECONDS)
        if self._redis is not None:  # a client of the stopped loop is of no more use
            self._redis.forget_client()

    def after_fork(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` in a forked child, once the store is made anew
        there: what keeps a client of the store's loop forgets it (the
        parent's loop does not exist in the child)."""
        self._fork_hooks.append(hook)

    def _after_fork(self) -> None:
        # The parent's loop, timers and threads do not exist here (and the
        # parent's locks may have been held).
        keep_inherited(self._loop)
        self._loop = _LoopThread("navai-calls")
        self._timers = {}
        self._poller = None
        if isinstance(self._hangups, _ThreadHangups):
            self._hangups._reset()
        if self._redis is not None:
            self._redis.forget_client(inherited=True)
        for hook in self._fork_hooks:
            hook()
        if self._redis is not None and self._polling:
            self.ensure_polling()

    # -- the store's loop -----------------------------------------------------------

    def submit(self, work: Coroutine[Any, Any, R]) -> Future[R]:
        """Run ``work`` on the store's loop; its future."""
        return asyncio.run_coroutine_threadsafe(work, self._loop.loop())

    def on_store_loop(self) -> bool:
        loop = self._loop.running()
        return loop is not None and _running_loop() is loop

    def loop(self) -> asyncio.AbstractEventLoop:
        """The store's loop (started if it was not)."""
        return self._loop.loop()

    def running_loop(self) -> asyncio.AbstractEventLoop | None:
        """The store's loop, if it runs (without starting it)."""
        return self._loop.running()

    def end_now(self, key: str) -> None:
        """End ``key`` now, as its time cap would (from any thread)."""
        hangups = self._hangups
        if hangups is not None:
            with contextlib.suppress(RuntimeError):  # stopping: nothing ends any more
                self._loop.loop().call_soon_threadsafe(hangups.start, key)

    # -- the effects ------------------------------------------------------------------

    def _in_memory(self, effect: Effect) -> bool | None:
        if isinstance(effect, CallOwned):
            return self._registry.known(effect.key, effect.owner)
        if isinstance(effect, RememberCall):
            self._registry.remember(effect.key, effect.owner)
            if effect.deadline is not None:
                loop = self._loop.loop()
                # loop.time() is the monotonic clock: readable from any thread.
                when = loop.time() + effect.deadline
                loop.call_soon_threadsafe(self._arm, effect.key, when)
            return None
        self._registry.forget(effect.key)
        running = self._loop.running()
        if running is not None:
            with contextlib.suppress(RuntimeError):  # stopping: its timers go with it
                running.call_soon_threadsafe(self._disarm, effect.key)
        return None

    def _arm(self, key: str, when: float) -> None:
        self._disarm(key)
        self._timers[key] = asyncio.get_running_loop().call_at(when, self._due, key)

    def _disarm(self, key: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _due(self, key: str) -> None:
        self._timers.pop(key, None)
        if self._hangups is not None:
            self._hangups.start(key)


class SyncCalls(CallStore):
    """For the WSGI shell: store effects performed by blocking the request's
    thread (memory: under a lock; Redis: on the store's loop, bounded)."""

    def start(self, end: Callable[[str], None]) -> None:
        """``end(key)`` ends a call; with Redis, the poller starts now (and
        again in a forked worker, which inherits no thread)."""
        self._start(_ThreadHangups(end, HANGUPS_AT_ONCE))

    def perform(self, effect: Effect) -> bool | None:
        """What the effect asks: remember, answer whether owned, or forget."""
        if self._redis is None:
            return self._in_memory(effect)
        future = self.submit(self._redis.perform(effect))
        try:
            return future.result(STORE_TIMEOUT_SECONDS)
        except FutureTimeout:  # TimeoutError itself from Python 3.11
            future.cancel()
            raise TimeoutError("the calls' store did not answer in time") from None

    def close(self) -> None:
        """Cancel this process's timers and stop polling (the deadlines in
        Redis stay, for the other workers and the next start)."""
        self._stop_blocking()


class AsyncCalls(CallStore):
    """For the ASGI shell (asyncio or trio): store effects awaited, the
    work itself on the store's loop."""

    def start(self, end: Callable[[str], Awaitable[None]]) -> None:
        """``end(key)`` ends a call: a coroutine, run on the store's loop."""
        self._start(_LoopHangups(end, HANGUPS_AT_ONCE, self._lease))

    async def perform(self, effect: Effect) -> bool | None:
        """What the effect asks: remember, answer whether owned, or forget."""
        if self._redis is None:
            return self._in_memory(effect)
        if self.on_store_loop():  # a hangup's own ForgetCall
            return await self._redis.perform(effect)
        future = self.submit(self._redis.perform(effect))
        if not await _wait(future, STORE_TIMEOUT_SECONDS):
            future.cancel()
            raise TimeoutError("the calls' store did not answer in time")
        return future.result()

    async def aclose(self) -> None:
        """Cancel this process's timers and hangups and stop polling
        (deadlines in Redis stay)."""
        await self._stop()


_STORES: weakref.WeakSet[CallStore] = weakref.WeakSet()


def _stores_in_child() -> None:
    for store in list(_STORES):
        store._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_stores_in_child)


# How many relayed calls a process remembers (oldest forgotten first): a
# bound on memory, far above the calls one process relays in an hour.
MAX_REMEMBERED_CALLS: Final = 10_000


class CallRegistry:
    """The calls this process relayed, and who started each: only those can
    be hung up, and (with the guard on) only by their owner. In memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[str, str] = {}

    def remember(self, key: str, owner: str | None) -> None:
        with self._lock:
            if len(self._owners) >= MAX_REMEMBERED_CALLS:
                del self._owners[next(iter(self._owners))]
            self._owners[key] = owner_mark(owner)

    def known(self, key: str, owner: str | None) -> bool:
        """Whether ``owner`` may end ``key`` (it exists here, and it is theirs)."""
        with self._lock:
            return self._owners.get(key) == owner_mark(owner)

    def forget(self, key: str) -> bool:
        with self._lock:
            return self._owners.pop(key, None) is not None
