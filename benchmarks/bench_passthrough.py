"""What the middleware costs the requests it does not answer.

The ASGI callables are driven directly: one prebuilt scope for ``GET
/hello`` (not the token path), a no-op ``receive`` and ``send``, and a
tight loop of awaits in one event loop; garbage collection is paused while
a sample is timed. Arms:

* a bare ASGI app that answers ``200 ok``, alone and inside the middleware
  (the difference is the middleware's cost per request, in ns), and inside
  the least a class-based pure ASGI middleware can do (one ``await``), the
  floor any such middleware pays;
* a small Starlette app with the route ``/hello``, alone and inside the
  middleware (the ratio is what a real app would notice);
* the same Starlette app behind a do-nothing ``BaseHTTPMiddleware``, for
  scale: the wrapper style the pure ASGI middleware avoids.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

from navai_mw import NavaiASGIMiddleware

from ._apps import options
from ._harness import (
    Context,
    Ratio,
    Section,
    Spread,
    Target,
    calibrate,
    interleave,
    median,
)
from ._inproc import ASGIApp, CannedTransport, http_scope, receive_nothing, send_nothing

ARMS = ("bare", "floor+bare", "navai+bare", "starlette", "navai+starlette", "basehttp+starlette")
LABELS = {
    "bare": "bare ASGI app",
    "floor+bare": "MinimalMiddleware(bare app): a class that only awaits the app",
    "navai+bare": "NavaiASGIMiddleware(bare app)",
    "starlette": "Starlette app, one route",
    "navai+starlette": "NavaiASGIMiddleware(Starlette app)",
    "basehttp+starlette": "Starlette app + no-op BaseHTTPMiddleware",
}
MAX_ADDED_NS = 1000.0
MAX_STARLETTE_RATIO = 1.05


async def bare_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _starlette(with_base_http: bool) -> ASGIApp:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    async def hello(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def passthrough(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        return response

    middleware = [Middleware(BaseHTTPMiddleware, dispatch=passthrough)] if with_base_http else []
    return Starlette(routes=[Route("/hello", hello)], middleware=middleware)


class MinimalMiddleware:
    """The least a class-based pure ASGI middleware does: pass everything on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def _wrap(app: ASGIApp) -> ASGIApp:
    # The upstream is never reached on this path; a canned one keeps the
    # middleware from making an HTTP client it would not use.
    return NavaiASGIMiddleware(
        app, opts=options("http://127.0.0.1:9/v1"), transport=CannedTransport()
    )


def make_apps() -> dict[str, ASGIApp]:
    starlette = _starlette(with_base_http=False)
    return {
        "bare": bare_app,
        "floor+bare": MinimalMiddleware(bare_app),
        "navai+bare": _wrap(bare_app),
        "starlette": starlette,
        "navai+starlette": _wrap(starlette),
        "basehttp+starlette": _starlette(with_base_http=True),
    }


def _sampler(loop: asyncio.AbstractEventLoop, app: ASGIApp) -> Callable[[int], float]:
    # Each arm has a scope of its own: Starlette writes into the scope.
    scope = http_scope("GET", "/hello", [(b"host", b"127.0.0.1:8000")])

    async def calls(n: int) -> float:
        began = time.perf_counter()
        for _ in range(n):
            await app(scope, receive_nothing, send_nothing)
        return time.perf_counter() - began

    def sample(n: int) -> float:
        gc.collect()
        gc.disable()
        try:
            return loop.run_until_complete(calls(n))
        finally:
            gc.enable()

    return sample


def run(ctx: Context) -> Section:
    apps = make_apps()
    loop = asyncio.new_event_loop()
    try:
        samplers = {arm: _sampler(loop, app) for arm, app in apps.items()}
        counts = {arm: calibrate(s, ctx.profile.inproc_seconds) for arm, s in samplers.items()}
        ns: dict[str, list[float]] = {arm: [] for arm in ARMS}
        for _, arm in interleave(ARMS, ctx.profile.rounds):
            ns[arm].append(samplers[arm](counts[arm]) / counts[arm] * 1e9)
    finally:
        loop.close()

    section = Section(
        key="passthrough",
        title="Pass-through overhead, in-process",
        intro=(
            "A request for another path (`GET /hello`), driven straight into the ASGI callables "
            "with a prebuilt scope and no-op receive/send (nanoseconds per request)."
        ),
        headers=["arm", "ns / request", "fastest round", "slowest round"],
    )
    for arm in ARMS:
        values = ns[arm]
        section.rows.append(
            [LABELS[arm], f"{median(values):,.0f}", f"{min(values):,.0f}", f"{max(values):,.0f}"]
        )
        section.data[arm] = values
    added = Spread.of([w - b for w, b in zip(ns["navai+bare"], ns["bare"], strict=True)], "ns")
    vs_starlette = Ratio.of(ns["navai+starlette"], ns["starlette"])
    section.ratios += [
        ("middleware added per request (wrapped - bare, per round)", added),
        (
            "minimal pass-through added (floor - bare, per round)",
            Spread.of([f - b for f, b in zip(ns["floor+bare"], ns["bare"], strict=True)], "ns"),
        ),
        ("NavaiASGIMiddleware(bare) / bare", Ratio.of(ns["navai+bare"], ns["bare"])),
        ("NavaiASGIMiddleware(Starlette) / Starlette", vs_starlette),
        (
            "BaseHTTPMiddleware(Starlette) / Starlette",
            Ratio.of(ns["basehttp+starlette"], ns["starlette"]),
        ),
    ]
    section.targets += [
        Target(
            goal=f"pass-through adds <= {MAX_ADDED_NS / 1000:.0f} us per request",
            measured=str(added),
            met=added.median <= MAX_ADDED_NS,
        ),
        Target(
            goal=f"pass-through <= {MAX_STARLETTE_RATIO - 1:.0%} over the Starlette app alone",
            measured=vs_starlette.as_change(),
            met=vs_starlette.median <= MAX_STARLETTE_RATIO,
        ),
    ]
    return section
