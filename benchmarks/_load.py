"""Closed-loop load from inside this process: N workers, each sending its
next request as soon as the last one is answered, until a request count or
a time limit is reached, whichever comes first."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ._harness import percentile

# Callers give each request this timeout; a run that overstays its time limit
# by twice as much has hung, and is ended.
REQUEST_TIMEOUT = 10.0


@dataclass
class Load:
    """What one bounded run gave: latencies of the answered requests (sorted)."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)


async def run_async(
    call: Callable[[], Awaitable[object]], *, concurrency: int, requests: int, seconds: float
) -> Load:
    latencies: list[float] = []
    errors = 0
    left = requests
    clock = time.perf_counter
    deadline = clock() + seconds

    async def worker() -> None:
        nonlocal left, errors
        while left > 0 and clock() < deadline:
            left -= 1
            began = clock()
            try:
                await call()
            except Exception:
                errors += 1
                continue
            latencies.append(clock() - began)

    start = clock()
    await asyncio.wait_for(
        asyncio.gather(*(worker() for _ in range(concurrency))), seconds + 2 * REQUEST_TIMEOUT
    )
    return Load(clock() - start, sorted(latencies), errors)


def run_threads(call: Callable[[], object], *, threads: int, requests: int, seconds: float) -> Load:
    latencies: list[float] = []
    errors = [0]
    left = [requests]
    lock = threading.Lock()
    clock = time.perf_counter
    deadline = clock() + seconds

    def worker() -> None:
        while True:
            with lock:
                if left[0] <= 0 or clock() >= deadline:
                    return
                left[0] -= 1
            began = clock()
            try:
                call()
            except Exception:
                with lock:
                    errors[0] += 1
                continue
            elapsed = clock() - began
            with lock:
                latencies.append(elapsed)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    start = clock()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(seconds + REQUEST_TIMEOUT * 2)
    with lock:
        return Load(clock() - start, sorted(latencies), errors[0])
