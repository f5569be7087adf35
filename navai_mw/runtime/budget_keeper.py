"""The budgets of one handler, performed: the budget effects of either
shell on ``memory://`` or a shared Redis (:mod:`.budget_store`), each
bounded in time; a call's end the store missed, settled again once it is
back; the Redis client forgotten in a forked worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from ..core.effects import Admission, AdmitCall, ChargeCall, ReadBudget, SettleCall
from ..core.storage import redis_client_url, shown_url
from .aio import _wait, attempt_deadline
from .budget_store import MemoryBudgets, RedisBudgets
from .call_store import CallStore

__all__ = ["BUDGET_TIMEOUT_SECONDS", "BudgetKeeper"]

logger = logging.getLogger("navai_mw")

BudgetEffect = AdmitCall | SettleCall | ChargeCall | ReadBudget
# A budget operation, Redis's answer included, ends within this.
BUDGET_TIMEOUT_SECONDS: Final = 2.0
# A call's end the store missed (it was down) is settled again this often
# until the store takes it: else its reservation would hold the caller's
# budget until its margin ran out. Settling is done at most once (the
# reservation is dropped by the first), so trying again is safe.
SETTLE_RETRY_SECONDS: Final = 2.0
# At most this many ends are kept to settle again (the oldest go first).
MAX_UNSETTLED: Final = 10_000


def _unavailable(effect: BudgetEffect) -> object:
    """What a budget effect gives when the store could not be reached."""
    if isinstance(effect, AdmitCall):
        return Admission(unavailable=True)
    return True if isinstance(effect, SettleCall) else None


class BudgetKeeper:
    """The budgets of one handler, in memory or in a shared Redis (the
    guard's storage): the effects performed, from either shell. Redis is
    used on the calls' store's loop (its client belongs there)."""

    def __init__(self, uri: str | None, store: CallStore) -> None:
        shared = redis_client_url(uri)
        self._store = store
        self.where = shown_url(uri) if uri is not None else "memory://"
        self._memory = MemoryBudgets() if shared is None else None
        self._redis = None if shared is None else RedisBudgets(shared)
        # Ends to settle again, by reservation id (on the store's loop only).
        self._unsettled: dict[str, SettleCall] = {}
        self._retrying: asyncio.Task[None] | None = None
        store.after_fork(self._after_fork)

    def _after_fork(self) -> None:
        # The parent's Redis client belongs to a loop this process does not
        # have (the calls' store makes a new one): the child makes its own.
        if self._redis is not None:
            self._redis.forget_client(inherited=True)
        self._unsettled = {}
        self._retrying = None

    def _in_memory(self, effect: BudgetEffect) -> object:
        memory = self._memory
        assert memory is not None
        if isinstance(effect, AdmitCall):
            return memory.admit(effect)
        if isinstance(effect, SettleCall):
            memory.settle(effect)
            return None
        if isinstance(effect, ChargeCall):
            return memory.charge(effect)
        return memory.read(effect)

    async def _in_redis(self, effect: BudgetEffect) -> object:
        redis = self._redis
        assert redis is not None
        if isinstance(effect, AdmitCall):
            return await redis.admit(effect)
        if isinstance(effect, SettleCall):
            try:
                await redis.settle(effect)
            except BaseException:  # a failure, or this attempt's deadline
                self._settle_later(effect)
                raise
            return None
        if isinstance(effect, ChargeCall):
            return await redis.charge(effect)
        return await redis.read(effect)

    def _settle_later(self, effect: SettleCall) -> None:
        """Keep ``effect`` to settle again (on the store's loop)."""
        unsettled = self._unsettled
        unsettled[effect.reservation.id] = effect
        while len(unsettled) > MAX_UNSETTLED:
            del unsettled[next(iter(unsettled))]
        if self._retrying is None or self._retrying.done():
            self._retrying = asyncio.get_running_loop().create_task(self._settle_again())

    async def _settle_again(self) -> None:
        """Settle the kept ends once the store answers again."""
        redis = self._redis
        assert redis is not None
        while self._unsettled:
            await asyncio.sleep(SETTLE_RETRY_SECONDS)
            for rid, effect in list(self._unsettled.items()):
                try:
                    async with attempt_deadline(BUDGET_TIMEOUT_SECONDS):
                        await redis.settle(effect)
                except Exception:
                    break  # still away: all of them wait for the next round
                self._unsettled.pop(rid, None)
                logger.info(
                    "navai_mw: the budget store %s took a call's end it had missed", self.where
                )

    def perform_sync(self, effect: BudgetEffect) -> object:
        """The effect performed, blocking (the WSGI shell)."""
        if self._memory is not None:
            return self._in_memory(effect)
        future = self._store.submit(self._in_redis(effect))
        try:
            return future.result(BUDGET_TIMEOUT_SECONDS)
        except Exception as exc:
            future.cancel()
            return self._failed(effect, exc)

    async def perform(self, effect: BudgetEffect) -> object:
        """The effect performed, awaited (the ASGI shell, the sidebands)."""
        if self._memory is not None:
            return self._in_memory(effect)
        try:
            if self._store.on_store_loop():
                async with attempt_deadline(BUDGET_TIMEOUT_SECONDS):
                    return await self._in_redis(effect)
            future = self._store.submit(self._in_redis(effect))
            if not await _wait(future, BUDGET_TIMEOUT_SECONDS):
                future.cancel()
                raise TimeoutError("the budget store did not answer in time")
            return future.result()
        except Exception as exc:
            return self._failed(effect, exc)

    def _failed(self, effect: BudgetEffect, exc: BaseException) -> object:
        logger.warning(
            "navai_mw: the budget store %s failed (%s): %s",
            self.where,
            type(effect).__name__,
            type(exc).__name__,
        )
        return _unavailable(effect)

    def reset_sync(self, subject: str) -> None:
        """Forget ``subject``'s counts (blocking)."""
        if self._memory is not None:
            self._memory.reset(subject)
            return
        assert self._redis is not None
        self._store.submit(self._redis.reset(subject)).result(BUDGET_TIMEOUT_SECONDS)

    async def reset(self, subject: str) -> None:
        """Forget ``subject``'s counts."""
        if self._memory is not None:
            self._memory.reset(subject)
            return
        assert self._redis is not None
        if self._store.on_store_loop():
            await self._redis.reset(subject)
            return
        future = self._store.submit(self._redis.reset(subject))
        if not await _wait(future, BUDGET_TIMEOUT_SECONDS):
            future.cancel()
            raise TimeoutError("the budget store did not answer in time")
        future.result()

    def close(self) -> None:
        """Close the Redis client, on the calls' store's loop (blocking)."""
        if self._redis is None or self._store.running_loop() is None:
            return
        with contextlib.suppress(Exception):
            self._store.submit(self._aclose_redis()).result(BUDGET_TIMEOUT_SECONDS)

    async def aclose(self) -> None:
        """:meth:`close`, awaited."""
        if self._redis is None or self._store.running_loop() is None:
            return
        if self._store.on_store_loop():
            await self._aclose_redis()
            return
        with contextlib.suppress(Exception):
            await _wait(self._store.submit(self._aclose_redis()), BUDGET_TIMEOUT_SECONDS)

    async def _aclose_redis(self) -> None:
        """Stop settling again, and close the client (on the store's loop)."""
        retrying, self._retrying = self._retrying, None
        if retrying is not None:
            retrying.cancel()
        if self._unsettled:
            logger.warning(
                "navai_mw: %d calls' ends never reached the budget store %s: their "
                "reservations run out on their own",
                len(self._unsettled),
                self.where,
            )
            self._unsettled.clear()
        assert self._redis is not None
        await self._redis.aclose()
