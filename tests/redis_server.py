"""A real ``redis-server`` on a free loopback port, for the rate-limit tests:
:class:`~benchmarks._redis.RedisServer` (shared with the guard's benchmark),
as a context manager and as a pytest fixture::

    redis_url = redis_fixture(scope="module")
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks._redis import RedisServer, command, free_port, ping

__all__ = ["RedisServer", "command", "free_port", "ping", "redis_fixture", "redis_server"]


@contextlib.contextmanager
def redis_server(port: int | None = None) -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, stopped and removed on exit."""
    with RedisServer(port) as server:
        yield server


def redis_fixture(scope: Any = "function") -> Any:
    """A pytest fixture yielding a started :class:`RedisServer`."""

    @pytest.fixture(scope=scope)
    def fixture() -> Iterator[RedisServer]:
        with redis_server() as server:
            yield server
        assert server.process is None

    return fixture
