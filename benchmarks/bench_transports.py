"""Upstream clients alone: which async transport holds up under concurrency.

Each arm is navai_mw's :class:`~navai_mw.transports.HttpxAsyncTransport`
around a different client, sending the request navai_mw builds to the fake
upstream (its own process, on loopback) through the one-method transport
protocol, 5 and 50 at a time. The sync side is ``httpx.Client`` shared by 8
and by 32 threads (and, to show why 32 threads churn connections, by 32
threads with a keep-alive pool of 100). Upstream connections opened are
counted at the upstream.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import defaultdict
from typing import Any

from navai_mw.transports import HttpxSyncTransport
from navai_mw.upstreams.openai_secrets import build_upstream_request

from ._apps import (
    ASYNC_TRANSPORT_LABELS,
    ASYNC_TRANSPORTS,
    async_transport,
    options,
    sync_transport,
)
from ._harness import (
    REQUEST_BODY,
    Context,
    Ratio,
    Section,
    fmt_ms,
    fmt_rate,
    interleave,
    median,
)
from ._load import REQUEST_TIMEOUT, Load, run_async, run_threads
from ._procs import Server, Servers, upstream_stats

CONCURRENCY = (5, 50)
# Threads sharing one httpx.Client; "+keepalive" is a diagnostic arm whose
# client keeps up to KEEPALIVE idle connections instead of httpx's default 20.
SYNC_ARMS = ("8", "32", "32+keepalive")
KEEPALIVE = 100
WARMUP_REQUESTS = 200


class _Rounds:
    """Per arm: the loads of each round and the upstream connections they opened."""

    def __init__(self) -> None:
        self.loads: dict[str, list[Load]] = defaultdict(list)
        self.opened: dict[str, int] = defaultdict(int)

    def rates(self, arm: str) -> list[float]:
        return [load.rate for load in self.loads[arm]]

    def row(self, arm: str, label: str) -> list[str]:
        loads = self.loads[arm]
        return [
            label,
            fmt_rate(median([x.rate for x in loads])),
            fmt_ms(median([x.p50 for x in loads])),
            fmt_ms(median([x.p99 for x in loads])),
            str(sum(x.errors for x in loads)),
            str(self.opened[arm]),
        ]

    def summary(self, arm: str) -> dict[str, Any]:
        loads = self.loads[arm]
        return {
            "rate": [x.rate for x in loads],
            "p50": [x.p50 for x in loads],
            "p99": [x.p99 for x in loads],
            "requests": sum(x.count for x in loads),
            "errors": sum(x.errors for x in loads),
            "upstream_connections": self.opened[arm],
        }


async def _async_rounds(ctx: Context, upstream: Server) -> _Rounds:
    profile = ctx.profile
    request = build_upstream_request(options(f"{upstream.url}/v1"), json.loads(REQUEST_BODY))
    transports = {kind: async_transport(kind) for kind in ASYNC_TRANSPORTS}
    rounds = _Rounds()
    try:
        for transport in transports.values():

            async def warm(t: Any = transport) -> None:
                await t.send(request, timeout=REQUEST_TIMEOUT)

            await run_async(warm, concurrency=5, requests=WARMUP_REQUESTS, seconds=5)
        arms = [f"{kind}@{n}" for kind in ASYNC_TRANSPORTS for n in CONCURRENCY]
        for index, arm in interleave(arms, profile.rounds):
            kind, _, n = arm.partition("@")
            transport = transports[kind]

            async def send(t: Any = transport) -> None:
                response = await t.send(request, timeout=REQUEST_TIMEOUT)
                if response.status != 200:
                    raise RuntimeError(f"upstream answered {response.status}")

            before = upstream_stats(upstream)
            load = await run_async(
                send,
                concurrency=int(n),
                requests=profile.client_requests,
                seconds=profile.client_seconds,
            )
            rounds.opened[arm] += (upstream_stats(upstream) - before).connections
            rounds.loads[arm].append(load)
            ctx.log(f"  transports round {index + 1}: {arm:14} {load.rate:8.0f} req/s")
    finally:
        for transport in transports.values():
            await transport.aclose()
    return rounds


def _sync_rounds(ctx: Context, upstream: Server) -> _Rounds:
    profile = ctx.profile
    request = build_upstream_request(options(f"{upstream.url}/v1"), json.loads(REQUEST_BODY))
    rounds = _Rounds()
    transports = {
        arm: sync_transport(KEEPALIVE if arm.endswith("+keepalive") else None) for arm in SYNC_ARMS
    }
    try:
        for transport in transports.values():

            def warm(t: HttpxSyncTransport = transport) -> None:
                t.send(request, timeout=REQUEST_TIMEOUT)

            run_threads(warm, threads=5, requests=WARMUP_REQUESTS, seconds=5)
        for index, arm in interleave(SYNC_ARMS, profile.rounds):
            transport = transports[arm]

            def send(t: HttpxSyncTransport = transport) -> None:
                if t.send(request, timeout=REQUEST_TIMEOUT).status != 200:
                    raise RuntimeError("upstream refused")

            before = upstream_stats(upstream)
            load = run_threads(
                send,
                threads=int(arm.partition("+")[0]),
                requests=profile.client_requests,
                seconds=profile.client_seconds,
            )
            rounds.opened[arm] += (upstream_stats(upstream) - before).connections
            rounds.loads[arm].append(load)
            ctx.log(f"  transports round {index + 1}: sync {arm:14} {load.rate:8.0f} req/s")
    finally:
        for transport in transports.values():
            transport.close()
    return rounds


def _sync_label(arm: str) -> str:
    threads, _, keepalive = arm.partition("+")
    if keepalive:
        return f"httpx.Client, {threads} threads, keep-alive pool {KEEPALIVE} (diagnostic)"
    return f"httpx.Client, {threads} threads"


def run(ctx: Context) -> Section:
    section = Section(
        key="transports",
        title="Upstream transports, client only",
        intro=(
            "navai_mw's `HttpxAsyncTransport` around each client, sending navai_mw's upstream "
            "request to the fake upstream (its own uvicorn process) through the transport "
            "protocol, with 5 and 50 requests in flight; then `HttpxSyncTransport` "
            "(`httpx.Client`) shared by 8 and 32 threads, and by 32 threads with a bigger "
            "keep-alive pool. Connections are counted where the "
            "upstream accepts them, after a warm-up that opens the first few; pools also close "
            "connections idle for 5 s, so some are reopened between an arm's rounds."
        ),
        headers=["arm", "req/s", "p50 ms", "p99 ms", "errors", "upstream conns opened"],
    )
    with Servers() as servers:
        upstream = servers.start("upstream", logdir=ctx.workdir)
        servers.wait_ready()
        arounds = asyncio.run(_async_rounds(ctx, upstream))
        srounds = _sync_rounds(ctx, upstream)

    for kind in ASYNC_TRANSPORTS:
        for n in CONCURRENCY:
            arm = f"{kind}@{n}"
            section.rows.append(arounds.row(arm, f"{ASYNC_TRANSPORT_LABELS[kind]}, {n} in flight"))
            section.data[arm] = arounds.summary(arm)
    for arm in SYNC_ARMS:
        section.rows.append(srounds.row(arm, _sync_label(arm)))
        section.data[f"sync@{arm}"] = srounds.summary(arm)

    for kind in ASYNC_TRANSPORTS[1:]:
        for n in CONCURRENCY:
            section.ratios.append(
                (
                    f"{kind} / httpcore, req/s at {n} in flight",
                    Ratio.of(arounds.rates(f"{kind}@{n}"), arounds.rates(f"httpcore@{n}")),
                )
            )
    for kind in ASYNC_TRANSPORTS:
        section.ratios.append(
            (
                f"{kind}: req/s at 50 / at 5 in flight",
                Ratio.of(arounds.rates(f"{kind}@50"), arounds.rates(f"{kind}@5")),
            )
        )
    section.ratios.append(
        (
            "httpx.Client: req/s at 32 threads / at 8",
            Ratio.of(srounds.rates("32"), srounds.rates("8")),
        )
    )
    section.ratios.append(
        (
            f"httpx.Client: req/s at 32 threads, keep-alive pool {KEEPALIVE} / 8 threads",
            Ratio.of(srounds.rates("32+keepalive"), srounds.rates("8")),
        )
    )
    section.notes.append(
        "httpx keeps at most `max_keepalive_connections` idle connections per pool (20 by "
        "default; navai_mw's transports keep up to `max_upstream_connections`, 1000): when more "
        "requests than that are "
        "between upstream calls at once, the extra connections are closed as they go idle "
        "and the next requests open new ones. aiohttp's connector has no such cap (it keeps "
        "up to `limit` and closes only after the keep-alive timeout)."
    )
    for kind in ASYNC_TRANSPORTS:
        loads = arounds.loads[f"{kind}@50"]
        tail = median([x.p99 / x.p50 for x in loads if x.p50 and not math.isnan(x.p99)])
        section.data[f"{kind}@50"]["p99_over_p50"] = tail
    return section
