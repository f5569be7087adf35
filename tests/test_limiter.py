"""How a request is counted (:mod:`navai_mw.runtime.rate_counters`), against a real
``redis-server`` on a loopback port and the ``limits`` memory storages.

The counts must be exactly those of the ``limits`` library on the same keys
(other ``limits`` users of the same Redis agree with navai_mw), every window
of a policy counts a request or none does, and the batches that carry
concurrent counts to Redis stay exact, recover from a flushed script cache,
fail as a whole within their deadline, and survive a request that leaves.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from navai_mw.core.effects import LimitResult
from navai_mw.core.rate_limit_policy import RateLimitPolicy
from navai_mw.runtime.memory_counts import MAX_CLIENTS, SWEEP_SECONDS, MemoryCounts
from navai_mw.runtime.rate_counters import AsyncCounter, SyncCounter

from .redis_server import RedisServer, command, redis_fixture

pytest.importorskip("limits")

redis = redis_fixture(scope="module")


def _policy(text: str) -> RateLimitPolicy:
    return RateLimitPolicy.parse("mint", text)


def _key() -> str:
    return f"navai:mint:id:{uuid.uuid4().hex}"


def _async_redis(server: RedisServer, timeout: float = 1.0) -> AsyncCounter:
    from limits.storage import storage_from_string

    storage = storage_from_string(f"async+{server.url}", implementation="redispy")
    return AsyncCounter(storage, timeout=timeout)


def _sync_redis(server: RedisServer) -> SyncCounter:
    from limits.storage import storage_from_string

    return SyncCounter(storage_from_string(server.url))


async def _close_limits(storage: Any) -> None:
    """Close the client of a limits async Redis storage (limits never does)."""
    await storage.bridge.get_connection().aclose()


def _info(server: RedisServer, field: str) -> int:
    text = command(server.port, "INFO", "all").decode()
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split(":", 1)[1])
    raise AssertionError(f"no {field} in INFO")


def _script_runs(server: RedisServer) -> int:
    text = command(server.port, "INFO", "commandstats").decode()
    total = 0
    for line in text.splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
            total += int(line.split("calls=", 1)[1].split(",", 1)[0])
    return total


@pytest.fixture
def thawed(redis: RedisServer) -> Iterator[RedisServer]:
    yield redis
    if redis.frozen:
        redis.thaw()


# -- the same counts as the limits library -------------------------------------------


def test_async_script_counts_what_limits_reads_and_the_other_way_round(
    redis: RedisServer,
) -> None:
    from limits.aio.strategies import SlidingWindowCounterRateLimiter
    from limits.storage import storage_from_string

    policy, key = _policy("5/minute"), _key()
    item = policy.items[0]

    async def scenario() -> tuple[list[LimitResult], int, bool, LimitResult]:
        counter = _async_redis(redis)
        ours = [await counter.hit(policy, key) for _ in range(3)]
        storage = storage_from_string(f"async+{redis.url}", implementation="redispy")
        limits = SlidingWindowCounterRateLimiter(storage)
        remaining = (await limits.get_window_stats(item, key)).remaining
        assert await limits.hit(item, key)
        assert await limits.hit(item, key)
        refused_by_limits = await limits.hit(item, key)
        after = await counter.hit(policy, key)
        await counter.aclose()
        await _close_limits(storage)
        return ours, remaining, refused_by_limits, after

    ours, remaining, refused_by_limits, after = asyncio.run(scenario())
    assert [r.allowed for r in ours] == [True, True, True]
    assert [r.windows[0][0] for r in ours] == [4, 3, 2]
    assert remaining == 2  # limits reads the three counts the script made
    assert refused_by_limits is False  # its own two made five
    assert after.allowed is False  # and the script sees all five
    assert after.windows[0][0] == 0


def test_sync_script_counts_what_limits_reads(redis: RedisServer) -> None:
    from limits.storage import storage_from_string
    from limits.strategies import SlidingWindowCounterRateLimiter

    policy, key = _policy("4/minute"), _key()
    counter = _sync_redis(redis)
    results = [counter.hit(policy, key) for _ in range(5)]
    assert [r.allowed for r in results] == [True, True, True, True, False]
    assert [r.windows[0][0] for r in results] == [3, 2, 1, 0, 0]
    limits = SlidingWindowCounterRateLimiter(storage_from_string(redis.url))
    stats = limits.get_window_stats(policy.items[0], key)
    assert stats.remaining == 0
    # The refused request counted nothing: the window holds four.
    assert not limits.test(policy.items[0], key)


def _replay(counts: MemoryCounts, policy: RateLimitPolicy, key: str, at: list[float]) -> list[Any]:
    return [counts.hit(policy, key, now) for now in at]


@pytest.mark.parametrize("shell", ["sync", "async"])
def test_memory_and_redis_answer_alike(redis: RedisServer, shell: str) -> None:
    """One behaviour on either storage: the same requests, at the same
    moments, get the same answers, the same slots left and the same time at
    which a slot frees (to within the milliseconds between the two)."""
    from limits.storage import storage_from_string

    policy = _policy("3/minute;5/hour")
    memory_key, redis_key = _key(), _key()
    if shell == "sync":
        memory = SyncCounter(storage_from_string("memory://"))
        on_redis = _sync_redis(redis)
        pairs = [(memory.hit(policy, memory_key), on_redis.hit(policy, redis_key))]
        pairs += [(memory.hit(policy, memory_key), on_redis.hit(policy, redis_key))]
        pairs += [(memory.hit(policy, memory_key), on_redis.hit(policy, redis_key))]
        pairs += [(memory.hit(policy, memory_key), on_redis.hit(policy, redis_key))]
    else:

        async def counts() -> list[tuple[LimitResult, LimitResult]]:
            memory = AsyncCounter(storage_from_string("async+memory://"), timeout=1.0)
            on_redis = _async_redis(redis)
            made = [
                (await memory.hit(policy, memory_key), await on_redis.hit(policy, redis_key))
                for _ in range(4)
            ]
            await on_redis.aclose()
            return made

        pairs = asyncio.run(counts())
    assert [(m.allowed, r.allowed) for m, r in pairs] == [(True, True)] * 3 + [(False, False)]
    for in_memory, in_redis in pairs:
        for item, (m_left, m_frees), (r_left, r_frees) in zip(
            policy.items, in_memory.windows, in_redis.windows, strict=True
        ):
            assert m_left == r_left
            # A slot frees at the same moment, modulo a whole period (a
            # period that starts now reads as "0 s" or "a period" alike:
            # which, turns on the millisecond the two were asked in).
            period = item.get_expiry()
            apart = abs((m_frees - in_memory.now) - (r_frees - in_redis.now)) % period
            assert min(apart, period - apart) < 0.5
    # The first of three requests in one minute frees its slot a minute
    # after it, whatever the clock's minute (a period that starts now reads
    # as 0 s ahead: the guard counts it as the whole period).
    for result in pairs[-1]:
        ahead = (result.windows[0][1] - result.now) % 60
        assert min(ahead, 60 - ahead) < 0.5


def test_memory_counts_start_their_periods_with_the_first_request() -> None:
    """A period starts with a client's first request, not on the clock; when
    it is over it weighs on the next by the share of it still ahead (the
    limits arithmetic), then not at all."""
    policy, key = _policy("10/minute"), _key()
    counts = MemoryCounts()
    start = 60 * 29_000_000 + 30.0  # halfway through the clock's minute
    results = _replay(counts, policy, key, [start] * 11)
    assert [r.allowed for r in results] == [True] * 10 + [False]
    # Full for a minute from the first request, not up to the clock's minute.
    assert not counts.hit(policy, key, start + 31).allowed
    assert not counts.hit(policy, key, start + 59.9).allowed
    # A period and a half on: half of the ten still weigh, five are free.
    later = _replay(counts, policy, key, [start + 90] * 6)
    assert [r.allowed for r in later] == [True] * 5 + [False]
    assert later[-1].windows[0][0] == 0
    # Three periods on, the first is forgotten; the five of the second weigh
    # by what is left of it (a quarter: 1.25, floored as limits does).
    again = _replay(counts, policy, key, [start + 165] * 10)
    assert [r.allowed for r in again] == [True] * 9 + [False]


def test_memory_counts_drop_expired_windows() -> None:
    """Counts no longer needed are dropped (a key per client would otherwise
    pile up): two periods after they start, and only those."""
    policy = _policy("3/minute")
    counts = MemoryCounts()
    start = 60 * 31_000_000 + 0.5
    for index in range(50):
        counts.hit(policy, f"navai:mint:ip:10.0.0.{index}", start)
    assert len(counts) == 50
    # A period later the sweeps have run, and nothing has expired yet.
    later = counts.hit(policy, "navai:mint:ip:10.0.1.1", start + 60)
    assert later.allowed
    assert len(counts) == 51
    # Two periods after the fifty started, they go; the later one stays.
    counts.hit(policy, "navai:mint:ip:10.0.1.2", start + 120 + SWEEP_SECONDS)
    assert len(counts) == 2


def test_the_sweep_keeps_a_count_that_started_again() -> None:
    """The sweep drops what has expired, never what is counting: a window
    whose first period became the previous one keeps its new period."""
    policy = _policy("3/minute")
    counts = MemoryCounts()
    start = 60 * 31_000_000 + 0.5
    counts.hit(policy, "navai:mint:ip:192.0.2.7", start)
    # 70 s on: the first period is over and weighs by what is left of it
    # (50 of 60 s, floored: nothing); a new period counts this request.
    assert counts.hit(policy, "navai:mint:ip:192.0.2.7", start + 70).windows[0][0] == 2
    assert len(counts) == 2  # the previous period's count, and the current one's
    # Past the first period's expiry (120 s), a sweep drops it, and only it.
    counts.hit(policy, "navai:mint:ip:192.0.2.8", start + 121 + SWEEP_SECONDS)
    assert len(counts) == 2  # .7's current period, and .8's
    assert counts.hit(policy, "navai:mint:ip:192.0.2.7", start + 122).allowed


def test_memory_counts_forget_window_names_past_their_bound() -> None:
    policy = _policy("2/hour")
    counts = MemoryCounts()
    now = time.time()
    first = "navai:mint:ip:192.0.2.1"
    counts.hit(policy, first, now)
    for index in range(MAX_CLIENTS):
        counts.hit(
            policy, f"navai:mint:ip:10.{index // 65536}.{index // 256 % 256}.{index % 256}", now
        )
    assert len(counts._windows) <= MAX_CLIENTS
    # The count of a forgotten name is still there: only its spelling was cached.
    assert counts.hit(policy, first, now).windows[0][0] == 0
    assert not counts.hit(policy, first, now).allowed


@pytest.mark.parametrize("where", ["redis-async", "redis-sync", "memory-async", "memory-sync"])
def test_a_refused_request_is_counted_in_no_window(redis: RedisServer, where: str) -> None:
    from limits.storage import storage_from_string

    # The window that refuses comes second: the first must not count either.
    policy, key = _policy("5/hour;3/minute"), _key()

    def run() -> list[LimitResult]:
        if where == "redis-sync":
            sync = _sync_redis(redis)
            return [sync.hit(policy, key) for _ in range(5)]
        if where == "memory-sync":
            memory = SyncCounter(storage_from_string("memory://"))
            return [memory.hit(policy, key) for _ in range(5)]

        async def counts() -> list[LimitResult]:
            if where == "redis-async":
                counter = _async_redis(redis)
            else:
                counter = AsyncCounter(storage_from_string("async+memory://"), timeout=1.0)
            results = [await counter.hit(policy, key) for _ in range(5)]
            await counter.aclose()
            return results

        return asyncio.run(counts())

    results = run()
    assert [r.allowed for r in results] == [True, True, True, False, False]
    hour, minute = results[-1].windows
    assert minute[0] == 0
    assert hour[0] == 2  # the two refused requests spent nothing of the hour


def test_the_script_slides_its_windows_as_limits_does(redis: RedisServer) -> None:
    """A period that ends becomes the previous one, weighted by what is left
    of it: the same decisions as limits' own script on a twin key."""
    from limits.aio.strategies import SlidingWindowCounterRateLimiter
    from limits.storage import storage_from_string

    policy = _policy("2/second")
    item = policy.items[0]
    ours_key, theirs_key = _key(), _key()

    async def scenario() -> tuple[list[bool], list[bool]]:
        counter = _async_redis(redis)
        storage = storage_from_string(f"async+{redis.url}", implementation="redispy")
        limits = SlidingWindowCounterRateLimiter(storage)
        ours: list[bool] = []
        theirs: list[bool] = []

        async def both() -> None:
            ours.append((await counter.hit(policy, ours_key)).allowed)
            theirs.append(await limits.hit(item, theirs_key))

        for _ in range(3):
            await both()
        await asyncio.sleep(1.1)  # the first second is over; 0.9 s of it still weighs
        for _ in range(2):
            await both()
        await counter.aclose()
        await _close_limits(storage)
        return ours, theirs

    ours, theirs = asyncio.run(scenario())
    assert ours == [True, True, False, True, False]
    assert theirs == ours


