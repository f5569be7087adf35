"""AiohttpTransport, the default async transport, against real loopback servers.

What its session is made to do as httpx's client would: send through the
proxy that ``HTTP_PROXY``/``ALL_PROXY`` name unless ``NO_PROXY`` covers the
host, read those variables once (when the session is made, as httpx reads
them when its client is made), keep no cookies and follow no redirects. A
session given is used as it is. On trio the transport sends through an
``httpx.AsyncClient``: the tests that can run there run on both loops.

(That it stops reading one chunk past ``max_response_bytes`` is pinned in
test_hardening.py, for both async transports.)
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import attrs
import httpx
import pytest

from navai_mw import (
    HttpRequest,
    HttpResponse,
    NavaiVoiceBackendOptions,
    create_realtime_client_secret,
)
from navai_mw.testing import FakeOpenAIRealtime
from navai_mw.transports import AiohttpTransport

from .conftest import CANARY_KEY

pytestmark = pytest.mark.anyio

# Tests that hold on trio as well (where the transport is httpx's client).
ON_BOTH_LOOPS = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])

# A host that resolves nowhere: a request that skips the proxy fails.
UNRESOLVABLE = "http://upstream.navai.invalid/v1/realtime/client_secrets"

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp's own session; ON_BOTH_LOOPS adds trio


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test without proxies, whatever the machine has set."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)  # urllib's CGI rule


@attrs.frozen
class Seen:
    """One request a server received: its request line, headers (lower-case
    names) and body."""

    line: str
    headers: dict[str, str]
    body: bytes


def reply(status: str = "200 OK", *headers: str, body: bytes = b'{"ok": true}') -> bytes:
    """An HTTP/1.1 answer that closes its connection."""
    head = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


@attrs.define
class Server:
    url: str  # the base URL, http://127.0.0.1:port
    seen: list[Seen]


def _read_request(conn: socket.socket) -> Seen | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    line, *fields = head.decode("latin-1").split("\r\n")
    headers = {}
    for field in fields:
        name, _, value = field.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return Seen(line=line, headers=headers, body=body)


@contextmanager
def recording_server(*answers: bytes) -> Iterator[Server]:
    """A loopback HTTP server that records each request it reads and gives
    the n-th the n-th of ``answers`` (the last one once they run out), one
    request per connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    server = Server(url=f"http://127.0.0.1:{listener.getsockname()[1]}", seen=[])
    stop = threading.Event()
    lock = threading.Lock()

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            seen = _read_request(conn)
            if seen is None:
                return
            with lock:
                server.seen.append(seen)
                answer = answers[min(len(server.seen), len(answers)) - 1]
            conn.sendall(answer)

    def serve() -> None:
        handlers = []
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            handler = threading.Thread(target=handle, args=(conn,), daemon=True)
            handler.start()
            handlers.append(handler)
        for handler in handlers:
            handler.join(timeout=5)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()


def post(url: str, body: bytes = b'{"session": {}}') -> HttpRequest:
    headers = (("content-type", "application/json"), ("authorization", "Bearer sk-test"))
    return HttpRequest(method="POST", url=url, headers=headers, body=body)


PROXY_ANSWER = reply("200 OK", "X-Served-By: proxy", body=b'{"via": "proxy"}')


def from_the_proxy(response: HttpResponse) -> bool:
    return (
        response.status == 200
        and response.body == b'{"via": "proxy"}'
        and ("x-served-by", "proxy") in response.headers
    )


# -- proxies --------------------------------------------------------------------


