"""How the shells perform the core's effects: the user's hook, the
rate-limit hit on the ``limits`` library's storage, and a backend
function's call.

Each shell has one performer, built once with the middleware: the WSGI
shell a :class:`SyncEffects` (hooks called inline, the sync storage), the
ASGI shell an :class:`AsyncEffects` (async hooks awaited, sync ones in a
worker thread, the async storage). Both run sync backend functions on a
:class:`FunctionWorkers` pool of their own, so that a call that overruns its
timeout is answered on time (its worker stays busy until it returns:
Python cannot stop a thread); async functions are awaited under ASGI, and
run on an event loop thread of the performer's under WSGI. They decide
nothing: a result or an exception, and what the storage said, go back to
the core as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Any, Final, cast

import anyio.to_thread
import sniffio

from ..core.effects import (
    AdmitCall,
    AfterAnswer,
    AttachSideband,
    BlockIdentifier,
    CallFunction,
    CallHook,
    CallOwned,
    ChargeCall,
    CloseLive,
    EndSideband,
    FirstDelivery,
    ForgetCall,
    ForgetDelivery,
    FunctionOutcome,
    HitLimit,
    HookResult,
    IsBlocked,
    LimitResult,
    ReadBudget,
    ReadClock,
    RememberCall,
    ReportCall,
    SettleCall,
    SidebandRoom,
)
from ..core.errors import OptionsError
from ..core.options import DEFAULT_MAX_SIDEBANDS
from ..core.reports import CallReport
from ..core.storage import is_memory, is_redis, shown_url
from .after_answers import AsyncAfterAnswers, SyncAfterAnswers
from .aio import _LoopThread, _wait, attempt_deadline, is_async_hook, on_asyncio
from .budget_keeper import BudgetKeeper
from .call_store import AsyncCalls, SyncCalls
from .function_workers import DEFAULT_FUNCTION_WORKERS, FunctionWorkers, _finished, _outcome_of
from .observe import Observer
from .rate_counters import AsyncCounter, SyncCounter
from .sideband import SidebandConnector, close_live_session
from .sidebands import Sidebands
from .webhook_store import WebhookKeeper

__all__ = [
    "AsyncEffects",
    "SyncEffects",
    "is_async_hook",
]

logger = logging.getLogger("navai_mw")

# A limiter storage that does not answer within this is down: the guard
# answers 503 (or lets the request through, when it fails open) instead of
# holding the request.
STORAGE_TIMEOUT_SECONDS: Final = 1.0


# How long the WSGI shell waits for an async hook (an Azure token provider)
# on its loop thread.
ASYNC_HOOK_TIMEOUT_SECONDS: Final = 30.0


def _redis_options(uri: str) -> dict[str, Any]:
    """A connect timeout for a Redis or Valkey storage. The async shell
    bounds each count as a whole (a socket timeout on every read and write
    would cost a timer each); the sync shell adds the socket's own."""
    if is_redis(uri):
        return {"socket_connect_timeout": STORAGE_TIMEOUT_SECONDS}
    return {}


