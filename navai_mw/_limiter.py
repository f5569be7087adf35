"""Counting one request against a rate-limit policy, in a ``limits`` storage.

The storage and the arithmetic are the ``limits`` library's sliding window
counter: each window of a policy (``"10/minute;200/day"``) keeps a count for
the current period and one for the period before, and a request is let
through while ``floor(previous * time left of it / period) + current``
stays within the limit. What the guard needs per request is the answer
*and* the state of every window after it (for the ``RateLimit`` header).
Through the ``limits`` API that is a ``hit`` and a ``get_window_stats`` per
window; here it is one step wherever the storage allows:

* **Redis and Valkey** (``redis://``, ``rediss://``, sentinel): one round
  trip. :data:`SLIDING_WINDOWS_LUA`, over the keys ``limits`` gives those
  windows, checks every window, counts the request in all of them or in
  none, and returns their state. (Two round trips per window, each with
  redis-py's client-side overhead, were most of the guard's cost.)
* **memory:// under asyncio**: the ``limits`` async memory storage's own
  counters (``get``, ``incr``), read and counted in one pass. None of its
  calls waits for anything, so nothing else runs in between: the pass is as
  atomic as the script.
* **Every other storage** (the sync ones under WSGI, whose threads can
  interleave; Redis Cluster, whose windows of one policy live on different
  nodes): the storage's sliding-window calls per window, acquire and then
  read back. A window that refuses stops the count, as in ``limits``.

Each reports a :class:`LimitResult` built by :func:`window_state`, the
arithmetic of ``limits``' ``get_window_stats``. The keys and counts stay
those of ``limits`` (a test holds the two to the same numbers), so other
``limits`` users of the same Redis agree with navai_mw.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, cast

from ._guard import LimitResult, RateLimitPolicy
from .transports import LoopBound, attempt_deadline

__all__ = ["AsyncCounter", "SyncCounter", "window_state"]

# KEYS: each window's previous and current key, in the policy's order.
# ARGV: each window's limit and period in seconds, in the same order.
# Returns 1 (counted) or 0 (a window is full: nothing counted), then each
# window's previous count, its time left in ms, current count, time left.
SLIDING_WINDOWS_LUA: Final = """
local windows = #KEYS / 2
local seen = {}
local allowed = 1
for i = 1, windows do
    local previous, current = KEYS[2 * i - 1], KEYS[2 * i]
    local limit = tonumber(ARGV[2 * i - 1])
    local period = tonumber(ARGV[2 * i]) * 1000
    local current_left = redis.call('pttl', current)
    if current_left > 0 and current_left < period then
        -- the current period is over: it becomes the previous one
        redis.call('rename', current, previous)
        redis.call('set', current, 0, 'PX', current_left + period)
    end
    local previous_count = tonumber(redis.call('get', previous)) or 0
    local previous_left = math.max(redis.call('pttl', previous), 0)
    local current_count = tonumber(redis.call('get', current)) or 0
    current_left = math.max(redis.call('pttl', current), 0)
    if math.floor(previous_count * previous_left / period) + current_count + 1 > limit then
        allowed = 0
    end
    seen[i] = {previous_count, previous_left, current_count, current_left, period}
