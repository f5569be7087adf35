"""Budgets when a part of the deployment fails mid-call, on real servers
with a real redis-server and the fake OpenAI (FakeRealtimeWebRTC):

* a worker killed (SIGKILL) while its call holds a reservation: the
  reservation holds the caller's budget until its margin runs out (seen
  by another worker whose clock the test moves), then it comes back;
* Redis killed, then restarted, while a call runs; Redis frozen (SIGSTOP),
  then thawed: the call goes on until its far end ends it and is
  reported; a new call, and a hangup that cannot be matched to its owner,
  are 503s while the store is away (never a 500, never a hang); the call's
  end the store missed is logged, and settled once the store is back (the
  budget is not held until the reservation's margin); then calls are
  admitted and counted again.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import anyio
import httpx
import pytest

from navai_mw.runtime.budget_store import RESERVATION_MARGIN_SECONDS
from navai_mw.testing import FakeRealtimeWebRTC

from .redis_server import RedisServer, redis_fixture
from .test_budget_calls import anyio_backend as anyio_backend  # a fixture
from .test_budget_calls import offer, relay, usage
from .test_budget_calls import webrtc as webrtc  # a fixture
from .test_call_sideband import AUTH, BOUND, KEY, Reports, attached, call, hang_up, navai
from .test_cli import Cli, _env, _free_port
from .test_cli import started as started  # a fixture

pytest.importorskip("aiortc")

redis = redis_fixture(scope="function")


class Clock:
    """UNIX time, moved forward by the test."""

    def __init__(self) -> None:
        import time

        self._time = time.time
        self.ahead = 0.0

    def __call__(self) -> float:
        return self._time() + self.ahead


@pytest.mark.anyio
async def test_a_killed_workers_reservation_comes_back_after_its_margin(
    webrtc: tuple[FakeRealtimeWebRTC, str], redis: RedisServer, started: list[Cli]
) -> None:
    upstream, base_url = webrtc
    budget = "2 minutes/day"
    port = _free_port()
    worker = Cli(
        "serve", "--port", str(port),
        env=_env(OPENAI_API_KEY=KEY, OPENAI_BASE_URL=base_url, NAVAI_RELAY="true",
                 NAVAI_BUDGET=budget, NAVAI_RATE_LIMIT_STORAGE=redis.url),
    )  # fmt: skip
    started.append(worker)
    worker.banner()
    doomed = f"http://127.0.0.1:{port}"
    sdp = await offer()
    clock = Clock()
    # Without authorize, both workers count the caller by address: the same one.
    with navai(
        "uvicorn", base_url, authorize=None, budget=budget, rate_limit_storage=redis.url,
        budget_clock=clock,
    ) as survivor:  # fmt: skip
        made = await relay(doomed, sdp)
        assert made.status_code == 201, made.text
        await attached(upstream, made.headers["location"].rsplit("/", 1)[-1])
        held = await usage(survivor)
        assert held["remaining"] == 0
        assert 1.5 < held["reserved"] <= 2.0  # what is left of the call's reservation
        worker.process.send_signal(signal.SIGKILL)  # it never settles its call
        assert worker.process.wait(BOUND) == -signal.SIGKILL
        # The reservation outlives its worker: the budget stays held...
        clock.ahead = 120 + RESERVATION_MARGIN_SECONDS - 5
        refused = await relay(survivor, sdp)
        assert refused.status_code == 429
        assert refused.json()["code"] == "budget_exhausted"
        # ...until its call's time and the margin have passed: then it is back.
        clock.ahead = 120 + RESERVATION_MARGIN_SECONDS + 1
        back = await usage(survivor)
        assert (back["used"], back["reserved"], back["remaining"]) == (0, 0, 2.0)
        again = await relay(survivor, sdp)
        assert again.status_code == 201, again.text
        await hang_up(survivor, again.headers["location"])


def _settle_failed(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [line for line in caplog.messages if "budget store" in line and "SettleCall" in line]


@pytest.mark.anyio
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
@pytest.mark.parametrize("outage", ["killed", "frozen"])
async def test_a_call_outlives_its_budget_store(
    shell: str,
    outage: str,
    webrtc: tuple[FakeRealtimeWebRTC, str],
    redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="navai_mw")
    upstream, base_url = webrtc
    reports = Reports()
    keywords: dict[str, Any] = {"budget": "1 minutes/day", "rate_limit_storage": redis.url}
    with navai(shell, base_url, on_call_end=reports, **keywords) as url:
        sdp = await offer()
        async with call(url) as (call_id, location):
            await attached(upstream, call_id)
            if outage == "killed":
                redis.stop()
            else:
                redis.freeze()
            try:
                # A new call cannot be admitted, nor a hangup matched to its
                # owner (the calls' store is the same Redis): both are 503s,
                # each within the store's timeout.
                with anyio.fail_after(BOUND):
                    refused = await relay(url, sdp)
                assert refused.status_code == 503
                assert refused.headers["retry-after"] == "5"
                with anyio.fail_after(BOUND):
                    async with httpx.AsyncClient(timeout=BOUND) as client:
                        held = await client.delete(f"{url}{location}", headers=AUTH)
                assert held.status_code == 503
                # The call goes on until its far end hangs up; it is reported.
                await upstream.aend_call(call_id)
                report = await reports.one()
                assert report.call_id == call_id
                assert report.end_reason == "remote"
                with anyio.fail_after(BOUND):
                    while not _settle_failed(caplog):
                        await anyio.sleep(0.05)
            finally:
                if outage == "killed":
                    redis.start()  # on the same port, without the old counts
                else:
                    redis.thaw()
        assert len(upstream.calls) == 1  # the refused call cost nothing upstream
        # The store is back: the call's end it missed is settled (a frozen
        # Redis kept the reservation, a restarted one lost it), so the
        # budget is not held until the reservation's margin runs out...
        with anyio.fail_after(BOUND):
            while (row := await usage(url))["reserved"] > 0:
                await anyio.sleep(0.2)
        if outage == "frozen":
            assert 0 < row["used"] < 1  # charged what the call used, once
        # ...and the next call is admitted, and counted again.
        admitted = await relay(url, sdp)
        assert admitted.status_code == 201, admitted.text
        assert (await usage(url))["reserved"] > 0
        await hang_up(url, admitted.headers["location"])
    assert not any(KEY in line for line in caplog.messages)
