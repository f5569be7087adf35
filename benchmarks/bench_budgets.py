"""What a budget's admission costs a call: admitting it (the check and the
reservation, one atomic step) and settling it when it ends, through
navai_mw's store, on ``memory://`` and on a real ``redis-server`` (started
for the run on loopback, nothing persisted).

Each admission is a new call of one of 100 callers, with a policy of two
limits (minutes a day, dollars a month), measured in this process: the CPU
it used per admission and settle (``time.process_time``; on Redis the
script runs in redis-server, whose CPU is reported beside), and the wall
time of each.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from navai_mw.core.budgets import parse_budget
from navai_mw.core.effects import AdmitCall, SettleCall
from navai_mw.runtime.budget_store import MemoryBudgets, RedisBudgets

from ._harness import Context, Section, Target, median
from ._procs import cpu_seconds
from ._redis import RedisServer, redis_executable

LIMITS = parse_budget("100000 minutes/day; 100000 USD/month")
CALLERS = 100
MAX_REDIS_CPU_MS = 1.0  # the target, per admission on Redis


def _memory(count: int) -> dict[str, float]:
    store = MemoryBudgets()
    cpu, wall = time.process_time(), time.perf_counter()
    for index in range(count):
        admission = store.admit(AdmitCall(f"app:user-{index % CALLERS}", LIMITS, 60.0, time.time))
        assert admission.reservation is not None
        store.settle(SettleCall(admission.reservation, 30.0))
    return {
        "cpu_ms": (time.process_time() - cpu) / count * 1e3,
        "wall_ms": (time.perf_counter() - wall) / count * 1e3,
        "server_cpu_ms": 0.0,
    }


async def _redis(url: str, count: int, server_pid: int) -> dict[str, float]:
    store = RedisBudgets(url)
    try:
        # Warm up: the connection, the scripts loaded.
        warm = await store.admit(AdmitCall("app:warm", LIMITS, 60.0, time.time))
        assert warm.reservation is not None
        await store.settle(SettleCall(warm.reservation, 1.0))
        server_before = cpu_seconds(server_pid)
        cpu, wall = time.process_time(), time.perf_counter()
        latencies = []
        for index in range(count):
            began = time.perf_counter()
            admission = await store.admit(
                AdmitCall(f"app:user-{index % CALLERS}", LIMITS, 60.0, time.time)
            )
            latencies.append(time.perf_counter() - began)
            assert admission.reservation is not None
            await store.settle(SettleCall(admission.reservation, 30.0))
        return {
            "cpu_ms": (time.process_time() - cpu) / count * 1e3,
            "wall_ms": (time.perf_counter() - wall) / count * 1e3,
            "server_cpu_ms": (cpu_seconds(server_pid) - server_before) / count * 1e3,
            "admit_p50_ms": median(latencies) * 1e3,
        }
    finally:
        await store.aclose()


def run(ctx: Context) -> Section:
    count = 500 if ctx.profile.name == "quick" else 5000
    section = Section(
        key="budgets",
        title="Budgets: a call's admission",
        intro=(
            f"{count:,} calls of {CALLERS} callers admitted and settled through navai_mw's budget "
            "store, one after another, a policy of two limits each (minutes a day, dollars a "
            "month): the CPU this process used per call (admission and settling), the wall "
            "time, and on Redis the CPU of redis-server itself (the Lua scripts)."
        ),
        headers=[
            "store",
            "calls",
            "CPU per call (ms)",
            "redis-server CPU (ms)",
            "wall per call (ms)",
        ],
    )
    results: dict[str, dict[str, Any]] = {"memory": _memory(count)}
    if redis_executable() is None:
        section.notes.append("redis-server is not installed: only memory:// was measured")
    else:
        with RedisServer(log_dir=ctx.workdir) as server:
            assert server.pid is not None
            results["redis"] = asyncio.run(_redis(server.url, count, server.pid))
    for store, data in results.items():
        section.rows.append(
            [
                store if store == "memory" else "Redis",
                f"{count:,}",
                f"{data['cpu_ms']:.3f}",
                f"{data['server_cpu_ms']:.3f}" if store == "redis" else "",
                f"{data['wall_ms']:.3f}",
            ]
        )
    if "redis" in results:
        measured = results["redis"]["cpu_ms"]
        section.targets.append(
            Target(
                f"a budget's admission on Redis costs < {MAX_REDIS_CPU_MS:g} ms of server CPU",
                f"{measured:.3f} ms (and {results['redis']['server_cpu_ms']:.3f} ms in Redis)",
                measured < MAX_REDIS_CPU_MS,
            )
        )
    section.data = results
    return section
