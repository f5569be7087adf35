"""Minting under a real server: navai_mw against the FastAPI + openai peer.

Every app runs under uvicorn (asyncio loop, h11) in its own process, all
reaching one fake upstream (``FakeOpenAIRealtime``, also its own uvicorn
process) on loopback; wrk, one thread, POSTs the front end's JSON with 5
and 50 connections. The upstream is also loaded alone, by wrk, to show its
own ceiling: an app cannot mint faster than its upstream answers.
"""

from __future__ import annotations

import json
from typing import Any

from navai_mw.upstreams.openai_secrets import build_upstream_request

from ._apps import describe_default_transport, options
from ._harness import (
    BENCH_KEY,
    MINT_PATH,
    REQUEST_BODY,
    Context,
    Ratio,
    Section,
    Target,
    fmt_ms,
    fmt_rate,
    median,
)
from ._procs import Servers, WrkArm, WrkResult, have_wrk, run_wrk, wrk_rounds

LABELS = {
    "upstream": "fake upstream alone (ceiling)",
    "navai-httpcore": "navai_mw, httpcore transport",
    "navai-aiohttp": "navai_mw, httpx over aiohttp's pool",
    "navai-default": "navai_mw, AiohttpTransport",
    "peer": "FastAPI + openai SDK (peer)",
}
MIN_VS_PEER = 3.0
MIN_50_OVER_5 = 0.8
MAX_P99_OVER_P50 = 5.0


def default_arm() -> str | None:
    """The navai arm whose transport is navai_mw's default today."""
    described = describe_default_transport()
    if described.startswith("AiohttpTransport"):
        return "navai-default"
    if "httpx_aiohttp" in described:
        return "navai-aiohttp"
    if "httpcore" in described or "httpx" in described:
        return "navai-httpcore"
    return None


