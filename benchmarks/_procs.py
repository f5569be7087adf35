"""Servers in child processes, the upstream's counters, and wrk.

Each server gets a loopback socket that this process binds and listens on,
then hands over (``pass_fds``); the child serves it
(:mod:`benchmarks._serve`). Children are stopped by their own pid, and
always: :class:`Servers` is a context manager.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ._apps import STATS_PATH
from ._harness import REPO

LUA_SCRIPT = Path(__file__).with_name("wrk_post_json.lua")
BACKLOG = 4096
START_TIMEOUT = 60.0  # seconds; a cold import of FastAPI + openai on a busy box is slow


class Server:
    """One child process serving ``role`` on a loopback port."""

    def __init__(
        self,
        role: str,
        *args: str,
        logdir: Path,
        name: str | None = None,
        command: Sequence[str] | Callable[[int], Sequence[str]] | None = None,
        cwd: Path = REPO,
        env: dict[str, str] | None = None,
    ) -> None:
        """``command`` (then ``--fd N`` and ``args``) instead of
        ``python -m benchmarks._serve role``: a server in another language.
        A callable ``command`` gets the port and binds it itself (the socket
        made here is closed first): ``navai-mw serve --port``."""
        self.name = name or role
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        # Room for a burst of 2,000 clients connecting at once: a full accept
        # queue drops SYNs, and the client retries only a second later.
        self._sock.listen(BACKLOG)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = logdir / f"{self.name}.log"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            **(env or {}),
        }
        if command is None:
            command = [sys.executable, "-m", "benchmarks._serve", role]
        if callable(command):
            self._sock.close()
            argv, fds = [*command(self.port), *args], []
        else:
            argv, fds = [*command, "--fd", str(self._sock.fileno()), *args], [self._sock.fileno()]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                pass_fds=fds,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
            )
        # The child holds its own copy now.
        self._sock.close()

    def wait_ready(self, deadline: float) -> None:
        """Return once the server answers HTTP (any status will do)."""
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            try:
                get(self.url, "/_bench/ready", timeout=2.0)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not start:\n{self.log_tail()}") from None
                time.sleep(0.1)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class Servers:
    """Start several servers at once, wait for all, stop all on exit."""

    def __init__(self) -> None:
        self._servers: list[Server] = []

    def start(
        self,
        role: str,
        *args: str,
        logdir: Path,
        name: str | None = None,
        command: Sequence[str] | Callable[[int], Sequence[str]] | None = None,
        cwd: Path = REPO,
        env: dict[str, str] | None = None,
    ) -> Server:
        server = Server(role, *args, logdir=logdir, name=name, command=command, cwd=cwd, env=env)
        self._servers.append(server)
        return server

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        for server in self._servers:
            server.wait_ready(deadline)

    def __enter__(self) -> Servers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for server in self._servers:
            server.stop()


def get(base_url: str, path: str, *, timeout: float = 10.0) -> tuple[int, bytes]:
    host, _, port = base_url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass(frozen=True)
class UpstreamStats:
    connections: int
    requests: int
    peak: int = 0  # the most connections open at once since the previous call

    def __sub__(self, earlier: UpstreamStats) -> UpstreamStats:
        # Each stats call opens one connection of its own: the later one's
        # is in the later count (and in its peak).
        return UpstreamStats(
            self.connections - earlier.connections - 1,
            self.requests - earlier.requests,
            max(0, self.peak - 1),
        )


def upstream_stats(upstream: Server) -> UpstreamStats:
    _, body = get(upstream.url, STATS_PATH)
    data = json.loads(body)
    return UpstreamStats(data["connections"], data["requests"], data.get("peak", 0))


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (uvicorn's workers, say)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in task.read_text().split():
                found += _descendants(int(child))
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by ``pid`` and its descendants;
    0 where /proc is not there."""
    total = 0
    for each in _descendants(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> tuple[float, float]:
    """(resident now, resident at its highest) of ``pid`` and its
    descendants, in MiB; zeros where /proc is not there."""
    now = peak = 0
    for each in _descendants(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    now += int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    peak += int(line.split()[1])
    return now / 1024, peak / 1024


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    p50: float  # seconds
    p90: float
    p99: float
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    url: str,
    *,
    connections: int,
    seconds: int,
    body: bytes,
    headers: Sequence[str] = (),
    timeout: float = 10.0,
    script: Path = LUA_SCRIPT,
) -> WrkResult:
    """One wrk run: one thread (the servers need the cores more), POSTing
    ``body`` (JSON; another ``script`` for another kind)."""
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        f"{timeout:g}s",
        "-s",
        str(script),
        url,
        "--",
        body.decode(),
        *headers,
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            data = json.loads(line.removeprefix("WRK_JSON "))
            break
    else:
        raise RuntimeError(f"wrk gave no summary:\n{done.stdout}\n{done.stderr}")
    errors = sum(
        data[k]
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50=data["p50_us"] / 1e6,
        p90=data["p90_us"] / 1e6,
        p99=data["p99_us"] / 1e6,
        errors=errors,
    )


@dataclass(frozen=True)
class WrkArm:
    """A wrk target: the URL, the body to POST, extra Lua arguments."""

    url: str
    body: bytes
    headers: tuple[str, ...] = ()


def wrk_rounds(
    arms: dict[str, WrkArm],
    *,
    connections: Sequence[int],
    rounds: int,
    seconds: int,
    upstream: Server,
    log: Callable[[str], None],
) -> dict[tuple[str, int], list[tuple[WrkResult, int]]]:
    """wrk every (arm, connections) pair once per round, interleaved; with
    each result, the upstream connections opened while it ran."""
    from ._harness import interleave

    pairs = [f"{arm}@{n}" for arm in arms for n in connections]
    results: dict[tuple[str, int], list[tuple[WrkResult, int]]] = {}
    for index, pair in interleave(pairs, rounds):
        arm, _, n = pair.rpartition("@")
        target = arms[arm]
        before = upstream_stats(upstream)
        result = run_wrk(
            target.url,
            connections=int(n),
            seconds=seconds,
            body=target.body,
            headers=target.headers,
        )
        opened = (upstream_stats(upstream) - before).connections
        results.setdefault((arm, int(n)), []).append((result, opened))
        log(
            f"  round {index + 1}: {arm:16} c={n:>3} {result.rate:8.0f} req/s "
            f"p50 {result.p50 * 1e3:7.2f} ms  p99 {result.p99 * 1e3:7.2f} ms"
            + (f"  ERRORS {result.errors}" if result.errors else "")
        )
    return results
