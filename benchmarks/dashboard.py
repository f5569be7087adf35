"""``python -m benchmarks.dashboard``: the pictures of docs/operating.md,
drawn from the Grafana dashboard's own PromQL (docs/grafana-dashboard.json)
against a real Prometheus scraping ``navai-mw serve --workers 2``.

The scripted load, a few minutes: secrets minted at a rising rate (some
past the rate limit, refused), backend functions called (one of them slow),
and relayed calls with their sideband (the fake OpenAI reports usage on
each, then ends it), against the fakes on loopback. Needs ``prometheus``
and ``aiortc`` (the ``webrtc`` extra); writes docs/operating-*.svg.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from navai_mw.testing import FakeOpenAIRealtime, FakeRealtimeWebRTC, serve_asgi
from navai_mw.testing.upstreams import openai_app

from ._harness import REPO
from ._svg import lines

DOCS = REPO / "docs"
SECONDS = 150
KEY = "sk-dashboard-made-up-key"
FUNCTIONS = '''
import random
import time


def lookup_order(order_id: str) -> dict:
    """Find an order."""
    time.sleep(random.uniform(0.005, 0.03))
    return {"order": order_id, "status": "shipped"}


def plan_route(city: str) -> dict:
    """A slow one: plan a delivery route."""
    time.sleep(random.uniform(0.1, 0.4))
    return {"city": city, "stops": 3}
'''
# Each panel: its picture's file, title, y label, and its targets (PromQL, legend).
PICTURES = {
    1: ("operating-throughput.svg", "per second"),
    2: ("operating-calls.svg", "calls"),
    3: ("operating-latency.svg", "seconds"),
    4: ("operating-refusals.svg", "per second"),
    5: ("operating-cost.svg", "USD per hour"),
    6: ("operating-functions.svg", "seconds"),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _prometheus(target: int, workdir: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        sys.exit("prometheus is not installed (apt-get install prometheus)")
    port = _free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: navai\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
    )
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        log.close()


@contextlib.contextmanager
def _navai(upstream: str, workdir: Path) -> Iterator[tuple[str, int]]:
    port, metrics_port = _free_port(), _free_port()
    folder = workdir / "src" / "functions"
    folder.mkdir(parents=True)
    (folder / "orders.py").write_text(FUNCTIONS)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "NAVAI_"))},
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": upstream,
        "NAVAI_RELAY": "true",
        "NAVAI_SIDEBAND": "true",
        "NAVAI_RATE_LIMIT": "15/second",
        "NAVAI_FUNCTIONS_BASE_DIR": str(workdir),
        "NAVAI_FUNCTIONS_FOLDERS": "functions",
        "PYTHONPATH": str(REPO),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "navai_mw", "serve", "--port", str(port), "--workers", "2",
         "--metrics-port", str(metrics_port)],
        env=env, stdout=subprocess.DEVNULL, stderr=(workdir / "navai.log").open("wb"),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{base}/_navai_ready", timeout=1)
                break
            time.sleep(0.1)
        yield base, metrics_port
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)


async def _offer() -> str:
    import aiortc

    pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
    pc.createDataChannel("oai-events")
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


def _load(base: str, webrtc: FakeRealtimeWebRTC, stop: threading.Event) -> None:
    """Mints at a rising rate, functions, and calls that report usage."""
    offer = asyncio.run(_offer())
    began = time.monotonic()
    calls: list[tuple[str, float]] = []
    usage = {
        "input_tokens": 1200,
        "output_tokens": 400,
        "input_token_details": {"text_tokens": 200, "audio_tokens": 1000},
        "output_token_details": {"text_tokens": 100, "audio_tokens": 300},
    }
    with httpx.Client(base_url=base, timeout=10) as client:
        tick = 0
        while not stop.is_set():
            elapsed = time.monotonic() - began
            for _ in range(2 + int(elapsed / 8)):  # rising: past the limit later on
                client.post("/navai/realtime/client-secret", json={})
            client.post(
                "/navai/functions/execute",
                json={"function_name": "lookup_order", "payload": {"order_id": "A1"}},
            )
            if tick % 4 == 0:
                client.post(
                    "/navai/functions/execute",
                    json={"function_name": "plan_route", "payload": {"city": "Lyon"}},
                )
            if tick % 6 == 0 and len(calls) < 12:
                made = client.post(
                    "/navai/realtime/calls",
                    content=offer,
                    headers={"content-type": "application/sdp"},
                )
                if made.status_code == 201:
                    calls.append((made.headers["location"], elapsed))
            for location, _ in calls:
                with contextlib.suppress(Exception):
                    webrtc.finish_response(location.rsplit("/", 1)[-1], usage)
            for location, started in list(calls):
                if elapsed - started > 40:
                    client.delete(location)
                    calls.remove((location, started))
            tick += 1
            time.sleep(0.5)
        for location, _ in calls:
            client.delete(location)


def _series(prometheus: str, expr: str, start: float, end: float) -> list[tuple[str, list[Any]]]:
    answer = httpx.get(
        f"{prometheus}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": 2},
        timeout=10,
    ).json()
    return [(json.dumps(r["metric"]), r["values"]) for r in answer["data"]["result"]]


def main() -> int:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    workdir = Path(tempfile.mkdtemp(prefix="navai-dashboard-"))
    secrets, webrtc = FakeOpenAIRealtime(api_key=KEY), FakeRealtimeWebRTC(api_key=KEY)
    try:
        with serve_asgi(openai_app(secrets, webrtc), loop="asyncio", lifespan="on") as fake, \
                _navai(f"{fake}/v1", workdir) as (base, metrics_port), \
                _prometheus(metrics_port, workdir) as prometheus:  # fmt: skip
            start = time.time()
            stop = threading.Event()
            load = threading.Thread(target=_load, args=(base, webrtc, stop))
            load.start()
            time.sleep(SECONDS)
            stop.set()
            load.join(60)
            time.sleep(15)  # the calls' ends reported, scraped
            end = time.time()
            for panel in dashboard["panels"]:
                name, unit = PICTURES[panel["id"]]
                drawn = []
                for target in panel["targets"]:
                    for labels, values in _series(prometheus, target["expr"], start, end):
                        legend = target["legendFormat"]
                        for key, value in json.loads(labels).items():
                            legend = legend.replace("{{" + key + "}}", value)
                        points = [
                            (float(t) - start, float(v))
                            for t, v in values
                            if v not in ("NaN", "+Inf", "-Inf")
                        ]
                        drawn.append((legend, points))
                svg = lines(
                    title=panel["title"],
                    subtitle="navai-mw serve --workers 2, a real Prometheus, scripted load",
                    y_label=unit,
                    series=drawn,
                )
                (DOCS / name).write_text(svg + "\n")
                print(f"wrote docs/{name}: {len(drawn)} series")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