class SyncEffects:
    """Performs effects for the WSGI shell."""

    def __init__(
        self,
        storage_uri: str | None,
        *,
        function_workers: int = DEFAULT_FUNCTION_WORKERS,
        calls_uri: str | None = None,
        hangup_seconds: float = 30.0,
        sideband: SidebandConnector | None = None,
        on_call_end: Callable[[CallReport], Any] | None = None,
        max_sidebands: int = DEFAULT_MAX_SIDEBANDS,
        observer: Observer | None = None,
        webhooks_uri: str | None = None,
    ) -> None:
        self.observer = observer or Observer(metrics=False)
        self.workers = FunctionWorkers(function_workers)
        self._loop_thread = _LoopThread()
        self._counter: SyncCounter | None = None
        self._where = shown_url(storage_uri)
        self.calls = SyncCalls(calls_uri, hangup_seconds=hangup_seconds)
        self.sideband = sideband or SidebandConnector(None)
        # Budgets count where the calls live (the guard's storage).
        self.budgets = BudgetKeeper(calls_uri, self.calls)
        # Async backend functions and hooks run on the performer's loop
        # thread, for a call's sideband as for the execute route.
        self.sidebands = Sidebands(
            self.calls,
            self.sideband,
            self.workers,
            user_loop=self._loop_thread.loop,
            on_call_end=on_call_end,
            limit=max_sidebands,
            budgets=self.budgets.perform,
            observer=self.observer,
        )
        # Webhooks' deliveries and the blocked identifiers live in the
        # guard's storage; their work runs after the answer, on threads.
        self.webhooks = WebhookKeeper(webhooks_uri, self.calls)
        self.later = SyncAfterAnswers()
        if storage_uri is not None:
            from limits.storage import storage_from_string

            try:
                uri = storage_uri.removeprefix("async+")
                options = _redis_options(uri)
                if options:  # no outer deadline here: the socket's own
                    options["socket_timeout"] = STORAGE_TIMEOUT_SECONDS
                self._counter = SyncCounter(storage_from_string(uri, **options))
            except Exception as exc:  # limits raises several kinds for a bad URI
                raise OptionsError(
                    f"rate_limit_storage cannot be used: {type(exc).__name__}"
                ) from None

    def __call__(self, effect: object) -> object:
        if isinstance(effect, CallHook):
            return _hook_sync(effect, self._loop_thread)
        if isinstance(effect, HitLimit):
            try:
                return cast(SyncCounter, self._counter).hit(effect.policy, effect.key)
            except Exception as exc:
                return _unavailable(self._where, exc)
        if isinstance(effect, CallFunction):
            began = time.perf_counter()
            with self.observer.function_span(effect.name):
                outcome = self._call(effect)
            self.observer.function(effect.name, outcome.kind, time.perf_counter() - began)
            return outcome
        if isinstance(effect, (RememberCall, CallOwned, ForgetCall)):
            try:
                return self.calls.perform(effect)
            except Exception as exc:
                _store_failed(self.calls.where, effect, exc)
                return None
        if isinstance(effect, _SIDEBAND_EFFECTS):
            return _sideband_effect(self.sidebands, effect)
        if isinstance(effect, _BUDGET_EFFECTS):
            return self.budgets.perform_sync(effect)
        if isinstance(effect, _WEBHOOK_EFFECTS):
            return self.webhooks.perform_sync(effect)
        if isinstance(effect, ReadClock):
            return effect.clock()
        if isinstance(effect, AfterAnswer):
            return self.later.take(effect)
        if isinstance(effect, ReportCall):
            self.sidebands.report(effect.report)
            return None
        if isinstance(effect, CloseLive):
            future = asyncio.run_coroutine_threadsafe(
                close_live_session(self.sideband, effect), self._loop_thread.loop()
            )
            try:  # bounded inside; this bound only guards a loop that stalled
                return future.result(effect.timeout + _SLACK_SECONDS)
            except Exception as exc:
                future.cancel()
                return exc
        raise TypeError(f"no performer for the effect {type(effect).__name__}")

    def close(self) -> None:
        """Stop ending calls from this process (the process is stopping), and
        stop the performer's loop thread (the clients made on it close).
        The sidebands close first, and report the calls they held."""
        self.sidebands.close()
        self.budgets.close()
        self.webhooks.close()
        self.calls.close()
        self.observer.close()
        loop = self._loop_thread.running()
        if loop is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.sideband.aclose(), loop).result(
                    _SLACK_SECONDS
                )
            self._loop_thread.stop()

    def _call(self, effect: CallFunction) -> FunctionOutcome:
        future: Future[Any] | None
        if effect.is_async:
            future = asyncio.run_coroutine_threadsafe(
                _outcome_of(effect.run()), self._loop_thread.loop()
            )
        else:
            future = self.workers.submit(effect.run)
        if future is None:
            return FunctionOutcome(busy=True)
        wait([future], timeout=effect.timeout)
        if not future.done():
            future.cancel()  # an async function stops at its next await
            return FunctionOutcome(timed_out=True)
        return _finished(future)


