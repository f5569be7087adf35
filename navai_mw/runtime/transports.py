"""The default transports: httpx for threads, aiohttp (httpx on trio) for
event loops; how each bounds an attempt by its deadline, pools its
connections and reports a failure with built-in exceptions only. Public
through :mod:`navai_mw.transports`, which says what a transport promises."""

from __future__ import annotations

import asyncio
import contextvars
import os
import ssl
import sys
import threading
import time
import urllib.parse
import urllib.request
import weakref
from collections.abc import AsyncGenerator, Iterable
from contextlib import aclosing
from types import TracebackType
from typing import Any, Final, Protocol, cast, runtime_checkable

import httpcore
import httpx
import sniffio
from typing_extensions import Self

from ..core.errors import OptionsError
from ..core.http import HttpRequest, HttpResponse
from .aio import C, LoopBound, attempt_deadline

__all__ = [
    "AiohttpTransport",
    "AsyncTransport",
    "HttpxAsyncTransport",
    "HttpxSyncTransport",
    "SyncTransport",
]

# Upstream connections at most, per transport. OpenAI takes 0.3-0.8 s to
# mint: with N connections a process mints at most N / latency secrets a
# second, so 100 capped a launch-day burst at ~300/s while the page loads
# queued here. Idle ones are all kept: closing them between bursts only to
# reopen them costs a TLS handshake each.
DEFAULT_MAX_CONNECTIONS: Final = 1000
MAX_CONNECTIONS_ENV: Final = "NAVAI_MAX_UPSTREAM_CONNECTIONS"


def upstream_connections(value: int | None = None) -> int:
    """``value``, else ``NAVAI_MAX_UPSTREAM_CONNECTIONS``, else 1000; a bad
    value is an :class:`OptionsError` naming where it came from."""
    source = "max_upstream_connections"
    if value is None:
        raw = os.environ.get(MAX_CONNECTIONS_ENV, "").strip()
        if not raw:
            return DEFAULT_MAX_CONNECTIONS
        source = MAX_CONNECTIONS_ENV
        value = int(raw) if raw.isdigit() else -1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
        raise OptionsError(f"{source} must be an integer from 1 to 100000. Received: {value!r}")
    return value


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

# When the attempt running in this thread must be over (time.monotonic()).
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "navai_mw_deadline", default=None
)


def _bounded(timeout: float | None, error: type[httpcore.TimeoutException]) -> float | None:
    """``timeout`` shortened to the time the attempt has left."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("OpenAI answered too slowly.")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket whose every read and write ends by the attempt's deadline.

    httpx's timeouts bound each read; an upstream that trickles its answer
    a byte at a time would otherwise hold a server thread as long as it liked.
    """

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _bounded(timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _bind_to_deadlines(client: httpx.Client) -> httpx.Client:
    """Route ``client``'s network pools (proxies' too) through
    :class:`_DeadlineBackend`. httpx exposes no option for it; httpcore's
    pools take any network backend."""
    for transport in (client._transport, *client._mounts.values()):
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if isinstance(backend, httpcore.NetworkBackend) and not isinstance(
            backend, _DeadlineBackend
        ):
            pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]
    return client


class _Lease:
    """One client and the attempts using it; closed when the last one is done."""

    __slots__ = ("client", "closing", "users")

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.users = 0
        self.closing = False


# Each thread's own client: a thread has one attempt at a time, to one of a
# few origins (OpenAI, ElevenLabs, a JWKS), and keeps those connections.
_THREAD_LIMITS: Final = httpx.Limits(max_connections=4, max_keepalive_connections=4)


