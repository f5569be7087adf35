"""The two public functions, end to end over httpx: against respx, against
``httpx.MockTransport``, against the fake upstream; and the retry policy run
by the drivers with an injected clock, so no test waits for real."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx
import pytest
import respx

from navai_mw import (
    HttpResponse,
    NavaiVoiceBackendOptions,
    UpstreamError,
    create_realtime_client_secret,
    create_realtime_client_secret_sync,
)
from navai_mw.core.effects import Attempt, Outcome
from navai_mw.runtime.drivers import drive_async, drive_sync
from navai_mw.testing import FakeOpenAIRealtime
from navai_mw.transports import (
    AsyncTransport,
    HttpxAsyncTransport,
    HttpxSyncTransport,
    SyncTransport,
)
from navai_mw.upstreams.openai_secrets import build_upstream_request, exchange

from .conftest import CANARY_KEY

URL = "https://api.openai.com/v1/realtime/client_secrets"
SECRET = {"value": "ek_respx", "expires_at": 1730000000, "session": {"type": "realtime"}}
OPTS = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY)
REQUEST = {"language": "Spanish", "voiceTone": "warm"}


def check_upstream_call(request: httpx.Request) -> None:
    assert request.method == "POST"
    assert str(request.url) == URL
    assert request.headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert request.headers["content-type"] == "application/json"
    session = json.loads(request.content)["session"]
    assert session["instructions"] == (
        "You are a helpful assistant.\nAlways reply in Spanish.\nUse a warm tone while speaking."
    )


# -- respx: the default transports, as a user calls the functions ----------------------


@respx.mock
def test_sync_function_with_default_transport() -> None:
    route = respx.post(URL).respond(200, json=SECRET)
    secret = create_realtime_client_secret_sync(OPTS, REQUEST)
    assert (secret.value, secret.expires_at) == ("ek_respx", 1730000000)
    assert route.call_count == 1
    check_upstream_call(route.calls.last.request)


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    # Mocked at the httpx client, whatever pool is underneath (the async
    # default runs over aiohttp, below httpcore's reach).
    with respx.mock(using="httpx") as router:
        yield router


@pytest.mark.anyio
async def test_async_function_with_default_transport(router: respx.MockRouter) -> None:
    route = router.post(URL).respond(200, json=SECRET)
    secret = await create_realtime_client_secret(OPTS, REQUEST)
    assert secret.value == "ek_respx"
    check_upstream_call(route.calls.last.request)


@respx.mock
def test_sync_upstream_401_with_openai_error_body() -> None:
    respx.post(URL).respond(401, json={"error": {"message": "Invalid API key"}})
    with pytest.raises(UpstreamError) as caught:
        create_realtime_client_secret_sync(OPTS)
    assert caught.value.status == 502
    assert str(caught.value) == "OpenAI client_secrets failed (401): Invalid API key"


@pytest.mark.anyio
async def test_async_upstream_401_with_text_body(router: respx.MockRouter) -> None:
    router.post(URL).respond(401, text="Invalid API key")
    with pytest.raises(UpstreamError, match=r"failed \(401\): Invalid API key$"):
        await create_realtime_client_secret(OPTS)


@respx.mock
def test_connection_error_is_retried_then_502() -> None:
    route = respx.post(URL).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(UpstreamError) as caught:
        drive_sync(
            exchange(build_upstream_request(OPTS), budget=30),
            HttpxSyncTransport(),
            sleep=lambda _: None,
        )
    assert route.call_count == 3
    assert caught.value.status == 502


@pytest.mark.anyio
async def test_async_timeout_is_504(router: respx.MockRouter) -> None:
    router.post(URL).mock(side_effect=httpx.ReadTimeout("slow"))
    async with HttpxAsyncTransport() as transport:
        with pytest.raises(UpstreamError) as caught:
            await create_realtime_client_secret(OPTS, transport=transport)
    assert caught.value.status == 504


@respx.mock
def test_sync_timeout_is_504() -> None:
    respx.post(URL).mock(side_effect=httpx.ConnectTimeout("slow"))
    with HttpxSyncTransport() as transport, pytest.raises(UpstreamError) as caught:
        create_realtime_client_secret_sync(OPTS, transport=transport)
    assert caught.value.status == 504


# -- httpx.MockTransport: the httpx transports with a client the user built ------------


def handler(request: httpx.Request) -> httpx.Response:
    check_upstream_call(request)
    return httpx.Response(200, json=SECRET)


def test_sync_function_over_mock_transport() -> None:
    client = httpx.Client(transport=httpx.MockTransport(handler))
    with HttpxSyncTransport(client) as transport:
        assert isinstance(transport, SyncTransport)
        assert create_realtime_client_secret_sync(OPTS, REQUEST, transport=transport).value == (
            "ek_respx"
        )
    assert client.is_closed


@pytest.mark.anyio
async def test_async_function_over_mock_transport() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with HttpxAsyncTransport(client) as transport:
        assert isinstance(transport, AsyncTransport)
        secret = await create_realtime_client_secret(OPTS, REQUEST, transport=transport)
    assert secret.value == "ek_respx"
    assert client.is_closed


def test_other_httpx_errors_count_as_no_answer() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("garbled", request=request)

    calls = []
    client = httpx.Client(transport=httpx.MockTransport(broken))
    with HttpxSyncTransport(client) as transport, pytest.raises(UpstreamError) as caught:
        drive_sync(
            exchange(build_upstream_request(OPTS), budget=30),
            transport,
            sleep=calls.append,
            jitter=lambda: 0.0,
        )
    assert caught.value.message == "OpenAI client_secrets could not be reached."
    assert calls == [0.5, 1.0]


# -- the retry policy through the drivers, with an injected clock -----------------------


class FakeClock:
    """Time that moves only when the code under test sleeps or an attempt costs."""

    def __init__(self, cost_per_attempt: float = 0.0) -> None:
        self.now = 0.0
        self.cost = cost_per_attempt
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


class ScriptedTransport:
    """Answers from a script, one status per call, charging time on the clock."""

    def __init__(self, clock: FakeClock, statuses: list[int | None]) -> None:
        self.clock = clock
        self.statuses = statuses
        self.timeouts: list[float] = []

    def answer(self, timeout: float) -> HttpResponse:
        self.timeouts.append(timeout)
        self.clock.now += self.clock.cost
        status = self.statuses.pop(0)
        if status is None:
            raise ConnectionRefusedError("nobody home")
        body = json.dumps(SECRET).encode() if status == 200 else b"oops"
        return HttpResponse(status=status, body=body)


class SyncScripted(ScriptedTransport):
    def send(self, request: object, *, timeout: float) -> HttpResponse:
        return self.answer(timeout)


class AsyncScripted(ScriptedTransport):
    async def send(self, request: object, *, timeout: float) -> HttpResponse:
        return self.answer(timeout)


POLICY = [
    pytest.param([503, 502, 200], 0.0, 30, [0.5, 1.0], "ok", id="two-retries-then-success"),
    pytest.param([None, 200], 0.0, 30, [0.5], "ok", id="connection-refused-retried"),
    pytest.param([500, 500, 500], 0.0, 30, [0.5, 1.0], 502, id="gives-up-after-two-retries"),
    pytest.param([408, 409, 200], 0.0, 30, [0.5, 1.0], "ok", id="408-409-retried"),
    pytest.param([429], 0.0, 30, [], 429, id="rate-limit-not-retried"),
    pytest.param([401], 0.0, 30, [], 502, id="client-error-not-retried"),
    # each attempt costs 1 s of a 2 s budget: one retry fits (1 + 0.5), a second would not
    pytest.param([500, 500, 500], 1.0, 2, [0.5], 504, id="budget-spent-is-504"),
    pytest.param([500, 500, 500], 0.6, 2, [0.5], 502, id="budget-stops-retries"),
]


@pytest.mark.parametrize(("statuses", "cost", "budget", "sleeps", "expected"), POLICY)
def test_retry_policy_sync(
    statuses: list[int | None], cost: float, budget: float, sleeps: list[float], expected: object
) -> None:
    clock = FakeClock(cost)
    transport = SyncScripted(clock, list(statuses))
    steps = exchange(build_upstream_request(OPTS), budget=budget)
    try:
        result: object = drive_sync(
            steps, transport, clock=clock, sleep=clock.sleep, jitter=lambda: 0.0
        ).value
        result = "ok" if result == "ek_respx" else result
    except UpstreamError as error:
        result = error.status
    assert result == expected
    assert clock.sleeps == sleeps
    assert all(timeout <= budget for timeout in transport.timeouts)
    assert transport.timeouts[0] == budget


@pytest.mark.anyio
@pytest.mark.parametrize(("statuses", "cost", "budget", "sleeps", "expected"), POLICY)
async def test_retry_policy_async(
    statuses: list[int | None], cost: float, budget: float, sleeps: list[float], expected: object
) -> None:
    clock = FakeClock(cost)
    transport = AsyncScripted(clock, list(statuses))
    steps = exchange(build_upstream_request(OPTS), budget=budget)
    try:
        result: object = (
            await drive_async(steps, transport, clock=clock, sleep=clock.asleep, jitter=lambda: 0.0)
        ).value
        result = "ok" if result == "ek_respx" else result
    except UpstreamError as error:
        result = error.status
    assert result == expected
    assert clock.sleeps == sleeps


def test_an_exchange_not_told_its_provider_is_voiced_by_openai() -> None:
    steps = exchange(build_upstream_request(OPTS), budget=30)
    assert isinstance(next(steps), Attempt)
    body = json.dumps({"value": "ek_1", "expires_at": 1_700_000_000, "session": {}}).encode()
    with pytest.raises(StopIteration) as done:
        steps.send(Outcome(HttpResponse(status=200, body=body)))
    assert done.value.value.speech == {"provider": "openai"}


def test_retry_timeouts_shrink_with_the_budget() -> None:
    clock = FakeClock(cost_per_attempt=1.0)
    transport = SyncScripted(clock, [500, 500, 200])
    drive_sync(
        exchange(build_upstream_request(OPTS), budget=10),
        transport,
        clock=clock,
        sleep=clock.sleep,
        jitter=lambda: 0.0,
    )
    # 10 s; then 10 - 1 (first try) - 0.5 (wait); then 10 - 2.5 - 1 (second wait) - 1
    assert transport.timeouts == [10, 8.5, 6.5]


@pytest.mark.anyio
async def test_async_driver_bounds_a_stalling_transport() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    fake.stall(30)
    opts = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=fake.base_url, upstream_timeout_seconds=0.2
    )
    async with fake.async_transport() as transport:
        with pytest.raises(UpstreamError) as caught:
            await create_realtime_client_secret(opts, transport=transport)
    assert caught.value.status == 504
    assert len(fake.requests) == 1


# -- the fake upstream, in-process, both ways -----------------------------------------------


def test_fake_upstream_sync_round_trip(
    fake: FakeOpenAIRealtime, opts: NavaiVoiceBackendOptions
) -> None:
    with fake.sync_transport() as transport:
        secret = create_realtime_client_secret_sync(opts, {"model": "gpt-x"}, transport=transport)
    assert secret.value.startswith("ek_fake_")
    assert secret.session is not None
    assert secret.session["model"] == "gpt-x"
    assert fake.requests[0].json["session"]["model"] == "gpt-x"


@pytest.mark.anyio
async def test_fake_upstream_rejects_a_wrong_key(fake: FakeOpenAIRealtime) -> None:
    opts = NavaiVoiceBackendOptions(
        openai_api_key="sk-wrong-key-123", openai_base_url=fake.base_url
    )
    async with fake.async_transport() as transport:
        with pytest.raises(UpstreamError) as caught:
            await create_realtime_client_secret(opts, transport=transport)
    assert caught.value.status == 502
    assert "(401): Incorrect API key provided" in caught.value.message
    assert "sk-wrong-key-123" not in caught.value.message


# -- secret hygiene: the key never reaches a log ----------------------------------------------


def test_key_never_logged(caplog: pytest.LogCaptureFixture, fake: FakeOpenAIRealtime) -> None:
    caplog.set_level(logging.DEBUG)
    echo = FakeOpenAIRealtime(api_key="sk-something-else")
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, openai_base_url=echo.base_url)
    with echo.sync_transport() as transport, pytest.raises(UpstreamError) as caught:
        create_realtime_client_secret_sync(opts, transport=transport)
    assert CANARY_KEY not in caught.value.message
    assert CANARY_KEY not in caplog.text
    assert caplog.records, "httpx logs each request at DEBUG; the capture must have seen them"


EXIT_SCRIPT = """
import sys
from navai_mw import NavaiVoiceBackendOptions, create_realtime_client_secret_sync

opts = NavaiVoiceBackendOptions(openai_api_key=sys.argv[1], openai_base_url=sys.argv[2])
print(create_realtime_client_secret_sync(opts).value[:8])
"""


def test_a_script_that_minted_with_the_default_exits_with_its_sockets_closed(
    fake: FakeOpenAIRealtime, served_fake: str
) -> None:
    """The process-wide default of create_realtime_client_secret_sync keeps
    its connection alive between calls, and closes it at exit: no socket is
    left for the interpreter's teardown to warn about."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", EXIT_SCRIPT, CANARY_KEY, served_fake],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.split() == ["ek_fake_"], result.stderr
    assert "ResourceWarning" not in result.stderr, result.stderr
    assert result.stderr == ""
