"""How the shells perform the guard's effects: the user's hook, and the
rate-limit hit on the ``limits`` library's storage.

Each shell has one performer, built once with the middleware: the WSGI
shell a :class:`SyncEffects` (hooks called inline, the sync storage), the
ASGI shell an :class:`AsyncEffects` (async hooks awaited, sync ones in a
worker thread, the async storage). They decide nothing: a hook's result or
exception, and what the storage said, go back to the core as they are.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any, Final

import anyio.to_thread
import sniffio

from ._errors import OptionsError
from ._guard import CallHook, HitLimit, HookResult, LimitResult

__all__ = ["AsyncEffects", "SyncEffects", "is_async_hook"]

logger = logging.getLogger("navai_mw")

# A limiter storage that does not answer within this is down: the guard
# answers 503 (or lets the request through, when it fails open) instead of
# holding the request.
STORAGE_TIMEOUT_SECONDS: Final = 1.0


def is_async_hook(hook: object) -> bool:
    """Whether ``hook`` must be awaited (a coroutine function, or an object
    whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
        getattr(hook, "__call__", None)  # noqa: B004 - a callable object's own method
    )


def _redis_options(uri: str) -> dict[str, Any]:
    if _scheme(uri) in ("redis", "rediss", "valkey", "valkeys"):
        return {
            "socket_connect_timeout": STORAGE_TIMEOUT_SECONDS,
            "socket_timeout": STORAGE_TIMEOUT_SECONDS,
        }
    return {}


class SyncEffects:
    """Performs effects for the WSGI shell."""

    def __init__(self, storage_uri: str | None) -> None:
        self._limiter: Any = None
        if storage_uri is not None:
            from limits.storage import storage_from_string
            from limits.strategies import SlidingWindowCounterRateLimiter

            try:
                uri = storage_uri.removeprefix("async+")
                storage = storage_from_string(uri, **_redis_options(uri))
            except Exception as exc:  # limits raises several kinds for a bad URI
                raise OptionsError(
                    f"rate_limit_storage cannot be used: {type(exc).__name__}"
                ) from None
            self._limiter = SlidingWindowCounterRateLimiter(storage)

    def __call__(self, effect: object) -> object:
        if isinstance(effect, CallHook):
            try:
                return HookResult(effect.hook(effect.info))
            except Exception as exc:
                return HookResult(error=exc)
        if isinstance(effect, HitLimit):
            try:
                return _hit_sync(self._limiter, effect)
            except Exception as exc:
                return _unavailable(exc)
        raise TypeError(f"no performer for the effect {type(effect).__name__}")


class AsyncEffects:
    """Performs effects for the ASGI shell.

    ``memory://`` counts in this process: on asyncio with the ``limits``
    async memory storage (its expiry runs as a task; the sync storage
    starts a thread a hundred times a second, and each start blocks the
    event loop), elsewhere (trio) with the sync storage, called inline. A
    shared storage goes through the ``limits`` async storage on redis-py's
    asyncio client.
    """

    def __init__(self, storage_uri: str | None) -> None:
        self._uri = storage_uri
        self._local = storage_uri is not None and _scheme(storage_uri) == "memory"
        self._sync = SyncEffects(storage_uri) if self._local else None
        self._limiter: Any = None

    def _async_limiter(self) -> Any:
        if self._limiter is None and self._uri is not None:
            from limits.aio.strategies import SlidingWindowCounterRateLimiter
            from limits.storage import storage_from_string

            uri = self._uri if self._uri.startswith("async+") else f"async+{self._uri}"
            options = _redis_options(uri)
            if options:
                options["implementation"] = "redispy"
            self._limiter = SlidingWindowCounterRateLimiter(storage_from_string(uri, **options))
        return self._limiter

    def _needs_asyncio(self) -> bool:
        """Whether the storage's client runs on asyncio only and this is not it."""
        if self._uri is None or self._local:
            return False
        try:
            return sniffio.current_async_library() != "asyncio"
        except sniffio.AsyncLibraryNotFoundError:
            return False  # not in a loop yet: asked again on each hit

    def check(self) -> None:
        """Build the storage now, so that a bad URI fails at start-up."""
        if self._uri is None or self._local:
            return
        if self._needs_asyncio():
            raise OptionsError(_NEEDS_ASYNCIO)
        try:
            self._async_limiter()
        except Exception as exc:
            raise OptionsError(f"rate_limit_storage cannot be used: {type(exc).__name__}") from None

    async def __call__(self, effect: object) -> object:
        if isinstance(effect, CallHook):
            try:
                if is_async_hook(effect.hook):
                    return HookResult(await effect.hook(effect.info))
                # It may touch a database: not on the event loop.
                return HookResult(await anyio.to_thread.run_sync(effect.hook, effect.info))
            except Exception as exc:
                return HookResult(error=exc)
        if isinstance(effect, HitLimit):
            if self._sync is not None:  # in this process: nothing to wait for
                if not _on_asyncio():
                    return self._sync(effect)
                return await _hit_async(self._async_limiter(), effect)
            if self._needs_asyncio():
                logger.error("navai_mw: %s", _NEEDS_ASYNCIO)
                return LimitResult(unavailable=True)
            try:
                with anyio.fail_after(STORAGE_TIMEOUT_SECONDS * 2):
                    return await _hit_async(self._async_limiter(), effect)
            except Exception as exc:
                return _unavailable(exc)
        raise TypeError(f"no performer for the effect {type(effect).__name__}")


def _on_asyncio() -> bool:
    try:
        return sniffio.current_async_library() == "asyncio"
    except sniffio.AsyncLibraryNotFoundError:
        return False


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].removeprefix("async+")


_NEEDS_ASYNCIO: Final = (
    "rate_limit_storage on Redis or Valkey needs asyncio (its client runs on asyncio only); "
    "under trio, use memory://."
)


def _unavailable(exc: Exception) -> LimitResult:
    logger.warning("navai_mw: the rate-limit storage failed: %s", type(exc).__name__)
    return LimitResult(unavailable=True)


def _hit_sync(limiter: Any, effect: HitLimit) -> LimitResult:
    allowed = True
    for item in effect.policy.items:
        if not limiter.hit(item, effect.key):
            allowed = False
            break
    windows = []
    for item in effect.policy.items:
        stats = limiter.get_window_stats(item, effect.key)
        windows.append((stats.remaining, stats.reset_time))
    return LimitResult(allowed=allowed, windows=tuple(windows), now=time.time())


async def _hit_async(limiter: Any, effect: HitLimit) -> LimitResult:
    allowed = True
    for item in effect.policy.items:
        if not await limiter.hit(item, effect.key):
            allowed = False
            break
    windows = []
    for item in effect.policy.items:
        stats = await limiter.get_window_stats(item, effect.key)
        windows.append((stats.remaining, stats.reset_time))
    return LimitResult(allowed=allowed, windows=tuple(windows), now=time.time())
