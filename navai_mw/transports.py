"""How bytes reach OpenAI: two one-method protocols and their httpx defaults.

A transport sends an :class:`~navai_mw.HttpRequest` and returns an
:class:`~navai_mw.HttpResponse`. It makes no decisions: retries, the time
budget and the reading of the answer live in the sans-IO core. It reports
failure with built-in exceptions only, so that a transport written on the
standard library needs no navai_mw import to be correct:

* :class:`TimeoutError` when the attempt ran out of time;
* :class:`OSError` (:class:`ConnectionError` and friends) when no answer came.

Each httpx transport holds one pooled client for its lifetime. Close it with
``close()``/``aclose()`` or use it as a context manager.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Protocol, runtime_checkable

import httpx

from ._models import HttpRequest, HttpResponse

__all__ = [
    "AsyncTransport",
    "HttpxAsyncTransport",
    "HttpxSyncTransport",
    "SyncTransport",
]

# Enough connections for a burst of page loads; more would only move the
# queue from here to OpenAI's rate limiter.
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


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


class HttpxAsyncTransport:
    """An :class:`AsyncTransport` over one pooled ``httpx.AsyncClient``."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client if client is not None else httpx.AsyncClient(limits=DEFAULT_LIMITS)

    async def send(self, request: HttpRequest, *, timeout: float) -> HttpResponse:
        try:
            return _response(await self._client.send(_build(self._client, request, timeout)))
        except httpx.TimeoutException as exc:
            raise TimeoutError(str(exc)) from None
        except httpx.HTTPError as exc:
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
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
