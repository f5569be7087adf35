"""A real ``redis-server`` on a free loopback port, for the rate-limit tests.

:class:`RedisServer` starts one with nothing persisted (``--save ''
--appendonly no``), bound to 127.0.0.1, and waits until it answers PING. It
can be stopped and started again on the same port (a storage outage and its
recovery), or frozen with SIGSTOP (a storage that accepts connections and
never answers). :func:`redis_server` is the same as a context manager, and
:func:`redis_fixture` turns it into a pytest fixture::

    redis_url = redis_fixture(scope="module")

``redis-server`` is found on ``PATH`` or at ``/usr/bin/redis-server``
(``scripts/test`` installs it on a fresh machine).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["RedisServer", "free_port", "redis_fixture", "redis_server"]

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    """A loopback port nobody listens on (free when asked)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _executable() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )
    if found is None:
        raise RuntimeError("redis-server is not installed (scripts/test installs it)")
    return found


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:port``; see the module
    docstring. ``port=None`` picks a free port at the first :meth:`start`;
    the port is kept for every later start."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.frozen = False
        self._dir = Path(tempfile.mkdtemp(prefix="navai-redis-"))

    @property
    def url(self) -> str:
        assert self.port is not None, "start the server first"
        return f"redis://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self._dir / "redis.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        if self.running:
            raise RuntimeError("redis-server is already running")
        for _ in range(5):  # a picked port may be taken before redis binds it
            port = self.port if self.port is not None else free_port()
            self.process = subprocess.Popen(
                [
                    _executable(),
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self._dir),
                    "--daemonize",
                    "no",
                    "--logfile",
                    str(self.log),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_ready(port):
                self.port = port
                return self
            self._reap()
            if self.port is not None:
                break  # a fixed port: trying again will not help
        raise RuntimeError(f"redis-server did not start; see {self.log}")

    def _wait_ready(self, port: int) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            if ping(port):
                return True
            time.sleep(0.02)
        return False

    def ping(self) -> bool:
        """Whether the server answers PING now."""
        return self.port is not None and ping(self.port)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait until the port
        refuses connections."""
        if self.process is None:
            return
        if self.frozen:
            self.process.send_signal(signal.SIGCONT)
            self.frozen = False
        self._reap()

    def _reap(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.frozen = False

    def flush(self) -> None:
        """Forget every key."""
        assert command(self.port or 0, "FLUSHALL") == b"+OK"

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def command(port: int, *words: str, timeout: float = 1.0) -> bytes:
    """Send one inline command; the first line of the answer (RESP)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(" ".join(words).encode() + b"\r\n")
        answer = b""
        while not answer.endswith(b"\r\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


def ping(port: int) -> bool:
    try:
        return command(port, "PING", timeout=0.5) == b"+PONG"
    except OSError:
        return False


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
