"""The applications and upstream clients that the benchmarks put under load.

Factories only; nothing is built at import time, and the peer (FastAPI and
the openai SDK) lives in :mod:`benchmarks._peer` so that the in-process
benchmarks never import it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import httpx

from navai_mw import NavaiASGIMiddleware, NavaiVoiceBackendOptions, NavaiWSGIMiddleware
from navai_mw import transports as navai_transports
from navai_mw.testing import FakeOpenAIRealtime
from navai_mw.transports import HttpxAsyncTransport, HttpxSyncTransport

from ._harness import BENCH_KEY
from ._native import AiohttpNativeTransport

# What the guard benchmark's tokens carry and its navai_mw servers demand.
JWT_AUDIENCE = "https://api.bench.navai.invalid"
JWT_ISSUER = "https://issuer.bench.navai.invalid/"

# The async transports compared by the suite, by arm name.
ASYNC_TRANSPORTS = ("httpcore", "aiohttp", "httpx2", "aiohttp-native", "default")
ASYNC_TRANSPORT_LABELS = {
    "httpcore": "httpx.AsyncClient (httpcore)",
    "aiohttp": "httpx.AsyncClient + httpx_aiohttp.AiohttpTransport",
    "httpx2": "httpx2.AsyncClient (the fork the openai SDK uses)",
    "aiohttp-native": "aiohttp.ClientSession, no httpx (reference)",
    "default": "navai_mw.AiohttpTransport (the default)",
}


def options(upstream: str) -> NavaiVoiceBackendOptions:
    return NavaiVoiceBackendOptions(openai_api_key=BENCH_KEY, openai_base_url=upstream)


def async_transport(
    kind: str,
) -> HttpxAsyncTransport | AiohttpNativeTransport | navai_transports.AiohttpTransport:
    """One of the arms, each through navai_mw's async transport protocol.

    ``httpcore`` is httpx's own pool; ``aiohttp`` is the same class over
    httpx_aiohttp, which ``HttpxAsyncTransport()`` makes by default on
    asyncio. Two reference arms: ``httpx2`` fits HttpxAsyncTransport by duck
    typing, but its exceptions are not httpx's, so
    it is no drop-in default; ``aiohttp-native`` skips httpx altogether.
    """
    if kind == "httpcore":
        return HttpxAsyncTransport(httpx.AsyncClient())
    if kind == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return HttpxAsyncTransport(httpx.AsyncClient(transport=AiohttpTransport()))
    if kind == "httpx2":
        import httpx2

        client: Any = httpx2.AsyncClient()
        return HttpxAsyncTransport(client)
    if kind == "aiohttp-native":
        return AiohttpNativeTransport()
    if kind == "default":
        return navai_transports.AiohttpTransport()
    raise ValueError(f"unknown transport {kind!r}")


def sync_transport(keepalive: int | None = None) -> HttpxSyncTransport:
    """``httpx.Client()`` as navai_mw makes it, or keeping up to ``keepalive``
    idle connections instead of httpx's default 20."""
    if keepalive is None:
        return HttpxSyncTransport(httpx.Client())
    limits = httpx.Limits(max_connections=max(100, keepalive), max_keepalive_connections=keepalive)
    return HttpxSyncTransport(httpx.Client(limits=limits))


# -- the apps navai_mw wraps: they only answer "not found" ------------------------


async def not_found_asgi(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"9")]}
    )
    await send({"type": "http.response.body", "body": b"not found"})


def not_found_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("404 Not Found", [("Content-Length", "9")])
    return [b"not found"]