class AsyncEffects:
    """Performs effects for the ASGI shell.

    ``memory://`` counts in this process, inline: the counters of a
    ``limits`` async memory storage, counted by plain code that waits for
    nothing (so no other request runs in between, under asyncio or trio). A
    shared storage goes through the ``limits`` async storage on redis-py's
    asyncio client.
    """

    def __init__(
        self,
        storage_uri: str | None,
        *,
        function_workers: int = DEFAULT_FUNCTION_WORKERS,
        calls_uri: str | None = None,
        hangup_seconds: float = 30.0,
        sideband: SidebandConnector | None = None,
        on_call_end: Callable[[CallReport], Any] | None = None,
        max_sidebands: int = DEFAULT_MAX_SIDEBANDS,
        observer: Observer | None = None,
        webhooks_uri: str | None = None,
    ) -> None:
        self.observer = observer or Observer(metrics=False)
        self.workers = FunctionWorkers(function_workers)
        self.calls = AsyncCalls(calls_uri, hangup_seconds=hangup_seconds)
        self.sideband = sideband or SidebandConnector(None)
        # Budgets count where the calls live (the guard's storage).
        self.budgets = BudgetKeeper(calls_uri, self.calls)
        # The server's asyncio loop, once a call is relayed on it: a call's
        # async backend functions and an async on_call_end run there, as the
        # execute route's do (None under trio: the calls' store's loop).
        self._server_loop: asyncio.AbstractEventLoop | None = None
        self.sidebands = Sidebands(
            self.calls,
            self.sideband,
            self.workers,
            user_loop=lambda: self._server_loop,
            on_call_end=on_call_end,
            limit=max_sidebands,
            budgets=self.budgets.perform,
            observer=self.observer,
        )
        # Webhooks' deliveries and the blocked identifiers live in the
        # guard's storage; their work runs after the answer, as tasks.
        self.webhooks = WebhookKeeper(webhooks_uri, self.calls)
        self.later = AsyncAfterAnswers(self.calls)
        self._uri = storage_uri
        self._where = shown_url(storage_uri)
        self._local = storage_uri is not None and is_memory(storage_uri)
        self._counter: AsyncCounter | None = None
        # memory:// needs no event loop of a kind: its counts are made now.
        self._memory = self._async_counter().memory if self._local else None

    def _async_counter(self) -> AsyncCounter:
        if self._counter is None:
            from limits.storage import storage_from_string

            uri = cast(str, self._uri)
            uri = uri if uri.startswith("async+") else f"async+{uri}"
            options = _redis_options(uri)
            if options:
                options["implementation"] = "redispy"
            storage = storage_from_string(uri, **options)
            self._counter = AsyncCounter(storage, timeout=STORAGE_TIMEOUT_SECONDS)
        return self._counter

    def _needs_asyncio(self) -> bool:
        """Whether the storage's client runs on asyncio only and this is not it."""
        if self._uri is None or self._local:
            return False
        try:
            return sniffio.current_async_library() != "asyncio"
        except sniffio.AsyncLibraryNotFoundError:
            return False  # not in a loop yet: asked again on each hit

    def serve_here(self) -> None:
        """The ASGI server's lifespan runs on this loop: on asyncio, the
        sidebands are held on it (the server's own loop, for its life)."""
        if on_asyncio():
            self._server_loop = asyncio.get_running_loop()
            self.sidebands.run_on(self._server_loop)
            self.later.run_on(self._server_loop)

    def check(self) -> None:
        """Build the storage now, so that a bad URI fails at start-up."""
        if self._uri is None or self._local:
            return
        if self._needs_asyncio():
            raise OptionsError(_NEEDS_ASYNCIO)
        try:
            self._async_counter()
        except Exception as exc:
            raise OptionsError(f"rate_limit_storage cannot be used: {type(exc).__name__}") from None

    async def __call__(self, effect: object) -> object:
        if isinstance(effect, HitLimit):  # the most frequent
            if self._memory is not None:  # counted here, waiting for nothing
                return self._memory.hit(effect.policy, effect.key, time.time())
            return await self._count(effect)
        if isinstance(effect, CallHook):
            return await _hook_async(effect)
        if isinstance(effect, CallFunction):
            began = time.perf_counter()
            with self.observer.function_span(effect.name):
                outcome = await self._call(effect)
            self.observer.function(effect.name, outcome.kind, time.perf_counter() - began)
            return outcome
        if isinstance(effect, (RememberCall, CallOwned, ForgetCall)):
            try:
                async with attempt_deadline(STORAGE_TIMEOUT_SECONDS * 2):
                    return await self.calls.perform(effect)
            except Exception as exc:
                _store_failed(self.calls.where, effect, exc)
                return None
        if isinstance(effect, _SIDEBAND_EFFECTS):
            if isinstance(effect, AttachSideband) and on_asyncio():
                self._server_loop = asyncio.get_running_loop()
            return _sideband_effect(self.sidebands, effect)
        if isinstance(effect, _BUDGET_EFFECTS):
            return await self.budgets.perform(effect)
        if isinstance(effect, _WEBHOOK_EFFECTS):
            return await self.webhooks.perform(effect)
        if isinstance(effect, ReadClock):
            return effect.clock()
        if isinstance(effect, AfterAnswer):
            return self.later.take(effect)
        if isinstance(effect, ReportCall):
            self.sidebands.report(effect.report)
            return None
        if isinstance(effect, CloseLive):
            if on_asyncio():
                return await close_live_session(self.sideband, effect)
            # The sideband's client runs on asyncio: the calls' store's loop.
            future = self.calls.submit(close_live_session(self.sideband, effect))
            if not await _wait(future, effect.timeout + _SLACK_SECONDS):
                future.cancel()
                return TimeoutError("closing the Live session took too long")
            return future.result()
        raise TypeError(f"no performer for the effect {type(effect).__name__}")

    async def aclose(self) -> None:
        """Stop ending calls from this process and close the rate limit's
        connections and the sideband's own client (the server is shutting
        down). The sidebands close first, and report the calls they held."""
        await self.later.aclose()
        await self.sidebands.aclose()
        await self.budgets.aclose()
        await self.webhooks.aclose()
        await self.calls.aclose()
        self.observer.close()
        await self.sideband.aclose()
        if self._counter is not None:
            await self._counter.aclose()

    async def _count(self, effect: HitLimit) -> LimitResult:
        """Count in a shared storage (asyncio only), within the storage's timeout."""
        if not on_asyncio():
            logger.error("navai_mw: %s", _NEEDS_ASYNCIO)
            return LimitResult(unavailable=True)
        try:
            counter = self._async_counter()
            if counter.bounded:
                return await counter.hit(effect.policy, effect.key)
            # One bound for the whole count, connecting included.
            async with attempt_deadline(STORAGE_TIMEOUT_SECONDS):
                return await counter.hit(effect.policy, effect.key)
        except Exception as exc:
            return _unavailable(self._where, exc)

    async def _call(self, effect: CallFunction) -> FunctionOutcome:
        if effect.is_async:
            cancelled = anyio.get_cancelled_exc_class()
            with anyio.move_on_after(effect.timeout) as scope:
                try:
                    return FunctionOutcome(value=await effect.run())
                except cancelled:
                    raise  # the timeout, or the server stopping: not the function's
                except BaseException as exc:  # SystemExit too: the app's code failed
                    return FunctionOutcome(error=exc)
            assert scope.cancelled_caught
            return FunctionOutcome(timed_out=True)
        future = self.workers.submit(effect.run)
        if future is None:
            return FunctionOutcome(busy=True)
        if not await _wait(future, effect.timeout):
            return FunctionOutcome(timed_out=True)
        return _finished(future)


