"""What every benchmark shares: run profiles, interleaving, statistics, results.

A benchmark module exposes ``run(ctx) -> Section``. It measures its arms in
rounds (:func:`interleave`), turns each round into ratios against the
round's baseline, and reports the median ratio with its range
(:class:`Ratio`). A :class:`Section` carries the table, the targets and the
raw numbers that the report and the chart are made from.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The key every server and client of the suite uses; the fake upstream
# accepts it and nothing else does.
BENCH_KEY = "sk-bench-0123456789-not-a-real-key"
MINT_PATH = "/navai/realtime/client-secret"
# What @navai/voice-frontend sends when a page asks for a Spanish session.
REQUEST_BODY = (
    b'{"model":"gpt-realtime","voice":"marin","language":"Spanish",'
    b'"voiceAccent":"neutral","voiceTone":"friendly"}'
)
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Profile:
    """How long and how often: one profile for the full run, one for --quick."""

    name: str
    rounds: int
    wrk_seconds: int  # wrk only takes whole seconds
    wrk_connections: tuple[int, ...]
    minting_arms: tuple[str, ...]
    wsgi_arms: tuple[str, ...]  # waitress threads, "+keepalive" for the diagnostic arm
    client_requests: int  # per arm per round, client-only benchmarks
    client_seconds: float  # and never longer than this per arm per round
    inproc_seconds: float  # target length of one timed sample in-process
    connection_requests: int  # per arm, over all rounds
    connection_seconds: float  # no new round after this long
    memory_requests: int  # per arm, over all rounds
    memory_seconds: float  # no new round after this long
    # The latency benchmarks: upstream latencies (0 = at once; a stall is
    # NAVAI_BENCH_LATENCY_MS), wrk seconds for each, clients, rounds, arms.
    latencies: tuple[float, ...] = (0.0, 0.3)
    latency_seconds: tuple[int, ...] = (2, 3)
    latency_clients: tuple[int, ...] = (5, 50, 400, 2000)
    latency_rounds: int = 3
    latency_arms: tuple[str, ...] = ("direct", "navai", "reference", "relay", "peer")
    wsgi_latency_arms: tuple[str, ...] = (
        "gunicorn/100",
        "gunicorn/400",
        "waitress/100",
        "waitress/400",
    )
    worker_counts: tuple[int, ...] = (1, 2)


FULL = Profile(
    name="full",
    rounds=5,
    wrk_seconds=2,
    wrk_connections=(5, 50),
    minting_arms=("upstream", "navai-httpcore", "navai-aiohttp", "navai-default", "peer"),
    wsgi_arms=("8", "32", "32+keepalive"),
    client_requests=1200,
    client_seconds=2.5,
    inproc_seconds=0.25,
    connection_requests=10_000,
    connection_seconds=80.0,
    memory_requests=100_000,
    memory_seconds=200.0,
)
QUICK = Profile(
    name="quick",
    rounds=5,
    wrk_seconds=1,
    wrk_connections=(50,),
    minting_arms=("navai-httpcore", "peer"),
    wsgi_arms=("8", "32"),
    client_requests=100,
    client_seconds=0.5,
    inproc_seconds=0.02,
    connection_requests=1000,
    connection_seconds=10.0,
    memory_requests=1000,
    memory_seconds=10.0,
    latencies=(0.3,),
    latency_seconds=(1,),
    latency_clients=(50,),
    latency_rounds=1,
    latency_arms=("direct", "navai", "relay"),
    wsgi_latency_arms=("gunicorn/32", "waitress/32"),
    worker_counts=(2,),
)


def interleave(arms: Sequence[str], rounds: int) -> Iterator[tuple[int, str]]:
    """Yield ``(round, arm)``: every arm once per round, the order reversed
    every other round (A B C, C B A, A B C...), so that a slow drift of the
    machine's load favours no arm."""
    for index in range(rounds):
        order = arms if index % 2 == 0 else list(reversed(arms))
        for arm in order:
            yield index, arm


@dataclass(frozen=True)
class Ratio:
    """The median of per-round ratios, with the lowest and highest."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, numerators: Sequence[float], denominators: Sequence[float]) -> Ratio:
        ratios = [n / d if d else math.inf for n, d in zip(numerators, denominators, strict=True)]
        return cls(statistics.median(ratios), min(ratios), max(ratios))

    def __str__(self) -> str:
        return f"{_num(self.median)}x ({_num(self.low)}-{_num(self.high)})"

    def as_change(self) -> str:
        """The ratio as a change in percent: ``+4.8% (-1.2% to +9.0%)``."""
        return f"{self.median - 1:+.1%} ({self.low - 1:+.1%} to {self.high - 1:+.1%})"


@dataclass(frozen=True)
class Spread:
    """The median of per-round values (differences, say), with the range."""

    median: float
    low: float
    high: float
    unit: str

    @classmethod
    def of(cls, values: Sequence[float], unit: str) -> Spread:
        return cls(statistics.median(values), min(values), max(values), unit)

    def __str__(self) -> str:
        return f"{self.median:,.0f} {self.unit} ({self.low:,.0f} to {self.high:,.0f})"


def _num(value: float) -> str:
    if math.isinf(value):
        return "inf"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def fmt_ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1e3:.2f}"


def fmt_rate(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}"


@dataclass
class Target:
    """A goal from the issue, and whether this run met it (None: not measured)."""

    goal: str
    measured: str
    met: bool | None


@dataclass
class Section:
    key: str
    title: str
    intro: str
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    ratios: list[tuple[str, Ratio | Spread]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def text(self) -> str:
        """The section as plain text, for the console."""
        lines = [f"== {self.title} ({self.seconds:.0f} s)"]
        if self.rows:
            widths = [
                max(len(str(cell)) for cell in column)
                for column in zip(self.headers, *self.rows, strict=True)
            ]
            for row in [self.headers, *self.rows]:
                lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
        lines += [f"  ratio {label}: {ratio}" for label, ratio in self.ratios]
        for target in self.targets:
            mark = {True: "met", False: "MISSED", None: "n/a"}[target.met]
            lines.append(f"  target [{mark}] {target.goal}: {target.measured}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass
class Context:
    """What a benchmark gets: the profile, and where to log and put files."""

    profile: Profile
    workdir: Path
    log: Callable[[str], None] = print


def calibrate(sample: Callable[[int], float], seconds: float) -> int:
    """How many calls make one timed sample last about ``seconds``;
    ``sample(n)`` makes n calls and returns the seconds they took."""
    n = 16
    while True:
        took = sample(n)
        if took >= seconds / 8 or n >= 1 << 24:
            return max(1, round(n * seconds / max(took, 1e-9)))
        n *= 4


def timed(fn: Callable[[], Section]) -> Section:
    start = time.perf_counter()
    section = fn()
    section.seconds = time.perf_counter() - start
    return section
