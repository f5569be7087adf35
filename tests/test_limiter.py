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


def test_memory_pass_agrees_with_limits_on_the_same_storage() -> None:
    from limits.aio.strategies import SlidingWindowCounterRateLimiter
    from limits.storage import storage_from_string

    policy, key = _policy("10/hour"), _key()

    async def scenario() -> tuple[LimitResult, Any]:
        storage = storage_from_string("async+memory://")
        counter = AsyncCounter(storage, timeout=1.0)
        for _ in range(3):
            last = await counter.hit(policy, key)
        limits = SlidingWindowCounterRateLimiter(storage)
        return last, await limits.get_window_stats(policy.items[0], key)

    last, stats = asyncio.run(scenario())
    assert last.windows[0][0] == stats.remaining == 7
    # Both say when the window next frees a slot, to within the time between.
    assert abs(last.windows[0][1] - stats.reset_time) < 1.0


@pytest.mark.parametrize("scheme", ["memory://", "async+memory://"])
def test_memory_counts_and_limits_calls_see_the_same_counters(scheme: str) -> None:
    """The counts kept in the storage's counters are those its own calls
    keep: limits refuses once navai_mw filled a window, and navai_mw counts
    what limits let through."""
    from limits.storage import storage_from_string

    policy, key = _policy("4/hour"), _key()
    item = policy.items[0]
    storage = storage_from_string(scheme)
    counts = MemoryCounts(storage)

    async def limits_call(name: str, *args: Any) -> Any:
        result = getattr(storage, name)(*args)
        return await result if asyncio.iscoroutine(result) else result

    async def scenario() -> None:
        assert await limits_call("acquire_sliding_window_entry", item.key_for(key), 4, 3600)
        assert counts.hit(policy, key, time.time()).windows[0][0] == 2
        assert counts.hit(policy, key, time.time()).windows[0][0] == 1
        assert await limits_call("acquire_sliding_window_entry", item.key_for(key), 4, 3600)
        previous, _, current, _ = await limits_call("get_sliding_window", item.key_for(key), 3600)
        assert previous + current == 4
        assert not await limits_call("acquire_sliding_window_entry", item.key_for(key), 4, 3600)
        assert not counts.hit(policy, key, time.time()).allowed

    asyncio.run(scenario())


def test_memory_counts_slide_their_windows() -> None:
    """Given the clock: a full period weighs on the next one by the share of
    it still ahead (the limits arithmetic), then not at all."""
    from limits.storage import storage_from_string

    policy, key = _policy("10/minute"), _key()
    counts = MemoryCounts(storage_from_string("memory://"))
    start = 60 * 29_000_000 + 30.0  # halfway through a period
    assert [counts.hit(policy, key, start).allowed for _ in range(11)] == [True] * 10 + [False]
    # Halfway through the next one: half of the ten still weigh, five are free.
    later = start + 60
    results = [counts.hit(policy, key, later) for _ in range(6)]
    assert [r.allowed for r in results] == [True] * 5 + [False]
    assert results[-1].windows[0][0] == 0
    # Two periods on, the first is forgotten; the five of the second weigh
    # half (2.5, floored as limits does): eight are free.
    again = [counts.hit(policy, key, start + 120).allowed for _ in range(9)]
    assert again == [True] * 8 + [False]


def test_memory_counts_drop_expired_windows() -> None:
    """Counts no longer needed leave the storage (a key per client and
    period would otherwise pile up), as the storage's own expiry does: two
    periods after they start, and only those."""
    from limits.storage import storage_from_string

    policy = _policy("3/minute")
    storage = storage_from_string("async+memory://")
    counts = MemoryCounts(storage)
    start = 60 * 31_000_000 + 0.5
    for index in range(50):
        counts.hit(policy, f"navai:mint:ip:10.0.0.{index}", start)
    assert len(storage.storage) == len(storage.expirations) == 50
    # A period later the sweeps have run, and nothing has expired yet.
    later = counts.hit(policy, "navai:mint:ip:10.0.1.1", start + 60)
    assert later.allowed
    assert len(storage.storage) == 51
    # Two periods after the fifty started, they go; the later one stays.
    counts.hit(policy, "navai:mint:ip:10.0.1.2", start + 120 + SWEEP_SECONDS)
    kept = sorted(key.split("/")[1] for key in storage.storage)
    assert kept == ["navai:mint:ip:10.0.1.1", "navai:mint:ip:10.0.1.2"]
    assert storage.expirations.keys() == storage.storage.keys()


def test_the_sweep_keeps_a_count_that_started_again() -> None:
    """A count whose expiry moved since it was queued (it was made anew)
    is not dropped at its old time."""
    from limits.storage import storage_from_string

    policy = _policy("3/minute")
    storage = storage_from_string("memory://")
    counts = MemoryCounts(storage)
    start = 60 * 31_000_000 + 0.5
    counts.hit(policy, "navai:mint:ip:192.0.2.7", start)
    (key,) = storage.storage
    storage.expirations[key] = start + 500
    counts.hit(policy, "navai:mint:ip:192.0.2.8", start + 121 + SWEEP_SECONDS)
    assert storage.storage[key] == 1
    assert storage.expirations[key] == start + 500


def test_memory_counts_forget_window_names_past_their_bound() -> None:
    from limits.storage import storage_from_string

    policy = _policy("2/hour")
    counts = MemoryCounts(storage_from_string("memory://"))
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
