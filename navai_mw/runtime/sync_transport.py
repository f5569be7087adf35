"""The default sync transport: httpx, a pooled client per thread, and every
socket operation of an attempt bounded by the attempt's deadline."""

from __future__ import annotations

import contextlib
import contextvars
import os
import ssl
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Final

import httpcore
import httpx

from ..core.http import HttpRequest, HttpResponse
from .transports import BoundedBody, _answer, _build, _read_already, upstream_connections

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


class _ThreadsLease:
    """What a thread's local data holds of its lease. It is dropped when the
    thread ends (Python clears a finished thread's local data), and its
    finalizer hands the lease back, so that a server making a thread per
    request does not keep a client, and its sockets, per thread it ever ran."""

    __slots__ = ("__weakref__", "lease")

    def __init__(self, lease: _Lease) -> None:
        self.lease = lease


def _thread_ended(ended: deque[_Lease], lease: _Lease) -> None:
    # Called from wherever the thread's data is dropped (its own last steps,
    # or close() replacing the thread-local object): it takes no lock, and
    # the next attempt, or close(), closes the client.
    ended.append(lease)


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

    @property
    def max_connections(self) -> int:
        """The most attempts in flight at once, over every thread."""
        return self._max

    def _start(self) -> None:
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self._max)
        self._local = threading.local()
        self._leases: list[_Lease] = []  # every client made: close() closes them all
        # The leases of threads that have ended, their clients to close.
        self._ended: deque[_Lease] = deque()

    def _acquire(self) -> _Lease:
        held: _ThreadsLease | None = getattr(self._local, "held", None)
        lease = None if held is None else held.lease
        made = None
        if self._ended:
            self._close_ended()
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
                held = _ThreadsLease(lease)
                if made is not None:
                    # Not at exit: the process's sockets close with it anyway.
                    weakref.finalize(held, _thread_ended, self._ended, lease).atexit = False
                self._local.held = held
            lease.users += 1
            return lease

    def _close_ended(self) -> None:
        """Close the clients of threads that have ended (no attempt can use
        them any more: a thread's attempts run on it)."""
        done = []
        with self._lock:
            while self._ended:
                lease = self._ended.popleft()
                if lease.closing:
                    continue  # close() has it
                lease.closing = True
                with contextlib.suppress(ValueError):
                    self._leases.remove(lease)
                if lease.users == 0:
                    done.append(lease)
        for lease in done:
            lease.client.close()

    @property
    def open_clients(self) -> int:
        """How many clients this transport holds open (one per thread that
        sent an attempt and still runs, or the one given)."""
        if self._ended:
            self._close_ended()
        with self._lock:
            return len(self._leases)

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
                body = _read_already(response, request)
                if body is None:
                    body = BoundedBody(request, response.headers.get("content-encoding"))
                    for chunk in response.iter_raw():  # unpacked by the body, within its limit
                        if body.full(chunk):
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
            # Every thread makes a fresh client on its next attempt. (The old
            # thread-local object is dropped after the lock: dropping it
            # runs the finalizers of every thread's lease.)
            old_local, self._local = self._local, threading.local()
            self._ended.clear()
            done = []
            for lease in leases:
                lease.closing = True
                if lease.users == 0:
                    done.append(lease)
        del old_local
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