@ON_BOTH_LOOPS
@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
async def test_a_proxy_in_the_environment_gets_the_request_in_absolute_form(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    with recording_server(PROXY_ANSWER) as proxy:
        monkeypatch.setenv(variable, proxy.url)
        async with AiohttpTransport() as transport:
            response = await transport.send(post(UNRESOLVABLE), timeout=5)
    assert [seen.line for seen in proxy.seen] == [f"POST {UNRESOLVABLE} HTTP/1.1"]
    (seen,) = proxy.seen
    assert seen.headers["host"] == "upstream.navai.invalid"
    assert seen.headers["authorization"] == "Bearer sk-test"
    assert seen.body == b'{"session": {}}'
    assert from_the_proxy(response)


@ON_BOTH_LOOPS
async def test_no_proxy_sends_a_covered_host_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    with recording_server(PROXY_ANSWER) as proxy, recording_server(reply()) as upstream:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        async with AiohttpTransport() as transport:
            response = await transport.send(post(f"{upstream.url}/v1/x"), timeout=5)
    assert proxy.seen == []
    assert [seen.line for seen in upstream.seen] == ["POST /v1/x HTTP/1.1"]
    assert (response.status, response.body) == (200, b'{"ok": true}')


@ON_BOTH_LOOPS
async def test_proxy_variables_are_read_when_the_session_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As httpx reads them when its client is made: a variable set later
    # reaches only the next session (after aclose(), or on another loop).
    with recording_server(PROXY_ANSWER) as proxy, recording_server(reply()) as upstream:
        url = f"{upstream.url}/v1/x"
        transport = AiohttpTransport()
        try:
            first = await transport.send(post(url), timeout=5)
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            second = await transport.send(post(url), timeout=5)
            assert (first.status, second.status) == (200, 200)
            assert len(upstream.seen) == 2
            assert proxy.seen == []

            await transport.aclose()  # the next use makes a new session
            third = await transport.send(post(url), timeout=5)
        finally:
            await transport.aclose()
    assert len(upstream.seen) == 2
    assert [seen.line for seen in proxy.seen] == [f"POST {url} HTTP/1.1"]
    assert from_the_proxy(third)


# -- what the session keeps and follows -----------------------------------------


async def test_the_session_keeps_no_cookies() -> None:
    cookie = reply("200 OK", "Set-Cookie: __cf_bm=abc; Path=/; HttpOnly")
    with recording_server(cookie) as server:
        # By name, not IP: aiohttp's default jar ignores cookies from IPs.
        url = server.url.replace("127.0.0.1", "localhost") + "/v1/x"
        async with AiohttpTransport() as transport:
            for _ in range(2):
                assert (await transport.send(post(url), timeout=5)).status == 200
        # The same exchange through a session that keeps cookies sends this
        # one back: the check above can see a cookie if there is one.
        async with AiohttpTransport(session=aiohttp.ClientSession()) as keeping:
            for _ in range(2):
                await keeping.send(post(url), timeout=5)
    assert len(server.seen) == 4
    assert [("cookie" in seen.headers) for seen in server.seen[:2]] == [False, False]
    assert server.seen[3].headers["cookie"] == "__cf_bm=abc"


@ON_BOTH_LOOPS
async def test_a_redirect_is_answered_not_followed() -> None:
    redirect = reply("307 Temporary Redirect", "Location: /v1/elsewhere", body=b"")
    with recording_server(redirect, reply()) as server:
        async with AiohttpTransport() as transport:
            response = await transport.send(post(f"{server.url}/v1/x"), timeout=5)
    assert response.status == 307
    assert ("location", "/v1/elsewhere") in response.headers
    assert [seen.line for seen in server.seen] == ["POST /v1/x HTTP/1.1"]


# -- a session given --------------------------------------------------------------


async def test_a_session_given_is_used_as_is_and_closed_by_aclose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with recording_server(PROXY_ANSWER) as proxy, recording_server(reply()) as server:
        # The transport adds no proxy of its own to a session it did not make.
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        session = aiohttp.ClientSession(headers={"x-probe": "1"})
        transport = AiohttpTransport(session=session)
        try:
            response = await transport.send(post(f"{server.url}/v1/x"), timeout=5)
            assert not session.closed
            assert transport._client is session
        finally:
            await transport.aclose()
    assert session.closed
    assert response.status == 200
    assert proxy.seen == []
    (seen,) = server.seen
    assert seen.headers["x-probe"] == "1"
    assert seen.headers["authorization"] == "Bearer sk-test"


# -- minting on either loop ----------------------------------------------------------


@ON_BOTH_LOOPS
async def test_mints_on_either_loop(
    fake: FakeOpenAIRealtime, served_fake: str, anyio_backend: str
) -> None:
    options = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=served_fake, upstream_timeout_seconds=5
    )
    async with AiohttpTransport() as transport:
        secret = await create_realtime_client_secret(options, transport=transport)
        client = transport._client
    assert secret.value.startswith("ek_fake_")
    expected = aiohttp.ClientSession if anyio_backend == "asyncio" else httpx.AsyncClient
    assert isinstance(client, expected)
    (request,) = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/realtime/client_secrets")
    assert request.headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert request.json["session"]["type"] == "realtime"