def navai_asgi(
    upstream: str,
    transport: str | None,
    *,
    jwks_url: str | None = None,
    rate_limit: str | None = None,
    rate_limit_storage: str | None = None,
    relay: bool = False,
    sideband: bool = False,
) -> NavaiASGIMiddleware:
    """navai_mw's middleware over a 404 app; ``transport=None`` is its default.

    The guard, for the guard benchmark: ``jwks_url`` turns on ``jwt_bearer``
    (tokens for :data:`JWT_AUDIENCE` from :data:`JWT_ISSUER`), ``rate_limit``
    a limit counted in ``rate_limit_storage``. ``relay`` switches the
    WebRTC relays on, ``sideband`` their sideband too (the sideband
    benchmark).
    """
    chosen = None if transport is None else async_transport(transport)
    authorize = None
    if jwks_url is not None:
        from navai_mw.auth import jwt_bearer

        authorize = jwt_bearer(jwks_url, audience=JWT_AUDIENCE, issuer=JWT_ISSUER)
    return NavaiASGIMiddleware(
        not_found_asgi,
        opts=options(upstream),
        authorize=authorize,
        rate_limit=rate_limit,
        rate_limit_storage=rate_limit_storage,
        transport=chosen,
        relay=relay,
        sideband=sideband,
    )


def navai_wsgi(upstream: str, keepalive: int | None = None) -> NavaiWSGIMiddleware:
    """navai_mw's WSGI middleware over a 404 app, with its default transport,
    or with an ``httpx.Client`` that keeps up to ``keepalive`` idle connections."""
    transport = None
    if keepalive is not None:
        limits = httpx.Limits(
            max_connections=max(100, keepalive), max_keepalive_connections=keepalive
        )
        transport = HttpxSyncTransport(httpx.Client(limits=limits))
    return NavaiWSGIMiddleware(not_found_wsgi, opts=options(upstream), transport=transport)


# -- the fake upstream, with counters ------------------------------------------------

STATS_PATH = "/_bench/stats"
# The fake records every request; the suite sends hundreds of thousands.
_MAX_RECORDED = 1000


class CountedUpstream:
    """FakeOpenAIRealtime, plus ``GET /_bench/stats``: connections accepted
    (the server's protocol calls ``count_connection`` and ``count_close``),
    the most open at once since the previous stats call, and requests."""

    def __init__(self, stall: float = 0.0) -> None:
        self.fake = FakeOpenAIRealtime(api_key=BENCH_KEY)
        if stall:
            self.fake.stall(stall)
        self.connections = 0
        self.open = 0
        self.peak = 0
        self.requests = 0

    def count_connection(self) -> None:
        self.connections += 1
        self.open += 1
        self.peak = max(self.peak, self.open)

    def count_close(self) -> None:
        self.open -= 1

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == STATS_PATH:
            body = json.dumps(
                {"connections": self.connections, "requests": self.requests, "peak": self.peak}
            ).encode()
            self.peak = self.open
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "http":
            self.requests += 1
            if len(self.fake.requests) > _MAX_RECORDED:
                self.fake.requests.clear()
        await self.fake(scope, receive, send)


class AiohttpRelay:
    """The ceiling of any relay: a raw ASGI app that reads the request, POSTs
    one fixed, prebuilt body upstream on an ``aiohttp.ClientSession`` and
    sends the answer back. It checks nothing, builds nothing, parses nothing."""

    def __init__(self, upstream: str) -> None:
        from navai_mw.upstreams.openai_secrets import build_upstream_request

        request = build_upstream_request(options(upstream), {"model": "gpt-realtime"})
        self.url = request.url
        self.headers = dict(request.headers)
        self.body = request.body
        self.session: Any = None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        if scope["path"] == "/_bench/ready":
            status, body = 200, b"ok"
        else:
            async with self.session.post(self.url, data=self.body, headers=self.headers) as answer:
                status, body = answer.status, await answer.read()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        import aiohttp

        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                connector = aiohttp.TCPConnector(limit=1000)
                self.session = aiohttp.ClientSession(
                    connector=connector, cookie_jar=aiohttp.DummyCookieJar()
                )
                await send({"type": "lifespan.startup.complete"})
            else:
                await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def describe_default_transport() -> str:
    """What navai_mw's middleware sends through when given no transport, as text."""
    from navai_mw import NavaiASGIMiddleware

    async def probe() -> str:
        middleware = NavaiASGIMiddleware(not_found_asgi, options("http://127.0.0.1:9/v1"))
        transport = middleware.transport
        client = await transport._current()  # type: ignore[attr-defined]
        await transport.aclose()  # type: ignore[attr-defined]
        return f"{type(transport).__name__} / {type(client).__module__}.{type(client).__name__}"

    return asyncio.run(probe())
