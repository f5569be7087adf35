"""How bytes reach OpenAI: two one-method protocols and their httpx defaults.

A transport sends an :class:`~navai_mw.HttpRequest` and returns an
:class:`~navai_mw.HttpResponse`. It makes no decisions: retries, the time
budget and the reading of the answer live in the sans-IO core. It reports
failure with built-in exceptions only, so that a transport written on the
standard library needs no navai_mw import to be correct:

* :class:`TimeoutError` when the attempt ran out of time;
* :class:`OSError` (:class:`ConnectionError` and friends) when no answer came.

Each httpx transport holds one pooled client for its lifetime. Close it with
``close()``/``aclose()`` or use it as a context manager. The async default
runs httpx over aiohttp's connection pool, which keeps its rate under
concurrency where httpx's own pool does not (see the benchmarks page).
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Protocol, runtime_checkable

import httpx
import sniffio

from ._models import HttpRequest, HttpResponse

__all__ = [
    "AsyncTransport",
    "HttpxAsyncTransport",
    "HttpxSyncTransport",
    "SyncTransport",
]

# Enough connections for a burst of page loads; more would only move the
# queue from here to OpenAI's rate limiter. Idle ones are all kept: closing
# them between bursts only to reopen them costs a TLS handshake each.
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100)


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


def _response(response: httpx.Response) -> HttpResponse:
    return HttpResponse(
        status=response.status_code,
        headers=tuple(response.headers.items()),
        body=response.content,
    )


class HttpxSyncTransport:
    """A :class:`SyncTransport` over one pooled, thread-safe ``httpx.Client``."""

    def __init__(self, client: httpx.Client | None = None) -> None:
        self._client = client if client is not None else httpx.Client(limits=DEFAULT_LIMITS)

    def send(self, request: HttpRequest, *, timeout: float) -> HttpResponse:
        # httpx's timeouts bound each read, not the whole answer; the deadline
        # keeps an upstream that trickles bytes from stretching the attempt.
        deadline = time.monotonic() + timeout
        try:
            response = self._client.send(_build(self._client, request, timeout), stream=True)
            try:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if time.monotonic() > deadline:
                        raise TimeoutError("OpenAI answered too slowly.")
            finally:
                response.close()
            return HttpResponse(
                status=response.status_code,
                headers=tuple(response.headers.items()),
                body=bytes(body),
            )
        except httpx.TimeoutException as exc:
            raise TimeoutError(str(exc)) from None
        except httpx.HTTPError as exc:
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpxSyncTransport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _default_async_client() -> httpx.AsyncClient:
    # httpcore's pool assignment is quadratic in the requests waiting, and its
    # AsyncClient collapses under a burst (benchmarks/, docs/benchmarks.md);
    # aiohttp's pool keeps its rate from 5 to 50 requests in flight. aiohttp
    # runs on asyncio only: elsewhere (trio) httpcore it is.
    if sniffio.current_async_library() != "asyncio":
        return httpx.AsyncClient(limits=DEFAULT_LIMITS)
    from httpx_aiohttp import AiohttpTransport

    return httpx.AsyncClient(transport=AiohttpTransport(limits=DEFAULT_LIMITS))


def _async_failure(exc: Exception) -> OSError:
    """The built-in exception for a failed async attempt."""
    cause = exc.__cause__
    # httpx_aiohttp reports every aiohttp connection error, a refused
    # connection included, as httpx.ConnectTimeout; its cause tells the truth.
    refused = _is_aiohttp_error(cause) and not isinstance(cause, TimeoutError)
    if isinstance(exc, httpx.TimeoutException) and not refused:
        return TimeoutError(str(exc))
    return ConnectionError(f"{type(exc).__name__}: {exc}")


def _is_aiohttp_error(exc: BaseException | None) -> bool:
    aiohttp = sys.modules.get("aiohttp")  # never imported just to ask
    return aiohttp is not None and isinstance(exc, aiohttp.ClientError)


class HttpxAsyncTransport:
    """An :class:`AsyncTransport` over one pooled ``httpx.AsyncClient``.

    Without ``client``, one is made on first use: on asyncio, an httpx client
    over aiohttp's connection pool (``httpx-aiohttp``), which holds up under
    concurrency; elsewhere, httpx's own.
    """

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client
        self._closed = False

    async def send(self, request: HttpRequest, *, timeout: float) -> HttpResponse:
        if self._client is None:
            if self._closed:
                raise RuntimeError("This transport has been closed.")
            self._client = _default_async_client()
        client = self._client
        try:
            return _response(await client.send(_build(client, request, timeout)))
        except httpx.HTTPError as exc:
            raise _async_failure(exc) from None
        except Exception as exc:
            if _is_aiohttp_error(exc):  # raised unmapped by httpx_aiohttp
                raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
            raise

    async def aclose(self) -> None:
        self._closed = True
        if self._client is not None:
            await self._client.aclose()

    async def __aenter__(self) -> HttpxAsyncTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
