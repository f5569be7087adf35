"""What metrics cost: minting under uvicorn with navai_mw's Prometheus
metrics on and off.

Two navai_mw processes (uvicorn, asyncio loop, h11, one worker, the default
transport) reach one fake upstream; one keeps the metrics (the default,
prometheus-client installed), the other has ``NAVAI_METRICS=false``. wrk
(one thread, 50 connections) POSTs the front end's JSON in interleaved
rounds. Request ids are made and answered in both.
"""

from __future__ import annotations

from ._harness import (
    MINT_PATH,
    REQUEST_BODY,
    Context,
    Ratio,
    Section,
    Target,
    interleave,
    median,
)
from ._procs import Servers, cpu_seconds, have_wrk, run_wrk

CONNECTIONS = 50
MIN_RATIO = 0.95  # the target: within 5% of the rate with metrics off


def run(ctx: Context) -> Section:
    profile = ctx.profile
    section = Section(
        key="observe",
        title="Metrics on and off",
        intro=(
            f"`POST {MINT_PATH}`, wrk (1 thread, {CONNECTIONS} connections) for "
            f"{profile.wrk_seconds} s per run, {2 * profile.rounds} interleaved rounds, against "
            "two navai_mw processes that differ only in `NAVAI_METRICS` (each request counted in "
            "five series with the metrics on); the server's CPU per mint beside, steadier "
            "than a rate on a shared machine."
        ),
        headers=["arm", "req/s (median)", "p99 ms (median)", "server CPU us/req (median)"],
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
        servers_of = {"on": on, "off": off}
        rates: dict[str, list[float]] = {"on": [], "off": []}
        cpu: dict[str, list[float]] = {"on": [], "off": []}
        p99: dict[str, list[float]] = {"on": [], "off": []}
        # Twice the usual rounds: a 5% difference is within one round's noise here.
        for index, arm in interleave(["off", "on"], 2 * profile.rounds):
            server = servers_of[arm]
            before = cpu_seconds(server.proc.pid)
            result = run_wrk(
                f"{server.url}{MINT_PATH}",
                connections=CONNECTIONS,
                seconds=profile.wrk_seconds,
                body=REQUEST_BODY,
            )
            used = cpu_seconds(server.proc.pid) - before
            rates[arm].append(result.rate)
            cpu[arm].append(used / result.requests * 1e6 if result.requests else 0.0)
            p99[arm].append(result.p99)
            ctx.log(
                f"  round {index + 1}: metrics {arm:3} {result.rate:8.0f} req/s "
                f"p99 {result.p99 * 1e3:7.2f} ms  cpu {cpu[arm][-1]:6.0f} us/req"
            )
    for arm in ("off", "on"):
        section.rows.append(
            [
                f"metrics {arm}",
                f"{median(rates[arm]):,.0f}",
                f"{median(p99[arm]) * 1e3:.2f}",
                f"{median(cpu[arm]):.0f}",
            ]
        )
    ratio = Ratio.of(rates["on"], rates["off"])
    section.ratios.append(("minting rate, metrics on / off", ratio))
    section.ratios.append(
        ("server CPU per mint, metrics on / off", Ratio.of(cpu["on"], cpu["off"]))
    )
    section.targets.append(
        Target(
            f"minting with metrics on >= {MIN_RATIO:g}x the rate with them off",
            str(ratio),
            ratio.median >= MIN_RATIO,
        )
    )
    section.data = {"rates": rates, "cpu_us_per_request": cpu}
    return section
