"""``memory://`` counted in this process, in one plain pass, by the same
arithmetic as the Redis script, so that a limit behaves the same on either
storage: a test written against one passes against the other.

Both are the ``limits`` library's sliding window counter as it keeps it on
Redis: each window of a policy holds a count for its current period, which
starts with the client's first request (not on the clock's minute), and the
count of the period before; a request is let through while
``floor(previous * time left of it / period) + current`` stays within the
limit. (``limits``' own memory storage starts its periods on the clock
instead, so a window there frees at the next minute where Redis frees it a
minute after the first request: not what one wants of a deployment that
moves from one to the other.)
"""

from __future__ import annotations

import heapq
from typing import Any, Final

from ..core.effects import LimitResult
from ..core.rate_limit_policy import RateLimitPolicy

__all__ = ["MAX_CLIENTS", "SWEEP_SECONDS", "MemoryCounts", "window_state"]


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


def _ms(seconds: float) -> float:
    """Time left as Redis tells it (whole milliseconds): ``now + 120 - now``
    is 119.99999... in floats, and the arithmetic must not see a period end
    that Redis would not."""
    return round(seconds * 1000) / 1000


# How often, at most, the counts drop the periods that have expired.
SWEEP_SECONDS: Final = 1.0
# Clients whose windows' keys are kept spelled; past this many, the cache
# starts over.
MAX_CLIENTS: Final = 10_000


class MemoryCounts:
    """The counts of ``memory://``: per window key, a count and the time it
    expires, as the Redis script keeps them (a current period's count
    expires two periods after it starts; when less than a period of it is
    left, it becomes the previous period's count and a new current one
    starts). Expired counts are dropped every :data:`SWEEP_SECONDS`, the
    soonest first, without walking the others.

    Not thread-safe: the sync counter holds a lock around :meth:`hit`.
    """

    __slots__ = ("_counts", "_expiring", "_next_sweep", "_windows")

    def __init__(self) -> None:
        # Window key -> [count, Unix time it expires] (a list: counted in place).
        self._counts: dict[str, list[Any]] = {}
        # A client's key: the policy's items, and for each its limit,
        # period and window key (spelled once per client, not per request).
        self._windows: dict[str, tuple[tuple[Any, ...], Windows]] = {}
        # (expiry, window key), soonest first.
        self._expiring: list[tuple[float, str]] = []
        self._next_sweep = 0.0

    def hit(self, policy: RateLimitPolicy, key: str, now: float) -> LimitResult:
        """Count one request of ``key`` in every window of ``policy``, or in
        none when one is full; each window's state after it."""
        if now >= self._next_sweep:
            self._sweep(now)
        counts = self._counts
        known = self._windows.get(key)
        windows = known[1] if known is not None and known[0] is policy.items else None
        if windows is None:
            windows = self._spell(policy, key)
        seen = []
        allowed = True
        for amount, period, name in windows:
            current = counts.get(name)
            if current is not None and current[1] <= now:
                current = None  # expired: as if absent (the sweep drops it)
            if current is not None and current[1] - now < period:
                # The current period is over: it becomes the previous one.
                counts[f"{name}/-1"] = current
                current = counts[name] = [0, current[1] + period]
                heapq.heappush(self._expiring, (current[1], name))
            previous = counts.get(f"{name}/-1")
            if previous is not None and previous[1] <= now:
                previous = None
            previous_count = previous[0] if previous is not None else 0
            previous_left = _ms(previous[1] - now) if previous is not None else 0.0
            current_count = current[0] if current is not None else 0
            if int(previous_count * previous_left / period) + current_count >= amount:
                allowed = False
            seen.append((amount, period, name, previous_count, previous_left, current))
        states = []
        for amount, period, name, previous_count, previous_left, current in seen:
            if allowed:
                if current is not None:
                    current[0] += 1
                else:
                    # A new current period: it lives on as the previous one.
                    current = counts[name] = [1, now + 2 * period]
                    heapq.heappush(self._expiring, (current[1], name))
            count, left = (current[0], _ms(current[1] - now)) if current is not None else (0, 0.0)
            states.append(
                window_state(amount, period, previous_count, previous_left, count, left, now)
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
        counts, expiring = self._counts, self._expiring
        while expiring and expiring[0][0] <= now:
            name = heapq.heappop(expiring)[1]
            # Its current count, unless it has counted anew since; the
            # previous period's count it became, which expires with it.
            for window_key in (name, f"{name}/-1"):
                entry = counts.get(window_key)
                if entry is not None and entry[1] <= now:
                    del counts[window_key]

    def __len__(self) -> int:
        """How many counts are kept (expired ones not yet swept included)."""
        return len(self._counts)


# Each window of a policy for one client: its limit, period and window key.
Windows = tuple[tuple[int, int, str], ...]
