"""Budgets: the policy's text, UTC periods, and the store's decisions,
alike in memory and in a real redis-server (the same scenarios run on
both): a reservation is the smaller of the cap and what is left, settling
charges what was used, a lost reservation comes back after its margin,
concurrent admissions never reserve more than the budget, tokens and
dollars are charged as they come, and a new period starts whole."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from navai_mw import OptionsError
from navai_mw.core.budgets import BudgetLimit, BudgetPolicy, parse_budget, period_bounds
from navai_mw.core.effects import (
    Admission,
    AdmitCall,
    BudgetCount,
    ChargeCall,
    ReadBudget,
    SettleCall,
)
from navai_mw.core.identity import Identity
from navai_mw.endpoint.budget_steps import _spent as spent
from navai_mw.endpoint.budget_steps import counts_payload
from navai_mw.runtime.budget_store import (
    RESERVATION_MARGIN_SECONDS,
    MemoryBudgets,
    RedisBudgets,
)

from .redis_server import RedisServer, redis_fixture

shared_redis = redis_fixture(scope="module")

# 2026-12-06 12:00:00 UTC
NOON = datetime.datetime(2026, 12, 6, 12, tzinfo=datetime.timezone.utc).timestamp()


# -- the policy ---------------------------------------------------------------------------------


def test_a_policy_names_its_limits() -> None:
    limits = parse_budget("10 minutes/day; 200000 tokens/day ;5 USD/month")
    assert [limit.text for limit in limits] == [
        "10 minutes/day",
        "200000 tokens/day",
        "5 USD/month",
    ]
    assert limits[0].quantity == 600  # seconds
    assert parse_budget("1.5 min/DAY")[0] == BudgetLimit(1.5, "minutes", "day")


@pytest.mark.parametrize(
    "text",
    ["", "ten minutes/day", "10 hours/day", "10 minutes/week", "0 USD/day", "1.5 tokens/day",
     "10 minutes/day; 20 minutes/day", ";", "x" * 300],
)  # fmt: skip
def test_what_is_not_a_policy_is_named_at_start(text: str) -> None:
    with pytest.raises(OptionsError, match="budget"):
        parse_budget(text)


SUCH_AS = 'budget must be a policy such as "10 minutes/day; 5 USD/month". Received: '


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("   ", SUCH_AS + "'   '"),
        (7, SUCH_AS + "7"),
        ("x" * 201, SUCH_AS + repr("x" * 201)[:80]),
        (
            "10 hours/day",
            "budget: '10 hours/day' is not a limit: write an amount, a unit (minutes, tokens, "
            "USD) and a period (day, month), as in 10 minutes/day.",
        ),
    ],
    ids=["blank", "not-text", "too-long", "not-a-limit"],
)
def test_what_is_not_a_policy_is_told_how_to_write_one(text: Any, message: str) -> None:
    with pytest.raises(OptionsError) as caught:
        parse_budget(text)
    assert caught.value.message == message


def test_a_policy_of_the_longest_length_and_empty_parts_is_read() -> None:
    text = "; 10 minutes/day;" + " " * 183
    assert len(text) == 200
    assert [limit.text for limit in parse_budget(text)] == ["10 minutes/day"]


def test_a_mapping_picks_by_key_then_name_then_star() -> None:
    policy = BudgetPolicy.from_source(
        {"token:ops": None, "alice": "1 minutes/day", "*": "5 minutes/day"}
    )
    assert policy.limits_for(Identity("ops", "token")) is None  # no budget for the service
    assert policy.limits_for(Identity("alice", "jwt:idp")) == parse_budget("1 minutes/day")
    assert policy.limits_for(Identity("ops", "jwt:idp")) == parse_budget("5 minutes/day")
    assert policy.limits_for(None) == parse_budget("5 minutes/day")


def test_a_hook_policy_is_parsed_once_and_checked() -> None:
    policy = BudgetPolicy.from_source(lambda identity, info: "1 minutes/day")
    assert policy.hook is not None
    assert policy.hooked("1 minutes/day") == parse_budget("1 minutes/day")
    assert policy.hooked(None) is None
    with pytest.raises(TypeError) as returned:
        policy.hooked(3)
    assert str(returned.value) == "a budget hook returned int, not a policy string"
    with pytest.raises(OptionsError) as wrong:
        policy.hooked("lots of money")
    assert wrong.value.message.startswith("the budget hook's policy: 'lots of money' is not a")


@pytest.mark.parametrize(
    ("moment", "period", "start", "end"),
    [
        ("2026-12-06T23:59:59", "day", "2026-12-06T00:00:00", "2026-12-07T00:00:00"),
        ("2026-12-07T00:00:00", "day", "2026-12-07T00:00:00", "2026-12-08T00:00:00"),
        ("2026-12-31T23:00:00", "month", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        ("2028-02-29T10:00:00", "month", "2028-02-01T00:00:00", "2028-03-01T00:00:00"),
    ],
)
def test_periods_are_utc_calendar_days_and_months(
    moment: str, period: Any, start: str, end: str
) -> None:
    def utc(text: str) -> float:
        return (
            datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc).timestamp()
        )

    assert period_bounds(period, utc(moment)) == (utc(start), utc(end))


def test_periods_are_utc_whatever_the_machines_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        # 02:30:15.5 UTC on 1 December is still 30 November in New York.
        now = datetime.datetime(
            2026, 12, 1, 2, 30, 15, 500000, tzinfo=datetime.timezone.utc
        ).timestamp()
        midnight = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc).timestamp()
        assert period_bounds("day", now) == (midnight, midnight + 86400)
        assert period_bounds("month", now) == (
            midnight,
            datetime.datetime(2027, 1, 1, tzinfo=datetime.timezone.utc).timestamp(),
        )
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"": "1 minutes/day"}, "budget's mapping keys are identities (or '*')."),
        ({3: "1 minutes/day"}, "budget's mapping keys are identities (or '*')."),
        ({"ana": "lots"}, "budget['ana']: 'lots' is not a limit"),
        (
            42,
            "budget must be a policy string, a mapping from identity to policy, "
            "or a function (identity, info) -> policy.",
        ),
    ],
    ids=["empty-key", "key-not-text", "policy", "no-policy-at-all"],
)
def test_a_mapping_that_is_not_a_policy_is_named(source: Any, message: str) -> None:
    with pytest.raises(OptionsError) as caught:
        BudgetPolicy.from_source(source)
    assert caught.value.message.startswith(message)


def test_a_mapping_without_a_star_leaves_everyone_else_unbudgeted() -> None:
    policy = BudgetPolicy.from_source({"ana": "1 minutes/day"})
    assert policy.default is None
    assert policy.limits_for("ben") is None


# -- the store, in memory and in Redis ----------------------------------------------------------


class Clock:
    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Store:
    """One interface over both stores, blocking, for the scenarios."""

    def __init__(self, kind: str, url: str | None) -> None:
        self.kind = kind
        self.url = url
        self.memory = MemoryBudgets() if kind == "memory" else None
        self.loop = asyncio.new_event_loop()
        self.redis = RedisBudgets(url) if url is not None else None

    def __call__(self, effect: Any) -> Any:
        if self.memory is not None:
            method = {
                AdmitCall: self.memory.admit,
                SettleCall: self.memory.settle,
                ChargeCall: self.memory.charge,
                ReadBudget: self.memory.read,
            }[type(effect)]
            return method(effect)
        assert self.redis is not None
        method_async = {
            AdmitCall: self.redis.admit,
            SettleCall: self.redis.settle,
            ChargeCall: self.redis.charge,
            ReadBudget: self.redis.read,
        }[type(effect)]
        return self.loop.run_until_complete(method_async(effect))

    def close(self) -> None:
        if self.redis is not None:
            self.loop.run_until_complete(self.redis.aclose())
        self.loop.close()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "memory":
        made = Store("memory", None)
    else:
        server: RedisServer = request.getfixturevalue("shared_redis")
        server.flush()
        made = Store("redis", server.url)
    try:
        yield made
    finally:
        made.close()


MINUTES = parse_budget("2 minutes/day")  # 120 s


def admit(store: Store, clock: Clock, cap: float | None = None, who: str = "app:ana") -> Admission:
    result: Admission = store(AdmitCall(who, MINUTES, cap, clock))
    return result


def read(store: Store, clock: Clock, limits: Any = MINUTES, who: str = "app:ana") -> BudgetCount:
    counts = store(ReadBudget(who, limits, clock))
    return counts[0]  # type: ignore[no-any-return]


def test_a_reservation_is_the_cap_or_what_is_left(store: Store) -> None:
    clock = Clock()
    first = admit(store, clock, cap=90)
    assert first.reservation is not None
    assert first.reservation.granted == 90
    second = admit(store, clock, cap=90)
    assert second.reservation is not None
    assert second.reservation.granted == 30  # what the first left
    refused = admit(store, clock, cap=90)
    assert refused.reservation is None
    assert refused.refused_by == MINUTES[0]
    [count] = refused.counts
    assert count.reserved == 120
    assert count.frees_at == NOON + 30  # the second call's end: the earliest
    assert count.resets_at == period_bounds("day", NOON)[1]


def test_settling_charges_what_was_used_and_frees_the_rest(store: Store) -> None:
    clock = Clock()
    reservation = admit(store, clock, cap=100).reservation
    assert reservation is not None
    clock.now += 40
    count = read(store, clock)
    assert (count.used, count.elapsed, count.reserved) == (0, 40, 60)
    store(SettleCall(reservation, 40))
    count = read(store, clock)
    assert (count.used, count.elapsed, count.reserved) == (40, 0, 0)
    assert admit(store, clock).reservation.granted == 80  # type: ignore[union-attr]
    store(SettleCall(reservation, 40))  # settled twice: charged once
    assert read(store, clock).used == 40


def test_a_call_is_charged_at_most_what_it_was_granted(store: Store) -> None:
    clock = Clock()
    reservation = admit(store, clock, cap=30).reservation
    assert reservation is not None
    store(SettleCall(reservation, 500))
    assert read(store, clock).used == 30


def test_a_lost_reservation_comes_back_after_its_margin(store: Store) -> None:
    clock = Clock()
    assert admit(store, clock).reservation.granted == 120  # type: ignore[union-attr]
    assert admit(store, clock).reservation is None  # all reserved
    clock.now += 120 + RESERVATION_MARGIN_SECONDS - 1
    assert admit(store, clock).reservation is None  # still held
    clock.now += 1  # its worker never settled it: it is dropped
    back = admit(store, clock).reservation
    assert back is not None
    assert back.granted == 120


def test_callers_and_periods_count_apart(store: Store) -> None:
    clock = Clock()
    assert admit(store, clock).reservation is not None
    assert admit(store, clock, who="token:ana").reservation is not None  # another caller
    midnight = period_bounds("day", NOON)[1]
    clock.now = midnight + 5
    fresh = admit(store, clock)
    assert fresh.reservation is not None
    assert fresh.reservation.granted == 120  # a new day, whole again


def test_tokens_and_dollars_are_charged_as_they_come(store: Store) -> None:
    clock = Clock()
    limits = parse_budget("1000 tokens/day; 0.5 USD/day")
    admission: Admission = store(AdmitCall("app:ana", limits, 60, clock))
    reservation = admission.reservation
    assert reservation is not None
    assert reservation.granted == 60  # no minutes limit: the cap
    counts = store(ChargeCall(reservation, tokens=600, usd=0.2))
    assert [count.remaining for count in counts] == [400, pytest.approx(0.3)]
    counts = store(ChargeCall(reservation, tokens=500, usd=0.0))
    assert counts[0].remaining == -100
    refused: Admission = store(AdmitCall("app:ana", limits, 60, clock))
    assert refused.refused_by == limits[0]


def test_concurrent_admissions_never_reserve_more_than_the_budget(
    store: Store, request: pytest.FixtureRequest
) -> None:
    """20 admissions at once, each its own client (as many processes would
    be): the granted seconds add up to the budget, never more."""
    clock = Clock()
    granted: list[float] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        other = store if store.memory is not None else Store("redis", store.url)
        try:
            admission = admit(other, clock, cap=25)
        finally:
            if other is not store:
                other.close()
        if admission.reservation is not None:
            with lock:
                granted.append(admission.reservation.granted or 0.0)

    threads = [threading.Thread(target=one, args=(index,)) for index in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(granted) == pytest.approx(120)
    assert len(granted) == 5  # 25, 25, 25, 25, 20
    assert read(store, clock).reserved == pytest.approx(120)


def test_a_flushed_script_cache_is_refilled(shared_redis: RedisServer) -> None:
    from .redis_server import command

    shared_redis.flush()
    made = Store("redis", shared_redis.url)
    try:
        clock = Clock()
        assert admit(made, clock, cap=10).reservation is not None
        assert command(shared_redis.port or 0, "SCRIPT", "FLUSH") == b"+OK"
        assert admit(made, clock, cap=10).reservation is not None
        assert read(made, clock).reserved == 20
    finally:
        made.close()


# -- the Python API -----------------------------------------------------------------------------


def test_an_app_reads_and_resets_a_callers_budget() -> None:
    """What a secret cost shows in usage(); reset_usage() gives it back; the
    async twins agree, on a view handler of either kind."""
    import anyio

    from navai_mw import AsyncNavaiHandler, NavaiHandler, NavaiVoiceBackendOptions
    from navai_mw.budgets import areset_usage, ausage, reset_usage, usage
    from navai_mw.testing import FakeOpenAIRealtime

    fake = FakeOpenAIRealtime(api_key="sk-test-budget-api")
    opts = NavaiVoiceBackendOptions(
        openai_api_key="sk-test-budget-api", openai_base_url=fake.base_url
    )
    keywords: dict[str, Any] = {
        "functions": [],
        "relay": True,
        "budget": {"ana": "1 minutes/day", "*": None},
        "budget_secret_seconds": 30,
        "authorize": lambda info: info.headers.get("x-user"),
    }
    with fake.sync_transport() as transport:
        handler = NavaiHandler(opts, transport=transport, **keywords)
        try:
            assert usage(handler, "ana")[0]["remaining"] == 1
            assert usage(handler, "ben") == []  # no budget for anyone else
            minted = handler.handle(
                "POST",
                "/navai/realtime/client-secret",
                {"x-user": "ana", "content-type": "application/json"},
                b"{}",
            )
            assert minted.status == 200, minted.body
            [row] = usage(handler, "ana")
            assert (row["used"], row["remaining"]) == (0.5, 0.5)
            assert usage(handler, "ana", scheme="token")[0]["used"] == 0  # another caller
            reset_usage(handler, "ana")
            assert usage(handler, "ana")[0]["used"] == 0
        finally:
            handler.close()

    async def twins() -> None:
        handler = AsyncNavaiHandler(opts, transport=fake.async_transport(), **keywords)
        try:
            minted = await handler.handle(
                "POST",
                "/navai/realtime/client-secret",
                {"x-user": "ana", "content-type": "application/json"},
                b"{}",
            )
            assert minted.status == 200
            assert (await ausage(handler, "ana"))[0]["used"] == 0.5
            await areset_usage(handler, "ana")
            assert (await ausage(handler, "ana"))[0]["used"] == 0
        finally:
            await handler.aclose()

    anyio.run(twins)
    with pytest.raises(OptionsError, match="with a budget"):
        usage(object(), "ana")


def test_a_sliver_of_minutes_starts_no_call(store: Store) -> None:
    """Less than a second left: refused, rather than started and cut."""
    clock = Clock()
    reservation = admit(store, clock, cap=119.5).reservation
    assert reservation is not None
    assert admit(store, clock).reservation is None  # half a second left
    store(SettleCall(reservation, 119.5))
    assert admit(store, clock).reservation is None


def test_a_forked_child_counts_budgets_on_connections_of_its_own(
    shared_redis: RedisServer,
) -> None:
    """gunicorn's pre-fork model: the parent used the budget store, then
    forks; the child's admissions go to Redis on a client of its own (the
    parent's belongs to a loop the child does not have)."""
    script = textwrap.dedent(
        f"""
        import gc, os, time
        from navai_mw.core.budgets import parse_budget
        from navai_mw.core.effects import AdmitCall
        from navai_mw.runtime.budget_keeper import BudgetKeeper
        from navai_mw.runtime.call_store import CallStore

        url = {shared_redis.url!r}
        keeper = BudgetKeeper(url, CallStore(url))
        limits = parse_budget("10 minutes/day")

        def admitted(who):
            return keeper.perform_sync(AdmitCall(who, limits, 60.0, time.time)).reservation

        assert admitted("app:parent") is not None
        pid = os.fork()
        if pid == 0:
            gc.collect()  # the parent's client, dropped here, must not be finalized
            os._exit(0 if admitted("app:child") is not None else 3)
        _, status = os.waitpid(pid, 0)
        assert admitted("app:parent") is not None  # the parent's client still works
        print(os.waitstatus_to_exitcode(status))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "0\n", done.stderr


def test_counts_no_store_can_read_are_a_503_to_try_again() -> None:
    from navai_mw import NavaiHandler, NavaiVoiceBackendOptions

    opts = NavaiVoiceBackendOptions(openai_api_key="sk-test-budget-api")
    handler = NavaiHandler(
        opts,
        functions=[],
        relay=True,
        budget="1 minutes/day",
        rate_limit_storage="redis://127.0.0.1:1/0",  # nothing listens there
        authorize=lambda info: "ana",
    )
    try:
        answer = handler.handle("GET", "/navai/usage", {}, b"")
    finally:
        handler.close()
    assert answer.status == 503, answer.body
    assert ("Retry-After", "5") in answer.headers
    assert json.loads(answer.body) == {
        "error": "Budgets cannot be checked right now; try again shortly."
    }


def test_a_call_that_did_not_start_gives_its_reservation_back_whole() -> None:
    from navai_mw import NavaiHandler, NavaiVoiceBackendOptions
    from navai_mw.budgets import usage

    opts = NavaiVoiceBackendOptions(
        openai_api_key="sk-test-budget-api",
        openai_base_url="http://127.0.0.1:1",  # nothing listens there
        upstream_timeout_seconds=1,
    )
    handler = NavaiHandler(
        opts, functions=[], relay=True, budget="1 minutes/day", authorize=lambda info: "ana"
    )
    offer = (
        b"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    )
    try:
        relayed = handler.handle(
            "POST", "/navai/realtime/calls", {"content-type": "application/sdp"}, offer
        )
        [row] = usage(handler, "ana")
    finally:
        handler.close()
    assert relayed.status == 502, relayed.body
    assert (row["used"], row["reserved"], row["remaining"]) == (0, 0, 1)


MINT = ("POST", "/navai/realtime/client-secret", {"content-type": "application/json"}, b"{}")


@contextlib.contextmanager
def budgeted_handler(**keywords: Any) -> Iterator[Any]:
    """A relaying view handler with ``keywords`` (its budget), minting from
    the in-process fake OpenAI; closed after."""
    from navai_mw import NavaiHandler, NavaiVoiceBackendOptions
    from navai_mw.testing import FakeOpenAIRealtime

    fake = FakeOpenAIRealtime(api_key="sk-test-budget-api")
    opts = NavaiVoiceBackendOptions(
        openai_api_key="sk-test-budget-api", openai_base_url=fake.base_url
    )
    with fake.sync_transport() as transport:
        handler = NavaiHandler(opts, transport=transport, functions=[], relay=True, **keywords)
        try:
            yield handler
        finally:
            handler.close()


def test_a_spent_budget_is_a_429_that_says_when_it_is_whole_again() -> None:
    noon = datetime.datetime(2026, 12, 6, 12, tzinfo=datetime.timezone.utc).timestamp()
    midnight = noon + 12 * 3600
    rows = []
    with budgeted_handler(
        budget="1.5 minutes/day",
        budget_secret_seconds=40,
        budget_clock=lambda: noon,
        authorize=lambda info: "ana",
    ) as handler:
        statuses = []
        for _ in range(3):  # 40 seconds, 40 more, then the 10 that are left
            statuses.append(handler.handle(*MINT).status)
            usage = handler.handle("GET", "/navai/usage", {}, b"")
            assert usage.status == 200
            [row] = json.loads(usage.body)["budgets"]
            rows.append((row["used"], row["reserved"], row["remaining"]))
        refused = handler.handle(*MINT)
    assert statuses == [200, 200, 200]
    assert row == {
        "limit": "1.5 minutes/day",
        "unit": "minutes",
        "used": 1.5,
        "reserved": 0.0,
        "remaining": 0.0,
        "resets_at": midnight,
    }
    assert rows == [(0.6667, 0.0, 0.8333), (1.3333, 0.0, 0.1667), (1.5, 0.0, 0.0)]
    assert refused.status == 429
    assert json.loads(refused.body) == {
        "error": "Your budget of 1.5 minutes/day is spent; it is whole again at the next period.",
        "code": "budget_exhausted",
    }
    headers = dict(refused.headers)
    assert headers["Retry-After"] == "43200"  # UTC midnight
    assert headers["RateLimit-Policy"] == '"budget";q=90;w=43200'
    assert headers["RateLimit"] == '"budget";r=0;t=43200'


def test_a_second_before_the_period_ends_a_spent_budget_waits_one() -> None:
    midnight = datetime.datetime(2026, 12, 7, tzinfo=datetime.timezone.utc).timestamp()
    with budgeted_handler(
        budget="1 minutes/day",
        budget_secret_seconds=60,
        budget_clock=lambda: midnight - 0.5,
        authorize=lambda info: "ana",
    ) as handler:
        assert handler.handle(*MINT).status == 200
        refused = handler.handle(*MINT)
    assert refused.status == 429
    headers = dict(refused.headers)
    assert (headers["Retry-After"], headers["RateLimit"]) == ("1", '"budget";r=0;t=1')
    assert headers["RateLimit-Policy"] == '"budget";q=60;w=1'


def test_without_a_budget_usage_lists_none() -> None:
    from navai_mw import NavaiHandler, NavaiVoiceBackendOptions

    opts = NavaiVoiceBackendOptions(openai_api_key="sk-test-budget-api")
    handler = NavaiHandler(opts, functions=[], relay=True, authorize=lambda info: "ana")
    try:
        answer = handler.handle("GET", "/navai/usage", {}, b"")
    finally:
        handler.close()
    assert (answer.status, json.loads(answer.body)) == (200, {"budgets": []})


def test_a_transcription_secret_under_a_budget_is_refused_or_charged() -> None:
    from navai_mw import NavaiHandler, NavaiVoiceBackendOptions
    from navai_mw.testing import FakeOpenAIRealtime

    fake = FakeOpenAIRealtime(api_key="sk-test-budget-api")
    opts = NavaiVoiceBackendOptions(
        openai_api_key="sk-test-budget-api", openai_base_url=fake.base_url
    )
    path = "/navai/realtime/transcription-secret"
    answers, refusals = [], []
    with fake.sync_transport() as transport:
        for keywords in ({}, {"budget_secret_seconds": 30}):
            handler = NavaiHandler(
                opts,
                transport=transport,
                functions=[],
                relay=True,
                transcription=True,
                budget="1 minutes/day",
                authorize=lambda info: "ana",
                **keywords,
            )
            try:
                minted = handler.handle("POST", path, {"content-type": "application/json"}, b"{}")
                [row] = json.loads(handler.handle("GET", "/navai/usage", {}, b"").body)["budgets"]
            finally:
                handler.close()
            answers.append((minted.status, row["used"]))
            refusals.append(json.loads(minted.body) if minted.status == 403 else None)
    # Refused: a call made with it could not be metered; or charged what it is said to cost.
    assert answers == [(403, 0.0), (200, 0.5)]
    assert refusals[0] == {
        "error": "Client secrets are off under a budget: calls made with one cannot be metered. "
        "Start calls through the relay (POST /navai/realtime/calls), or set "
        "budget_secret_seconds to charge each secret."
    }


def test_a_budget_hook_gets_the_caller_and_the_request_and_its_failure_is_a_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from navai_mw import NavaiHandler, NavaiVoiceBackendOptions

    from .conftest import log_message

    asked: list[tuple[Any, str]] = []

    def policy(identity: Any, info: Any) -> str | None:
        asked.append((identity, info.path))
        if info.headers.get("x-user") == "cal":
            raise RuntimeError("the tiers' database is down")
        return "2 minutes/day" if identity == "ana" else None

    opts = NavaiVoiceBackendOptions(openai_api_key="sk-test-budget-api")
    handler = NavaiHandler(
        opts,
        functions=[],
        relay=True,
        budget=policy,
        authorize=lambda info: info.headers.get("x-user"),
    )
    try:
        ana, ben, cal = (
            handler.handle("GET", "/navai/usage", {"x-user": user}, b"")
            for user in ("ana", "ben", "cal")
        )
    finally:
        handler.close()
    assert [row["limit"] for row in json.loads(ana.body)["budgets"]] == ["2 minutes/day"]
    assert json.loads(ben.body) == {"budgets": []}
    assert (cal.status, json.loads(cal.body)) == (
        503,
        {"error": "Budgets cannot be checked right now; try again shortly."},
    )
    assert ("Retry-After", "5") in cal.headers
    assert [(str(who), path) for who, path in asked] == [
        ("ana", "/navai/usage"),
        ("ben", "/navai/usage"),
        ("cal", "/navai/usage"),
    ]
    logged = [log_message(record) for record in caplog.records]
    assert "navai_mw: the budget hook failed on /navai/usage: RuntimeError" in logged
    assert "database" not in caplog.text  # the hook's own words stay out of the log


def test_callers_without_an_identity_are_budgeted_by_their_address() -> None:
    with budgeted_handler(
        budget="0.5 minutes/day",
        budget_secret_seconds=30,
    ) as handler:
        statuses = [
            handler.handle(*MINT, client=client).status
            for client in ("203.0.113.7", "203.0.113.7", "198.51.100.9")
        ]
    assert statuses == [200, 429, 200]


# -- what a refusal and the usage route say while calls are in progress --------------------

AT = 1_765_022_400.0  # 2025-12-06 12:00 UTC
TEN_MINUTES = parse_budget("10 minutes/day")[0]
THOUSAND_TOKENS = parse_budget("1000 tokens/day")[0]


def test_usage_shows_calls_in_progress_as_used_and_reserved_in_each_limits_unit() -> None:
    counts = (
        BudgetCount(TEN_MINUTES, used=120.0, elapsed=30.0, reserved=270.0, resets_at=AT + 600),
        BudgetCount(THOUSAND_TOKENS, used=200.0, resets_at=AT + 600),
    )
    assert counts_payload(counts) == {
        "budgets": [
            {
                "limit": "10 minutes/day",
                "unit": "minutes",
                "used": 2.5,  # settled, and what calls in progress have used so far
                "reserved": 4.5,
                "remaining": 3.0,
                "resets_at": AT + 600,
            },
            {
                "limit": "1000 tokens/day",
                "unit": "tokens",
                "used": 200.0,
                "reserved": 0.0,
                "remaining": 800.0,
                "resets_at": AT + 600,
            },
        ]
    }


@pytest.mark.parametrize(
    ("count", "retry_after"),
    [
        # Only calls in progress hold the rest: it frees when the first ends.
        (
            BudgetCount(
                TEN_MINUTES, used=300.0, reserved=300.0, resets_at=AT + 3600, frees_at=AT + 42.5
            ),
            "43",
        ),
        # Spent by calls that ended: whole again at the next period only.
        (BudgetCount(TEN_MINUTES, used=600.0, resets_at=AT + 3600, frees_at=AT + 42.0), "3600"),
        (BudgetCount(TEN_MINUTES, used=300.0, reserved=300.0, resets_at=AT + 3600), "3600"),
        # A call that ends after the period does: the period's end comes first.
        (
            BudgetCount(
                TEN_MINUTES, used=300.0, reserved=300.0, resets_at=AT + 30, frees_at=AT + 42.0
            ),
            "30",
        ),
    ],
    ids=["held-by-calls", "spent", "nothing-frees", "period-first"],
)
def test_a_budget_held_by_calls_in_progress_is_retried_when_the_first_ends(
    count: BudgetCount, retry_after: str
) -> None:
    refusal = spent(Admission(refused_by=TEN_MINUTES, counts=(count,), now=AT))
    assert refusal.status == 429
    assert dict(refusal.headers)["Retry-After"] == retry_after


def test_a_refusal_the_store_gave_no_count_for_waits_a_minute() -> None:
    refusal = spent(Admission(refused_by=TEN_MINUTES, counts=(), now=AT))
    assert refusal.status == 429
    assert refusal.headers == (("Retry-After", "60"),)
    assert refusal.message == (
        "Your budget of 10 minutes/day is spent; it is whole again at the next period."
    )