class HttpxSyncTransport:
    """A :class:`SyncTransport` over httpx, for threads.

    Each attempt runs on the caller's thread, and every socket operation of
    it (connect, TLS, each write and read) ends by the attempt's deadline, so
    an upstream that trickles its answer cannot hold a thread past it.

    Without ``client``, every thread gets a pooled client of its own, made
    on its first attempt, and again in a child process after ``fork()`` (a
    pre-fork server's workers never share the parent's connections) and
    after :meth:`close` (which lets the attempts in flight finish first).
    One client shared by every thread would serialise them on its pool's
    lock, whose bookkeeping grows with the threads waiting: at OpenAI's
    latency a WSGI server with 100 threads then spent milliseconds of CPU per
    request (``docs/benchmarks.md``). At most ``max_connections`` attempts
    are in flight at once over all threads; the others wait, within their
    deadline. A ``client`` given is shared by every thread, used as it is,
    and closed by :meth:`close`.
    """

    def __init__(
        self, client: httpx.Client | None = None, *, max_connections: int | None = None
    ) -> None:
        self._given = None if client is None else _bind_to_deadlines(client)
        self._max = upstream_connections(max_connections)
        self._context: ssl.SSLContext | None = None
        self._start()
        _sync_transports.add(self)

    def _start(self) -> None:
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self._max)
        self._local = threading.local()
        self._leases: list[_Lease] = []  # every client made: close() closes them all

    def _acquire(self) -> _Lease:
        lease: _Lease | None = getattr(self._local, "lease", None)
        made = None
        if (lease is None or lease.closing) and self._given is None:
            # Made outside the lock: a client takes milliseconds to make.
            made = _Lease(
                _bind_to_deadlines(httpx.Client(limits=_THREAD_LIMITS, verify=self._tls()))
            )
        with self._lock:
            if lease is None or lease.closing:
                if made is None and self._leases:  # the client given, shared
                    lease = self._leases[0]
                else:
                    lease = made or _Lease(self._given)  # type: ignore[arg-type]
                    self._leases.append(lease)
                self._local.lease = lease
            lease.users += 1
            return lease

    def _tls(self) -> ssl.SSLContext:
        """One TLS context for every thread's client (loading the CA bundle
        takes tens of milliseconds: once, not once per thread)."""
        context = self._context
        if context is None:
            context = self._context = httpx.create_ssl_context()
        return context

    def _release(self, lease: _Lease) -> None:
        with self._lock:
            lease.users -= 1
            done = lease.closing and lease.users == 0
        if done:
            lease.client.close()

    def _after_fork(self) -> None:
        # The parent's lock may have been held, and its connections are the
        # parent's: start afresh. (Its sockets close with the copy, unread.)
        self._start()

    def send(self, request: HttpRequest, *, timeout: float) -> HttpResponse:
        if not self._slots.acquire(timeout=timeout):
            raise TimeoutError("no upstream connection was free in time")
        try:
            lease = self._acquire()
            try:
                return self._send(lease.client, request, timeout)
            finally:
                self._release(lease)
        finally:
            self._slots.release()

    @staticmethod
    def _send(client: httpx.Client, request: HttpRequest, timeout: float) -> HttpResponse:
        token = _deadline.set(time.monotonic() + timeout)
        try:
            response = client.send(_build(client, request, timeout), stream=True)
            try:
                body = bytearray()
                for chunk in response.iter_bytes():
                    if _full(body, chunk, request):
                        break
            finally:
                response.close()
            return _answer(response, body)
        except httpx.TimeoutException as exc:
            raise TimeoutError(str(exc)) from None
        except httpx.HTTPError as exc:
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
        except RuntimeError:
            if not client.is_closed:
                raise
            raise ConnectionError("the HTTP client given to the transport is closed") from None
        finally:
            _deadline.reset(token)

    def close(self) -> None:
        with self._lock:
            leases, self._leases = self._leases, []
            # Every thread makes a fresh client on its next attempt.
            self._local = threading.local()
            done = []
            for lease in leases:
                lease.closing = True
                if lease.users == 0:
                    done.append(lease)
        for lease in done:
            lease.client.close()
        if not leases and self._given is not None:
            self._given.close()

    def __enter__(self) -> HttpxSyncTransport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_sync_transports: weakref.WeakSet[HttpxSyncTransport] = weakref.WeakSet()


def _reset_sync_transports_in_child() -> None:
    for transport in list(_sync_transports):
        transport._after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_reset_sync_transports_in_child)


# -- async ------------------------------------------------------------------------


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
            body = bytearray()
            # Closed at once when left early (an async generator in fact).
            chunks_left = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
            async with aclosing(chunks_left) as chunks:
                async for chunk in chunks:
                    if _full(body, chunk, request):
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
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            ssl=ssl.create_default_context(cafile=cafile, capath=capath),
        )
        # trust_env=False: aiohttp would read the proxy variables and ~/.netrc
        # (from a worker thread) on every request. They are read once, here.
        self._proxies = _Proxies()
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    async def _close(self, client: Any) -> None:
        if isinstance(client, httpx.AsyncClient):
            await client.aclose()
        else:
            await client.close()

    async def send(self, request: HttpRequest, *, timeout: float) -> HttpResponse:
        client = await self._current()
        if isinstance(client, httpx.AsyncClient):
            return await _send_httpx(client, request, timeout)
        return await _send_aiohttp(client, request, timeout, self._proxies.get(request.url))


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
        proxy = self._proxies.get(parts.scheme) or self._proxies.get("all")
        if proxy and "://" not in proxy:  # HTTP_PROXY=host:3128 means http://, as for httpx
            proxy = f"http://{proxy}"
        return proxy


_UNKNOWN: Final = object()


async def _send_aiohttp(
    session: Any, request: HttpRequest, timeout: float, proxy: str | None
) -> HttpResponse:
    import aiohttp

    try:
        async with session.request(
            request.method,
            request.url,
            headers=request.headers,
            data=request.body,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
            proxy=proxy,
        ) as response:
            body = bytearray()
            content = response.content
            while chunk := await content.read(_CHUNK):
                if _full(body, chunk, request):
                    break  # leaving unread: the connection is closed, not reused
            return HttpResponse(
                status=response.status,
                headers=tuple((name.lower(), value) for name, value in response.headers.items()),
                body=bytes(body),
            )
    except asyncio.TimeoutError as exc:  # aiohttp's timeouts (asyncio's before 3.11)
        raise TimeoutError(str(exc) or "timed out") from None
    except aiohttp.ClientError as exc:
        raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
    except RuntimeError:
        if not session.closed:
            raise
        raise ConnectionError("the aiohttp session given to the transport is closed") from None