# -- batches ---------------------------------------------------------------------------


def test_concurrent_counts_go_in_one_batch_and_stay_exact(redis: RedisServer) -> None:
    policy, key = _policy("50/minute"), _key()
    connections_before = _info(redis, "total_connections_received")
    runs_before = _script_runs(redis)

    async def scenario() -> list[LimitResult]:
        counter = _async_redis(redis)
        results = await asyncio.gather(*(counter.hit(policy, key) for _ in range(200)))
        await counter.aclose()
        return list(results)

    results = asyncio.run(scenario())
    assert sum(r.allowed for r in results) == 50
    # Redis ran each count's script in the order sent: the remaining count
    # goes down one by one, then stays at zero.
    assert sorted((r.windows[0][0] for r in results if r.allowed), reverse=True) == list(
        range(49, -1, -1)
    )
    assert _script_runs(redis) - runs_before == 200
    # Asked in one turn of the loop: one write on one connection (the three
    # others are this test's own INFO commands since the first).
    assert _info(redis, "total_connections_received") - connections_before == 1 + 3


def test_a_flushed_script_cache_is_refilled(redis: RedisServer) -> None:
    policy, key = _policy("10/minute"), _key()

    async def scenario() -> list[LimitResult]:
        counter = _async_redis(redis)
        first = await counter.hit(policy, key)
        assert command(redis.port, "SCRIPT", "FLUSH") == b"+OK"
        again = await asyncio.gather(*(counter.hit(policy, key) for _ in range(3)))
        await counter.aclose()
        return [first, *again]

    results = asyncio.run(scenario())
    assert all(r.allowed for r in results)
    assert sorted(r.windows[0][0] for r in results) == [6, 7, 8, 9]

    sync = _sync_redis(redis)
    assert command(redis.port, "SCRIPT", "FLUSH") == b"+OK"
    assert sync.hit(policy, key).windows[0][0] == 5