_SIDEBAND_EFFECTS: Final = (SidebandRoom, AttachSideband, EndSideband)
_BUDGET_EFFECTS: Final = (AdmitCall, SettleCall, ChargeCall, ReadBudget)
_WEBHOOK_EFFECTS: Final = (FirstDelivery, ForgetDelivery, BlockIdentifier, IsBlocked)


def _sideband_effect(
    sidebands: Sidebands, effect: SidebandRoom | AttachSideband | EndSideband
) -> bool | None:
    """The sideband effects, alike on both shells: none waits for a socket."""
    if isinstance(effect, SidebandRoom):
        return sidebands.room()
    if isinstance(effect, AttachSideband):
        sidebands.attach(effect)
    else:
        sidebands.end(effect.key, effect.reason)
    return None


# A hook with a time bound (an Azure token provider) that is a plain function
# runs on one of these threads, so that the caller can stop waiting for it;
# one that hangs keeps its thread (Python cannot stop one), and once every
# thread holds a hung hook, the next call is out of time at once.
TIMED_HOOK_WORKERS: Final = 32
_TIMED_HOOKS: Final = FunctionWorkers(TIMED_HOOK_WORKERS)


def _hook_sync(effect: CallHook, loop_thread: _LoopThread) -> HookResult:
    """``effect``'s hook called for the WSGI shell: inline, but an async one
    on the performer's loop thread and, with a ``timeout``, a plain one on
    a thread of its own, waited for that long at most."""
    started = time.monotonic()
    try:
        if is_async_hook(effect.hook):  # an async Azure token provider
            future = asyncio.run_coroutine_threadsafe(effect.hook(*effect.args), loop_thread.loop())
        elif effect.timeout is None:
            return HookResult(effect.hook(*effect.args), elapsed=time.monotonic() - started)
        else:
            pooled = _TIMED_HOOKS.submit(functools.partial(effect.hook, *effect.args))
            if pooled is None:
                return HookResult(timed_out=True)
            future = pooled
        # A hook that never answers must not hold the server's thread forever.
        timeout = ASYNC_HOOK_TIMEOUT_SECONDS if effect.timeout is None else effect.timeout
        done, _ = wait([future], timeout=timeout)
        elapsed = time.monotonic() - started
        if not done:
            future.cancel()  # an async hook stops at its next await
            if effect.timeout is None:
                return HookResult(error=TimeoutError("the hook did not answer"), elapsed=elapsed)
            return HookResult(timed_out=True, elapsed=elapsed)
        return HookResult(future.result(), elapsed=elapsed)
    except Exception as exc:
        return HookResult(error=exc, elapsed=time.monotonic() - started)


