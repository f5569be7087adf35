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

import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
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
    """A :class:`SyncTransport` over one pooled, thread-safe ``httpx.Client``.

    Each attempt runs on a worker thread, so that the caller stops waiting
    when its time is up: httpx bounds each read, not the whole answer, and an
    upstream that trickled its head byte by byte would otherwise hold a
    server thread for as long as it liked.
    """

    def __init__(self, client: httpx.Client | None = None) -> None:
        self._client = client if client is not None else httpx.Client(limits=DEFAULT_LIMITS)
        self._workers = ThreadPoolExecutor(
            max_workers=DEFAULT_LIMITS.max_connections or 100,
            thread_name_prefix="navai-upstream",
        )

    def send(self, request: HttpRequest, *, timeout: float) -> HttpResponse:
        attempt = self._workers.submit(self._send, request, timeout)
        try:
            return attempt.result(timeout=timeout)
        except FutureTimeoutError:  # not the built-in TimeoutError before 3.11
            attempt.cancel()
            raise TimeoutError("OpenAI answered too slowly.") from None

    def _send(self, request: HttpRequest, timeout: float) -> HttpResponse:
        # The worker gives up too once the body outlasts the deadline.
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
        self._workers.shutdown(wait=False, cancel_futures=True)
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


def _running_loop() -> object:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # trio: one loop per run, nothing to tell apart
        return None


class HttpxAsyncTransport:
    """An :class:`AsyncTransport` over one pooled ``httpx.AsyncClient``.

    Without ``client``, one is made on first use: on asyncio, an httpx client
    over aiohttp's connection pool (``httpx-aiohttp``), which holds up under
    concurrency; elsewhere, httpx's own. Such a client belongs to the event
    loop that made it, so a transport used again after :meth:`aclose` (a
    server's second lifespan) or from another loop (a test harness that runs
    each request on a loop of its own) makes a fresh one. ``is_closed`` is
    True from :meth:`aclose` until the transport is used again.
    """

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._given = client
        self._client = client
        self._loop: object = None
        self.is_closed = False

    def _current_client(self) -> httpx.AsyncClient:
        if self._given is not None:
            return self._given
        loop = _running_loop()
        if self._client is None or self._loop is not loop:
            self._client, self._loop = _default_async_client(), loop
        self.is_closed = False
        return self._client

    async def send(self, request: HttpRequest, *, timeout: float) -> HttpResponse:
        client = self._current_client()
        try:
            return _response(await client.send(_build(client, request, timeout)))
        except httpx.HTTPError as exc:
            raise _async_failure(exc) from None
        except Exception as exc:
            if _is_aiohttp_error(exc):  # raised unmapped by httpx_aiohttp
                raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
            raise

    async def aclose(self) -> None:
        client, self._client = self._client, self._given
        self.is_closed = True
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> HttpxAsyncTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