def test_a_frozen_redis_fails_the_whole_batch_within_its_deadline(thawed: RedisServer) -> None:
    policy, key = _policy("10/minute"), _key()

    async def scenario() -> tuple[list[BaseException | LimitResult], float, LimitResult]:
        counter = _async_redis(thawed, timeout=0.3)
        await counter.hit(policy, key)  # connected before the freeze
        thawed.freeze()
        start = time.monotonic()
        outcomes = await asyncio.gather(
            *(counter.hit(policy, key) for _ in range(3)), return_exceptions=True
        )
        took = time.monotonic() - start
        thawed.thaw()
        after = await counter.hit(policy, key)
        await counter.aclose()
        return outcomes, took, after

    outcomes, took, after = asyncio.run(scenario())
    assert all(isinstance(outcome, TimeoutError) for outcome in outcomes)
    assert took < 1.0
    # The frozen connection was dropped; a fresh one counts on. What the
    # frozen server ran after its thaw, if anything, is counted too.
    assert after.allowed
    assert after.windows[0][0] in (5, 8)


def test_a_request_that_leaves_does_not_disturb_its_batch(redis: RedisServer) -> None:
    policy, key = _policy("10/minute"), _key()

    async def scenario() -> list[Any]:
        counter = _async_redis(redis)
        tasks = [asyncio.ensure_future(counter.hit(policy, key)) for _ in range(3)]
        await asyncio.sleep(0)  # all three wait on the batch
        tasks[1].cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        after = await counter.hit(policy, key)
        await counter.aclose()
        return [*outcomes, after]

    first, left, third, after = asyncio.run(scenario())
    assert isinstance(left, asyncio.CancelledError)
    assert isinstance(first, LimitResult)
    assert isinstance(third, LimitResult)
    assert first.allowed
    assert third.allowed
    # The batch was sent whole: the count of the one that left was made.
    assert after.windows[0][0] == 6


