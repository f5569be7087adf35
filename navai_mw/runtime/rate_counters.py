"""Counting one request against a rate-limit policy, in a ``limits`` storage.

The storage and the arithmetic are the ``limits`` library's sliding window
counter: each window of a policy (``"10/minute;200/day"``) keeps a count for
the current period and one for the period before, and a request is let
through while ``floor(previous * time left of it / period) + current``
stays within the limit. What the guard needs per request is the answer
*and* the state of every window after it (for the ``RateLimit`` header).
Through the ``limits`` API that is a ``hit`` and a ``get_window_stats`` per
window; here it is one step wherever the storage allows:

* **Redis** (``redis://``, ``rediss://``; under WSGI ``valkey://`` too):
  one round trip. :data:`SLIDING_WINDOWS_LUA`, over the keys ``limits`` gives those
  windows, checks every window, counts the request in all of them or in
  none, and returns their state. (Two round trips per window, each with
  redis-py's client-side overhead, were most of the guard's cost.)
* **memory://**: counts kept in this process (:class:`MemoryCounts`), by
  the script's own arithmetic, in one pass of plain code: a limit behaves
  the same on memory and on Redis. Under asyncio nothing runs in between,
  so the pass is as atomic as the script; under WSGI it runs under a lock
  (the server's threads would interleave otherwise).
* **Every other storage** (Redis Cluster, whose windows of one policy live
  on different nodes; ``valkey://`` and Redis over coredis under ASGI):
  the storage's sliding-window calls per window, acquire and then read
  back. A window that refuses stops the count, as in ``limits``, but the
  windows before it have counted the request.

Each reports a :class:`LimitResult` built by :func:`window_state`, the
arithmetic of ``limits``' ``get_window_stats``. On Redis the keys and counts
stay those of ``limits`` (a test holds the two to the same numbers), so
other ``limits`` users of the same Redis agree with navai_mw.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, cast

from ..core.effects import LimitResult
from ..core.rate_limit_policy import RateLimitPolicy
from .aio import LoopBound, attempt_deadline
from .memory_counts import MemoryCounts, window_state

__all__ = [
    "AsyncCounter",
    "SyncCounter",
    "window_state",
]

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

# Batches in flight at once on Redis, each on a connection of its own, per
# event loop; at most as many connections are kept open between counts.
MAX_CONNECTIONS: Final = 64
MAX_IDLE_CONNECTIONS: Final = MAX_CONNECTIONS


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
            item.amount,
            item.get_expiry(),
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
        window_state(item.amount, item.get_expiry(), *state, now)
        for item, state in zip(policy.items, states, strict=True)
    )
    return LimitResult(allowed=allowed, windows=windows, now=now)


def _scripted(storage: Any, sync: bool) -> tuple[Any, str] | None:
    """The storage's Redis client and key prefix when one script can count a
    request there, else None (not Redis, a cluster, or under asyncio a
    client other than redis-py's)."""
    if sync:
        from limits.storage import RedisClusterStorage, RedisStorage

        if isinstance(storage, RedisStorage) and not isinstance(storage, RedisClusterStorage):
            return storage.get_connection(), storage.key_prefix
        return None
    from limits.aio.storage import RedisClusterStorage as AsyncCluster
    from limits.aio.storage import RedisStorage as AsyncRedis
    from limits.aio.storage.redis.redispy import RedispyBridge

    if isinstance(storage, AsyncRedis) and not isinstance(storage, AsyncCluster):
        bridge: Any = storage.bridge
        # redis-py's own client only: the connections and the errors the
        # batches speak are redis-py's (valkey-py and coredis have their own).
        if type(bridge) is RedispyBridge:
            return bridge.get_connection(), bridge.key_prefix
    return None


# A count asked for: the script's keys and arguments, and where its reply goes.
Entry = tuple[list[str], list[int], "asyncio.Future[Any]"]
Batch = list[Entry]
Packed = list[tuple[Entry, bytes]]


class _Pipe:
    """One event loop's connections, and the counts waiting to be sent."""

    __slots__ = ("busy", "closed", "idle", "scheduled", "sending", "waiting")

    def __init__(self) -> None:
        self.idle: list[Any] = []
        self.busy = 0  # connections with a batch on them
        self.waiting: Batch = []
        self.scheduled = False  # a send of ``waiting`` is on the loop's list
        self.sending: set[asyncio.Task[None]] = set()
        self.closed = False


def _closed_by_server(connection: Any) -> bool:
    """Whether the server closed this idle connection (its end of stream has
    arrived). redis-py still calls it connected, and would fail the next
    batch on it; its own pool asks with a read for every command instead."""
    reader = getattr(connection, "_reader", None)  # redis-py's stream, when connected
    return reader is not None and reader.at_eof()


def _fail(batch: Batch, error: Exception) -> None:
    for _, _, answer in batch:
        if not answer.done():  # a request that left has cancelled its own
            answer.set_exception(error)


class _ScriptConnections(LoopBound[_Pipe]):
    """Runs the counting script on Redis connections of its own, made with
    the settings of the storage's client (address, database, password, TLS).

    The counts asked for in one turn of the event loop go out together, one
    write for all on one connection, and their answers are read back in
    order (Redis runs each script whole, so every count stays exact). Under
    load that is one round trip for several requests, and never more than
    one per request; a lone request waits for no one. At most
    :data:`MAX_CONNECTIONS` batches are in flight at once; counts asked for
    meanwhile wait for the next free connection, in one batch.

    Each batch is bounded by ``timeout`` as a whole, so the requests need no
    timer of their own, and whatever becomes of a batch (an error, its
    deadline, its task cancelled before it ran) each of its counts is
    answered. A connection goes back to the idle ones only after a batch
    went through whole; one that failed halfway is disconnected first.

    Through the client's own command path, every command also checks a
    connection out of a pool with a read to see that it is clean, and
    dispatches events and records metrics: as much CPU again as the round
    trip.
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
        pipe.closed = True
        waiting, pipe.waiting = pipe.waiting, []
        _fail(waiting, ConnectionError("rate-limit storage closed"))
        for task in list(pipe.sending):
            task.cancel()
        while pipe.idle:
            await pipe.idle.pop().disconnect(nowait=True)

    async def run(self, keys: list[str], args: list[int]) -> Any:
        """The script's reply for these keys and arguments."""
        pipe = await self._current()
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        pipe.waiting.append((keys, args, answer))
        if not pipe.scheduled and pipe.busy < MAX_CONNECTIONS:
            pipe.scheduled = True
            loop.call_soon(self._send_waiting, pipe, loop)
        return await answer

    def _send_waiting(self, pipe: _Pipe, loop: asyncio.AbstractEventLoop) -> None:
        pipe.scheduled = False
        batch, pipe.waiting = pipe.waiting, []
        if not batch:
            return
        if pipe.closed:
            _fail(batch, ConnectionError("rate-limit storage closed"))
            return
        pipe.busy += 1
        task = loop.create_task(self._send(pipe, batch))
        pipe.sending.add(task)  # held until done: the loop keeps only a weak reference

        def done(task: asyncio.Task[None]) -> None:
            pipe.sending.discard(task)
            pipe.busy -= 1
            # Cancelled before its first step, the task answered no one.
            _fail(batch, ConnectionError("count abandoned"))
            if pipe.waiting and not pipe.scheduled and not pipe.closed:
                pipe.scheduled = True  # the counts that waited for a connection
                loop.call_soon(self._send_waiting, pipe, loop)

        task.add_done_callback(done)

    async def _send(self, pipe: _Pipe, batch: Batch) -> None:
        connection = pipe.idle.pop() if pipe.idle else self._connection()
        whole = False
        try:
            async with attempt_deadline(self._timeout):
                if _closed_by_server(connection):  # a restart, an idle timeout
                    await connection.disconnect(nowait=True)
                await connection.connect()  # at once when it is connected
                pending = self._packed(batch, "EVALSHA", _SCRIPT_SHA)
                # A new or flushed server knows no script by its digest: the
                # counts it refused for that go again with the script whole.
                if pending:
                    pending = await self._exchange(connection, pending)
                if pending:
                    pending = self._packed(
                        [entry for entry, _ in pending], "EVAL", SLIDING_WINDOWS_LUA
                    )
                    await self._exchange(connection, pending)
            whole = True
        except Exception as exc:
            _fail(batch, exc)
        except BaseException:
            # Cancelled (the loop shutting down): the storage is unavailable
            # to these requests, which still get their answer.
            _fail(batch, ConnectionError("count abandoned"))
            raise
        finally:
            if whole and not pipe.closed and len(pipe.idle) < MAX_IDLE_CONNECTIONS:
                pipe.idle.append(connection)
            else:
                await connection.disconnect(nowait=True)

    def _packed(self, batch: Batch, name: str, script: str) -> Packed:
        """Each count of ``batch`` with its command; one that cannot be
        packed (a key Redis cannot take) fails alone."""
        packed = []
        for entry in batch:
            keys, args, answer = entry
            words = (name, script, len(keys), *keys, *args)
            try:
                command = (
                    self._pack(words)
                    if self._pack is not None
                    else b"".join(self._python_pack(words))
                )
            except (UnicodeError, TypeError, ValueError) as exc:
                if not answer.done():
                    answer.set_exception(exc)
                continue
            packed.append((entry, command))
        return packed

    @staticmethod
    def _python_pack(words: tuple[Any, ...]) -> list[bytes]:  # pragma: no cover
        from redis.asyncio.connection import Connection

        return list(Connection().pack_command(*words))

    async def _exchange(self, connection: Any, packed: Packed) -> Packed:
        """Send the commands in one write and settle each count with its
        reply; return those the server did not run for want of the script."""
        await connection.send_packed_command(
            b"".join(command for _, command in packed), check_health=False
        )
        unknown = []
        for entry, command in packed:
            answer = entry[2]
            try:
                reply = await connection.read_response()
            except self._no_script:
                unknown.append((entry, command))
                continue
            except self._refused as exc:  # this count only; the connection is fine
                if not answer.done():
                    answer.set_exception(exc)
                continue
            if not answer.done():  # a request that left has cancelled it
                answer.set_result(reply)
        return unknown


class SyncCounter:
    """Counts requests in a ``limits`` sync storage (the WSGI shell).

    ``hit(policy, key)`` is chosen once, for the storage: the script on
    Redis, the one pass in memory, the storage's calls elsewhere.
    """

    def __init__(self, storage: Any) -> None:
        from limits.storage import MemoryStorage

        self.storage = storage
        self.hit: Callable[[RateLimitPolicy, str], LimitResult] = self._by_calls
        scripted = _scripted(storage, sync=True)
        if scripted is not None:
            client, self._prefix = scripted
            self._script = client.register_script(SLIDING_WINDOWS_LUA)
            self.hit = self._by_script
        elif isinstance(storage, MemoryStorage):
            self._lock = threading.Lock()
            self._memory = MemoryCounts()
            self.hit = self._in_memory

    def _by_script(self, policy: RateLimitPolicy, key: str) -> LimitResult:
        keys, args = _script_parts(policy, key, self._prefix)
        reply = self._script(keys=keys, args=args)
        return _script_result(policy, reply, time.time())

    def _in_memory(self, policy: RateLimitPolicy, key: str) -> LimitResult:
        with self._lock:  # the server's threads take turns
            return self._memory.hit(policy, key, time.time())

    def _by_calls(self, policy: RateLimitPolicy, key: str) -> LimitResult:
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
        # In this process (memory://): counted by plain code, which the
        # caller may also call itself, sparing a coroutine.
        self.memory: MemoryCounts | None = None
        if scripted is not None:
            client, self._prefix = scripted
            self._script = _ScriptConnections(client, timeout)
            self.hit = self._by_script
        elif isinstance(storage, MemoryStorage):
            self.memory = MemoryCounts()
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
        # Nothing in it waits: no other request runs in between.
        return cast(MemoryCounts, self.memory).hit(policy, key, time.time())

    async def aclose(self) -> None:
        """Close the script's connections (the ``limits`` storage's client
        opens none: it only registered its scripts)."""
        if self._script is not None:
            await self._script.aclose()
