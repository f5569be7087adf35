"""Upstream connections opened while minting 10,000 secrets.

NavaiASGIMiddleware is called in-process, 50 requests in flight, over each
async transport; the fake upstream (its own process) counts the TCP
connections it accepts. A pooled client opens one connection per request in
flight at most and then reuses them: the count should stay at the 50 a
pool needs, however many requests follow.

Rounds alternate between the arms and last at most 1 s, so that no pool
sits idle past its keep-alive expiry (5 s for httpx's) between its rounds,
the other arms' rounds and the reversed order included; the fake keeps idle
connections 30 s. Closing idle connections is what a pool should do, and
would be counted here as churn.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ._apps import ASYNC_TRANSPORT_LABELS, navai_asgi
from ._harness import Context, Section, Target
from ._inproc import mint_call
from ._load import run_async
from ._procs import Server, Servers, upstream_stats

ARMS = ("httpcore", "aiohttp", "default")
CONCURRENCY = 50
ROUND_SECONDS = 1.0
ROUND_REQUESTS = 2000


async def _rounds(ctx: Context, upstream: Server) -> dict[str, dict[str, Any]]:
    wanted = ctx.profile.connection_requests
    # No new round after this, so that a collapsing arm cannot stall the run.
    cap = time.monotonic() + ctx.profile.connection_seconds
    apps = {arm: navai_asgi(f"{upstream.url}/v1", arm) for arm in ARMS}
    result: dict[str, dict[str, Any]] = {
        arm: {"requests": 0, "errors": 0, "opened": []} for arm in ARMS
    }
    try:
        index = 0
        while time.monotonic() < cap and any(result[a]["requests"] < wanted for a in ARMS):
            for arm in ARMS if index % 2 == 0 else tuple(reversed(ARMS)):
                left = wanted - result[arm]["requests"]
                if left <= 0:
                    continue
                before = upstream_stats(upstream)
                load = await run_async(
                    mint_call(apps[arm]),
                    concurrency=CONCURRENCY,
                    requests=min(left, ROUND_REQUESTS),
                    seconds=ROUND_SECONDS,
                )
                result[arm]["opened"].append((upstream_stats(upstream) - before).connections)
                result[arm]["requests"] += load.count + load.errors
                result[arm]["errors"] += load.errors
            index += 1
        ctx.log(f"  connections: {index} rounds")
        if any(result[a]["requests"] < wanted for a in ARMS):
            ctx.log("  connections: time limit reached before every arm was done")
    finally:
        for app in apps.values():
            await app.transport.aclose()  # type: ignore[attr-defined]
    return result


def run(ctx: Context) -> Section:
    section = Section(
        key="connections",
        title="Upstream connections over many requests",
        intro=(
            f"`NavaiASGIMiddleware` called in-process, {CONCURRENCY} requests in flight, "
            f"{ctx.profile.connection_requests:,} requests per arm in alternating rounds of at "
            f"most {ROUND_SECONDS:.0f} s; TCP connections counted where the fake upstream "
            "accepts them (a uvicorn protocol that counts `connection_made`)."
        ),
        headers=["transport", "requests", "errors", "conns opened", "in 1st round", "later max"],
    )
    with Servers() as servers:
        upstream = servers.start("upstream", logdir=ctx.workdir)
        servers.wait_ready()
        result = asyncio.run(_rounds(ctx, upstream))
    section.notes.append(
        "httpx pools keep at most `max_keepalive_connections` idle connections (20 by default; "
        "navai_mw's transports keep up to `max_upstream_connections`, 1000). With 50 requests in "
        "flight, whenever more than "
        "20 are between upstream calls at once (a busy event loop bunches them), the extra "
        "connections are closed as they go idle and reopened for the next requests. "
        "aiohttp's connector keeps every idle connection up to its `limit` until the "
        "keep-alive timeout."
    )
    for arm in ARMS:
        data = result[arm]
        opened = data["opened"]
        total = sum(opened)
        section.rows.append(
            [
                ASYNC_TRANSPORT_LABELS[arm],
                f"{data['requests']:,}",
                str(data["errors"]),
                str(total),
                str(opened[0] if opened else 0),
                str(max(opened[1:], default=0)),
            ]
        )
        section.data[arm] = {**data, "total": total, "rounds": len(opened)}
        section.targets.append(
            Target(
                goal=(
                    f"{ASYNC_TRANSPORT_LABELS[arm]}: connections opened over "
                    f"{data['requests']:,} requests stay at the pool size ({CONCURRENCY} in flight)"
                ),
                measured=f"{total} opened in {len(opened)} rounds",
                met=total <= CONCURRENCY and data["errors"] == 0,
            )
        )
    return section
