"""The WSGI side: NavaiWSGIMiddleware under waitress, 8 threads against 32.

Waitress processes serve the middleware (over a 404 app), one with
``threads=8``, one with ``threads=32``; both reach the fake upstream (its
own uvicorn process) with the middleware's default sync transport, one
pooled ``httpx.Client`` shared by every thread. wrk POSTs with 50
connections, so both servers have more clients than threads.

The full run adds a diagnostic arm: 32 threads again, with a client that
keeps up to 100 idle connections instead of httpx's default 20. With more
threads than kept connections, every burst closes the extra connections
as they go idle and the next burst opens them again; the upstream's
connection count shows it.
"""

from __future__ import annotations

from ._harness import (
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
from ._procs import Servers, WrkArm, have_wrk, run_wrk, wrk_rounds

CONNECTIONS = 50
DIAGNOSTIC_KEEPALIVE = 100
MIN_32_OVER_8 = 0.8


def _label(arm: str) -> str:
    threads, _, keepalive = arm.partition("+")
    if keepalive:
        return f"waitress, {threads} threads, keep-alive pool {DIAGNOSTIC_KEEPALIVE} (diagnostic)"
    return f"waitress, {threads} threads (default transport)"


def run(ctx: Context) -> Section:
    profile = ctx.profile
    section = Section(
        key="wsgi",
        title="WSGI under waitress",
        intro=(
            f"`NavaiWSGIMiddleware` under waitress, wrk with {CONNECTIONS} connections for "
            f"{profile.wrk_seconds} s per run, {profile.rounds} interleaved rounds; the fake "
            "upstream in its own uvicorn process. *upstream conns* counts the connections the "
            "upstream accepted during the runs."
        ),
        headers=["server", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors", "upstream conns"],
    )
    if not have_wrk():
        section.notes.append("skipped: wrk is not installed (apt-get install wrk)")
        return section
    with Servers() as servers:
        upstream = servers.start("upstream", logdir=ctx.workdir)
        servers.wait_ready()
        apps = {}
        for arm in profile.wsgi_arms:
            threads, _, keepalive = arm.partition("+")
            extra = ("--keepalive", str(DIAGNOSTIC_KEEPALIVE)) if keepalive else ()
            apps[arm] = servers.start(
                "wsgi",
                "--upstream",
                f"{upstream.url}/v1",
                "--threads",
                threads,
                *extra,
                logdir=ctx.workdir,
                name=f"waitress-{arm.replace('+', '-')}",
            )
        servers.wait_ready()
        targets = {arm: WrkArm(f"{app.url}{MINT_PATH}", REQUEST_BODY) for arm, app in apps.items()}
        if profile.name == "full":
            for target in targets.values():
                run_wrk(target.url, connections=CONNECTIONS, seconds=1, body=target.body)
        results = wrk_rounds(
            targets,
            connections=(CONNECTIONS,),
            rounds=profile.rounds,
            seconds=profile.wrk_seconds,
            upstream=upstream,
            log=ctx.log,
        )
    rates = {}
    for arm in targets:
        runs = results[(arm, CONNECTIONS)]
        rates[arm] = [r.rate for r, _ in runs]
        section.rows.append(
            [
                _label(arm),
                fmt_rate(median(rates[arm])),
                fmt_ms(median([r.p50 for r, _ in runs])),
                fmt_ms(median([r.p90 for r, _ in runs])),
                fmt_ms(median([r.p99 for r, _ in runs])),
                str(sum(r.errors for r, _ in runs)),
                str(sum(opened for _, opened in runs)),
            ]
        )
        section.data[arm] = {
            "rate": rates[arm],
            "p50": [r.p50 for r, _ in runs],
            "p90": [r.p90 for r, _ in runs],
            "p99": [r.p99 for r, _ in runs],
            "errors": sum(r.errors for r, _ in runs),
            "upstream_connections": [opened for _, opened in runs],
        }
    scaling = Ratio.of(rates["32"], rates["8"])
    section.ratios.append(("req/s with 32 threads / with 8", scaling))
    if "32+keepalive" in rates:
        section.ratios.append(
            (
                f"req/s with 32 threads, keep-alive pool {DIAGNOSTIC_KEEPALIVE} / with 8",
                Ratio.of(rates["32+keepalive"], rates["8"]),
            )
        )
    section.targets.append(
        Target(
            f"WSGI req/s at 32 threads >= {MIN_32_OVER_8:g}x at 8",
            str(scaling),
            scaling.median >= MIN_32_OVER_8,
        )
    )
    return section