end
local reply = {allowed}
for i = 1, windows do
    local window = seen[i]
    if allowed == 1 then
        local current = KEYS[2 * i]
        if redis.call('exists', current) == 1 then
            window[3] = redis.call('incr', current)
        else
            -- a new current period: it lives on as the previous one
            redis.call('set', current, 1, 'PX', window[5] * 2)
            window[3], window[4] = 1, window[5] * 2
        end
    end
    for j = 1, 4 do
        reply[#reply + 1] = window[j]
    end
end
return reply
"""


_SCRIPT_SHA: Final = hashlib.sha1(SLIDING_WINDOWS_LUA.encode(), usedforsecurity=False).hexdigest()

# Connections kept open between counts, per event loop; more are opened
# while more counts are in flight, and closed after them.
MAX_IDLE_CONNECTIONS: Final = 64


def window_state(
    item: Any,
    previous_count: int,
    previous_left: float,
    current_count: int,
    current_left: float,
    now: float,
) -> tuple[int, float]:
    """The requests a window has left, and the Unix time at which it next
    frees a slot (``limits``' ``get_window_stats``; times left in seconds)."""
    period = item.get_expiry()
    weighted = previous_count * previous_left / period + current_count
    remaining = max(0, item.amount - math.floor(weighted))
    frees_in = math.inf
    if previous_count:
        frees_in = previous_left % (period / previous_count)
    if current_count:
        frees_in = min(frees_in, current_left % period)
    return remaining, now + (0.0 if frees_in == math.inf else frees_in)


def _script_parts(policy: RateLimitPolicy, key: str, prefix: str) -> tuple[list[str], list[int]]:
    """The script's keys and arguments: ``limits``' two keys of each window
    (``PREFIX:{item key}`` and ``PREFIX:{item key}/-1``), its limit and period."""
    keys: list[str] = []
    args: list[int] = []
    for item in policy.items:
        current = f"{prefix}:{{{item.key_for(key)}}}"
        keys += (f"{current}/-1", current)
        args += (item.amount, item.get_expiry())
    return keys, args


def _script_result(policy: RateLimitPolicy, reply: Sequence[Any], now: float) -> LimitResult:
    windows = tuple(
        window_state(
            item,
            int(reply[1 + 4 * i]),
            int(reply[2 + 4 * i]) / 1000,
            int(reply[3 + 4 * i]),
            int(reply[4 + 4 * i]) / 1000,
            now,
        )
        for i, item in enumerate(policy.items)
    )
    return LimitResult(allowed=reply[0] == 1, windows=windows, now=now)


def _windows_result(
    policy: RateLimitPolicy, allowed: bool, states: Iterable[tuple[int, float, int, float]]
) -> LimitResult:
    now = time.time()
    windows = tuple(
        window_state(item, *state, now) for item, state in zip(policy.items, states, strict=True)
    )
    return LimitResult(allowed=allowed, windows=windows, now=now)


def _scripted(storage: Any, sync: bool) -> tuple[Any, str] | None:
    """The storage's Redis client and key prefix when one script can count a
    request there, else None (not Redis, or a cluster)."""
    if sync:
        from limits.storage import RedisClusterStorage, RedisStorage

        if isinstance(storage, RedisStorage) and not isinstance(storage, RedisClusterStorage):
            return storage.get_connection(), storage.key_prefix
        return None
    from limits.aio.storage import RedisClusterStorage as AsyncCluster
    from limits.aio.storage import RedisStorage as AsyncRedis

    if isinstance(storage, AsyncRedis) and not isinstance(storage, AsyncCluster):
        bridge: Any = storage.bridge  # redis-py's (the ``implementation`` asked for)
        return bridge.get_connection(), bridge.key_prefix
    return None


class _Pipe:
    """One event loop's connections, and the counts waiting to be sent."""

    __slots__ = ("idle", "sending", "waiting")

    def __init__(self) -> None:
        self.idle: list[Any] = []
        self.waiting: list[tuple[list[str], list[int], asyncio.Future[Any]]] | None = None
        self.sending: set[asyncio.Task[None]] = set()


class _ScriptConnections(LoopBound[_Pipe]):
    """Runs the counting script on Redis connections of its own, made with
    the settings of the storage's client (address, database, password, TLS).

    The counts asked for in one turn of the event loop go out together, one
    write for all on one connection, and their answers are read back in
    order (Redis runs each script whole, so every count stays exact). Under
    load that is one round trip for several requests, and never more than
    one per request; a lone request waits for no one. Each batch is bounded
    by ``timeout`` as a whole, so the requests themselves need no timer. A
    batch that fails fails each of its counts with the same error.

    Through the client's own command path, every command also checks a
    connection out of a pool with a read to see that it is clean, and
    dispatches events and records metrics: as much CPU again as the round
    trip. A connection here is clean whenever it is idle, as redis-py
    disconnects one whose command failed or was cancelled halfway (it
    connects again on its next use).
    """

    def __init__(self, client: Any, timeout: float) -> None:
        from redis.exceptions import NoScriptError, ResponseError

        super().__init__(None)
        self._connection = client.connection_pool.make_connection
        self._timeout = timeout
        self._no_script = NoScriptError
        self._refused = ResponseError
        # hiredis packs a command in C (the limits extra installs it);
        # redis-py's asyncio packer costs a third of the round trip.
        try:
            from hiredis import pack_command
        except ImportError:  # pragma: no cover
            self._pack: Callable[[tuple[Any, ...]], bytes] | None = None
        else:
            self._pack = pack_command

    def _make(self) -> _Pipe:
        return _Pipe()

    async def _close(self, pipe: _Pipe) -> None:
        for task in list(pipe.sending):
            task.cancel()
        while pipe.idle:
            await pipe.idle.pop().disconnect(nowait=True)

    async def run(self, keys: list[str], args: list[int]) -> Any:
        """The script's reply for these keys and arguments."""
        pipe = await self._current()
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        if pipe.waiting is None:
            pipe.waiting = []
            loop.call_soon(self._send_waiting, pipe, loop)
        pipe.waiting.append((keys, args, answer))
        return await answer

    def _send_waiting(self, pipe: _Pipe, loop: asyncio.AbstractEventLoop) -> None:
        batch, pipe.waiting = pipe.waiting or [], None
        task = loop.create_task(self._send(pipe, batch))
        pipe.sending.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(pipe.sending.discard)

    async def _send(
        self, pipe: _Pipe, batch: list[tuple[list[str], list[int], asyncio.Future[Any]]]
    ) -> None:
        connection = pipe.idle.pop() if pipe.idle else self._connection()
        try:
            async with attempt_deadline(self._timeout):
                await connection.connect()  # at once when it is connected
                pending = batch
                # A new or flushed server knows no script by its digest: the
                # counts it refused for that go again with the script whole.
                for name, script in (("EVALSHA", _SCRIPT_SHA), ("EVAL", SLIDING_WINDOWS_LUA)):
                    pending = await self._exchange(connection, name, script, pending)
                    if not pending:
                        break
        except BaseException as exc:
            # A batch cancelled (its loop shutting down) still answers its
            # requests: the storage is unavailable to them.
            failure = exc if isinstance(exc, Exception) else ConnectionError("count abandoned")
            for _, _, answer in batch:
                if not answer.done():
                    answer.set_exception(failure)
            if failure is not exc:
                raise
        finally:
            if len(pipe.idle) < MAX_IDLE_CONNECTIONS:
                pipe.idle.append(connection)
            else:
                await connection.disconnect(nowait=True)

    async def _exchange(
        self,
        connection: Any,
        name: str,
        script: str,
        batch: list[tuple[list[str], list[int], asyncio.Future[Any]]],
    ) -> list[tuple[list[str], list[int], asyncio.Future[Any]]]:
        """Send every count of ``batch``, settle each with its reply; return
        those the server did not run for want of the script."""
        commands = [(name, script, len(keys), *keys, *args) for keys, args, _ in batch]
        if self._pack is None:
            await connection.send_packed_command(
                connection.pack_commands(commands), check_health=False
            )
        else:
            await connection.send_packed_command(
                b"".join(map(self._pack, commands)), check_health=False
            )
        unknown = []
        for entry in batch:
            answer = entry[2]
            try:
                reply = await connection.read_response()
            except self._no_script:
                unknown.append(entry)
                continue
            except self._refused as exc:  # this count only; the connection is fine
                if not answer.done():
                    answer.set_exception(exc)
                continue
            if not answer.done():  # a request that left has cancelled it
                answer.set_result(reply)
        return unknown


class SyncCounter:
    """Counts requests in a ``limits`` sync storage (the WSGI shell)."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        scripted = _scripted(storage, sync=True)
        self._script: Any = None
        if scripted is not None:
            client, self._prefix = scripted
            self._script = client.register_script(SLIDING_WINDOWS_LUA)

    def hit(self, policy: RateLimitPolicy, key: str) -> LimitResult:
        if self._script is not None:
            keys, args = _script_parts(policy, key, self._prefix)
            reply = self._script(keys=keys, args=args)
            return _script_result(policy, reply, time.time())
        storage = self.storage
        allowed = all(
            storage.acquire_sliding_window_entry(item.key_for(key), item.amount, item.get_expiry())
            for item in policy.items
        )
        states = [
            storage.get_sliding_window(item.key_for(key), item.get_expiry())
            for item in policy.items
        ]
        return _windows_result(policy, allowed, states)


class AsyncCounter:
    """Counts requests in a ``limits`` async storage (the ASGI shell).

    ``hit(policy, key)`` is chosen once, for the storage: the script on
    Redis, the one pass in memory, the storage's calls elsewhere.
    """

    def __init__(self, storage: Any, *, timeout: float) -> None:
        from limits.aio.storage import MemoryStorage

        self.storage = storage
        scripted = _scripted(storage, sync=False)
        self._script: _ScriptConnections | None = None
        self.hit: Callable[[RateLimitPolicy, str], Awaitable[LimitResult]] = self._by_calls
        # Whether each count is bounded in time here (so the caller needs no
        # deadline of its own): memory never waits, the script's batches
        # carry their own.
        self.bounded = True
        if scripted is not None:
            client, self._prefix = scripted
            self._script = _ScriptConnections(client, timeout)
            self.hit = self._by_script
        elif isinstance(storage, MemoryStorage):
            self.hit = self._in_memory
        else:
            self.bounded = False

    async def _by_script(self, policy: RateLimitPolicy, key: str) -> LimitResult:
        keys, args = _script_parts(policy, key, self._prefix)
        reply = await cast(_ScriptConnections, self._script).run(keys, args)
        return _script_result(policy, reply, time.time())

    async def _by_calls(self, policy: RateLimitPolicy, key: str) -> LimitResult:
        storage = self.storage
        allowed = True
        for item in policy.items:
            if not await storage.acquire_sliding_window_entry(
                item.key_for(key), item.amount, item.get_expiry()
            ):
                allowed = False
                break
        states = [
            await storage.get_sliding_window(item.key_for(key), item.get_expiry())
            for item in policy.items
        ]
        return _windows_result(policy, allowed, states)

    async def _in_memory(self, policy: RateLimitPolicy, key: str) -> LimitResult:
        """One pass over the memory storage's counters of every window (its
        window keys, its times): read them, then count in all or none."""
        storage = self.storage
        now = time.time()
        seen = []
        allowed = True
        for item in policy.items:
            period = item.get_expiry()
            previous_key, current_key = storage.sliding_window_keys(item.key_for(key), period, now)
            previous = await storage.get(previous_key)
            current = await storage.get(current_key)
            # The periods are aligned on the clock: what is left of them.
            previous_left = (1 - ((now - period) / period) % 1) * period if previous else 0.0
            current_left = (1 - (now / period) % 1) * period + period
            if math.floor(previous * previous_left / period) + current + 1 > item.amount:
                allowed = False
            seen.append((current_key, previous, previous_left, current, current_left))
        windows = []
        for item, (current_key, previous, previous_left, current, current_left) in zip(
            policy.items, seen, strict=True
        ):
            if allowed:
                current = await storage.incr(current_key, 2 * item.get_expiry())
            windows.append(window_state(item, previous, previous_left, current, current_left, now))
        return LimitResult(allowed=allowed, windows=tuple(windows), now=now)

    async def aclose(self) -> None:
        """Close the script's connections (the ``limits`` storage's client
        opens none: it only registered its scripts)."""
        if self._script is not None:
            await self._script.aclose()
