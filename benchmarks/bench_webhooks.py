"""What an OpenAI webhook costs, and how soon it is answered: deliveries
POSTed to ``/navai/webhooks/openai`` of the ASGI middleware, in process
(no server, no network: what is left is navai_mw's own work), each signed
as OpenAI signs them and each a new ``webhook-id``.

* per delivery: the signature checked on the raw body, the body read, the
  delivery remembered (``memory://``, or a real ``redis-server`` started
  for the run on loopback), the ``200``, and the app's ``on_openai_event``
  run after it: CPU and wall time of the whole;
* the answer while the app's hook is slow (each takes a second): OpenAI
  retries endpoints that answer slowly, so the answer must not wait for it.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

from navai_mw import NavaiASGIMiddleware, NavaiVoiceBackendOptions
from navai_mw.testing import WebhookSender, webhook_events

from ._harness import Context, Section, Target, median
from ._procs import cpu_seconds
from ._redis import RedisServer, redis_executable

SECRET = "whsec_" + base64.b64encode(b"the benchmark's webhook signing key").decode()
PATH = "/navai/webhooks/openai"
SLOW_HOOK_SECONDS = 1.0
MAX_ANSWER_SECONDS = 0.5  # the answer, whatever the hook does ("a few seconds" at most)
MAX_CPU_MS = 1.0  # per delivery


async def _inner(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("every request here is navai's")


def _app(storage: str | None, hook: Any) -> NavaiASGIMiddleware:
    opts = NavaiVoiceBackendOptions(openai_api_key="sk-bench-0123456789abcdef")
    keywords: dict[str, Any] = {"openai_webhook_secret": SECRET, "on_openai_event": hook}
    if storage is not None:
        keywords["rate_limit_storage"] = storage
    return NavaiASGIMiddleware(_inner, opts, functions=[], metrics=False, **keywords)


def _deliveries(count: int) -> list[tuple[bytes, dict[str, str]]]:
    sender = WebhookSender(SECRET, f"http://bench{PATH}")
    return [
        sender.prepare(webhook_events.safety_warning_issued(f"case_{index}"))
        for index in range(count)
    ]


async def _post(app: NavaiASGIMiddleware, body: bytes, headers: dict[str, str]) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            *((name.encode(), value.encode()) for name, value in headers.items()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _steady(storage: str | None, count: int, server_pid: int | None) -> dict[str, float]:
    heard = 0

    def hook(event: dict[str, Any]) -> None:
        nonlocal heard
        heard += 1

    app = _app(storage, hook)
    try:
        warm, deliveries = _deliveries(20), _deliveries(count)
        server_before = 0.0
        cpu = wall = 0.0
        for index, (body, headers) in enumerate([*warm, *deliveries]):
            if index == len(warm):  # warmed up: the pool, the scripts
                server_before = cpu_seconds(server_pid) if server_pid else 0.0
                cpu, wall = time.process_time(), time.perf_counter()
            assert await _post(app, body, headers) == 200
            while heard <= index:  # its hook has run (as a server's loop would let it)
                await asyncio.sleep(0)
        return {
            "cpu_ms": (time.process_time() - cpu) / count * 1e3,
            "wall_ms": (time.perf_counter() - wall) / count * 1e3,
            "server_cpu_ms": (
                (cpu_seconds(server_pid) - server_before) / count * 1e3 if server_pid else 0.0
            ),
        }
    finally:
        await app.aclose()


async def _slow_hook(count: int) -> list[float]:
    async def hook(event: dict[str, Any]) -> None:
        await asyncio.sleep(SLOW_HOOK_SECONDS)

    app = _app(None, hook)
    answers = []
    try:
        for body, headers in _deliveries(count):
            began = time.perf_counter()
            assert await _post(app, body, headers) == 200
            answers.append(time.perf_counter() - began)
        await asyncio.sleep(SLOW_HOOK_SECONDS + 0.5)  # the hooks end
    finally:
        await app.aclose()
    return answers


def run(ctx: Context) -> Section:
    count = 500 if ctx.profile.name == "quick" else 5000
    slow = 20
    section = Section(
        key="webhooks",
        title="OpenAI webhooks: a delivery",
        intro=(
            f"{count:,} signed deliveries (`safety.warning_issued`, each a new `webhook-id`) "
            f"POSTed one after another to `{PATH}` of the ASGI middleware in process: the "
            "signature checked, the delivery remembered, the 200, the app's `on_openai_event` "
            "run after it. CPU and wall time per delivery in this process, and on Redis "
            f"redis-server's own CPU. Then {slow} deliveries while the app's hook takes "
            f"{SLOW_HOOK_SECONDS:g} s each: how soon each is answered."
        ),
        headers=["deliveries remembered in", "deliveries", "CPU (ms)", "redis-server CPU (ms)",
                 "wall (ms)"],
    )  # fmt: skip
    results: dict[str, Any] = {"memory": asyncio.run(_steady(None, count, None))}
    if redis_executable() is None:
        section.notes.append("redis-server is not installed: only memory:// was measured")
    else:
        with RedisServer(log_dir=ctx.workdir) as server:
            results["redis"] = asyncio.run(_steady(server.url, count, server.pid))
    for store, data in results.items():
        section.rows.append(
            [
                "memory://" if store == "memory" else "Redis",
                f"{count:,}",
                f"{data['cpu_ms']:.3f}",
                f"{data['server_cpu_ms']:.3f}" if store == "redis" else "",
                f"{data['wall_ms']:.3f}",
            ]
        )
    answers = asyncio.run(_slow_hook(slow))
    results["slow_hook_answers_s"] = answers
    worst = max(answers)
    section.notes.append(
        f"With a hook that takes {SLOW_HOOK_SECONDS:g} s: answers in {median(answers) * 1e3:.2f} "
        f"ms (median), {worst * 1e3:.2f} ms at worst."
    )
    for store, data in results.items():
        if store in ("memory", "redis"):
            section.targets.append(
                Target(
                    f"a webhook delivery ({'memory://' if store == 'memory' else 'Redis'}) costs "
                    f"< {MAX_CPU_MS:g} ms of server CPU",
                    f"{data['cpu_ms']:.3f} ms",
                    data["cpu_ms"] < MAX_CPU_MS,
                )
            )
    section.targets.append(
        Target(
            f"a delivery is answered within {MAX_ANSWER_SECONDS:g} s while the app's hook takes "
            f"{SLOW_HOOK_SECONDS:g} s",
            f"{worst * 1e3:.1f} ms at worst",
            worst <= MAX_ANSWER_SECONDS,
        )
    )
    section.data = results
    return section
