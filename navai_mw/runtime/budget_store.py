"""Where budgets are counted: in this process (``memory://``), or in a
shared Redis (the guard's storage), each decision one atomic step.

Per caller, limit and period, one Redis hash,
``navai:budget:{subject}:{unit}/{period}:{period start}``: ``used`` (what
settled calls used: seconds, tokens or dollars) and one field per call in
progress, ``r:{id}`` = ``{seconds reserved}:{started}``. A reservation
lives until its call settles it, or until ``started + reserved +``
:data:`RESERVATION_MARGIN_SECONDS` (a worker that died mid-call): then it
is dropped, and what it held comes back. A hash expires a day after its
period ends.

Admitting a call reads every one of the caller's counts, drops the expired
reservations, and either refuses (a count with nothing left) or reserves,
in one Lua script (:data:`ADMIT`), so that concurrent admissions in any
number of processes never reserve more than the budget. The in-memory
store makes the same decisions under one lock.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Sequence
from typing import Any, Final

from ..core.budgets import BudgetLimit, period_bounds
from ..core.effects import (
    Admission,
    AdmitCall,
    BudgetCount,
    ChargeCall,
    ReadBudget,
    Reservation,
    SettleCall,
)
from .aio import keep_inherited
from .call_deadlines import redis_client

__all__ = [
    "RESERVATION_MARGIN_SECONDS",
    "MemoryBudgets",
    "RedisBudgets",
    "budget_key",
]

logger = logging.getLogger("navai_mw")

# A reservation outlives its call's time this long before it is taken for
# lost (its worker died) and dropped.
RESERVATION_MARGIN_SECONDS: Final = 60.0
# A call needs at least this much of a minutes budget to start: a sliver
# left (a fraction of a second) would start a call only to cut it at once.
MIN_GRANT_SECONDS: Final = 1.0
# A count is kept this long past its period's end (for reading).
KEPT_AFTER_PERIOD_SECONDS: Final = 86_400.0
MAX_CONNECTIONS: Final = 16
# One count as the store reads it: used, elapsed, reserved, and the
# earliest end of a reservation (-1: none).
Row = tuple[float, float, float, float]


def budget_key(subject: str, limit: BudgetLimit, start: float) -> str:
    return f"navai:budget:{subject}:{limit.name}:{int(start)}"


def _reservation_id() -> str:
    return uuid.uuid4().hex


def _counts(
    limits: Sequence[BudgetLimit],
    rows: Sequence[Row],
    ends: list[float],
) -> tuple[BudgetCount, ...]:
    return tuple(
        BudgetCount(
            limit=limit,
            used=used,
            elapsed=elapsed if limit.unit == "minutes" else 0.0,
            reserved=reserved if limit.unit == "minutes" else 0.0,
            resets_at=end,
            frees_at=None if frees < 0 else frees,
        )
        for limit, (used, elapsed, reserved, frees), end in zip(limits, rows, ends, strict=True)
    )


def _admission(
    effect: AdmitCall,
    now: float,
    reservation_id: str,
    starts: list[float],
    ends: list[float],
    refused: int,
    grant: float,
    rows: Sequence[Row],
) -> Admission:
    counts = _counts(effect.limits, rows, ends)
    if refused:
        return Admission(refused_by=effect.limits[refused - 1], counts=counts, now=now)
    reservation = Reservation(
        id=reservation_id,
        subject=effect.subject,
        limits=effect.limits,
        starts=tuple(starts),
        granted=None if math.isinf(grant) else max(0.0, grant),
        started_at=now,
    )
    return Admission(reservation=reservation, counts=counts, now=now)


def _keys(subject: str, limits: Sequence[BudgetLimit], starts: Sequence[float]) -> list[str]:
    return [budget_key(subject, limit, start) for limit, start in zip(limits, starts, strict=True)]


def _periods(limits: Sequence[BudgetLimit], now: float) -> tuple[list[float], list[float]]:
    bounds = [period_bounds(limit.period, now) for limit in limits]
    return [start for start, _ in bounds], [end for _, end in bounds]


# -- in this process ---------------------------------------------------------------------


class _Count:
    __slots__ = ("expires", "reservations", "used")

    def __init__(self, expires: float) -> None:
        self.used = 0.0
        self.reservations: dict[str, tuple[float, float]] = {}  # id -> (seconds, started)
        self.expires = expires


class MemoryBudgets:
    """Budgets counted in this process, under one lock (``memory://``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, _Count] = {}

    def _count(self, key: str, end: float) -> _Count:
        count = self._counts.get(key)
        if count is None:
            count = self._counts[key] = _Count(end + KEPT_AFTER_PERIOD_SECONDS)
        return count

    def _row(self, count: _Count, now: float) -> Row:
        elapsed = reserved = 0.0
        frees = -1.0
        for rid, (amount, started) in list(count.reservations.items()):
            if now >= started + amount + RESERVATION_MARGIN_SECONDS:
                del count.reservations[rid]
                continue
            spent = min(max(now - started, 0.0), amount)
            elapsed += spent
            reserved += amount - spent
            ends = started + amount
            frees = ends if frees < 0 else min(frees, ends)
        return count.used, elapsed, reserved, frees

    def _prune(self, now: float) -> None:
        for key in [key for key, count in self._counts.items() if count.expires <= now]:
            del self._counts[key]

    def admit(self, effect: AdmitCall) -> Admission:
        now = effect.clock()
        starts, ends = _periods(effect.limits, now)
        keys = [
            budget_key(effect.subject, lim, s) for lim, s in zip(effect.limits, starts, strict=True)
        ]
        rid = _reservation_id()
        with self._lock:
            self._prune(now)
            grant = math.inf if effect.cap is None else effect.cap
            refused = 0
            rows = []
            for index, (limit, key, end) in enumerate(zip(effect.limits, keys, ends, strict=True)):
                row = self._row(self._count(key, end), now)
                rows.append(row)
                used, elapsed, reserved, _ = row
                left = limit.quantity - used
                spent = left <= 0
                if limit.unit == "minutes":
                    left -= elapsed + reserved
                    grant = min(grant, left)
                    spent = left < MIN_GRANT_SECONDS
                if spent and not refused:
                    refused = index + 1
            if not refused:
                for limit, key in zip(effect.limits, keys, strict=True):
                    if limit.unit == "minutes":
                        self._counts[key].reservations[rid] = (grant, now)
        return _admission(effect, now, rid, starts, ends, refused, grant, rows)

    def settle(self, effect: SettleCall) -> None:
        reservation = effect.reservation
        with self._lock:
            for limit, start in zip(reservation.limits, reservation.starts, strict=True):
                if limit.unit != "minutes":
                    continue
                count = self._counts.get(budget_key(reservation.subject, limit, start))
                if count is not None and count.reservations.pop(reservation.id, None) is not None:
                    count.used += _settled(effect)

    def charge(self, effect: ChargeCall) -> tuple[BudgetCount, ...]:
        reservation = effect.reservation
        now = reservation.started_at
        rows = []
        ends = []
        with self._lock:
            for limit, start in zip(reservation.limits, reservation.starts, strict=True):
                _, end = period_bounds(limit.period, start)
                count = self._count(budget_key(reservation.subject, limit, start), end)
                count.used += _charged(limit, effect)
                rows.append(self._row(count, now))
                ends.append(end)
        return _counts(reservation.limits, rows, ends)

    def reset(self, subject: str) -> None:
        """Forget everything ``subject`` used and reserved."""
        prefix = f"navai:budget:{subject}:"
        with self._lock:
            for key in [key for key in self._counts if key.startswith(prefix)]:
                del self._counts[key]

    def read(self, effect: ReadBudget) -> tuple[BudgetCount, ...]:
        now = effect.clock()
        starts, ends = _periods(effect.limits, now)
        with self._lock:
            rows = [
                self._row(self._count(budget_key(effect.subject, limit, start), end), now)
                for limit, start, end in zip(effect.limits, starts, ends, strict=True)
            ]
        return _counts(effect.limits, rows, ends)


def _settled(effect: SettleCall) -> float:
    """The minutes a call used: its seconds, at most what it was granted."""
    granted = effect.reservation.granted
    seconds = max(0.0, effect.seconds)
    return seconds if granted is None else min(seconds, granted)


def _charged(limit: BudgetLimit, effect: ChargeCall) -> float:
    if limit.unit == "tokens":
        return max(0.0, effect.tokens)
    if limit.unit == "USD":
        return max(0.0, effect.usd)
    return 0.0


# -- in a shared Redis --------------------------------------------------------------------

# KEYS: one count per limit. ARGV: now, cap (-1: none), the reservation's id
# ('' to read only), the margin, the least a minutes limit must have left,
# then for each limit: its quantity, 1 for minutes, and the count's expiry
# (UNIX seconds). Returns the refusing
# limit's index (0: admitted), the seconds granted, then for each limit
# used, elapsed, reserved and the earliest end of a reservation (-1: none).
ADMIT: Final = """
local now = tonumber(ARGV[1])
local grant = tonumber(ARGV[2])
if grant < 0 then grant = math.huge end
local id = ARGV[3]
local margin = tonumber(ARGV[4])
local least = tonumber(ARGV[5])
local refused = 0
local out = {}
local minutes = {}
for i, key in ipairs(KEYS) do
  local base = 5 + (i - 1) * 3
  local quantity = tonumber(ARGV[base + 1])
  local is_minutes = ARGV[base + 2] == '1'
  minutes[i] = is_minutes
  local used, elapsed, reserved, frees = 0, 0, 0, -1
  local fields = redis.call('HGETALL', key)
  for j = 1, #fields, 2 do
    local field, value = fields[j], fields[j + 1]
    if field == 'used' then
      used = tonumber(value)
    elseif string.sub(field, 1, 2) == 'r:' then
      local sep = string.find(value, ':', 1, true)
      local amount = tonumber(string.sub(value, 1, sep - 1))
      local started = tonumber(string.sub(value, sep + 1))
      if now >= started + amount + margin then
        redis.call('HDEL', key, field)
      else
        local spent = math.min(math.max(now - started, 0), amount)
        elapsed = elapsed + spent
        reserved = reserved + amount - spent
        local ends = started + amount
        if frees < 0 or ends < frees then frees = ends end
      end
    end
  end
  local left = quantity - used
  local spent = left <= 0
  if is_minutes then
    left = left - elapsed - reserved
    if left < grant then grant = left end
    spent = left < least
  end
  if spent and refused == 0 then refused = i end
  out[#out + 1] = tostring(used)
  out[#out + 1] = tostring(elapsed)
  out[#out + 1] = tostring(reserved)
  out[#out + 1] = tostring(frees)
end
if refused == 0 and id ~= '' then
  for i, key in ipairs(KEYS) do
    if minutes[i] then
      redis.call('HSET', key, 'r:' .. id, tostring(grant) .. ':' .. tostring(now))
    end
    redis.call('EXPIREAT', key, math.ceil(tonumber(ARGV[5 + (i - 1) * 3 + 3])))
  end
end
table.insert(out, 1, tostring(grant))
table.insert(out, 1, tostring(refused))
return out
"""

# KEYS: the call's minutes counts. ARGV: its id, the seconds to charge.
SETTLE: Final = """
for _, key in ipairs(KEYS) do
  if redis.call('HDEL', key, 'r:' .. ARGV[1]) == 1 then
    redis.call('HINCRBYFLOAT', key, 'used', ARGV[2])
  end
end
return 0
"""

# KEYS: counts. ARGV: for each, the amount to add and its expiry.
CHARGE: Final = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('HINCRBYFLOAT', key, 'used', ARGV[2 * i - 1])
  redis.call('EXPIREAT', key, math.ceil(tonumber(ARGV[2 * i])))
end
return out
"""


class RedisBudgets:
    """Budgets counted in a shared Redis (see the module docstring). Its
    client belongs to the loop that first used it (the calls' store's)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: Any = None
        self._scripts: dict[str, Any] = {}

    def _redis(self) -> Any:
        if self._client is None:
            self._client = redis_client(self.url, "navai-budgets", MAX_CONNECTIONS)
            # register_script runs EVALSHA, and loads the script again when
            # Redis's script cache was flushed.
            self._scripts = {
                name: self._client.register_script(text)
                for name, text in (("admit", ADMIT), ("settle", SETTLE), ("charge", CHARGE))
            }
        return self._client

    async def _admit_or_read(
        self, subject: str, limits: tuple[BudgetLimit, ...], now: float, cap: float | None, rid: str
    ) -> tuple[list[float], list[float], int, float, list[Row]]:
        self._redis()
        starts, ends = _periods(limits, now)
        keys = _keys(subject, limits, starts)
        args: list[Any] = [repr(now), repr(-1.0 if cap is None else cap), rid]
        args += [repr(RESERVATION_MARGIN_SECONDS), repr(MIN_GRANT_SECONDS)]
        for limit, end in zip(limits, ends, strict=True):
            expiry = end + KEPT_AFTER_PERIOD_SECONDS
            args += [repr(limit.quantity), "1" if limit.unit == "minutes" else "0", repr(expiry)]
        raw = [
            value.decode() if isinstance(value, bytes) else str(value)
            for value in await self._scripts["admit"](keys=keys, args=args)
        ]
        refused, grant = int(raw[0]), float(raw[1])
        values = [float(value) for value in raw[2:]]
        rows = [
            (values[i], values[i + 1], values[i + 2], values[i + 3])
            for i in range(0, len(values), 4)
        ]
        return starts, ends, refused, grant, rows

    async def admit(self, effect: AdmitCall) -> Admission:
        now = effect.clock()
        rid = _reservation_id()
        starts, ends, refused, grant, rows = await self._admit_or_read(
            effect.subject, effect.limits, now, effect.cap, rid
        )
        return _admission(effect, now, rid, starts, ends, refused, grant, rows)

    async def settle(self, effect: SettleCall) -> None:
        self._redis()
        reservation = effect.reservation
        keys = [
            budget_key(reservation.subject, limit, start)
            for limit, start in zip(reservation.limits, reservation.starts, strict=True)
            if limit.unit == "minutes"
        ]
        if keys:
            await self._scripts["settle"](keys=keys, args=[reservation.id, repr(_settled(effect))])

    async def charge(self, effect: ChargeCall) -> tuple[BudgetCount, ...]:
        self._redis()
        reservation = effect.reservation
        keys, args, ends = [], [], []
        for limit, start in zip(reservation.limits, reservation.starts, strict=True):
            _, end = period_bounds(limit.period, start)
            keys.append(budget_key(reservation.subject, limit, start))
            args += [repr(_charged(limit, effect)), repr(end + KEPT_AFTER_PERIOD_SECONDS)]
            ends.append(end)
        used = [float(value) for value in await self._scripts["charge"](keys=keys, args=args)]
        rows = [(value, 0.0, 0.0, -1.0) for value in used]
        return _counts(reservation.limits, rows, ends)

    async def read(self, effect: ReadBudget) -> tuple[BudgetCount, ...]:
        now = effect.clock()
        _, ends, _, _, rows = await self._admit_or_read(
            effect.subject, effect.limits, now, None, ""
        )
        return _counts(effect.limits, rows, ends)

    async def reset(self, subject: str) -> None:
        """Forget everything ``subject`` used and reserved."""
        client = self._redis()
        pattern = f"navai:budget:{_glob_escaped(subject)}:*"
        keys = [key async for key in client.scan_iter(match=pattern, count=200)]
        if keys:
            await client.delete(*keys)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def forget_client(self, *, inherited: bool = False) -> None:
        """As :meth:`RedisCalls.forget_client`."""
        if inherited:
            keep_inherited(self._client)
        self._client = None
        self._scripts = {}


def _glob_escaped(text: str) -> str:
    """``text`` matched literally by a Redis glob pattern."""
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)
