"""Memory while minting 100,000 secrets in-process: it should stay flat.

Three arms call NavaiASGIMiddleware in-process, 10 requests in flight: over
a canned in-process upstream (navai_mw's own code alone), and over each
async transport to the fake upstream on loopback. Rounds of 10,000 requests
alternate between the arms; after each, a full garbage collection, then
the heap's live blocks (``sys.getallocatedblocks``) and the process's RSS
are sampled. The change across a round is charged to the arm that ran it;
the first round of each arm warms up pools and caches and is not counted.

The heap is the process's, so the charge is approximate between the two
loopback arms: what one arm leaves behind (a connection the pool closes
later, a cycle the collector finds later) may be freed in the other's
round. The canned arm, and the total over all arms, are the clean figures.
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import sys
import time
from typing import Any

from navai_mw import NavaiASGIMiddleware

from ._apps import ASYNC_TRANSPORT_LABELS, navai_asgi, not_found_asgi, options
from ._harness import Context, Section, Target, interleave
from ._inproc import CannedTransport, mint_call
from ._load import run_async
from ._procs import Servers

ARMS = ("canned", "httpcore", "aiohttp", "default")
LABELS = {"canned": "canned upstream, in-process", **ASYNC_TRANSPORT_LABELS}
CONCURRENCY = 10
ROUNDS = 10
# A leak of one object per request shows up as at least one block per
# request, ten times this.
FLAT_BLOCKS_PER_REQUEST = 0.1


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is the best we can do
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sample() -> tuple[int, int]:
    gc.collect()
    return sys.getallocatedblocks(), rss_bytes()


async def _rounds(ctx: Context, upstream_url: str) -> dict[str, dict[str, Any]]:
    per_round = max(1, ctx.profile.memory_requests // ROUNDS)
    # Time limit per round: the slowest arm on a busy machine still finishes.
    round_seconds = max(5.0, per_round / 300)
    apps: dict[str, NavaiASGIMiddleware] = {
        "canned": NavaiASGIMiddleware(
            not_found_asgi, opts=options(upstream_url), transport=CannedTransport()
        ),
        **{arm: navai_asgi(upstream_url, arm) for arm in ARMS[1:]},
    }
    result: dict[str, dict[str, Any]] = {
        arm: {"requests": 0, "errors": 0, "blocks": [], "rss": [], "seconds": 0.0} for arm in ARMS
    }
    cap = time.monotonic() + ctx.profile.memory_seconds
    current = -1
    try:
        for index, arm in interleave(ARMS, ROUNDS):
            if index != current:
                # Whole rounds only, so that every arm ran as often as the others.
                if time.monotonic() > cap:
                    ctx.log("  memory: time limit reached, stopping early")
                    break
                current = index
            blocks_before, rss_before = _sample()
            began = time.perf_counter()
            load = await run_async(
                mint_call(apps[arm]),
                concurrency=CONCURRENCY,
                requests=per_round,
                seconds=round_seconds,
            )
            blocks_after, rss_after = _sample()
            data = result[arm]
            data["seconds"] += time.perf_counter() - began
            data["requests"] += load.count + load.errors
            data["errors"] += load.errors
            data["blocks"].append((load.count + load.errors, blocks_after - blocks_before))
            data["rss"].append((rss_before, rss_after))
            ctx.log(f"  memory round {index + 1}: {arm:9} {load.rate:8.0f} req/s")
    finally:
        for app in apps.values():
            await app.transport.aclose()  # type: ignore[attr-defined]
    return result


def run(ctx: Context) -> Section:
    section = Section(
        key="memory",
        title="Memory over many requests, in-process",
        intro=(
            f"`NavaiASGIMiddleware` called in-process, {CONCURRENCY} requests in flight, "
            f"{ctx.profile.memory_requests:,} requests per arm in {ROUNDS} alternating rounds; "
            "after each round a full `gc.collect()`, then live heap blocks "
            "(`sys.getallocatedblocks()`) and RSS. Growth counts from the end of each arm's "
            "first (warm-up) round."
        ),
        headers=[
            "upstream",
            "requests",
            "errors",
            "heap blocks growth",
            "blocks / request",
            "RSS growth MiB",
            "RSS at end MiB",
        ],
    )
    with Servers() as servers:
        upstream = servers.start("upstream", logdir=ctx.workdir)
        servers.wait_ready()
        result = asyncio.run(_rounds(ctx, f"{upstream.url}/v1"))
    totals = [0, 0]
    for arm in ARMS:
        data = result[arm]
        counted = data["blocks"][1:]
        requests = sum(n for n, _ in counted)
        growth = sum(delta for _, delta in counted)
        totals[0] += requests
        totals[1] += growth
        per_request = growth / requests if requests else float("nan")
        rss = data["rss"]
        rss_growth = sum(after - before for before, after in rss[1:])
        section.rows.append(
            [
                LABELS[arm],
                f"{data['requests']:,}",
                str(data["errors"]),
                f"{growth:+,}",
                f"{per_request:+.4f}",
                f"{rss_growth / 2**20:+.1f}",
                f"{rss[-1][1] / 2**20:.1f}",
            ]
        )
        section.data[arm] = {
            **data,
            "growth_blocks": growth,
            "blocks_per_request": per_request,
            "rss_growth": rss_growth,
        }
        section.targets.append(
            Target(
                goal=f"{LABELS[arm]}: memory stays flat over {data['requests']:,} requests",
                measured=f"{per_request:+.4f} heap blocks per request after warm-up",
                met=per_request < FLAT_BLOCKS_PER_REQUEST and data["errors"] == 0,
            )
        )
    if totals[0]:
        section.rows.append(
            [
                "all arms together",
                f"{sum(result[a]['requests'] for a in ARMS):,}",
                str(sum(result[a]["errors"] for a in ARMS)),
                f"{totals[1]:+,}",
                f"{totals[1] / totals[0]:+.4f}",
                "",
                "",
            ]
        )
    section.notes.append(
        "Blocks are charged to the arm whose round they changed in; between the two loopback "
        "arms the charge is approximate (one may free what the other left), so read their sum. "
        f"A leak of one object per request would show as >= 1 block per request; the target "
        f"line here is {FLAT_BLOCKS_PER_REQUEST}."
    )
    return section
