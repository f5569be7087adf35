"""A real ``redis-server`` on a loopback port, for the guard's benchmark and
the rate-limit tests (``tests/redis_server.py`` wraps it as a fixture).

:class:`RedisServer` starts one with nothing persisted (``--save ''
--appendonly no``), bound to 127.0.0.1, and waits until it answers PING. It
can be stopped and started again on the same port (a storage outage and its
recovery), or frozen with SIGSTOP (a storage that accepts connections and
never answers). ``redis-server`` is found on ``PATH`` or at
``/usr/bin/redis-server`` (``scripts/test`` installs it on a fresh machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["RedisServer", "command", "free_port", "ping", "redis_executable"]

START_TIMEOUT = 10.0  # seconds
STOP_TIMEOUT = 10.0


def redis_executable() -> str | None:
    found = shutil.which("redis-server")
    if found is None and os.access("/usr/bin/redis-server", os.X_OK):
        found = "/usr/bin/redis-server"
    return found


def free_port() -> int:
    """A loopback port nobody listens on (free when asked)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def command(port: int, *words: str, timeout: float = 2.0) -> bytes:
    """One inline command: a simple answer's line, or a bulk answer's bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(" ".join(words).encode() + b"\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        first, _, rest = data.partition(b"\r\n")
        if not first.startswith(b"$"):
            return first
        size = int(first[1:])
        while len(rest) < size:
            chunk = conn.recv(65536)
            if not chunk:
                break
            rest += chunk
        return rest[:size]


def ping(port: int) -> bool:
    try:
        return command(port, "PING", timeout=0.5) == b"+PONG"
    except OSError:
        return False


def info_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[name.strip()] = value.strip()
    return fields


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:port``. ``port=None``
    picks a free port at the first :meth:`start` and keeps it for every later
    start; ``log_dir`` is where ``redis.log`` goes (default: the server's own
    temporary directory). A context manager: started on entry, stopped and
    its directory removed on exit."""

    def __init__(self, port: int | None = None, *, log_dir: Path | None = None) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.frozen = False
        self.version = ""
        self._dir = Path(tempfile.mkdtemp(prefix="navai-redis-"))
        self._log_dir = log_dir or self._dir

    @property
    def url(self) -> str:
        assert self.port is not None, "start the server first"
        return f"redis://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self._log_dir / "redis.log"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        if self.running:
            raise RuntimeError("redis-server is already running")
        executable = redis_executable()
        if executable is None:
            raise RuntimeError("redis-server is not installed (scripts/test installs it)")
        for _ in range(5):  # a picked port may be taken before redis binds it
            port = self.port if self.port is not None else free_port()
            self.process = subprocess.Popen(
                [
                    executable,
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
                info = command(port, "INFO", "server").decode()
                self.version = info_fields(info).get("redis_version", "?")
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

    def stats(self) -> dict[str, int]:
        """Commands processed so far: ``total``, and the calls of each command
        (INFO and PING, asked by this class, left out)."""
        text = command(self.port or 0, "INFO", "commandstats").decode()
        counts = {}
        for name, value in info_fields(text).items():
            if name.startswith("cmdstat_") and name not in ("cmdstat_info", "cmdstat_ping"):
                calls = dict(pair.split("=", 1) for pair in value.split(","))
                counts[name.removeprefix("cmdstat_")] = int(calls["calls"])
        counts["total"] = sum(counts.values())
        return counts

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait until it is gone."""
        if self.process is None:
            return
        if self.frozen:
            self.process.send_signal(signal.SIGCONT)
            self.frozen = False
        self._reap()

    def _reap(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
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
