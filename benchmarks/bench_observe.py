"""What metrics cost: minting under uvicorn with navai_mw's Prometheus
metrics on and off.

Two navai_mw processes (uvicorn, asyncio loop, h11, one worker, the default
transport) reach one fake upstream; one keeps the metrics (the default,
prometheus-client installed), the other has ``NAVAI_METRICS=false``. wrk
(one thread, 50 connections) POSTs the front end's JSON in interleaved
rounds. Request ids are made and answered in both.
"""

from __future__ import annotations

from ._harness import MINT_PATH, REQUEST_BODY, Context, Ratio, Section, Target, median
from ._procs import Servers, WrkArm, have_wrk, wrk_rounds

CONNECTIONS = 50
MIN_RATIO = 0.95  # the target: within 5% of the rate with metrics off


def run(ctx: Context) -> Section:
    profile = ctx.profile
    section = Section(
        key="observe",
        title="Metrics on and off",
        intro=(
            f"`POST {MINT_PATH}`, wrk (1 thread, {CONNECTIONS} connections) for "
            f"{profile.wrk_seconds} s per run, {profile.rounds} interleaved rounds, against two "
            "navai_mw processes that differ only in `NAVAI_METRICS` (each request counted in "
            "five series with the metrics on)."
        ),
        headers=["arm", "req/s (median)", "p99 ms (median)"],
    )
    if not have_wrk():
        section.notes.append("skipped: wrk is not installed (apt-get install wrk)")
        return section
    with Servers() as servers:
        upstream = servers.start("upstream", logdir=ctx.workdir)
        servers.wait_ready()
        base = f"{upstream.url}/v1"
        on = servers.start("navai", "--upstream", base, logdir=ctx.workdir, name="metrics-on")
        off = servers.start(
            "navai",
            "--upstream",
            base,
            logdir=ctx.workdir,
            name="metrics-off",
            env={"NAVAI_METRICS": "false"},
        )
        servers.wait_ready()
        targets = {
            "on": WrkArm(f"{on.url}{MINT_PATH}", REQUEST_BODY),
            "off": WrkArm(f"{off.url}{MINT_PATH}", REQUEST_BODY),
        }
        results = wrk_rounds(
            targets,
            connections=(CONNECTIONS,),
            rounds=profile.rounds,
            seconds=profile.wrk_seconds,
            upstream=upstream,
            log=ctx.log,
        )
    rates = {arm: [r.rate for r, _ in results[(arm, CONNECTIONS)]] for arm in targets}
    for arm in ("off", "on"):
        runs = results[(arm, CONNECTIONS)]
        section.rows.append(
            [
                f"metrics {arm}",
                f"{median(rates[arm]):,.0f}",
                f"{median([r.p99 for r, _ in runs]) * 1e3:.2f}",
            ]
        )
    ratio = Ratio.of(rates["on"], rates["off"])
    section.ratios.append(("minting rate, metrics on / off", ratio))
    section.targets.append(
        Target(
            f"minting with metrics on >= {MIN_RATIO:g}x the rate with them off",
            str(ratio),
            ratio.median >= MIN_RATIO,
        )
    )
    section.data = {"rates": rates}
    return section