def run(ctx: Context) -> Section:
    profile = ctx.profile
    section = Section(
        key="minting",
        title="Minting under uvicorn, driven by wrk",
        intro=(
            f"`POST {MINT_PATH}` with the front end's JSON, wrk (1 thread) for "
            f"{profile.wrk_seconds} s per run, {profile.rounds} interleaved rounds. Each app in "
            "its own uvicorn process (asyncio loop, h11, one worker); the fake upstream in "
            "another. "
            "Latencies are wrk's, in milliseconds; *upstream conns* counts the connections "
            "the upstream accepted during the runs."
        ),
        headers=["arm", "conns", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors", "upstream conns"],
    )
    if not have_wrk():
        section.notes.append("skipped: wrk is not installed (apt-get install wrk)")
        return section

    with Servers() as servers:
        upstream = servers.start("upstream", logdir=ctx.workdir)
        servers.wait_ready()
        base = f"{upstream.url}/v1"
        apps: dict[str, Any] = {}
        for arm in profile.minting_arms:
            if arm.startswith("navai-"):
                kind = arm.removeprefix("navai-")
                chosen = () if kind == "default" else ("--transport", kind)
                apps[arm] = servers.start(
                    "navai", "--upstream", base, *chosen, logdir=ctx.workdir, name=arm
                )
            elif arm == "peer":
                apps[arm] = servers.start("peer", "--upstream", base, logdir=ctx.workdir)
        servers.wait_ready()

        targets: dict[str, WrkArm] = {}
        for arm in profile.minting_arms:
            if arm == "upstream":
                upstream_request = build_upstream_request(options(base), json.loads(REQUEST_BODY))
                targets[arm] = WrkArm(
                    f"{base}/realtime/client_secrets",
                    upstream_request.body,
                    (f"Bearer {BENCH_KEY}",),
                )
            else:
                targets[arm] = WrkArm(f"{apps[arm].url}{MINT_PATH}", REQUEST_BODY)
        if profile.name == "full":
            # One unrecorded run each: imports, pools and caches warm up.
            for target in targets.values():
                run_wrk(
                    target.url, connections=50, seconds=1, body=target.body, headers=target.headers
                )
        results = wrk_rounds(
            targets,
            connections=profile.wrk_connections,
            rounds=profile.rounds,
            seconds=profile.wrk_seconds,
            upstream=upstream,
            log=ctx.log,
        )
    _report(section, profile.minting_arms, profile.wrk_connections, results)
    return section


def _rates(runs: list[tuple[WrkResult, int]]) -> list[float]:
    return [r.rate for r, _ in runs]


def _report(
    section: Section,
    arms: tuple[str, ...],
    connections: tuple[int, ...],
    results: dict[tuple[str, int], list[tuple[WrkResult, int]]],
) -> None:
    default = default_arm()
    labels = {arm: LABELS[arm] + (" (default today)" if arm == default else "") for arm in arms}
    chart: dict[str, dict[int, list[float]]] = {}
    for arm in arms:
        for n in connections:
            runs = results[(arm, n)]
            rates = _rates(runs)
            section.rows.append(
                [
                    labels[arm],
                    str(n),
                    fmt_rate(median(rates)),
                    fmt_ms(median([r.p50 for r, _ in runs])),
                    fmt_ms(median([r.p90 for r, _ in runs])),
                    fmt_ms(median([r.p99 for r, _ in runs])),
                    str(sum(r.errors for r, _ in runs)),
                    str(sum(opened for _, opened in runs)),
                ]
            )
            chart.setdefault(arm, {})[n] = [median(rates), min(rates), max(rates)]
            section.data[f"{arm}@{n}"] = {
                "rate": rates,
                "p50": [r.p50 for r, _ in runs],
                "p90": [r.p90 for r, _ in runs],
                "p99": [r.p99 for r, _ in runs],
                "errors": sum(r.errors for r, _ in runs),
                "upstream_connections": [opened for _, opened in runs],
            }
    section.data["chart"] = {"labels": labels, "series": chart}
    section.notes.append(
        "*upstream conns* includes reopening: pools close connections idle for longer than "
        "their keep-alive expiry (5 s), which happens between an arm's runs. Reuse under "
        "steady load is measured in the connections section."
    )
    if any(sum(r.errors for r, _ in runs) for runs in results.values()):
        section.notes.append("some runs had errors: their rates count only the answered requests")

    low, high = min(connections), max(connections)
    navai_arms = [arm for arm in arms if arm.startswith("navai-")]
    for arm in navai_arms:
        if "peer" in arms:
            for n in connections:
                section.ratios.append(
                    (
                        f"{arm} / peer, req/s at {n} connections",
                        Ratio.of(_rates(results[(arm, n)]), _rates(results[("peer", n)])),
                    )
                )
        if "upstream" in arms:
            section.ratios.append(
                (
                    f"{arm} / upstream ceiling, req/s at {high} connections",
                    Ratio.of(_rates(results[(arm, high)]), _rates(results[("upstream", high)])),
                )
            )
    for arm in arms:
        if low != high:
            section.ratios.append(
                (
                    f"{arm}: req/s at {high} / at {low} connections",
                    Ratio.of(_rates(results[(arm, high)]), _rates(results[(arm, low)])),
                )
            )
        section.ratios.append(
            (
                f"{arm}: p99 / p50 at {high} connections",
                Ratio.of(
                    [r.p99 for r, _ in results[(arm, high)]],
                    [r.p50 for r, _ in results[(arm, high)]],
                ),
            )
        )

    for arm in navai_arms:
        name = labels[arm]
        if "peer" in arms:
            vs_peer = Ratio.of(_rates(results[(arm, high)]), _rates(results[("peer", high)]))
            section.targets.append(
                Target(
                    f"{name}: req/s at {high} connections >= {MIN_VS_PEER:g}x the peer",
                    str(vs_peer),
                    vs_peer.median >= MIN_VS_PEER,
                )
            )
        if low != high:
            scaling = Ratio.of(_rates(results[(arm, high)]), _rates(results[(arm, low)]))
            section.targets.append(
                Target(
                    f"{name}: req/s at {high} >= {MIN_50_OVER_5:g}x at {low} connections",
                    str(scaling),
                    scaling.median >= MIN_50_OVER_5,
                )
            )
        for n in connections:
            tail = Ratio.of(
                [r.p99 for r, _ in results[(arm, n)]], [r.p50 for r, _ in results[(arm, n)]]
            )
            section.targets.append(
                Target(
                    f"{name}: p99 <= {MAX_P99_OVER_P50:g}x p50 at {n} connections",
                    str(tail),
                    tail.median <= MAX_P99_OVER_P50,
                )
            )
