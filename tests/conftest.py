"""Fixtures shared by the whole suite."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from navai_mw import NavaiVoiceBackendOptions
from navai_mw.testing import FakeOpenAIRealtime
from navai_mw.transports import AsyncTransport, HttpxAsyncTransport

# A key that must never show up in a response, an exception message or a log.
CANARY_KEY = "sk-canary-0123456789abcdefCANARY"


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def is_closed(transport: AsyncTransport) -> bool:
    """Whether an httpx async transport is closed (async, for use from a loop
    or with ``anyio.run``)."""
    assert isinstance(transport, HttpxAsyncTransport)
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
