"""The default transports against real loopback servers.

Both async transports (aiohttp's session, the default, and httpx over
aiohttp's pool) and the sync one: these tests pin that their failures reach
the core as the right built-in exceptions (a refused connection is retried
and ends in 502, a stall is a 504), the same on every transport and loop.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from navai_mw import (
    HttpRequest,
    NavaiASGIMiddleware,
    NavaiVoiceBackendOptions,
    UpstreamError,
    create_realtime_client_secret,
    create_realtime_client_secret_sync,
)
from navai_mw.testing import FakeOpenAIRealtime
from navai_mw.transports import AiohttpTransport, HttpxAsyncTransport, HttpxSyncTransport

from .conftest import CANARY_KEY, closed_port, is_closed, raw_server

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    # The async default differs by event loop: aiohttp on asyncio, httpx's
    # own pool on trio. Both must behave the same.
    backend: str = request.param
    return backend


@pytest.fixture(params=[AiohttpTransport, HttpxAsyncTransport])
def make_async(request: pytest.FixtureRequest) -> type[AiohttpTransport | HttpxAsyncTransport]:
    kind: type[AiohttpTransport | HttpxAsyncTransport] = request.param
    return kind


def options(base_url: str, timeout: float = 5) -> NavaiVoiceBackendOptions:
    return NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=base_url, upstream_timeout_seconds=timeout
    )


async def test_async_default_mints_over_the_right_pool(
    fake: FakeOpenAIRealtime,
    served_fake: str,
    anyio_backend: str,
    make_async: type[AiohttpTransport | HttpxAsyncTransport],
) -> None:
    async with make_async() as transport:
        for _ in range(3):  # one pooled client, reused
            secret = await create_realtime_client_secret(options(served_fake), transport=transport)
            assert secret.value.startswith("ek_fake_")
        client = transport._client
        pool = type(getattr(client, "_transport", client)).__name__
    expected = {
        (AiohttpTransport, "asyncio"): "ClientSession",
        (AiohttpTransport, "trio"): "AsyncHTTPTransport",
        (HttpxAsyncTransport, "asyncio"): "AiohttpTransport",
        (HttpxAsyncTransport, "trio"): "AsyncHTTPTransport",
    }
    assert pool == expected[make_async, anyio_backend]
    assert len(fake.requests) == 3


async def test_async_refused_connection_is_retried_then_502(
    make_async: type[AiohttpTransport | HttpxAsyncTransport],
) -> None:
    async with make_async() as transport:
        with pytest.raises(UpstreamError) as caught:
            await create_realtime_client_secret(
                options(f"http://127.0.0.1:{closed_port()}/v1"), transport=transport
            )
    assert caught.value.status == 502
    assert caught.value.message == "OpenAI client_secrets could not be reached."


async def test_async_refused_connection_is_a_connection_error(
    make_async: type[AiohttpTransport | HttpxAsyncTransport],
) -> None:
    request = HttpRequest(
        method="POST", url=f"http://127.0.0.1:{closed_port()}/v1", headers=(), body=b""
    )
    async with make_async() as transport:
        with pytest.raises(ConnectionError):
            await transport.send(request, timeout=2)


async def test_async_stall_is_504(
    fake: FakeOpenAIRealtime,
    served_fake: str,
    make_async: type[AiohttpTransport | HttpxAsyncTransport],
) -> None:
    fake.stall(1.0)
    async with make_async() as transport:
        with pytest.raises(UpstreamError) as caught:
            await create_realtime_client_secret(options(served_fake, 0.3), transport=transport)
    assert caught.value.status == 504
    assert len(fake.requests) == 1


async def test_async_transport_reopens_after_close(
    fake: FakeOpenAIRealtime,
    served_fake: str,
    make_async: type[AiohttpTransport | HttpxAsyncTransport],
) -> None:
    transport = make_async()
    await transport.aclose()  # nothing was opened; nothing to fail
    assert await is_closed(transport)
    # A server that runs a second lifespan uses the same middleware again.
    for _ in range(2):
        secret = await create_realtime_client_secret(options(served_fake), transport=transport)
        assert secret.value.startswith("ek_fake_")
        assert not await is_closed(transport)
        await transport.aclose()
        assert await is_closed(transport)
    assert len(fake.requests) == 2


def test_sync_refused_connection_is_retried_then_502() -> None:
    with HttpxSyncTransport() as transport, pytest.raises(UpstreamError) as caught:
        create_realtime_client_secret_sync(
            options(f"http://127.0.0.1:{closed_port()}/v1"), transport=transport
        )
    assert caught.value.status == 502


def test_sync_default_mints(fake: FakeOpenAIRealtime, served_fake: str) -> None:
    with HttpxSyncTransport() as transport:
        secret = create_realtime_client_secret_sync(options(served_fake), transport=transport)
    assert secret.value.startswith("ek_fake_")


@pytest.fixture
def garbage_server() -> Iterator[str]:
    """Answers with something that is not HTTP, then hangs up."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"SSH-2.0-definitely-not-http\r\n\r\n")

    with raw_server(answer) as url:
        yield url


