"""Budgets on real servers: an ASGI worker (uvicorn) and a WSGI worker
(waitress) share a real redis-server and one caller's budget; the calls go
to the fake OpenAI (FakeRealtimeWebRTC, with its sideband).

* a minutes budget is reserved at admission, cut by the call's time cap,
  and spent across both workers: the next call is a 429 ``budget_exhausted``;
* 20 admissions at once, on both workers, never reserve more than it;
* a dollar budget ends a call when the fake's reported usage crosses it;
* the client-secret routes are refused under a budget, or charged;
* the caller reads their own budget at ``GET /navai/usage``;
* a budget store that is down refuses calls (503), or lets them start
  with ``budget_fail_open``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from navai_mw.testing import FakeRealtimeWebRTC

from .conftest import log_message
from .redis_server import RedisServer, redis_fixture
from .test_call_sideband import (
    AUTH,
    BOUND,
    SDP,
    Browser,
    Reports,
    attached,
    call,
    fake,
    hang_up,
    navai,
)
from .test_call_sideband import anyio_backend as anyio_backend  # a fixture

pytest.importorskip("aiortc")

shared_redis = redis_fixture(scope="module")
webrtc = fake  # the fake OpenAI, served: a fixture, by this file's name
USAGE_PATH = "/navai/usage"


@contextlib.contextmanager
def two_workers(base_url: str, redis: RedisServer, **keywords: Any) -> Iterator[tuple[str, str]]:
    """The same budget on an ASGI and a WSGI worker, counted in one Redis."""
    keywords.setdefault("rate_limit_storage", redis.url)
    with (
        navai("uvicorn", base_url, **keywords) as asgi,
        navai("waitress", base_url, **keywords) as wsgi,
    ):
        yield asgi, wsgi


async def usage(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=BOUND) as client:
        answer = await client.get(f"{url}{USAGE_PATH}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    [row] = answer.json()["budgets"]
    return dict(row)


async def offer() -> str:
    browser = Browser()
    try:
        return await browser.offer()
    finally:
        await browser.close()


async def relay(url: str, sdp: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=BOUND) as client:
        return await client.post(
            f"{url}/navai/realtime/calls", content=sdp, headers={**SDP, **AUTH}
        )


@pytest.mark.anyio
async def test_a_minutes_budget_is_spent_across_both_workers(
    webrtc: tuple[FakeRealtimeWebRTC, str], shared_redis: RedisServer
) -> None:
    upstream, base_url = webrtc
    shared_redis.flush()
    reports = Reports()
    with two_workers(base_url, shared_redis, budget="0.05 minutes/day", on_call_end=reports) as (
        asgi,
        wsgi,
    ):
        # The first call, on the ASGI worker, is hung up by its owner at once.
        async with call(asgi) as (first, location):
            await attached(upstream, first)
            before = await usage(wsgi)
            assert before["reserved"] > 0  # what the call holds, seen from the other worker
            await hang_up(asgi, location)
        await _until(lambda: len(reports.received) == 1)
        # The second, on the WSGI worker, gets what is left: its time cap.
        async with call(wsgi) as (second, _):
            await attached(upstream, second)
            await _until(lambda: len(reports.received) == 2)
        # Ended at its cap by whichever worker claimed the deadline first: the
        # worker that holds its sideband reports the cap, the other worker's
        # hangup reaches it as OpenAI's close (docs/calls.md).
        assert reports.received[0].end_reason == "hangup"
        assert reports.received[1].end_reason in ("time_cap", "remote")
        assert upstream.hangups == [first, second]
        spent = await usage(asgi)
        assert spent["limit"] == "0.05 minutes/day"
        assert spent["unit"] == "minutes"
        assert spent["remaining"] == 0
        assert spent["used"] == pytest.approx(0.05)
        refused = await relay(asgi, await offer())
    assert refused.status_code == 429
    assert refused.json()["code"] == "budget_exhausted"
    assert "0.05 minutes/day" in refused.json()["error"]
    assert int(refused.headers["retry-after"]) > 0
    assert refused.headers["ratelimit"].startswith('"budget";r=0;')
    assert len(upstream.calls) == 2  # the refused call cost nothing upstream


@pytest.mark.anyio
async def test_twenty_admissions_at_once_never_reserve_more_than_the_budget(
    webrtc: tuple[FakeRealtimeWebRTC, str], shared_redis: RedisServer
) -> None:
    _, base_url = webrtc
    shared_redis.flush()
    sdp = await offer()
    statuses: list[int] = []
    with two_workers(
        base_url, shared_redis, budget="0.1 minutes/day", max_call_seconds=1
    ) as workers:

        async def one(index: int) -> None:
            answer = await relay(workers[index % 2], sdp)
            statuses.append(answer.status_code)

        async with anyio.create_task_group() as group:
            for index in range(20):
                group.start_soon(one, index)
    # 6 seconds of budget, 1 second a call: six start, on whichever worker.
    assert sorted(statuses) == [201] * 6 + [429] * 14


@pytest.mark.anyio
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
async def test_a_dollar_budget_ends_the_call_that_crosses_it(
    shell: str, webrtc: tuple[FakeRealtimeWebRTC, str]
) -> None:
    upstream, base_url = webrtc
    reports = Reports()
    with navai(shell, base_url, budget="0.01 USD/day", on_call_end=reports) as url:
        async with call(url) as (call_id, _):
            await attached(upstream, call_id)
            await upstream.afinish_response(
                call_id,
                {
                    "input_tokens": 1000,
                    "output_tokens": 10,
                    "input_token_details": {"audio_tokens": 1000},
                },
            )
            await _until(lambda: bool(reports.received))
            assert upstream.hangups == [call_id]
        [report] = reports.received
        assert report.end_reason == "budget"
        assert report.cost_usd is not None
        assert report.cost_usd >= 0.01
        refused = await relay(url, await offer())
        assert refused.status_code == 429
        assert refused.json()["code"] == "budget_exhausted"


@pytest.mark.anyio
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
async def test_client_secrets_are_refused_under_a_budget_or_charged(
    shell: str, webrtc: tuple[FakeRealtimeWebRTC, str]
) -> None:
    _, base_url = webrtc
    async with httpx.AsyncClient(timeout=BOUND) as client:
        with navai(shell, base_url, budget="1 minutes/day") as url:
            refused = await client.post(
                f"{url}/navai/realtime/client-secret", json={}, headers=AUTH
            )
        assert refused.status_code == 403
        assert "budget_secret_seconds" in refused.json()["error"]
        with navai(shell, base_url, budget="1 minutes/day", budget_secret_seconds=30) as url:
            charged = await client.post(
                f"{url}/navai/realtime/client-secret", json={}, headers=AUTH
            )
            # The fake's WebRTC side mints no secret: what matters is that the
            # budget was charged before the mint was tried.
            assert charged.status_code != 403, charged.text
            assert (await usage(url))["used"] == pytest.approx(0.5)


@pytest.mark.anyio
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
async def test_a_budget_store_that_is_down_refuses_calls_unless_told_otherwise(
    shell: str, webrtc: tuple[FakeRealtimeWebRTC, str], caplog: pytest.LogCaptureFixture
) -> None:
    upstream, base_url = webrtc
    down = "redis://127.0.0.1:1/0"
    sdp = await offer()
    with navai(shell, base_url, budget="1 minutes/day", rate_limit_storage=down) as url:
        refused = await relay(url, sdp)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "5"
    assert upstream.calls == []
    with navai(
        shell, base_url, budget="1 minutes/day", rate_limit_storage=down, budget_fail_open=True
    ) as url:
        started = await relay(url, sdp)
    assert started.status_code == 201
    unbudgeted = "navai_mw: the budget store is unreachable; the call starts unbudgeted"
    assert (logging.WARNING, unbudgeted) in [(r.levelno, log_message(r)) for r in caplog.records]


async def _until(check: Any) -> None:
    with anyio.fail_after(BOUND):
        while not check():
            await anyio.sleep(0.05)
