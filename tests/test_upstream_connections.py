"""The bound on upstream connections: ``max_upstream_connections`` (env
``NAVAI_MAX_UPSTREAM_CONNECTIONS``, default 1000) caps how many requests a
transport has in flight to OpenAI at once; the others wait for a connection,
and every one is served."""

from __future__ import annotations

import asyncio
import os
import socketserver
import threading
import wsgiref.simple_server
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import httpx
import pytest

from navai_mw import HttpRequest, NavaiVoiceBackendOptions, NavaiWSGIMiddleware, OptionsError
from navai_mw.testing import serve_asgi
from navai_mw.transports import (
    DEFAULT_MAX_CONNECTIONS,
    HttpxAsyncTransport,
    HttpxSyncTransport,
    upstream_connections,
)

from .conftest import CANARY_KEY


class Counting:
    """An upstream that holds each request a moment and counts how many it
    holds at once."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.served = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.now += 1
        self.most = max(self.most, self.now)
        await anyio.sleep(0.1)
        self.now -= 1
        self.served += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


@pytest.fixture
def counting() -> Iterator[tuple[Counting, str]]:
    upstream = Counting()
    with serve_asgi(upstream) as url:
        yield upstream, url


def _request(url: str) -> HttpRequest:
    return HttpRequest(method="POST", url=f"{url}/x", headers=(), body=b"{}")


def test_the_sync_transport_holds_at_most_its_connections(
    counting: tuple[Counting, str],
) -> None:
    upstream, url = counting
    with HttpxSyncTransport(max_connections=2) as transport, ThreadPoolExecutor(8) as pool:
        statuses = list(
            pool.map(lambda _: transport.send(_request(url), timeout=20).status, range(8))
        )
    assert statuses == [200] * 8
    assert upstream.most == 2


def test_the_async_transport_holds_at_most_its_connections(
    counting: tuple[Counting, str],
) -> None:
    upstream, url = counting

    async def main() -> list[int]:
        async with HttpxAsyncTransport(max_connections=3) as transport:
            answers = await asyncio.gather(
                *(transport.send(_request(url), timeout=20) for _ in range(9))
            )
        return [answer.status for answer in answers]

    assert asyncio.run(main()) == [200] * 9
    assert upstream.most == 3


def test_the_limit_comes_from_the_keyword_the_environment_or_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NAVAI_MAX_UPSTREAM_CONNECTIONS", raising=False)
    assert upstream_connections() == DEFAULT_MAX_CONNECTIONS == 1000
    monkeypatch.setenv("NAVAI_MAX_UPSTREAM_CONNECTIONS", "250")
    assert upstream_connections() == 250
    assert upstream_connections(7) == 7  # the keyword wins
    app = NavaiWSGIMiddleware(
        lambda e, s: [], NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY), functions=[]
    )
    assert isinstance(app.transport, HttpxSyncTransport)
    assert app.transport._max == 250
    app.close()


@pytest.mark.parametrize(
    ("value", "received"), [("0", "0"), ("many", "'many'"), ("-3", "'-3'"), ("100001", "100001")]
)
def test_a_bad_limit_in_the_environment_fails_at_start_up(
    monkeypatch: pytest.MonkeyPatch, value: str, received: str
) -> None:
    monkeypatch.setenv("NAVAI_MAX_UPSTREAM_CONNECTIONS", value)
    with pytest.raises(OptionsError) as caught:
        HttpxSyncTransport()
    assert caught.value.message == (
        f"NAVAI_MAX_UPSTREAM_CONNECTIONS must be an integer from 1 to 100000. Received: {received}"
    )


@pytest.mark.parametrize("value", ["1", "100000"])
def test_a_limit_in_the_environment_may_be_from_1_to_100000(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("NAVAI_MAX_UPSTREAM_CONNECTIONS", value)
    assert upstream_connections() == int(value)
    assert upstream_connections(int(value)) == int(value)


@pytest.mark.parametrize("value", [0, True, 2.5, 100_001])
def test_a_bad_limit_in_code_fails_at_start_up(value: Any) -> None:
    with pytest.raises(OptionsError, match=f"^max_upstream_connections must .* {value!r}$"):
        NavaiWSGIMiddleware(
            lambda e, s: [],
            NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY),
            functions=[],
            max_upstream_connections=value,
        )


def test_each_thread_has_a_client_of_its_own(counting: tuple[Counting, str]) -> None:
    """No pool shared by every thread (whose one lock would serialise them):
    a client per thread, each reused, all closed by close()."""
    upstream, url = counting
    threads: set[int] = set()

    def send(_: int) -> int:
        threads.add(threading.get_ident())
        return transport.send(_request(url), timeout=20).status

    transport = HttpxSyncTransport()
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(send, range(12))) == [200] * 12
    clients = [lease.client for lease in transport._leases]
    assert len(clients) == len(threads) == len({id(client) for client in clients})
    transport.close()
    assert all(client.is_closed for client in clients)
    # Used again after close(): a fresh client, not a closed one.
    assert transport.send(_request(url), timeout=20).status == 200
    assert not transport._leases[0].client.is_closed
    transport.close()
    assert upstream.served == 13


# -- a thread's client ends with the thread ---------------------------------------------------


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    """A thread per request, as Django's runserver and Werkzeug's serve."""


class _Quiet(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def established_to(port: int) -> int:
    """Open TCP connections from this machine to ``port`` (client ends)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "01":  # ESTABLISHED
                    count += 1
    return count


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="counts Linux's sockets")
def test_a_thread_per_request_server_keeps_no_client_per_thread(served_fake: str) -> None:
    """wsgiref with a thread per request, 100 mints: each request's thread
    makes a client, and hands it back when it ends; none is left open."""
    port = int(served_fake.rsplit(":", 1)[1].split("/")[0])
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, openai_base_url=served_fake)
    app = NavaiWSGIMiddleware(lambda e, s: [], opts, functions=[])
    transport = app.transport
    assert isinstance(transport, HttpxSyncTransport)
    server = wsgiref.simple_server.make_server(
        "127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_Quiet
    )
    runner = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    runner.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}") as client:
            for _ in range(100):
                minted = client.post("/navai/realtime/client-secret", json={})
                assert minted.status_code == 200, minted.text
            most = transport.open_clients
    finally:
        server.shutdown()
        runner.join(timeout=10)
        server.server_close()  # joins the request threads
    # While serving: the threads still running, not one client per thread run.
    assert most <= 4
    assert transport.open_clients == 0
    assert established_to(port) == 0
    app.close()
