"""What every transport shares: the two one-method protocols, how many
upstream connections one may hold, and reading an answer within the
request's size, its Content-Encoding undone by the same bound. The default
transports are in ``sync_transport`` (httpx, for threads) and
``async_transports`` (aiohttp, or httpx on trio); all are public through
:mod:`navai_mw.transports`, which says what a transport promises."""

from __future__ import annotations

import os
import zlib
from typing import Final, Protocol, runtime_checkable

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


# The content codings the transports ask for, and undo themselves: whatever
# the HTTP client would add (br, zstd) is not asked for.
ACCEPT_ENCODING: Final = ("Accept-Encoding", "gzip, deflate")


def _build(
    client: httpx.Client | httpx.AsyncClient, request: HttpRequest, timeout: float
) -> httpx.Request:
    return client.build_request(
        request.method,
        request.url,
        headers=[ACCEPT_ENCODING, *request.headers],
        content=request.body,
        timeout=timeout,
    )


def _read_already(response: httpx.Response, request: HttpRequest) -> BoundedBody | None:
    """The body of an answer made whole in memory (by a mock transport),
    which httpx has read and unpacked already; None for one to stream."""
    if not response.is_stream_consumed:
        return None
    body = BoundedBody(request, None)
    body.full(response.content)
    return body


def _answer(response: httpx.Response, body: BoundedBody) -> HttpResponse:
    return HttpResponse(
        status=response.status_code,
        headers=tuple(response.headers.items()),
        body=bytes(body.data),
    )


class BoundedBody:
    """An answer's body as it arrives, its ``Content-Encoding`` (gzip or
    deflate) undone here and never past one byte beyond the request's
    limit: a gzip bomb costs what arrived and the limit, not its size
    unpacked (an HTTP client's own decoder unpacks each network read whole:
    64 KiB of gzip can be 64 MiB). Feed it what the client reads raw."""

    __slots__ = ("_deflate_format", "_inflate", "_limit", "data")

    def __init__(self, request: HttpRequest, content_encoding: str | None) -> None:
        self.data = bytearray()
        self._limit = request.max_response_bytes
        coding = (content_encoding or "").strip().lower()
        self._deflate_format = False
        self._inflate: zlib._Decompress | None
        if coding in ("", "identity"):
            self._inflate = None
        elif coding in ("gzip", "x-gzip"):
            self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            # "deflate" is zlib's format, but servers send raw deflate too.
            self._inflate = zlib.decompressobj()
            self._deflate_format = True
        else:
            raise ConnectionError(
                f"the upstream answered in a coding not asked for: {coding[:32]!r}"
            )

    def full(self, chunk: bytes) -> bool:
        """Add ``chunk`` as received; True once the body has passed the
        request's limit (one byte past it is enough for the core to refuse
        it: stop reading)."""
        if self._inflate is None:
            self.data += chunk
        else:
            # At most one byte past the limit comes out; the rest stays
            # packed in the decompressor, and is dropped with it.
            room = self._limit + 1 - len(self.data)
            try:
                self.data += self._inflate.decompress(chunk, room)
            except zlib.error:
                if not (self._deflate_format and not self.data):
                    raise ConnectionError("the upstream's answer could not be unpacked") from None
                self._deflate_format = False
                self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
                return self.full(chunk)
        return len(self.data) > self._limit


# -- sync: the attempt's deadline on every socket operation ----------------------


# -- async ------------------------------------------------------------------------
