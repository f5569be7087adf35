"""The default httpx transports against real loopback servers.

The async default runs httpx over aiohttp's pool; these tests pin that its
failures reach the core as the right built-in exceptions (a refused
connection is retried and ends in 502, a stall is a 504), the same as the
sync transport's.
"""

from __future__ import annotations

import socket
import sys

import pytest

from navai_mw import (
    HttpRequest,
    NavaiVoiceBackendOptions,
    UpstreamError,
    create_realtime_client_secret,
    create_realtime_client_secret_sync,
)
from navai_mw.testing import FakeOpenAIRealtime
from navai_mw.transports import HttpxAsyncTransport, HttpxSyncTransport

from .conftest import CANARY_KEY

pytestmark = pytest.mark.anyio


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def options(base_url: str, timeout: float = 5) -> NavaiVoiceBackendOptions:
    return NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=base_url, upstream_timeout_seconds=timeout
    )


async def test_async_default_is_aiohttp_backed_and_mints(
    fake: FakeOpenAIRealtime, served_fake: str
) -> None:
    async with HttpxAsyncTransport() as transport:
        for _ in range(3):  # one pooled client, reused
            secret = await create_realtime_client_secret(options(served_fake), transport=transport)
            assert secret.value.startswith("ek_fake_")
        assert "aiohttp" in sys.modules
    assert len(fake.requests) == 3


async def test_async_refused_connection_is_retried_then_502() -> None:
    async with HttpxAsyncTransport() as transport:
        with pytest.raises(UpstreamError) as caught:
            await create_realtime_client_secret(
                options(f"http://127.0.0.1:{closed_port()}/v1"), transport=transport
            )
    assert caught.value.status == 502
    assert caught.value.message == "OpenAI client_secrets could not be reached."


async def test_async_refused_connection_is_a_connection_error() -> None:
    request = HttpRequest(
        method="POST", url=f"http://127.0.0.1:{closed_port()}/v1", headers=(), body=b""
    )
    async with HttpxAsyncTransport() as transport:
        with pytest.raises(ConnectionError):
            await transport.send(request, timeout=2)


async def test_async_stall_is_504(fake: FakeOpenAIRealtime, served_fake: str) -> None:
    fake.stall(1.0)
    async with HttpxAsyncTransport() as transport:
        with pytest.raises(UpstreamError) as caught:
            await create_realtime_client_secret(options(served_fake, 0.3), transport=transport)
    assert caught.value.status == 504
    assert len(fake.requests) == 1


async def test_async_closing_an_unused_transport() -> None:
    transport = HttpxAsyncTransport()
    await transport.aclose()  # nothing was opened; nothing to fail


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
