"""What every transport shares: the two one-method protocols, how many
upstream connections one may hold, and reading an httpx answer within the
request's size. The default transports are in ``sync_transport`` (httpx, for
threads) and ``async_transports`` (aiohttp, or httpx on trio); all are
public through :mod:`navai_mw.transports`, which says what a transport
promises."""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import httpx

from ..core.http import HttpRequest, HttpResponse
from ..core.options import DEFAULT_MAX_CONNECTIONS, max_upstream_connections

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "AsyncTransport",
    "SyncTransport",
    "upstream_connections",
]


def upstream_connections(value: int | None = None) -> int:
    """``value``, else ``NAVAI_MAX_UPSTREAM_CONNECTIONS``, else 1000: the
    connections a transport made without a bound may hold (the middlewares
    read the variable where their ``env=`` says)."""
    return max_upstream_connections(value, env=os.environ)


def _limits(connections: int) -> httpx.Limits:
    return httpx.Limits(max_connections=connections, max_keepalive_connections=connections)


# What a transport made without a limit uses (the environment is read then).
DEFAULT_LIMITS = _limits(DEFAULT_MAX_CONNECTIONS)


@runtime_checkable
class SyncTransport(Protocol):
    def send(self, request: HttpRequest, *, timeout: float) -> HttpResponse: ...


@runtime_checkable
class AsyncTransport(Protocol):
    async def send(self, request: HttpRequest, *, timeout: float) -> HttpResponse: ...


def _build(
    client: httpx.Client | httpx.AsyncClient, request: HttpRequest, timeout: float
) -> httpx.Request:
    return client.build_request(
        request.method,
        request.url,
        headers=list(request.headers),
        content=request.body,
        timeout=timeout,
    )


def _answer(response: httpx.Response, body: bytearray) -> HttpResponse:
    return HttpResponse(
        status=response.status_code,
        headers=tuple(response.headers.items()),
        body=bytes(body),
    )


def _full(body: bytearray, chunk: bytes, request: HttpRequest) -> bool:
    """Add ``chunk``; True once the body has passed the request's limit
    (one byte past it is enough for the core to refuse it: stop reading)."""
    body += chunk
    return len(body) > request.max_response_bytes


# -- sync: the attempt's deadline on every socket operation ----------------------


# -- async ------------------------------------------------------------------------