async def _hook_async(effect: CallHook) -> HookResult:
    """``effect``'s hook called for the ASGI shell: an async one awaited, a
    plain one on a worker thread (it may touch a database); with a
    ``timeout``, waited for that long at most."""
    started = time.monotonic()
    try:
        if effect.timeout is None:
            if is_async_hook(effect.hook):
                value = await effect.hook(*effect.args)
            else:
                value = await anyio.to_thread.run_sync(effect.hook, *effect.args)
            return HookResult(value, elapsed=time.monotonic() - started)
        if is_async_hook(effect.hook):
            with anyio.move_on_after(effect.timeout):
                value = await effect.hook(*effect.args)
                return HookResult(value, elapsed=time.monotonic() - started)
            return HookResult(timed_out=True, elapsed=time.monotonic() - started)
        future = _TIMED_HOOKS.submit(functools.partial(effect.hook, *effect.args))
        if future is None or not await _wait(future, effect.timeout):
            return HookResult(timed_out=True, elapsed=time.monotonic() - started)
        return HookResult(future.result(), elapsed=time.monotonic() - started)
    except Exception as exc:
        return HookResult(error=exc, elapsed=time.monotonic() - started)


def _store_failed(where: str, effect: object, exc: Exception) -> None:
    """The calls' store failed: logged; the call goes on (a relayed call is
    answered even when it cannot be remembered), and an ownership question
    comes back unanswered (None: the core answers 503)."""
    logger.warning(
        "navai_mw: the calls' store %s failed (%s): %s",
        where,
        type(effect).__name__,
        type(exc).__name__,
    )
    if isinstance(effect, RememberCall) and effect.deadline is not None:
        # Said where it happens: this call runs on without its time cap.
        logger.warning("navai_mw: call %s is not capped (the calls' store failed)", effect.key)
    return None


# A Live session's close is bounded inside; a loop thread that stalls is
# given this much more before the request is answered anyway.
_SLACK_SECONDS: Final = 2.0


_NEEDS_ASYNCIO: Final = (
    "rate_limit_storage on Redis or Valkey needs asyncio (its client runs on asyncio only); "
    "under trio, use memory://."
)


def _unavailable(where: str, exc: Exception) -> LimitResult:
    logger.warning("navai_mw: the rate-limit storage %s failed: %s", where, type(exc).__name__)
    return LimitResult(unavailable=True)
