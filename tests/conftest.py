"""Fixtures shared by the whole suite."""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from navai_mw import NavaiVoiceBackendOptions
from navai_mw.testing import FakeOpenAIRealtime
from navai_mw.transports import AiohttpTransport, AsyncTransport, HttpxAsyncTransport

# A key that must never show up in a response, an exception message or a log.
CANARY_KEY = "sk-canary-0123456789abcdefCANARY"


def hang_bound(seconds: float) -> float:
    """How long a test waits for what should come before it fails: a bound
    against hangs, never a timing assertion. Under mutation testing (mutmut
    sets MUTANT_UNDER_TEST) hundreds of mutants that break a call each wait
    it out, so the bound is 10 s there, still ample for a working call."""
    return min(seconds, 10.0) if "MUTANT_UNDER_TEST" in os.environ else seconds


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextmanager
def raw_server(answer: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """A loopback TCP server that reads one request per connection and lets
    ``answer`` write whatever it likes, each connection on a thread of its
    own; yields its base URL."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=256)
    listener.settimeout(0.2)
    stop = threading.Event()
    handlers: list[threading.Thread] = []

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            answer(conn, stop)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            handler = threading.Thread(target=handle, args=(conn,), daemon=True)
            handler.start()
            handlers.append(handler)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        stop.set()
        thread.join(timeout=5)
        for handler in handlers:
            handler.join(timeout=5)
        listener.close()


async def is_closed(transport: AsyncTransport) -> bool:
    """Whether one of navai_mw's async transports is closed (async, for use
    from a loop or with ``anyio.run``)."""
    assert isinstance(transport, (AiohttpTransport, HttpxAsyncTransport))
    return transport.is_closed


@pytest.fixture
def fake() -> FakeOpenAIRealtime:
    return FakeOpenAIRealtime(api_key=CANARY_KEY)


@pytest.fixture
def opts(fake: FakeOpenAIRealtime) -> NavaiVoiceBackendOptions:
    return NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=fake.base_url, upstream_timeout_seconds=5
    )


@pytest.fixture
def served_fake(fake: FakeOpenAIRealtime) -> Iterator[str]:
    """The fake upstream on a real loopback port; yields its base URL."""
    with fake.serve() as base_url:
        yield base_url


@pytest.fixture
def trickling_head_server() -> Iterator[str]:
    """Sends even its status line and headers one byte every 50 ms."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        body = b'{"value": "ek_slow", "expires_at": 1}'
        head = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 200 + b"\r\n"
        message = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        for byte in message:
            if stop.wait(0.05):
                return
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return

    with raw_server(answer) as url:
        yield url


_REQUEST_SUFFIX = re.compile(r" \[request [\x21-\x7e]{1,128}\]$")


def log_message(record: logging.LogRecord) -> str:
    """A log record's message without the request id navai_mw adds to the
    lines about a request (``[request ...]``)."""
    return _REQUEST_SUFFIX.sub("", record.getMessage())


def without_request_id(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers without ``X-Request-ID`` (each request has its own)."""
    return [(name, value) for name, value in headers if name.lower() != "x-request-id"]