def test_aclose_closes_the_connections(redis: RedisServer) -> None:
    policy, key = _policy("100/minute"), _key()
    before = _info(redis, "connected_clients")

    async def scenario() -> int:
        counter = _async_redis(redis)
        await asyncio.gather(*(counter.hit(policy, key) for _ in range(5)))
        # Two batches in flight at once: two connections.
        first = asyncio.gather(*(counter.hit(policy, key) for _ in range(5)))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        second = asyncio.gather(*(counter.hit(policy, key) for _ in range(5)))
        await asyncio.gather(first, second)
        during = _info(redis, "connected_clients")
        await counter.aclose()
        return during

    during = asyncio.run(scenario())
    assert during > before
    deadline = time.monotonic() + 2
    while _info(redis, "connected_clients") > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _info(redis, "connected_clients") == before


def test_closing_answers_the_counts_in_flight(thawed: RedisServer) -> None:
    policy, key = _policy("10/minute"), _key()

    async def scenario() -> BaseException | LimitResult:
        counter = _async_redis(thawed, timeout=5.0)
        await counter.hit(policy, key)
        thawed.freeze()
        waiting = asyncio.ensure_future(counter.hit(policy, key))
        await asyncio.sleep(0.05)  # sent, and waiting for the frozen server
        await counter.aclose()  # a server shutting down
        outcome = (await asyncio.gather(waiting, return_exceptions=True))[0]
        thawed.thaw()
        return outcome

    outcome = asyncio.run(scenario())
    # An answer (the guard's 503), not a request cancelled from under it.
    assert isinstance(outcome, ConnectionError)


