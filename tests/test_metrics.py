"""Metrics, request ids and traces.

* Prometheus: a real ``prometheus`` server (Debian's), started here on a
  loopback port, scrapes ``navai-mw serve --workers 2 --metrics-port``
  while the test mints and relays through it: the scraped counters equal
  the requests made, summed over both workers, and the live-calls gauge is
  back to 0 once the calls end.
* In-process, on both shells: the series a request, a refusal, a function
  call move; the request id answered and in the log lines.
* OpenTelemetry with the SDK's in-memory exporter, on both shells: a span
  per request, a child span per upstream attempt, attributes without any
  secret; the caller's trace context continued.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import REGISTRY

from navai_mw import (
    AuthError,
    NavaiASGIMiddleware,
    NavaiVoiceBackendOptions,
    NavaiWSGIMiddleware,
    OptionsError,
)
from navai_mw.testing import FakeOpenAIRealtime, WebhookSender, serve_asgi, webhook_events

from .conftest import CANARY_KEY
from .redis_server import RedisServer, redis_fixture
from .test_cli import Cli, _env, _free_port
from .test_cli import started as started  # a fixture

shared_redis = redis_fixture(scope="module")
BOUND = 60.0
MINT = "/navai/realtime/client-secret"
WEBHOOK = "/navai/webhooks/openai"


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def boom() -> None:
    """Always fails."""
    raise RuntimeError("the app's own bug")


async def hello_asgi(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


def hello_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"app"]


@contextlib.contextmanager
def both_shells(
    fake: FakeOpenAIRealtime | None = None, **keywords: Any
) -> Iterator[list[tuple[str, Any]]]:
    fake = fake or FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, openai_base_url=fake.base_url)
    keywords.setdefault("functions", [add, boom])
    with anyio.from_thread.start_blocking_portal() as portal:
        upstream = fake.async_transport()
        asgi = NavaiASGIMiddleware(hello_asgi, opts, transport=upstream, **keywords)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://t")

        def asgi_post(path: str, **kw: Any) -> httpx.Response:
            return portal.call(lambda: client.post(path, **kw))

        with fake.sync_transport() as sync_upstream:
            wsgi = NavaiWSGIMiddleware(hello_wsgi, opts, transport=sync_upstream, **keywords)
            with httpx.Client(transport=httpx.WSGITransport(app=wsgi), base_url="http://t") as sync:
                yield [("asgi", asgi_post), ("wsgi", sync.post)]
            wsgi.close()
        portal.call(client.aclose)
        portal.call(upstream.aclose)


# -- in-process ---------------------------------------------------------------------------------


def test_requests_refusals_and_functions_are_counted_on_both_shells() -> None:
    with both_shells(rate_limit={"mint": "1/minute"}) as shells:
        for _, post in shells:
            minted = ("navai_requests_total", {"route": "client_secret", "status": "200"})
            limited = ("navai_guard_decisions_total", {"group": "mint", "outcome": "rate_limited"})
            ran = ("navai_function_calls_total", {"function": "add", "outcome": "ok"})
            before = [sample(name, **labels) for name, labels in (minted, limited, ran)]
            mints = sample("navai_mints_total", kind="realtime")
            attempts = sample("navai_upstream_requests_total", upstream="openai", outcome="200")
            assert post(MINT, json={}).status_code == 200
            assert post(MINT, json={}).status_code == 429
            executed = post(
                "/navai/functions/execute",
                json={"function_name": "add", "payload": {"a": 2, "b": 3}},
            )
            assert executed.json()["result"] == 5
            after = [sample(name, **labels) for name, labels in (minted, limited, ran)]
            assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]
            assert sample("navai_mints_total", kind="realtime") == mints + 1
            assert (
                sample("navai_upstream_requests_total", upstream="openai", outcome="200")
                == attempts + 1
            )
    assert sample("navai_request_duration_seconds_count", route="client_secret") >= 4


def _authorize(info: Any) -> str | None:
    who = info.headers.get("x-who")
    if who == "banned":
        raise AuthError("Not for you.", status=403)
    return None if who is None else who


@pytest.mark.parametrize(
    ("headers", "status", "outcome"),
    [
        ({}, 401, "unauthenticated"),
        ({"x-who": "banned"}, 403, "forbidden"),
        ({"x-who": "ana"}, 503, "storage_down"),
    ],
    ids=["unauthenticated", "forbidden", "storage-down"],
)
def test_each_refusal_of_the_guard_is_counted_by_what_it_decided(
    headers: dict[str, str], status: int, outcome: str
) -> None:
    down = "redis://127.0.0.1:1/0"  # nothing listens there
    with both_shells(
        authorize=_authorize, rate_limit={"mint": "5/minute"}, rate_limit_storage=down
    ) as shells:
        for _, post in shells:
            before = sample("navai_guard_decisions_total", group="mint", outcome=outcome)
            assert post(MINT, json={}, headers=headers).status_code == status
            after = sample("navai_guard_decisions_total", group="mint", outcome=outcome)
            assert after == before + 1


BUDGET = "1 minutes/day"


@pytest.mark.parametrize(
    ("keywords", "statuses", "outcome"),
    [
        ({}, [200], "allowed"),
        ({"budget": BUDGET}, [403], "allowed"),  # client secrets are off under a budget
        ({"budget": BUDGET, "budget_secret_seconds": 60}, [200, 429], "budget_exhausted"),
        ({"upstream_fails": True}, [502], "allowed"),
    ],
    ids=["served", "refused by the route", "budget spent", "upstream failed"],
)
def test_what_the_guard_let_through_is_counted_allowed_or_budget_exhausted(
    keywords: dict[str, Any], statuses: list[int], outcome: str
) -> None:
    keywords = dict(keywords)  # the parameter itself is kept for a run again in one process
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    if keywords.pop("upstream_fails", False):
        fake.fail(500)
    if "budget" in keywords:
        keywords["relay"] = True  # budgets meter the calls navai_mw relays
    with both_shells(fake, authorize=lambda info: "ana", **keywords) as shells:
        for _, post in shells:
            before = sample("navai_guard_decisions_total", group="mint", outcome=outcome)
            assert [post(MINT, json={}).status_code for _ in statuses] == statuses
            after = sample("navai_guard_decisions_total", group="mint", outcome=outcome)
            assert after == before + (1 if outcome == "budget_exhausted" else len(statuses))


def test_webhooks_are_counted_by_type_and_outcome_on_both_shells() -> None:
    secret = "whsec_" + base64.b64encode(b"metrics' webhook signing key").decode()
    heard: list[str] = []
    with both_shells(
        openai_webhook_secret=secret, on_openai_event=lambda e: heard.append(e["type"])
    ) as shells:
        for name, post in shells:
            sender = WebhookSender(secret, "http://t/navai/webhooks/openai")
            warning = webhook_events.safety_warning_issued(f"case_{name}")
            series = {
                "handled": {"type": "safety.warning_issued", "outcome": "handled"},
                "duplicate": {"type": "safety.warning_issued", "outcome": "duplicate"},
                "unsigned": {"type": "unknown", "outcome": "unsigned"},
                "malformed": {"type": "unknown", "outcome": "malformed"},
            }
            before = {k: sample("navai_webhooks_total", **v) for k, v in series.items()}
            body, headers = sender.prepare(warning)
            undated = sender.prepare(warning, drop=("webhook-timestamp",))[1]
            statuses = [
                post(WEBHOOK, content=body, headers=headers).status_code,
                post(WEBHOOK, content=body, headers=headers).status_code,
                post(
                    WEBHOOK, content=body.replace(b"case_", b"CASE_"), headers=headers
                ).status_code,
                post(WEBHOOK, content=body, headers=undated).status_code,
            ]
            assert statuses == [200, 200, 401, 400]
            after = {k: sample("navai_webhooks_total", **v) for k, v in series.items()}
            assert {k: after[k] - before[k] for k in series} == dict.fromkeys(series, 1.0)
    assert heard.count("safety.warning_issued") >= 1


def test_a_webhook_no_store_can_remember_is_counted_unavailable_by_its_type() -> None:
    secret = "whsec_" + base64.b64encode(b"metrics' webhook signing key").decode()
    down = "redis://127.0.0.1:1/0"  # nothing listens there
    with both_shells(
        openai_webhook_secret=secret, on_openai_event=print, rate_limit_storage=down
    ) as shells:
        for name, post in shells:
            sender = WebhookSender(secret, "http://t/navai/webhooks/openai")
            # A delivery not remembered, and a block not kept.
            for event in (
                webhook_events.safety_warning_issued(f"case_{name}"),
                webhook_events.safety_identifier_blocked(f"{name}" * 16, "fraud"),
            ):
                body, headers = sender.prepare(event)
                labels = {"type": event["type"], "outcome": "unavailable"}
                before = sample("navai_webhooks_total", **labels)
                assert post(WEBHOOK, content=body, headers=headers).status_code == 503
                assert sample("navai_webhooks_total", **labels) == before + 1


def test_a_webhook_nobody_acts_on_is_ignored_and_a_block_is_handled() -> None:
    secret = "whsec_" + base64.b64encode(b"metrics' webhook signing key").decode()
    with both_shells(openai_webhook_secret=secret, sip_accept="live") as shells:
        for name, post in shells:
            sender = WebhookSender(secret, "http://t/navai/webhooks/openai")
            deliveries = [
                (webhook_events.safety_warning_issued(f"case_{name}"), "ignored"),  # no hook
                # A phone call for the other surface: the Live one answers it.
                (webhook_events.realtime_call_incoming(f"rtc_{name}0123456789ab", ()), "ignored"),
                (webhook_events.safety_identifier_blocked(f"{name}" * 16, "fraud"), "handled"),
            ]
            for event, outcome in deliveries:
                labels = {"type": event["type"], "outcome": outcome}
                before = sample("navai_webhooks_total", **labels)
                body, headers = sender.prepare(event)
                answer = post(WEBHOOK, content=body, headers=headers)
                assert (answer.status_code, answer.json()) == (200, {"received": True})
                assert sample("navai_webhooks_total", **labels) == before + 1, (name, labels)


@pytest.mark.parametrize(
    "switch",
    [{"metrics": False}, {"env": {"NAVAI_METRICS": "false"}}],
    ids=["keyword", "environment"],
)
def test_metrics_can_be_switched_off(switch: dict[str, Any]) -> None:
    before = sample("navai_requests_total", route="client_secret", status="200")
    with both_shells(**switch) as shells:
        for _, post in shells:
            assert post(MINT, json={}).status_code == 200
    assert sample("navai_requests_total", route="client_secret", status="200") == before


def test_the_metrics_keyword_wins_over_the_environment_and_is_true_or_false() -> None:
    before = sample("navai_requests_total", route="client_secret", status="200")
    with both_shells(metrics=True, env={"NAVAI_METRICS": "false"}) as shells:
        for _, post in shells:
            assert post(MINT, json={}).status_code == 200
    assert sample("navai_requests_total", route="client_secret", status="200") == before + 2
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY)
    with pytest.raises(OptionsError) as refused:
        NavaiWSGIMiddleware(hello_wsgi, opts, metrics="yes")
    assert str(refused.value) == "metrics must be True or False. Received: 'yes'"


def test_every_answer_carries_a_request_id_and_every_log_line_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="navai_mw"), both_shells() as shells:
        for _, post in shells:
            made = post(MINT, json={})
            assert len(made.headers["x-request-id"]) == 32
            kept = post(MINT, json={}, headers={"x-request-id": "client-chosen.id-1"})
            assert kept.headers["x-request-id"] == "client-chosen.id-1"
            unkept = post(MINT, json={}, headers={"x-request-id": "a b\tc"})
            assert unkept.headers["x-request-id"] != "a b\tc"
            refused = post(
                MINT,
                content=b"{",
                headers={"x-request-id": "bad-body-7", "content-type": "application/json"},
            )
            assert refused.status_code == 400
            assert refused.headers["x-request-id"] == "bad-body-7"
            failed = post(
                "/navai/functions/execute",
                json={"function_name": "boom", "payload": {}},
                headers={"x-request-id": "fn-9"},
            )
            assert failed.status_code == 500
            assert failed.headers["x-request-id"] == "fn-9"
    logged = [record.getMessage() for record in caplog.records if "boom" in record.getMessage()]
    assert len(logged) == 2
    assert all(line.endswith("[request fn-9]") for line in logged), logged


# -- OpenTelemetry --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spans() -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    # OpenTelemetry takes one provider per process: a process that runs
    # these tests again (mutation testing does) adds to the one it has.
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def test_a_request_and_its_upstream_attempt_are_spans_without_secrets(spans: Any) -> None:
    parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{parent_trace}-00f067aa0ba902b7-01"
    with both_shells() as shells:
        for shell, post in shells:
            spans.clear()
            made = post(MINT, json={}, headers={"traceparent": traceparent})
            assert made.status_code == 200
            finished = spans.get_finished_spans()
            server = next(s for s in finished if s.name == "navai client_secret")
            client = next(s for s in finished if s.name == "POST")
            assert format(server.context.trace_id, "032x") == parent_trace, shell
            assert client.parent.span_id == server.context.span_id
            assert server.attributes["http.response.status_code"] == 200
            assert server.attributes["navai.request_id"] == made.headers["x-request-id"]
            assert client.attributes["http.response.status_code"] == 200
            assert client.attributes["url.full"].endswith("/realtime/client_secrets")
            dumped = json.dumps([dict(s.attributes) for s in finished])
            assert CANARY_KEY not in dumped
            assert "ek_" not in dumped


# -- a real Prometheus, two workers -------------------------------------------------------------


@contextlib.contextmanager
def prometheus(target_port: int, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary is not None, "prometheus is installed by scripts/test"
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: navai\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + BOUND
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "prometheus did not start"
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        log.close()


def query(url: str, promql: str) -> float | None:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5).json()
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def until_scraped(url: str, promql: str, expected: float) -> float | None:
    deadline = time.monotonic() + BOUND
    value = None
    while time.monotonic() < deadline:
        value = query(url, promql)
        if value == expected:
            return value
        time.sleep(0.5)
    return value


def test_prometheus_scrapes_the_sum_of_two_workers(
    started: list[Cli], tmp_path: Path, shared_redis: RedisServer
) -> None:
    """Mints and relayed calls through ``navai-mw serve --workers 2``: the
    scraped counters are the requests made, whichever worker took them;
    the live-calls gauge counts the calls, and is back to 0 once they end."""
    pytest.importorskip("aiortc")
    from navai_mw.testing import FakeRealtimeWebRTC
    from navai_mw.testing.upstreams import openai_app

    from .test_fake_webrtc import Browser

    secrets, webrtc = FakeOpenAIRealtime(api_key=CANARY_KEY), FakeRealtimeWebRTC(api_key=CANARY_KEY)

    async def offer() -> str:
        browser = Browser()
        try:
            return await browser.offer()
        finally:
            await browser.close()

    sdp = anyio.run(offer)
    with serve_asgi(openai_app(secrets, webrtc), loop="asyncio", lifespan="on") as fake_url:
        port, metrics_port = _free_port(), _free_port()
        cli = Cli(
            "serve", "--port", str(port), "--workers", "2", "--metrics-port", str(metrics_port),
            env=_env(OPENAI_API_KEY=CANARY_KEY, OPENAI_BASE_URL=f"{fake_url}/v1",
                     NAVAI_RATE_LIMIT_STORAGE=shared_redis.url, NAVAI_RELAY="true",
                     NAVAI_SIDEBAND="true"),
        )  # fmt: skip
        started.append(cli)
        cli.banner()
        base = f"http://127.0.0.1:{port}"
        with (
            prometheus(metrics_port, tmp_path) as prom,
            httpx.Client(base_url=base, timeout=10) as client,
        ):
            count = 40
            for _ in range(count):
                # A new connection each time: both workers take some.
                made = client.post(MINT, json={}, headers={"connection": "close"})
                assert made.status_code == 200
            minted = 'sum(navai_requests_total{route="client_secret",status="200"})'
            assert until_scraped(prom, minted, count) == count
            assert until_scraped(prom, "sum(navai_mints_total)", count) == count
            locations = []
            for _ in range(3):
                relayed = client.post(
                    "/navai/realtime/calls",
                    content=sdp,
                    headers={"content-type": "application/sdp", "connection": "close"},
                )
                assert relayed.status_code == 201, relayed.text
                locations.append(relayed.headers["location"])
            assert until_scraped(prom, "sum(navai_calls_active)", 3) == 3
            for location in locations:
                assert client.delete(location, headers={"connection": "close"}).status_code == 204
            assert until_scraped(prom, "sum(navai_calls_active)", 0) == 0
            assert until_scraped(prom, "sum(navai_calls_ended_total)", 3) == 3
        assert cli.stop(signal.SIGINT) == 0
    assert len([r for r in secrets.requests if r.path.endswith("/client_secrets")]) == count
    assert len(webrtc.hangups) == 3
