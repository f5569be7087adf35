"""``python -m benchmarks``: run the suite, print it, write the results page.

    python -m benchmarks                 # full run; writes docs/benchmarks.md and its charts
    python -m benchmarks --quick         # smoke run; writes benchmarks/results/quick/
    python -m benchmarks --only core,passthrough [--quick]

Only a full run of every benchmark rewrites ``docs/``; anything less goes
to ``benchmarks/results/`` (git-ignored), as does the raw JSON of each run.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from . import (
    bench_budgets,
    bench_connections,
    bench_core,
    bench_guard,
    bench_latency,
    bench_memory,
    bench_minting,
    bench_observe,
    bench_passthrough,
    bench_sideband,
    bench_transports,
    bench_webhooks,
    bench_wsgi,
)
from ._harness import FULL, QUICK, REPO, Context, Section, timed

# Cheap and in-process first, so that a broken set-up shows early.
BENCHMARKS: dict[str, Callable[[Context], Section]] = {
    "core": bench_core.run,
    "passthrough": bench_passthrough.run,
    "transports": bench_transports.run,
    "connections": bench_connections.run,
    "memory": bench_memory.run,
    "minting": bench_minting.run,
    "guard": bench_guard.run,
    "wsgi": bench_wsgi.run,
    "latency": bench_latency.run,
    "latency-wsgi": bench_latency.run_wsgi,
    "workers": bench_latency.run_workers,
    "sideband": bench_sideband.run,
    "budgets": bench_budgets.run,
    "webhooks": bench_webhooks.run,
    "observe": bench_observe.run,
}
RESULTS = REPO / "benchmarks" / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (under a minute)")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated benchmarks to run, of: {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--out", type=Path, help="where to write the page (default: see above)")
    args = parser.parse_args(argv)

    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    profile = QUICK if args.quick else FULL
    everything = chosen == list(BENCHMARKS)
    if args.out is not None:
        out_dir = args.out
    elif profile is FULL and everything:
        out_dir = REPO / "docs"
    else:
        out_dir = RESULTS / (profile.name if everything else f"{profile.name}-partial")

    # Imported late: they import navai_mw and friends, which the help does not need.
    from ._apps import describe_default_transport
    from ._report import machine, write, write_json

    logdir = RESULTS / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(profile=profile, workdir=logdir, log=lambda line: print(line, flush=True))
    started = datetime.datetime.now(datetime.timezone.utc)
    began = time.perf_counter()
    before = machine()
    default_transport = describe_default_transport()
    print(
        f"navai_mw benchmarks, {profile.name} run: {', '.join(chosen)}\n"
        f"{before['cpu']}, {before['cores']} cores, {before['python']}; "
        f"default async transport: {default_transport}",
        flush=True,
    )

    sections: list[Section] = []
    failed = []
    for name in chosen:
        print(f"\n-- {name}", flush=True)
        try:
            section = timed(functools.partial(BENCHMARKS[name], ctx))
        except Exception:
            traceback.print_exc()
            failed.append(name)
            section = Section(key=name, title=f"{name} (failed)", intro="This benchmark failed.")
            section.notes.append(traceback.format_exc(limit=3).strip().splitlines()[-1])
        sections.append(section)
        print(section.text(), flush=True)

    seconds = time.perf_counter() - began
    page = write(
        sections,
        profile=profile,
        out_dir=out_dir,
        markdown_name="benchmarks.md",
        machine_before=before,
        started=started,
        seconds=seconds,
        default_transport=default_transport,
    )
    raw = RESULTS / f"{profile.name}{'' if everything else '-partial'}.json"
    write_json(
        raw,
        sections,
        {"profile": profile.name, "started": started.isoformat(), "machine": before},
    )
    print(f"\n{len(sections)} benchmarks in {seconds:.0f} s; page: {page}; raw: {raw}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
