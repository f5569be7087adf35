"""The benchmark harness works: its pieces produce numbers and valid files.

No timing is asserted here; the benchmarks themselves run with
``python -m benchmarks`` and report, they never pass or fail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import math
import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from navai_mw.testing import FakeOpenAIRealtime, serve_asgi

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # plain `pytest` does not put the repository root there
    sys.path.insert(0, str(REPO))

from benchmarks import _report, bench_core, bench_latency  # noqa: E402
from benchmarks._apps import AiohttpRelay  # noqa: E402
from benchmarks._harness import (  # noqa: E402
    BENCH_KEY,
    MINT_PATH,
    QUICK,
    REQUEST_BODY,
    Context,
    Ratio,
    Section,
    Spread,
    Target,
    interleave,
)
from benchmarks._inproc import CannedTransport, mint_call  # noqa: E402
from benchmarks._load import run_async, run_threads  # noqa: E402
from benchmarks._procs import Servers, cpu_seconds, memory_mib  # noqa: E402
from benchmarks._svg import grouped_bars  # noqa: E402

TINY = dataclasses.replace(QUICK, inproc_seconds=0.002)
SVG = "{http://www.w3.org/2000/svg}"


def test_interleave_reverses_every_other_round() -> None:
    assert list(interleave(["a", "b", "c"], 2)) == [
        (0, "a"),
        (0, "b"),
        (0, "c"),
        (1, "c"),
        (1, "b"),
        (1, "a"),
    ]


def test_ratio_is_the_median_of_per_round_ratios() -> None:
    ratio = Ratio.of([2.0, 9.0, 4.0], [1.0, 3.0, 1.0])
    assert (ratio.median, ratio.low, ratio.high) == (3.0, 2.0, 4.0)
    assert str(ratio) == "3x (2-4)"
    assert str(Spread.of([500.0, 480.0, 1200.0], "ns")) == "500 ns (480 to 1,200)"


def test_svg_chart_is_valid_xml_with_a_bar_per_measurement() -> None:
    svg = grouped_bars(
        title="req/s <&> connections",
        y_label="requests / s",
        groups=["5 connections", "50 connections"],
        series=[
            ("navai_mw", [(1000.0, 900.0, 1100.0), (1200.0, 1100.0, 1300.0)]),
            ("peer & co", [(300.0, 250.0, 320.0), None]),
        ],
    )
    root = ET.fromstring(svg)  # noqa: S314 - our own output
    assert root.tag == f"{SVG}svg"
    bars = [rect for rect in root.iter(f"{SVG}rect") if rect.find(f"{SVG}title") is not None]
    assert len(bars) == 3
    assert all(float(bar.get("height", "-1")) > 0 for bar in bars)
    assert "peer &amp; co" in svg


def test_core_benchmark_produces_numbers(tmp_path: Path) -> None:
    section = bench_core.run(Context(TINY, tmp_path, log=lambda _: None))
    for arm in bench_core.ARMS:
        values = section.data[arm]
        assert len(values) == TINY.rounds
        assert all(v > 0 and math.isfinite(v) for v in values)
    assert section.targets
    assert section.targets[0].met is not None


def test_passthrough_benchmark_produces_numbers(tmp_path: Path) -> None:
    pytest.importorskip("starlette")
    from benchmarks import bench_passthrough

    section = bench_passthrough.run(Context(TINY, tmp_path, log=lambda _: None))
    assert set(section.data) == set(bench_passthrough.ARMS)
    assert all(v > 0 for values in section.data.values() for v in values)


def test_in_process_minting_answers_200() -> None:
    # The memory and connection benchmarks count only 200s as requests done.
    from benchmarks._apps import not_found_asgi, options
    from navai_mw import NavaiASGIMiddleware

    app = NavaiASGIMiddleware(
        not_found_asgi, opts=options("http://127.0.0.1:9/v1"), transport=CannedTransport()
    )
    load = asyncio.run(run_async(mint_call(app), concurrency=3, requests=20, seconds=10))
    assert (load.count, load.errors) == (20, 0)
    assert load.p50 > 0


def test_thread_load_counts_answers_and_errors() -> None:
    calls = iter(range(1000))

    def call() -> None:
        if next(calls) % 4 == 0:
            raise RuntimeError("refused")

    load = run_threads(call, threads=4, requests=40, seconds=10)
    assert load.count + load.errors == 40
    assert load.errors > 0


def test_report_writes_page_and_charts(tmp_path: Path) -> None:
    minting = Section(key="minting", title="Minting", intro="x", headers=["arm"], rows=[["a"]])
    minting.data["chart"] = {
        "labels": {"navai": "navai_mw", "peer": "peer"},
        "series": {
            "navai": {5: [10.0, 9.0, 11.0], 50: [12.0, 11.0, 13.0]},
            "peer": {5: [4.0, 3.0, 5.0]},
        },
    }
    minting.targets.append(Target("req/s at 50 >= 3x the peer", "3x (2-4)", True))
    transports = Section(key="transports", title="Transports", intro="y")
    transports.data["aiohttp@5"] = {"rate": [3.0, 1.0, 2.0]}
    page = _report.write(
        [minting, transports],
        profile=QUICK,
        out_dir=tmp_path,
        markdown_name="benchmarks.md",
        machine_before=_report.machine(),
        started=datetime.datetime.now(datetime.timezone.utc),
        seconds=1.0,
        default_transport="test",
    )
    text = page.read_text()
    assert "| met | req/s at 50 >= 3x the peer |" in text
    assert f"]({_report.MINTING_SVG})" in text
    for name in (_report.MINTING_SVG, _report.TRANSPORTS_SVG):
        ET.fromstring((tmp_path / name).read_text())  # noqa: S314 - our own output


def test_report_writes_each_sections_charts(tmp_path: Path) -> None:
    latency = Section(key="latency", title="Latency", intro="z")
    latency.data["charts"] = [
        {
            "name": "latency-300ms",
            "title": "Secrets/s against clients, 300 ms",
            "groups": ["5 clients", "50 clients"],
            "series": [("navai_mw", [(10.0, 9.0, 11.0), (20.0, 19.0, 21.0)])],
        }
    ]
    page = _report.write(
        [latency],
        profile=QUICK,
        out_dir=tmp_path,
        markdown_name="benchmarks.md",
        machine_before=_report.machine(),
        started=datetime.datetime.now(datetime.timezone.utc),
        seconds=1.0,
        default_transport="test",
    )
    assert "](benchmarks-latency-300ms.svg)" in page.read_text()
    svg = ET.fromstring((tmp_path / "benchmarks-latency-300ms.svg").read_text())  # noqa: S314
    assert len(svg.findall(f".//{SVG}rect")) >= 3  # the background and a bar per group


def test_process_counters_read_this_process() -> None:
    busy = sum(i * i for i in range(200_000))  # some CPU time to count
    assert busy > 0
    assert cpu_seconds(os.getpid()) > 0
    now, peak = memory_mib(os.getpid())
    assert 0 < now <= peak


@pytest.fixture
def bench_upstream() -> Iterator[tuple[FakeOpenAIRealtime, str]]:
    fake = FakeOpenAIRealtime(api_key=BENCH_KEY)
    with fake.serve() as url:
        yield fake, url


def test_relay_arm_relays_the_upstreams_answer(
    bench_upstream: tuple[FakeOpenAIRealtime, str],
) -> None:
    fake, url = bench_upstream
    with serve_asgi(AiohttpRelay(url), loop="asyncio", lifespan="on") as relay:
        answer = httpx.post(relay + MINT_PATH, content=REQUEST_BODY, timeout=10)
    assert answer.status_code == 200
    assert answer.json()["value"].startswith("ek_fake_")
    assert fake.requests[-1].headers["authorization"] == f"Bearer {BENCH_KEY}"


def test_reference_arm_mints_through_the_loopback_fake(
    bench_upstream: tuple[FakeOpenAIRealtime, str], tmp_path: Path
) -> None:
    """The TypeScript reference, unchanged, reaches the fake and not OpenAI."""
    fake, url = bench_upstream
    assert bench_latency.reference_ready(lambda line: None) is None
    with Servers() as servers:
        reference = servers.start(
            "reference",
            "--upstream",
            url,
            "--key",
            BENCH_KEY,
            logdir=tmp_path,
            command=["node", "reference_server.mjs"],
            cwd=bench_latency.JS_DIR,
        )
        servers.wait_ready()
        answer = httpx.post(
            reference.url + MINT_PATH,
            content=REQUEST_BODY,
            headers={"content-type": "application/json"},
            timeout=10,
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["value"].startswith("ek_fake_")
    sent = fake.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {BENCH_KEY}"
    assert sent.json["session"]["instructions"].endswith("Use a friendly tone while speaking.")


def test_the_sideband_benchmark_holds_sidebands_and_counts_their_events(tmp_path: Path) -> None:
    """Its fake OpenAI serves sidebands at a rate, and the held arm opens
    them all through navai_mw's runtime and reads their events."""
    from benchmarks import bench_sideband

    with Servers() as servers:
        upstream = servers.start("sideband-upstream", "--rate", "10", logdir=tmp_path)
        servers.wait_ready()
        held = bench_sideband._held(upstream.url, 20, 0.5)
    assert held["count"] == 20
    assert held["opened"] >= 20 + 20  # the warm-up's and the arm's
    assert held["events_per_second"] > 0
    assert held["cpu_share"] > 0


def test_the_budget_benchmark_admits_and_settles(tmp_path: Path) -> None:
    from benchmarks import bench_budgets

    measured = bench_budgets._memory(20)
    assert measured["cpu_ms"] > 0
    assert measured["wall_ms"] > 0
