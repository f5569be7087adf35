"""``memory://`` counted in one plain pass over the ``limits`` library's own
memory storage (its keys and counters), with no coroutine and no lock on the
way, and expired counts swept in the order they expire."""

from __future__ import annotations

from collections import deque
from typing import Any, Final

from ..core.effects import LimitResult
from ..core.rate_limit_policy import RateLimitPolicy


def window_state(
    amount: int,
    period: int,
    previous_count: int,
    previous_left: float,
    current_count: int,
    current_left: float,
    now: float,
) -> tuple[int, float]:
    """The requests a window of ``amount`` per ``period`` seconds has left,
    and the Unix time at which it next frees a slot (``limits``'
    ``get_window_stats``; times left in seconds, never negative)."""
    # int() floors what is never negative, and costs less than math.floor.
    remaining = amount - int(previous_count * previous_left / period + current_count)
    frees_in = 0.0
    if previous_count:
        frees_in = previous_left % (period / previous_count)
        if current_count:
            frees_in = min(frees_in, current_left % period)
    elif current_count:
        frees_in = current_left % period
    return (remaining if remaining > 0 else 0), now + frees_in


# How often, at most, the memory counts drop the windows that have expired.
SWEEP_SECONDS: Final = 1.0


# Clients whose windows' keys are kept spelled; past this many, the cache
# starts over.
MAX_CLIENTS: Final = 10_000


class MemoryCounts:
    """Counting in a ``limits`` memory storage, sync or async (both keep
    the same two dicts): its counters and their expiry times, under its
    window keys, read and written here directly.

    Its own calls are coroutines that take a lock and schedule an expiry
    task for what is, under an event loop, a few dict operations that
    nothing can interrupt; through them the count cost most of the guard's
    time. Here it is one plain pass: read every window, then count in all or
    none. The dicts stay as its calls would leave them (a count expires two
    periods after it starts, an expired one reads as nothing), so its own
    ``get_window_stats`` agrees. Expired counts are dropped every
    :data:`SWEEP_SECONDS`, as its expiry task would, but without walking
    every count: the counts of one period expire in the order they were
    made, so a queue per period holds them in that order, and a sweep takes
    only the expired ones off its front.

    Not thread-safe: the sync counter holds a lock around :meth:`hit`.
    """

    __slots__ = ("_counts", "_expiries", "_expiring", "_next_sweep", "_windows")

    def __init__(self, storage: Any) -> None:
        self._counts: dict[str, int] = storage.storage
        self._expiries: dict[str, float] = storage.expirations
        # A client's key: the policy's items, and for each its limit,
        # period and ``limits`` key (spelled once per client, not per request).
        self._windows: dict[str, tuple[tuple[Any, ...], Windows]] = {}
        # Per period: the counts made, with their expiry times, oldest first.
        self._expiring: dict[int, deque[tuple[float, str]]] = {}
        self._next_sweep = 0.0

    def hit(self, policy: RateLimitPolicy, key: str, now: float) -> LimitResult:
        if now >= self._next_sweep:
            self._sweep(now)
        counts, expiries = self._counts, self._expiries
        known = self._windows.get(key)
        windows = known[1] if known is not None and known[0] is policy.items else None
        if windows is None:
            windows = self._spell(policy, key)
        seen = []
        allowed = True
        for amount, period, name in windows:
            # ``limits``' window keys: the period's number since the epoch.
            # A count that has expired reads as nothing (the sweep drops it).
            previous_key = f"{name}/{int((now - period) / period)}"
            previous = counts.get(previous_key, 0) if expiries.get(previous_key, 0.0) > now else 0
            current_key = f"{name}/{int(now / period)}"
            current = counts.get(current_key, 0) if expiries.get(current_key, 0.0) > now else 0
            # The periods are aligned on the clock: what is left of them.
            previous_left = (1 - ((now - period) / period) % 1) * period if previous else 0.0
            if int(previous * previous_left / period) + current >= amount:
                allowed = False
            seen.append((amount, period, current_key, previous, previous_left, current))
        states = []
        for amount, period, current_key, previous, previous_left, current in seen:
            if allowed:
                current += 1
                counts[current_key] = current
                if current == 1:
                    expiries[current_key] = expires = now + 2 * period
                    self._expiring.setdefault(period, deque()).append((expires, current_key))
            current_left = (1 - (now / period) % 1) * period + period
            states.append(
                window_state(amount, period, previous, previous_left, current, current_left, now)
            )
        return LimitResult(allowed, tuple(states), now)

    def _spell(self, policy: RateLimitPolicy, key: str) -> Windows:
        """The windows of ``policy`` for a client's ``key``, kept for its next requests."""
        if len(self._windows) >= MAX_CLIENTS:
            self._windows.clear()
        windows = tuple(
            (item.amount, item.get_expiry(), item.key_for(key)) for item in policy.items
        )
        self._windows[key] = (policy.items, windows)
        return windows

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_SECONDS
        expiries = self._expiries
        for queue in self._expiring.values():
            while queue and queue[0][0] <= now:
                expires, key = queue.popleft()
                # Unless the key has counted again since (a clock set back).
                if expiries.get(key) == expires:
                    del expiries[key]
                    self._counts.pop(key, None)


# Each window of a policy for one client: its limit, period and ``limits`` key.
Windows = tuple[tuple[int, int, str], ...]
