"""Where the relayed calls live: who started each, and when each must end.

In memory by default (one process: a timer or a task per capped call). With
a shared Redis (``rate_limit_storage="redis://..."``, the guard's storage)
they live there instead, so that any worker can hang a call up, and a
restart forgets no deadline: every worker polls for the deadlines that have
passed, and the one that claims a deadline (``ZREM`` answers 1 to one worker
only) ends the call.

Keys: ``navai:call:{key}`` holds the owner (it expires when no call could
still be running), ``navai:call-deadlines`` is a sorted set of keys by the
Unix time they must end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final

from ..core.effects import CallOwned, ForgetCall, RememberCall
from ..core.storage import redis_client_url, shown_url
from .aio import on_asyncio

__all__ = [
    "AsyncCalls",
    "SyncCalls",
]

logger = logging.getLogger("navai_mw")

_DEADLINES: Final = "navai:call-deadlines"
# A Realtime session lasts an hour at most: past two, nothing is left to end.
_OWNER_TTL_SECONDS: Final = 2 * 3600
# How often each worker looks for deadlines that have passed.
POLL_SECONDS: Final = 0.5
_BATCH: Final = 20


def _owner_key(key: str) -> str:
    return f"navai:call:{key}"


def _ended(key: str, exc: BaseException) -> None:
    logger.warning("navai_mw: ending call %s at its time cap failed: %s", key, type(exc).__name__)


def _poll_failed(where: str, exc: Exception, failing: bool) -> bool:
    """Log a failure to read the deadlines once, not twice a second."""
    if not failing:
        logger.warning(
            "navai_mw: reading call deadlines from %s failed: %s", where, type(exc).__name__
        )
    return True


class SyncCalls:
    """For the WSGI shell: timers in memory, or a polling thread on Redis."""

    def __init__(self, uri: str | None) -> None:
        self._registry = CallRegistry()
        self._timers: dict[str, threading.Timer] = {}
        self._lock = threading.Lock()
        self._redis: Any = None
        self._stop = threading.Event()
        self._end: Callable[[str], None] | None = None
        # Where the calls are kept, as a log line may name it.
        self.where = shown_url(uri) if uri is not None else "memory://"
        shared = redis_client_url(uri)
        if shared is not None:
            import redis

            self._redis = redis.Redis.from_url(shared, socket_timeout=2, socket_connect_timeout=2)

    def start(self, end: Callable[[str], None]) -> None:
        """``end(key)`` ends a call; with Redis, the poller starts now (and
        again in a forked worker, which inherits no thread)."""
        self._end = end
        if self._redis is not None:
            self._start_polling()
            _POLLERS.add(self)

    def _start_polling(self) -> None:
        self._stop = threading.Event()
        threading.Thread(target=self._poll, name="navai-call-deadlines", daemon=True).start()

    def perform(self, effect: RememberCall | CallOwned | ForgetCall) -> bool | None:
        """What the effect asks: remember, answer whether owned, or forget."""
        if isinstance(effect, CallOwned):
            return self.owned(effect)
        if isinstance(effect, RememberCall):
            self.remember(effect)
        else:
            self.forget(effect)
        return None

    def remember(self, effect: RememberCall) -> None:
        if self._redis is None:
            self._registry.remember(effect.key, effect.owner)
            if effect.deadline is not None:
                self._schedule(effect.key, effect.deadline)
            return
        pipe = self._redis.pipeline()
        pipe.set(_owner_key(effect.key), owner_mark(effect.owner), ex=_OWNER_TTL_SECONDS)
        if effect.deadline is not None:
            pipe.zadd(_DEADLINES, {effect.key: time.time() + effect.deadline})
        pipe.execute()

    def owned(self, effect: CallOwned) -> bool:
        if self._redis is None:
            return self._registry.known(effect.key, effect.owner)
        stored = self._redis.get(_owner_key(effect.key))
        return stored is not None and stored.decode() == owner_mark(effect.owner)

    def forget(self, effect: ForgetCall) -> None:
        if self._redis is None:
            self._registry.forget(effect.key)
            with self._lock:
                timer = self._timers.pop(effect.key, None)
            if timer is not None:
                timer.cancel()
            return
        pipe = self._redis.pipeline()
        pipe.delete(_owner_key(effect.key))
        pipe.zrem(_DEADLINES, effect.key)
        pipe.execute()

    def _schedule(self, key: str, delay: float) -> None:
        def fire() -> None:
            with self._lock:
                self._timers.pop(key, None)
            self._run(key)

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        with self._lock:
            self._timers[key] = timer
        timer.start()

    def _run(self, key: str) -> None:
        if self._end is None:
            return
        try:
            self._end(key)
        except Exception as exc:
            _ended(key, exc)

    def _poll(self) -> None:
        failing = False
        while not self._stop.wait(POLL_SECONDS):
            try:
                due = self._redis.zrangebyscore(_DEADLINES, "-inf", time.time(), 0, _BATCH)
                for raw in due:
                    if self._redis.zrem(_DEADLINES, raw) == 1:  # this worker claimed it
                        self._run(raw.decode())
                failing = False
            except Exception as exc:
                failing = _poll_failed(self.where, exc, failing)

    def close(self) -> None:
        """Cancel this process's timers and stop polling (the deadlines in
        Redis stay, for the other workers and the next start)."""
        self._stop.set()
        with self._lock:
            timers, self._timers = list(self._timers.values()), {}
        for timer in timers:
            timer.cancel()
        if self._redis is not None:
            self._redis.close()


_POLLERS: weakref.WeakSet[SyncCalls] = weakref.WeakSet()


def _poll_in_child() -> None:
    for calls in list(_POLLERS):
        if not calls._stop.is_set():
            calls._redis.connection_pool.reset()  # the parent's sockets are not ours
            calls._start_polling()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_poll_in_child)


class AsyncCalls:
    """For the ASGI shell: tasks in memory, or a polling task on Redis
    (asyncio only, as the Redis client)."""

    def __init__(self, uri: str | None) -> None:
        self._registry = CallRegistry()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.where = shown_url(uri) if uri is not None else "memory://"
        self._shared = redis_client_url(uri)
        self._redis: Any = None
        self._poller: asyncio.Task[None] | None = None
        self._end: Callable[[str], Awaitable[None]] | None = None

    def start(self, end: Callable[[str], Awaitable[None]]) -> None:
        self._end = end

    def _client(self) -> Any:
        if self._redis is None:
            import redis.asyncio

            assert self._shared is not None
            self._redis = redis.asyncio.Redis.from_url(
                self._shared, socket_timeout=2, socket_connect_timeout=2
            )
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        return self._redis

    def ensure_polling(self) -> None:
        """Start polling for deadlines on this loop (a worker that has only
        just started must still end the calls its predecessor relayed)."""
        if self._shared is not None and on_asyncio():
            self._client()

    async def perform(self, effect: RememberCall | CallOwned | ForgetCall) -> bool | None:
        """What the effect asks: remember, answer whether owned, or forget."""
        if isinstance(effect, CallOwned):
            return await self.owned(effect)
        if isinstance(effect, RememberCall):
            await self.remember(effect)
        else:
            await self.forget(effect)
        return None

    async def remember(self, effect: RememberCall) -> None:
        if self._shared is None:
            self._registry.remember(effect.key, effect.owner)
            if effect.deadline is not None and on_asyncio():
                loop = asyncio.get_running_loop()
                self._tasks[effect.key] = loop.create_task(self._later(effect.key, effect.deadline))
            elif effect.deadline is not None:
                logger.warning("navai_mw: the time cap needs asyncio; %s is not capped", effect.key)
            return
        client = self._client()
        async with client.pipeline() as pipe:
            pipe.set(_owner_key(effect.key), owner_mark(effect.owner), ex=_OWNER_TTL_SECONDS)
            if effect.deadline is not None:
                pipe.zadd(_DEADLINES, {effect.key: time.time() + effect.deadline})
            await pipe.execute()

    async def owned(self, effect: CallOwned) -> bool:
        if self._shared is None:
            return self._registry.known(effect.key, effect.owner)
        stored = await self._client().get(_owner_key(effect.key))
        return stored is not None and bool(stored.decode() == owner_mark(effect.owner))

    async def forget(self, effect: ForgetCall) -> None:
        if self._shared is None:
            self._registry.forget(effect.key)
            task = self._tasks.pop(effect.key, None)
            if task is not None and task is not asyncio.current_task():
                task.cancel()
            return
        async with self._client().pipeline() as pipe:
            pipe.delete(_owner_key(effect.key))
            pipe.zrem(_DEADLINES, effect.key)
            await pipe.execute()

    async def _later(self, key: str, delay: float) -> None:
        await asyncio.sleep(delay)
        self._tasks.pop(key, None)
        await self._run(key)

    async def _run(self, key: str) -> None:
        if self._end is None:
            return
        try:
            await self._end(key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _ended(key, exc)

    async def _poll(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                due = await self._redis.zrangebyscore(_DEADLINES, "-inf", time.time(), 0, _BATCH)
                for raw in due:
                    if await self._redis.zrem(_DEADLINES, raw) == 1:
                        await self._run(raw.decode())
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failing = _poll_failed(self.where, exc, failing)

    async def aclose(self) -> None:
        """Cancel this process's tasks and the poller (deadlines in Redis stay)."""
        tasks = [*self._tasks.values(), *([self._poller] if self._poller else [])]
        self._tasks, self._poller = {}, None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


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


def owner_mark(owner: str | None) -> str:
    """How an owner is stored: ``id:<identity>``, or ``-`` for nobody (no guard)."""
    return "-" if owner is None else f"id:{owner}"
