"""The results page: Markdown, two SVG charts, and the raw numbers as JSON."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from ._harness import Profile, Section
from ._svg import Bar, grouped_bars

PACKAGES = (
    "navai-mw",
    "httpx",
    "httpcore",
    "h11",
    "httptools",
    "uvloop",
    "anyio",
    "sniffio",
    "httpx-aiohttp",
    "aiohttp",
    "httpx2",
    "openai",
    "pydantic",
    "fastapi",
    "starlette",
    "uvicorn",
    "waitress",
    "gunicorn",
    "attrs",
    "cattrs",
    "limits",
    "redis",
    "pyjwt",
    "cryptography",
)
MINTING_SVG = "benchmarks-minting.svg"
TRANSPORTS_SVG = "benchmarks-transports.svg"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    try:
        wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
        versions["wrk"] = (wrk.stdout or wrk.stderr).split("[")[0].strip().removeprefix("wrk ")
    except OSError:
        versions["wrk"] = "not installed"
    versions |= _node_versions()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "packages": versions,
    }


def _node_versions() -> dict[str, str]:
    """Node and the TypeScript reference's packages, as the benchmark installed them."""
    found: dict[str, str] = {}
    try:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
        found["node"] = node.stdout.strip().removeprefix("v") or "not installed"
    except OSError:
        found["node"] = "not installed"
    modules = Path(__file__).with_name("js") / "node_modules"
    for name in ("@navai/voice-backend", "express"):
        try:
            found[name] = json.loads((modules / name / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            found[name] = "not installed"
    return found


def _load(values: Any) -> str:
    return "n/a" if not values else " / ".join(f"{v:.2f}" for v in values)


def _table(headers: list[str], rows: list[list[str]], *, numbers: bool = True) -> list[str]:
    """A Markdown table; with ``numbers``, every column but the first is right-aligned."""

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |"]
    aligns = ["---" if i == 0 or not numbers else "--:" for i in range(len(headers))]
    lines.append("|" + "|".join(aligns) + "|")
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


def minting_chart(section: Section) -> str | None:
    chart = section.data.get("chart")
    if not chart:
        return None
    labels: dict[str, str] = chart["labels"]
    series_data: dict[str, dict[int, list[float]]] = chart["series"]
    connections = sorted({n for arm in series_data.values() for n in arm})
    series: list[tuple[str, list[Bar | None]]] = []
    for arm, by_n in series_data.items():
        bars: list[Bar | None] = [
            (v[0], v[1], v[2]) if (v := by_n.get(n)) else None for n in connections
        ]
        series.append((labels[arm], bars))
    return grouped_bars(
        title="Minting under uvicorn: requests/s against wrk connections",
        subtitle="median of interleaved rounds; whiskers: lowest to highest round",
        y_label="requests / s",
        groups=[f"{n} connections" for n in connections],
        series=series,
    )


def transports_chart(section: Section, labels: dict[str, str]) -> str | None:
    series: list[tuple[str, list[Bar | None]]] = []
    levels = (5, 50)
    for kind, label in labels.items():
        bars: list[Bar | None] = []
        for n in levels:
            rates = section.data.get(f"{kind}@{n}", {}).get("rate")
            bars.append((sorted(rates)[len(rates) // 2], min(rates), max(rates)) if rates else None)
        series.append((label, bars))
    if not any(bar for _, bars in series for bar in bars):
        return None
    return grouped_bars(
        title="Async transports, client only: requests/s against requests in flight",
        subtitle="median of interleaved rounds; whiskers: lowest to highest round",
        y_label="requests / s",
        groups=[f"{n} in flight" for n in levels],
        series=series,
    )


def write(
    sections: list[Section],
    *,
    profile: Profile,
    out_dir: Path,
    markdown_name: str,
    machine_before: dict[str, Any],
    started: datetime.datetime,
    seconds: float,
    default_transport: str,
) -> Path:
    from ._apps import ASYNC_TRANSPORT_LABELS

    out_dir.mkdir(parents=True, exist_ok=True)
    after = os.getloadavg() if hasattr(os, "getloadavg") else None
    by_key = {s.key: s for s in sections}
    charts: dict[str, str] = {}
    extra_charts: dict[str, list[tuple[str, str]]] = {}
    if "minting" in by_key and (svg := minting_chart(by_key["minting"])):
        (out_dir / MINTING_SVG).write_text(svg)
        charts["minting"] = MINTING_SVG
    if "transports" in by_key and (
        svg := transports_chart(by_key["transports"], ASYNC_TRANSPORT_LABELS)
    ):
        (out_dir / TRANSPORTS_SVG).write_text(svg)
        charts["transports"] = TRANSPORTS_SVG

    for section in sections:
        for chart in section.data.get("charts", []):
            svg_name = f"benchmarks-{chart['name']}.svg"
            (out_dir / svg_name).write_text(
                grouped_bars(
                    title=chart["title"],
                    subtitle="median of interleaved rounds; whiskers: lowest to highest round",
                    y_label="secrets / s",
                    groups=chart["groups"],
                    series=chart["series"],
                )
            )
            extra_charts.setdefault(section.key, []).append((chart["title"], svg_name))

    m = machine_before
    lines = [
        "# Benchmarks",
        "",
        f"Written by `python -m benchmarks{' --quick' if profile.name == 'quick' else ''}` "
        f"on {started:%Y-%m-%d %H:%M} UTC, in {seconds / 60:.1f} minutes "
        f"({profile.name} run). Rerun it rather than editing this page.",
        "",
        "> **Read ratios, not absolute numbers.** These figures come from a small shared",
        "> machine that other jobs were loading at the same time. Every benchmark",
        "> interleaves its arms round by round (the order reversed every other round) and",
        "> reports the **median of the per-round ratios** with their range, so that load",
        "> from elsewhere weighs on both sides of a ratio. Absolute requests/s and",
        "> latencies are for scale only.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores",
        f"- {m['python']} on {m['os']}",
        f"- load average (1/5/15 min) at start: {_load(m['load_average'])}; at end: {_load(after)}",
        f"- navai_mw's default async transport in this run: {default_transport}",
        "- packages: " + ", ".join(f"{name} {version}" for name, version in m["packages"].items()),
        "",
        "## Targets",
        "",
        "The performance goals set for navai_mw, each measured in this one run. "
        "They are goals, not tests.",
        "",
    ]
    target_rows = [
        [
            {True: "met", False: "**missed**", None: "n/a"}[t.met],
            t.goal,
            t.measured,
        ]
        for s in sections
        for t in s.targets
    ]
    lines += _table(["", "goal", "measured (median, range)"], target_rows, numbers=False)
    for section in sections:
        lines += ["", f"## {section.title}", "", section.intro, ""]
        if section.key in charts:
            lines += [f"![{section.title}]({charts[section.key]})", ""]
        for title, svg_name in extra_charts.get(section.key, []):
            lines += [f"![{title}]({svg_name})", ""]
        if section.rows:
            lines += [*_table(section.headers, section.rows), ""]
        if section.ratios:
            lines += _table(
                ["ratio", "median (range)"], [[label, str(r)] for label, r in section.ratios]
            )
            lines.append("")
        lines += [f"- {note}" for note in section.notes]
        if section.notes:
            lines.append("")
        lines.append(f"_Section time: {section.seconds:.0f} s._")
    lines += [
        "",
        "## How to run",
        "",
        "```sh",
        "pip install -e '.[bench]'          # plus: apt-get install wrk redis-server nodejs npm",
        "python -m benchmarks               # full run, about 18 minutes; rewrites this page",
        "python -m benchmarks --quick       # smoke run, under a minute; benchmarks/results/",
        "python -m benchmarks --only core,passthrough",
        "NAVAI_BENCH_LATENCY_MS=600 python -m benchmarks --only latency  # a slower OpenAI",
        "```",
        "",
        "Every run also writes the raw numbers of each round as JSON to `benchmarks/results/` "
        "(`full.json`, `quick.json`, or `*-partial.json` with `--only`), a folder git ignores.",
        "",
    ]
    page = out_dir / markdown_name
    page.write_text("\n".join(lines))
    return page


def write_json(path: Path, sections: list[Section], extra: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        **extra,
        "sections": [
            {k: v for k, v in asdict(s).items() if k != "ratios"}
            | {"ratios": [[label, asdict(r)] for label, r in s.ratios]}
            for s in sections
        ],
    }
    path.write_text(json.dumps(payload, indent=1, default=str))