async def test_async_garbled_answer_is_retried_then_502(
    garbage_server: str, make_async: type[AiohttpTransport | HttpxAsyncTransport]
) -> None:
    async with make_async() as transport:
        with pytest.raises(UpstreamError) as caught:
            await create_realtime_client_secret(options(garbage_server), transport=transport)
    assert (caught.value.status, caught.value.message) == (
        502,
        "OpenAI client_secrets could not be reached.",
    )


def test_sync_garbled_answer_is_retried_then_502(garbage_server: str) -> None:
    with HttpxSyncTransport() as transport, pytest.raises(UpstreamError) as caught:
        create_realtime_client_secret_sync(options(garbage_server), transport=transport)
    assert caught.value.status == 502


@pytest.fixture
def trickling_server() -> Iterator[str]:
    """Sends a valid head, then the body one byte every 50 ms: each read is
    quick, the whole answer is not."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        body = b'{"value": "ek_slow", "expires_at": 1}' + b" " * 200
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        conn.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body))
        for byte in body:
            if stop.wait(0.05):
                return
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return  # the client gave up: that is the point

    with raw_server(answer) as url:
        yield url


def test_sync_trickling_answer_cannot_stretch_the_budget(trickling_server: str) -> None:
    with HttpxSyncTransport() as transport, pytest.raises(UpstreamError) as caught:
        create_realtime_client_secret_sync(options(trickling_server, 0.5), transport=transport)
    assert caught.value.status == 504


async def test_async_trickling_answer_cannot_stretch_the_budget(
    trickling_server: str, make_async: type[AiohttpTransport | HttpxAsyncTransport]
) -> None:
    began = time.monotonic()
    async with make_async() as transport:
        with pytest.raises(UpstreamError) as caught:
            await create_realtime_client_secret(options(trickling_server, 0.5), transport=transport)
    assert caught.value.status == 504
    # Ended by the 0.5 s budget, not by the answer (which takes over 10 s).
    assert time.monotonic() - began < 5


async def test_asgi_middleware_under_either_event_loop(
    fake: FakeOpenAIRealtime, opts: NavaiVoiceBackendOptions, anyio_backend: str
) -> None:
    async def inner(scope: object, receive: object, send: object) -> None:
        raise AssertionError("the token path must not reach the app")

    async with fake.async_transport() as upstream:
        app = NavaiASGIMiddleware(inner, opts, transport=upstream)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client:
            fake.fail(503, times=1)  # one retry, slept on this loop's clock
            response = await client.post("/navai/realtime/client-secret", json={"voice": "cedar"})
    assert response.status_code == 200, response.text
    assert response.json()["value"].startswith("ek_fake_")
    assert len(fake.requests) == 2


def test_sync_trickling_head_cannot_stretch_the_budget(trickling_head_server: str) -> None:
    # Each read is quick; the answer would take 13 s and then succeed.
    with HttpxSyncTransport() as transport, pytest.raises(UpstreamError) as caught:
        create_realtime_client_secret_sync(options(trickling_head_server, 0.5), transport=transport)
    assert caught.value.status == 504


async def test_async_trickling_head_cannot_stretch_the_budget(
    trickling_head_server: str, make_async: type[AiohttpTransport | HttpxAsyncTransport]
) -> None:
    began = time.monotonic()
    async with make_async() as transport:
        with pytest.raises(UpstreamError) as caught:
            await create_realtime_client_secret(
                options(trickling_head_server, 0.5), transport=transport
            )
    assert caught.value.status == 504
    # Ended by the 0.5 s budget, not by the answer (which takes over 10 s).
    assert time.monotonic() - began < 5
