"""The default async transports: aiohttp's pool on asyncio (httpx over
anyio on trio), one client per event loop, each attempt bounded as a whole."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import sys
import urllib.parse
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from types import TracebackType
from typing import Any, Final, cast

import httpx
import sniffio
from typing_extensions import Self

from ..core.http import HttpRequest, HttpResponse
from ..upstreams.sideband import MAX_EVENT_BYTES
from .aio import C, LoopBound, attempt_deadline
from .transports import (
    ACCEPT_ENCODING,
    DEFAULT_LIMITS,
    BoundedBody,
    _answer,
    _build,
    _limits,
    _read_already,
    upstream_connections,
)


def _default_async_client(limits: httpx.Limits = DEFAULT_LIMITS) -> httpx.AsyncClient:
    # httpcore's pool assignment is quadratic in the requests waiting, and its
    # AsyncClient collapses under a burst (benchmarks/, docs/benchmarks.md);
    # aiohttp's pool keeps its rate from 5 to 50 requests in flight. aiohttp
    # runs on asyncio only: elsewhere (trio) httpcore it is.
    if sniffio.current_async_library() != "asyncio":
        return httpx.AsyncClient(limits=limits)
    from httpx_aiohttp import AiohttpTransport

    return httpx.AsyncClient(transport=AiohttpTransport(limits=limits))


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


class BoundedTransport(LoopBound[C]):
    """What navai_mw's async transports share: one pooled client per event
    loop (:class:`LoopBound`), and attempts bounded as a whole by the
    transport itself (so the driver adds no deadline of its own around them).
    """

    def __init__(self, client: C | None, max_connections: int | None) -> None:
        super().__init__(client)
        self._max_connections = upstream_connections(max_connections)

    @property
    def max_connections(self) -> int:
        """The most upstream connections the pool holds."""
        return self._max_connections

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _send_httpx(
    client: httpx.AsyncClient, request: HttpRequest, timeout: float
) -> HttpResponse:
    # httpx's timeouts are per read: this bounds the whole attempt, so an
    # upstream that trickles its answer cannot stretch it.
    async with attempt_deadline(timeout):
        return await _send_httpx_unbounded(client, request, timeout)


async def _send_httpx_unbounded(
    client: httpx.AsyncClient, request: HttpRequest, timeout: float
) -> HttpResponse:
    try:
        response = await client.send(_build(client, request, timeout), stream=True)
        try:
            body = _read_already(response, request)
            if body is None:
                body = BoundedBody(request, response.headers.get("content-encoding"))
                # Closed at once when left early (an async generator in
                # fact); raw, since the body unpacks within its limit.
                chunks_left = cast("AsyncGenerator[bytes, None]", response.aiter_raw())
                async with aclosing(chunks_left) as chunks:
                    async for chunk in chunks:
                        if body.full(chunk):
                            break
        finally:
            await response.aclose()
        return _answer(response, body)
    except httpx.HTTPError as exc:
        raise _async_failure(exc) from None
    except Exception as exc:
        if _is_aiohttp_error(exc):  # raised unmapped by httpx_aiohttp
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
        raise


class HttpxAsyncTransport(BoundedTransport[httpx.AsyncClient]):
    """An :class:`AsyncTransport` over one pooled ``httpx.AsyncClient``.

    Without ``client``, one is made on first use: on asyncio, an httpx client
    over aiohttp's connection pool (``httpx-aiohttp``), which holds up under
    concurrency; elsewhere, httpx's own. It belongs to the event loop that
    made it and closes with it (see :class:`AiohttpTransport`, which shares
    this lifecycle). A ``client`` given is used as it is, and closed by
    :meth:`aclose`.
    """

    def __init__(
        self, client: httpx.AsyncClient | None = None, *, max_connections: int | None = None
    ) -> None:
        super().__init__(client, max_connections)

    def _make(self) -> httpx.AsyncClient:
        return _default_async_client(_limits(self._max_connections))

    async def _close(self, client: httpx.AsyncClient) -> None:
        await client.aclose()

    async def send(self, request: HttpRequest, *, timeout: float) -> HttpResponse:
        return await _send_httpx(await self._current(), request, timeout)


class AiohttpTransport(BoundedTransport[Any]):
    """The default :class:`AsyncTransport`: aiohttp's ``ClientSession``, no
    httpx layer between navai_mw and the pool.

    On asyncio it speaks aiohttp directly, which mints about 1.6 times as
    fast as httpx over the same pool (``docs/benchmarks.md``). aiohttp runs
    on asyncio only: on any other loop (trio) the transport sends through
    an ``httpx.AsyncClient`` instead, with the same limits and failures.

    The session made here trusts the certificates httpx trusts
    (``SSL_CERT_FILE``/``SSL_CERT_DIR``, else certifi's bundle) and reads the
    ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY``/``NO_PROXY`` variables once,
    when it is made (http:// proxies; not the system's proxy settings). It
    keeps no cookies (on trio, httpx's client does), follows no
    redirects, and holds at most ``max_connections`` upstream connections
    (``NAVAI_MAX_UPSTREAM_CONNECTIONS``, 1000 by default). A ``session``
    given is used as it is, and closed by :meth:`aclose`. The client belongs
    to one event loop and closes with it, as :class:`HttpxAsyncTransport`'s.
    """

    def __init__(self, session: Any = None, *, max_connections: int | None = None) -> None:
        super().__init__(session, max_connections)
        # The environment is read when this transport makes its session; a
        # session given is used as it is, with no proxy of ours.
        self._proxies = _Proxies(use_environment=False)
        self._ssl: ssl.SSLContext | None = None
        # WebSockets (the calls' sidebands) on a session of their own: a
        # WebSocket holds its connection for the call's life, so it must
        # neither count against the requests' pool nor take its kept-alive
        # connections. Their number is bounded by max_sidebands instead.
        self._websockets = _WebSocketSessions(self)

    def _make(self) -> Any:
        if sniffio.current_async_library() != "asyncio":
            return httpx.AsyncClient(limits=_limits(self._max_connections))
        import aiohttp
        import certifi

        # As httpx: SSL_CERT_FILE / SSL_CERT_DIR when set, else certifi's bundle.
        cafile = os.environ.get("SSL_CERT_FILE") or None
        capath = os.environ.get("SSL_CERT_DIR") or None
        if cafile is None and capath is None:
            cafile = certifi.where()
        self._ssl = ssl.create_default_context(cafile=cafile, capath=capath)
        connector = aiohttp.TCPConnector(limit=self._max_connections, ssl=self._ssl)
        # trust_env=False: aiohttp would read the proxy variables and ~/.netrc
        # (from a worker thread) on every request. They are read once, here.
        self._proxies = _Proxies()
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    async def _close(self, client: Any) -> None:
        if isinstance(client, httpx.AsyncClient):
            await client.aclose()
        else:
            await client.close()

    async def aclose(self) -> None:
        """Close every loop's clients, the WebSockets' included."""
        await self._websockets.aclose()
        await super().aclose()

    async def send(self, request: HttpRequest, *, timeout: float) -> HttpResponse:
        client = await self._current()
        if isinstance(client, httpx.AsyncClient):
            return await _send_httpx(client, request, timeout)
        return await _send_aiohttp(client, request, timeout, self._proxies.get(request.url))

    @contextlib.asynccontextmanager
    async def connect_websocket(
        self, url: str, headers: Sequence[tuple[str, str]], *, timeout: float
    ) -> AsyncIterator[AiohttpWebSocket]:
        """A WebSocket to ``url`` (``ws://``/``wss://``) on this transport's
        session, through the proxy its requests take and with the same
        certificate trust; opening it is bounded by ``timeout``. asyncio only."""
        client = await self._current()  # made first: the proxies and the trust
        if isinstance(client, httpx.AsyncClient):
            raise ConnectionError("a WebSocket to OpenAI needs asyncio (aiohttp)")
        import aiohttp

        if self._given is None:
            client = await self._websockets._current()
        try:
            async with attempt_deadline(timeout):
                socket = await client.ws_connect(
                    url,
                    headers=list(headers),
                    proxy=self._proxies.get(url),
                    # A larger frame is refused (closed with 1009), never buffered.
                    max_msg_size=MAX_EVENT_BYTES,
                    # A socket that died quietly is found within a minute.
                    heartbeat=WEBSOCKET_HEARTBEAT_SECONDS,
                )
        except asyncio.TimeoutError as exc:
            raise TimeoutError(str(exc) or "timed out") from None
        except aiohttp.WSServerHandshakeError as exc:
            raise WebSocketRefused(exc.status) from None
        except aiohttp.ClientError as exc:
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
        try:
            yield AiohttpWebSocket(socket)
        finally:
            await socket.close()


class _WebSocketSessions(LoopBound[Any]):
    """An :class:`AiohttpTransport`'s sessions for WebSockets, one per event
    loop: no connection limit, no kept-alive connection shared with requests,
    the transport's certificate trust."""

    def __init__(self, transport: AiohttpTransport) -> None:
        super().__init__(None)
        self._transport = transport

    def _make(self) -> Any:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=0, ssl=self._transport._ssl or True)
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    async def _close(self, client: Any) -> None:
        await client.close()


class WebSocketRefused(ConnectionError):
    """The server answered a WebSocket's opening with an HTTP status
    (``status``) instead of switching protocols; a transport's
    ``connect_websocket`` raises it (404: what it names does not exist)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the WebSocket was refused with HTTP {status}")
        self.status = status


class AiohttpWebSocket:
    """An aiohttp WebSocket as a sideband socket: text frames in and out."""

    __slots__ = ("_socket",)

    def __init__(self, socket: Any) -> None:
        self._socket = socket

    @property
    def close_code(self) -> int | None:
        """The code the socket closed with (None: no close frame came)."""
        code = self._socket.close_code
        return code if isinstance(code, int) else None

    async def send_text(self, text: str) -> None:
        await self._socket.send_str(text)

    async def receive_text(self) -> str | None:
        """The next text frame; None once the socket is closed."""
        import aiohttp

        while True:
            message = await self._socket.receive()
            if message.type == aiohttp.WSMsgType.TEXT:
                return str(message.data)
            if message.type == aiohttp.WSMsgType.BINARY:
                return bytes(message.data).decode("utf-8", errors="replace")
            if message.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                return None


# Pings on an open WebSocket, so that one whose peer vanished is closed.
WEBSOCKET_HEARTBEAT_SECONDS: Final = 30.0

# The most read from aiohttp's buffer at once (as httpx's chunks).
_CHUNK: Final = 65536


class _Proxies:
    """The proxy for each URL, as httpx chooses it: ``HTTP_PROXY``,
    ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` (any case), read once."""

    __slots__ = ("_chosen", "_proxies")

    def __init__(self, *, use_environment: bool = True) -> None:
        self._proxies = urllib.request.getproxies_environment() if use_environment else {}
        self._chosen: dict[str, str | None] = {}

    def get(self, url: str) -> str | None:
        if not self._proxies:
            return None
        chosen = self._chosen.get(url, _UNKNOWN)
        if chosen is _UNKNOWN:
            if len(self._chosen) >= 256:  # URLs carry ids: keep the cache small
                self._chosen.clear()
            chosen = self._chosen[url] = self._choose(url)
        return chosen  # type: ignore[return-value]

    def _choose(self, url: str) -> str | None:
        parts = urllib.parse.urlsplit(url)
        # host:port, so that NO_PROXY entries with a port match too.
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        if urllib.request.proxy_bypass_environment(host, self._proxies):  # type: ignore[attr-defined]
            return None
        # A WebSocket takes the proxy of the HTTP scheme it upgrades from.
        scheme = _HTTP_SCHEME_OF.get(parts.scheme, parts.scheme)
        proxy = self._proxies.get(scheme) or self._proxies.get("all")
        if proxy and "://" not in proxy:  # HTTP_PROXY=host:3128 means http://, as for httpx
            proxy = f"http://{proxy}"
        return proxy


_UNKNOWN: Final = object()
_HTTP_SCHEME_OF: Final = {"ws": "http", "wss": "https"}


async def _send_aiohttp(
    session: Any, request: HttpRequest, timeout: float, proxy: str | None
) -> HttpResponse:
    import aiohttp

    try:
        async with session.request(
            request.method,
            request.url,
            headers=(ACCEPT_ENCODING, *request.headers),
            data=request.body,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
            proxy=proxy,
            auto_decompress=False,  # unpacked by the body, within its limit
        ) as response:
            body = BoundedBody(request, response.headers.get("content-encoding"))
            content = response.content
            while chunk := await content.read(_CHUNK):
                if body.full(chunk):
                    break  # leaving unread: the connection is closed, not reused
            return HttpResponse(
                status=response.status,
                headers=tuple((name.lower(), value) for name, value in response.headers.items()),
                body=bytes(body.data),
            )
    except asyncio.TimeoutError as exc:  # aiohttp's timeouts (asyncio's before 3.11)
        raise TimeoutError(str(exc) or "timed out") from None
    except aiohttp.ClientError as exc:
        raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
    except RuntimeError:
        if not session.closed:
            raise
        raise ConnectionError("the aiohttp session given to the transport is closed") from None