@pytest.mark.parametrize("turns", [0, 1, 2])
def test_closing_as_a_count_is_queued_answers_it_and_leaks_nothing(
    redis: RedisServer, turns: int
) -> None:
    """aclose() right after a request asked for a count: before its batch
    was sent, or as its task was about to start."""
    policy, key = _policy("10/minute"), _key()
    before = _info(redis, "connected_clients")

    async def scenario() -> BaseException | LimitResult:
        counter = _async_redis(redis)
        await counter.hit(policy, key)  # a connection, idle
        waiting = asyncio.ensure_future(counter.hit(policy, key))
        for _ in range(turns):
            await asyncio.sleep(0)
        await counter.aclose()
        done, _ = await asyncio.wait([waiting], timeout=2)
        assert done, "the count was never answered"
        return (await asyncio.gather(waiting, return_exceptions=True))[0]

    outcome = asyncio.run(scenario())
    assert isinstance(outcome, (LimitResult, ConnectionError))
    deadline = time.monotonic() + 2
    while _info(redis, "connected_clients") > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _info(redis, "connected_clients") == before


def test_batches_wait_for_a_free_connection_beyond_the_cap(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import navai_mw.runtime.rate_counters

    monkeypatch.setattr(navai_mw.runtime.rate_counters, "MAX_CONNECTIONS", 1)
    policy, key = _policy("1000/minute"), _key()
    opened_before = _info(redis, "total_connections_received")

    async def scenario() -> list[LimitResult]:
        counter = _async_redis(redis)
        asked = []
        for _ in range(5):  # five turns of the loop: five batches
            asked.append(asyncio.ensure_future(counter.hit(policy, key)))
            await asyncio.sleep(0)
        results = await asyncio.gather(*asked)
        await counter.aclose()
        return list(results)

    results = asyncio.run(scenario())
    assert sorted(r.windows[0][0] for r in results) == [995, 996, 997, 998, 999]
    # One connection carried them all (the other is this test's INFO).
    assert _info(redis, "total_connections_received") - opened_before == 1 + 1


def _counts_around(server: RedisServer, policy: RateLimitPolicy, good: str, odd: str) -> list[Any]:
    """``odd`` counted between two counts of ``good`` (one batch), then
    ``good`` once more on its own: each outcome, or the exception it raised."""

    async def scenario() -> list[Any]:
        counter = _async_redis(server)
        outcomes = await asyncio.gather(
            counter.hit(policy, good),
            counter.hit(policy, odd),
            counter.hit(policy, good),
            return_exceptions=True,
        )
        after = await counter.hit(policy, good)
        await counter.aclose()
        return [*outcomes, after]

    return asyncio.run(scenario())


def test_a_key_redis_cannot_take_fails_only_its_own_count(redis: RedisServer) -> None:
    policy = _policy("10/minute")
    good, bad = _key(), "navai:mint:id:\udcff"

    first, refused, third, after = _counts_around(redis, policy, good, bad)
    assert isinstance(refused, UnicodeError)
    assert isinstance(first, LimitResult)
    assert isinstance(third, LimitResult)
    assert sorted([first.windows[0][0], third.windows[0][0]]) == [8, 9]
    assert after.windows[0][0] == 7


def test_connections_the_server_closed_are_not_used_again(thawed: RedisServer) -> None:
    """After a Redis restart every idle connection is dead: the next counts
    go through fresh ones instead of failing one batch per dead connection."""
    policy, key = _policy("100/minute"), _key()

    async def scenario() -> list[str]:
        counter = _async_redis(thawed)
        in_flight = []
        for _ in range(4):  # four batches at once: four connections, then idle
            in_flight.append(asyncio.ensure_future(counter.hit(policy, key)))
            await asyncio.sleep(0)
        await asyncio.gather(*in_flight)
        thawed.stop()
        thawed.start()
        await asyncio.sleep(0.2)  # the loop reads each connection's end of stream
        outcomes = []
        for _ in range(6):
            try:
                await counter.hit(policy, key)
                outcomes.append("ok")
            except Exception as exc:
                outcomes.append(type(exc).__name__)
        await counter.aclose()
        return outcomes

    assert asyncio.run(scenario()) == ["ok"] * 6


def test_a_count_redis_refuses_fails_alone_and_the_connection_goes_on(
    redis: RedisServer,
) -> None:
    """A key that holds something else (another application's list): Redis
    answers that script with an error; the counts around it are unharmed."""
    policy = _policy("10/minute")
    good, taken = _key(), _key()
    current = f"LIMITS:{{{policy.items[0].key_for(taken)}}}"
    assert command(redis.port, "RPUSH", current, "x") == b":1"
    opened_before = _info(redis, "total_connections_received")

    first, refused, third, after = _counts_around(redis, policy, good, taken)
    from redis.exceptions import ResponseError

    assert isinstance(refused, ResponseError)
    assert "WRONGTYPE" in str(refused)
    assert isinstance(first, LimitResult)
    assert isinstance(third, LimitResult)
    assert after.windows[0][0] == 7
    # One connection served the batch and the count after it.
    assert _info(redis, "total_connections_received") - opened_before == 1 + 1


class _OtherStorage:
    """A storage of another kind (as Redis Cluster or memcached are to the
    counters): only the limits sliding-window calls, here over memory."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage

    def acquire_sliding_window_entry(self, *args: Any) -> Any:
        return self._storage.acquire_sliding_window_entry(*args)

    def get_sliding_window(self, *args: Any) -> Any:
        return self._storage.get_sliding_window(*args)


@pytest.mark.parametrize("shell", ["sync", "async"])
def test_other_storages_count_through_the_limits_calls(shell: str) -> None:
    from limits.storage import storage_from_string

    # The first window refuses: nothing is counted in the second. (When a
    # later window refuses, the earlier ones have counted, as in limits.)
    policy, key = _policy("3/minute;5/hour"), _key()
    if shell == "sync":
        sync = SyncCounter(_OtherStorage(storage_from_string("memory://")))
        results = [sync.hit(policy, key) for _ in range(5)]
    else:

        async def counts() -> list[LimitResult]:
            storage = _OtherStorage(storage_from_string("async+memory://"))
            counter = AsyncCounter(storage, timeout=1.0)
            assert counter.bounded is False  # the effects bound it with a deadline
            return [await counter.hit(policy, key) for _ in range(5)]

        results = asyncio.run(counts())
    assert [r.allowed for r in results] == [True, True, True, False, False]
    assert [r.windows[0][0] for r in results] == [2, 1, 0, 0, 0]
    assert results[-1].windows[1][0] == 2
