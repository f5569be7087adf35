"""The guard's rate limits on real servers, as deployed.

Every server here is a process of its own (uvicorn for the ASGI middleware,
waitress with several threads for the WSGI one), started from a small script
with the middleware's keywords and environment, and stopped with SIGTERM at
the end; the limiter's storage is ``memory://`` or a real ``redis-server`` on
a loopback port (:mod:`tests.redis_server`); the upstream is the fake, served
on loopback by this process. Nothing else is faked.

Counts in ``memory://`` live in windows aligned on the clock (a minute
starts at a multiple of 60 s), so a burst that must be counted exactly
starts well inside one (:func:`inside_window`); Redis windows start at a
key's first hit, and every test uses identities of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from navai_mw.testing import FakeOpenAIRealtime

from .conftest import CANARY_KEY, closed_port
from .redis_server import RedisServer, redis_fixture

TOKEN = "/navai/realtime/client-secret"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
# A bound on a hang, not a benchmark: a storage that is down is answered at
# once (connection refused) or after the middleware's 1 s storage timeout.
DEADLINE = 2.0
UNAVAILABLE = {"error": "Rate limiting is unavailable; try again shortly."}
RATE_LIMIT_HEADER = re.compile(r'"mint";r=(\d+);t=(\d+)')
# Every request here is plain HTTP on loopback; one TLS context for all the
# clients spares each the cost of loading the CA bundle.
TLS = ssl.create_default_context()

# The server process: the middleware around a tiny app, configured from a
# JSON argument; prints its port once it listens, stops cleanly on SIGTERM.
SERVER_SCRIPT = r"""
import json
import signal
import socket
import sys
import threading

from navai_mw import NavaiASGIMiddleware, NavaiVoiceBackendOptions, NavaiWSGIMiddleware

config = json.loads(sys.argv[1])
opts = NavaiVoiceBackendOptions(
    openai_api_key=config["api_key"],
    openai_base_url=config["upstream"],
    upstream_timeout_seconds=5,
)


def authorize(info):
    # The identity from a header; None (401) without one or when told to deny.
    if "x-deny" in info.headers:
        return None
    return info.headers.get("x-user")


kwargs = dict(config["kwargs"])
if config["authorize"]:
    kwargs["authorize"] = authorize


async def inner_asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    client = (scope.get("client") or ("", 0))[0]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": client.encode()})


def inner_wsgi(environ, start_response):
    seen = (environ.get("REMOTE_ADDR", ""), environ.get("HTTP_X_FORWARDED_FOR", "-"))
    body = " ".join(seen).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def announce(port):
    print(f"PORT {port}", flush=True)


if config["server"] == "uvicorn":
    import uvicorn

    app = NavaiASGIMiddleware(inner_asgi, opts, **kwargs)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uvicorn_config = uvicorn.Config(
        app, lifespan="on", log_level="warning", timeout_graceful_shutdown=5, **config["uvicorn"]
    )
    # uvicorn shuts down gracefully on SIGTERM, then raises it again to the
    # handler it found: this one, so that a clean stop exits with 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    announce(sock.getsockname()[1])
    uvicorn.Server(uvicorn_config).run(sockets=[sock])
else:
    import waitress
    from waitress import wasyncore

    app = NavaiWSGIMiddleware(inner_wsgi, opts, **kwargs)
    server = waitress.create_server(
        app, host="127.0.0.1", port=0, threads=config["threads"], **config["waitress"]
    )

    def stop_workers_then_sockets():
        # The workers first: one finishing a response wakes the loop through
        # the trigger's pipe, which closing every socket closes. Then every
        # channel, closed from inside the server's own loop, which ends it.
        # The trigger's lock held until the pipe is written: a wake-up on its
        # way could otherwise run that work in between, and close the pipe.
        server.task_dispatcher.shutdown()
        with server.trigger.lock:
            server.trigger.thunks.append(lambda: wasyncore.close_all(server._map))
            server.trigger._physical_pull()

    def stop(signum, frame):
        # Not on this (the loop's) thread: the workers may need the loop to
        # finish their responses.
        threading.Thread(target=stop_workers_then_sockets).start()

    signal.signal(signal.SIGTERM, stop)
    announce(server.effective_port)
    server.run()
    app.close()
"""


# -- processes -----------------------------------------------------------------------


def _children() -> set[int]:
    """This process's children, zombies included (Linux /proc)."""
    me = os.getpid()
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            if int(stat.read_text().rpartition(")")[2].split()[1]) == me:
                found.add(int(stat.parent.name))
    return found


@pytest.fixture(scope="module", autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Every process this module starts is gone (and reaped) when it ends."""
    before = _children()
    yield
    if Path("/proc/self/stat").exists():
        assert _children() - before == set()


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    signalled: bool = False

    def signal_stop(self) -> None:
        if not self.signalled and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.signalled = True

    def stop(self) -> None:
        """Stop (SIGTERM) and check that the stop was clean: exit code 0, and
        no traceback in the log (a 500 would have logged one)."""
        self.signal_stop()
        if self.process.returncode is None:
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
                raise AssertionError(f"{self.name} ignored SIGTERM") from None
        assert self.process.returncode == 0, f"{self.name}: {self.log.read_text()}"
        # A 500 is logged with its traceback by uvicorn and by waitress.
        assert "Traceback" not in self.log.read_text(), self.log.read_text()


@dataclass
class Launcher:
    """Starts server processes, several at once; stops them all at the end."""

    directory: Path
    upstream: str
    servers: list[Server] = field(default_factory=list)

    def start(self, *specs: Mapping[str, Any]) -> list[Server]:
        script = self.directory / "navai_server.py"
        if not script.exists():
            script.write_text(SERVER_SCRIPT)
        pending = []
        for spec in specs:
            name = f"{spec['server']}-{len(self.servers) + len(pending)}"
            config = {
                "server": spec["server"],
                "api_key": CANARY_KEY,
                "upstream": self.upstream,
                "authorize": spec.get("authorize", True),
                "kwargs": spec.get("kwargs", {}),
                # Neither server rewrites or drops forwarding headers: the
                # middleware's own trusted_proxies decides (see the tests
                # that document each server's defaults).
                "uvicorn": spec.get("uvicorn", {"proxy_headers": False}),
                "waitress": spec.get("waitress", {"clear_untrusted_proxy_headers": False}),
                "threads": spec.get("threads", 8),
            }
            env = {
                key: value
                for key, value in os.environ.items()
                if not key.startswith(("NAVAI_", "OPENAI_", "FORWARDED_ALLOW_IPS"))
            }
            env.update(spec.get("env", {}))
            log = self.directory / f"{name}.log"
            with log.open("wb") as stderr:
                process = subprocess.Popen(
                    [sys.executable, str(script), json.dumps(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    env=env,
                )
            pending.append((name, process, log))
        started = []
        try:
            for name, process, log in pending:
                server = Server(name, _announced_url(process, log), process, log)
                self.servers.append(server)  # stopped by stop_all from now on
                started.append(server)
        finally:
            for _, process, _ in pending[len(started) :]:
                _kill(process)
        for server in started:
            _wait_until_serving(server)
        return started

    def stop_all(self) -> None:
        for server in self.servers:
            server.signal_stop()  # all at once: they stop side by side
        errors = []
        for server in self.servers:
            try:
                server.stop()
            except AssertionError as exc:
                errors.append(str(exc))
            finally:
                assert server.process.stdout is not None
                server.process.stdout.close()
        assert errors == []


def _announced_url(process: subprocess.Popen[bytes], log: Path) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
    line = process.stdout.readline() if ready else b""
    if not line.startswith(b"PORT "):
        _kill(process)
        raise AssertionError(f"server did not start: {line!r} {log.read_text()}")
    return f"http://127.0.0.1:{int(line.split()[1])}"


def _kill(process: subprocess.Popen[bytes]) -> None:
    """For a process that failed to start: gone, reaped, pipe closed."""
    if process.poll() is None:
        process.kill()
    process.wait(STOP_TIMEOUT)
    if process.stdout is not None:
        process.stdout.close()


def _wait_until_serving(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            ready = httpx.get(server.url + "/ready", timeout=1, trust_env=False, verify=TLS)
            if ready.status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert server.process.poll() is None, server.log.read_text()
        assert time.monotonic() < deadline, f"{server.name} is not serving"
        time.sleep(0.02)


def stop(*servers: Server) -> None:
    """Stop servers side by side, each checked as :meth:`Server.stop` does."""
    for server in servers:
        server.signal_stop()
    for server in servers:
        server.stop()


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIRealtime]:
    """The fake OpenAI upstream on loopback, for every server of the module."""
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    with fake.serve():
        yield fake


@pytest.fixture(scope="module")
def launcher(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAIRealtime
) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path_factory.mktemp("servers"), upstream.base_url)
    try:
        yield launcher
    finally:
        launcher.stop_all()


shared_redis = redis_fixture(scope="module")


def _pair(limit: str, storage: str, **kwargs: Any) -> list[dict[str, Any]]:
    """An ASGI server (uvicorn) and a WSGI server (waitress, 8 threads) alike."""
    kwargs = {"rate_limit": limit, "rate_limit_storage": storage, **kwargs}
    return [{"server": "uvicorn", "kwargs": kwargs}, {"server": "waitress", "kwargs": kwargs}]


@pytest.fixture(scope="module")
def redis_pair(launcher: Launcher, shared_redis: RedisServer) -> list[Server]:
    return launcher.start(*_pair("10/minute", shared_redis.url))


@pytest.fixture(scope="module")
def memory_pair(launcher: Launcher) -> list[Server]:
    return launcher.start(*_pair("10/minute", "memory://"))


@pytest.fixture(scope="module")
def strict_pair(launcher: Launcher) -> list[Server]:
    return launcher.start(
        *_pair("2/minute", "memory://", cors_origins=["https://app.test"], max_body_size=1024)
    )


def users(count: int = 1) -> list[str]:
    """Identities no other test uses (the module's servers are shared)."""
    return [f"user-{uuid.uuid4().hex[:12]}" for _ in range(count)]


def inside_window(seconds: float, expiry: int = 60) -> None:
    """Wait, if need be, until at least ``seconds`` are left in the clock's
    current minute (so that a test's requests fall in one minute whatever
    the storage: windows start with a client's first request)."""
    left = expiry - time.time() % expiry
    if left < seconds:
        time.sleep(left + 0.1)


# -- requests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    server: str
    status: int
    headers: httpx.Headers
    body: Any
    seconds: float


Call = tuple[Server, dict[str, str]]


async def _send(
    client: httpx.AsyncClient, server: Server, headers: dict[str, str], method: str, **kw: Any
) -> Reply:
    start = time.monotonic()
    response = await client.request(method, server.url + TOKEN, headers=headers, **kw)
    seconds = time.monotonic() - start
    assert CANARY_KEY not in response.text
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return Reply(server.name, response.status_code, response.headers, body, seconds)


def burst(calls: list[Call], method: str = "POST", **kw: Any) -> list[Reply]:
    """Send every call at once (one connection each); the replies in order."""
    if method == "POST" and "content" not in kw:
        kw["json"] = {}

    async def main() -> list[Reply]:
        limits = httpx.Limits(max_connections=len(calls) + 1, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            limits=limits, timeout=15, trust_env=False, verify=TLS
        ) as client:
            return await asyncio.gather(
                *(_send(client, server, headers, method, **kw) for server, headers in calls)
            )

    return asyncio.run(main())


def post(server: Server, headers: dict[str, str] | None = None, **kw: Any) -> Reply:
    """One request, then the next: for budgets spent in order."""
    (reply,) = burst([(server, headers or {})], **kw)
    return reply


def statuses(replies: list[Reply]) -> Counter[int]:
    return Counter(reply.status for reply in replies)


def assert_minted(reply: Reply) -> None:
    assert reply.status == 200, reply
    assert reply.body["value"].startswith("ek_fake_")


def assert_limited(reply: Reply, quota: int, window: int = 60) -> None:
    """A 429 with every header a client needs to back off."""
    assert reply.status == 429, reply
    assert reply.body == {"error": "Too many requests; try again later."}
    retry_after = reply.headers["retry-after"]
    assert retry_after.isdigit(), retry_after
    assert 1 <= int(retry_after) <= window
    assert reply.headers["ratelimit-policy"] == f'"mint";q={quota};w={window}'
    match = RATE_LIMIT_HEADER.fullmatch(reply.headers["ratelimit"])
    assert match is not None, reply.headers["ratelimit"]
    assert match[1] == "0"
    assert int(match[2]) <= window
    assert int(retry_after) == max(1, int(match[2]))


def spend(server: Server, headers: dict[str, str], quota: int) -> None:
    """``quota`` requests pass, the next is refused."""
    for _ in range(quota):
        assert_minted(post(server, headers))
    assert_limited(post(server, headers), quota)


# -- 1. one budget, shared through Redis by an ASGI and a WSGI process -------------------


def test_redis_budget_is_shared_by_two_server_processes(
    redis_pair: list[Server], upstream: FakeOpenAIRealtime
) -> None:
    alice, bob = users(2)
    before = len(upstream.requests)
    replies = burst([(redis_pair[i % 2], {"x-user": alice}) for i in range(60)])

    assert statuses(replies) == {200: 10, 429: 50}
    for reply in replies:
        if reply.status == 429:
            assert_limited(reply, quota=10)
        else:
            assert_minted(reply)
            assert reply.headers["ratelimit-policy"] == '"mint";q=10;w=60'
            match = RATE_LIMIT_HEADER.fullmatch(reply.headers["ratelimit"])
            assert match is not None
            assert int(match[1]) < 10
    # Both processes refused some: the count is one, not one per process.
    assert {r.server for r in replies if r.status == 429} == {s.name for s in redis_pair}
    # Only the ten that passed reached the upstream, each with one
    # safety identifier for alice, the same in both processes.
    minted = upstream.requests[before:]
    assert len(minted) == 10
    identifiers = {request.headers["openai-safety-identifier"] for request in minted}
    assert len(identifiers) == 1
    assert alice not in identifiers.pop()

    # Bob has a budget of his own, in both processes; alice's stays spent.
    replies = burst([(redis_pair[i % 2], {"x-user": bob}) for i in range(14)])
    assert statuses(replies) == {200: 10, 429: 4}
    for server in redis_pair:
        assert_limited(post(server, {"x-user": alice}), quota=10)


@pytest.mark.parametrize("pair", ["redis_pair", "memory_pair"])
def test_a_fresh_window_says_when_it_frees_what_was_spent(
    pair: str, request: pytest.FixtureRequest
) -> None:
    """RateLimit's ``t`` is the seconds until the window frees what the
    request just spent. A window begins at a client's first request, on
    Redis and memory:// alike (not on the clock's minute), so the first
    answer of each user is about 60 s away from that; never 0, and the same
    on either storage (a test written against one passes on the other)."""
    for server in request.getfixturevalue(pair):
        for user in users(6):
            reply = post(server, {"x-user": user})
            assert_minted(reply)
            assert reply.headers["ratelimit-policy"] == '"mint";q=10;w=60'
            match = RATE_LIMIT_HEADER.fullmatch(reply.headers["ratelimit"])
            assert match is not None
            assert match[1] == "9"
            assert 50 <= int(match[2]) <= 60, reply.headers["ratelimit"]


# -- 2. Redis goes away, and comes back ------------------------------------------------------


# Module-wide, as the servers that use it; each test starts with it answering.
outage_redis = redis_fixture(scope="module")


@pytest.fixture(scope="module")
def outage_fleet(launcher: Launcher, outage_redis: RedisServer) -> dict[str, list[Server]]:
    servers = launcher.start(
        *_pair("3/minute", outage_redis.url, rate_limit_fail_open=False),
        *_pair("3/minute", outage_redis.url, rate_limit_fail_open=True),
    )
    return {"closed": servers[:2], "open": servers[2:]}


@pytest.fixture
def outage_servers(
    outage_fleet: dict[str, list[Server]], outage_redis: RedisServer
) -> dict[str, list[Server]]:
    """Both pairs on one Redis, up (whatever an earlier test left)."""
    if outage_redis.frozen:
        outage_redis.thaw()
    if not outage_redis.running:
        outage_redis.start()
    return outage_fleet


def _during_outage(servers: dict[str, list[Server]]) -> None:
    """Fail closed: 503 at once; fail open: minted. Never a 500, never a hang."""
    calls = [(server, {"x-user": user}) for server in servers["closed"] for user in users(3)]
    for reply in burst(calls):
        assert reply.seconds < DEADLINE, reply
        assert reply.status == 503, reply
        assert reply.body == UNAVAILABLE
        assert reply.headers["retry-after"].isdigit()
        assert int(reply.headers["retry-after"]) >= 1
        assert "ratelimit" not in reply.headers
    calls = [(server, {"x-user": user}) for server in servers["open"] for user in users(3)]
    for reply in burst(calls):
        assert reply.seconds < DEADLINE, reply
        assert_minted(reply)


def _traffic(servers: list[Server], stopped: threading.Event) -> list[list[Reply]]:
    """Bursts at every server (new users each time, so never a 429) until
    two bursts after ``stopped`` is set."""
    rounds: list[list[Reply]] = []
    after = 2
    while after:
        if stopped.is_set():
            after -= 1
        rounds.append(burst([(server, {"x-user": u}) for server in servers for u in users(2)]))
    return rounds


def test_redis_stopped_fails_closed_or_open_and_recovers(
    outage_servers: dict[str, list[Server]], outage_redis: RedisServer
) -> None:
    everyone = [*outage_servers["closed"], *outage_servers["open"]]
    closed = {server.name for server in outage_servers["closed"]}
    stopped = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        traffic = pool.submit(_traffic, everyone, stopped)
        time.sleep(0.3)
        outage_redis.stop()  # while requests are in flight
        stopped.set()
        rounds = traffic.result()
    for reply in rounds[0]:  # Redis was up
        assert_minted(reply)
    for reply in (reply for replies in rounds for reply in replies):
        assert reply.seconds < DEADLINE, reply
        if reply.server in closed and reply.status != 200:
            assert reply.status == 503, reply
            assert reply.body == UNAVAILABLE
        else:
            assert_minted(reply)
    assert all(reply.status == 503 for reply in rounds[-1] if reply.server in closed)

    _during_outage(outage_servers)
    _during_outage(outage_servers)  # the second time too: no state gone bad

    outage_redis.start()  # on the same port, with no counts
    for server in everyone:
        spend(server, {"x-user": users()[0]}, quota=3)


def test_redis_frozen_is_answered_within_the_storage_timeout(
    outage_servers: dict[str, list[Server]], outage_redis: RedisServer
) -> None:
    """A Redis that accepts connections and never answers (SIGSTOP): the
    storage timeout ends each request, instead of the server holding it."""
    outage_redis.freeze()
    try:
        _during_outage(outage_servers)
    finally:
        outage_redis.thaw()
    for server in [*outage_servers["closed"], *outage_servers["open"]]:
        spend(server, {"x-user": users()[0]}, quota=3)


# -- 3. exact counts in memory:// under concurrency ---------------------------------------


@pytest.mark.parametrize("index", [0, 1], ids=["uvicorn", "waitress-8-threads"])
def test_memory_budget_is_exact_under_concurrency(
    memory_pair: list[Server], upstream: FakeOpenAIRealtime, index: int
) -> None:
    server = memory_pair[index]
    inside_window(3)
    before = len(upstream.requests)
    people = users(3)
    replies = burst([(server, {"x-user": people[i % 3]}) for i in range(90)])
    for person in people:
        mine = [r for i, r in enumerate(replies) if people[i % 3] == person]
        assert statuses(mine) == {200: 10, 429: 20}
    assert len(upstream.requests) - before == 30
    for reply in replies:
        if reply.status == 429:
            assert_limited(reply, quota=10)


@pytest.fixture(scope="module")
def short_window(launcher: Launcher, shared_redis: RedisServer) -> list[Server]:
    limit = "2 per 2 seconds"
    return launcher.start(
        {"server": "uvicorn", "kwargs": {"rate_limit": limit, "rate_limit_storage": "memory://"}},
        {
            "server": "waitress",
            "kwargs": {"rate_limit": limit, "rate_limit_storage": shared_redis.url},
        },
    )


def test_retry_after_is_kept(short_window: list[Server]) -> None:
    """A client that waits the Retry-After of its 429 is served (memory://
    under uvicorn, Redis under waitress; side by side, to save the wait)."""

    def back_off(server: Server) -> None:
        me = {"x-user": users()[0]}
        inside_window(0.5, expiry=2)
        assert_minted(post(server, me))
        assert_minted(post(server, me))
        refused = post(server, me)
        assert_limited(refused, quota=2, window=2)
        time.sleep(int(refused.headers["retry-after"]))
        assert_minted(post(server, me))

    with ThreadPoolExecutor(len(short_window)) as pool:
        for done in [pool.submit(back_off, server) for server in short_window]:
            done.result()


# -- 4. answers decided before the guard spend nothing --------------------------------------


@pytest.mark.parametrize("index", [0, 1], ids=["uvicorn", "waitress"])
def test_refused_before_the_guard_spends_no_quota(strict_pair: list[Server], index: int) -> None:
    server = strict_pair[index]
    inside_window(3)
    (user,) = users()
    me = {"x-user": user}
    json_type = {**me, "content-type": "application/json"}

    preflight = {**me, "origin": "https://app.test", "access-control-request-method": "POST"}
    refused = [
        *burst([(server, me)] * 4, method="GET"),  # 405
        *burst([(server, json_type)] * 3, content=b" " * 2048),  # 413, declared
        # 413 on a chunked body, known only once read (waitress reads it
        # first and declares its length: there, the same as above).
        *(post(server, json_type, content=_chunks(b" " * 1500)) for _ in range(2)),
        *burst([(server, {**me, "content-type": "text/plain"})] * 3, content=b"{}"),  # 415
        *burst([(server, preflight)] * 3, method="OPTIONS"),  # 204, CORS preflight
        *burst([(server, {**me, "origin": "https://evil.test"})] * 3),  # 403, origin
        *burst([(server, {})] * 3),  # 401: no identity
        *burst([(server, {**me, "x-deny": "1"})] * 3),  # 401: the hook said None
    ]
    assert statuses(refused) == {405: 4, 413: 5, 415: 3, 204: 3, 403: 3, 401: 6}
    for reply in refused:
        assert "ratelimit" not in reply.headers

    spend(server, me, quota=2)
    # A page on an allowed origin may read why, and for how long.
    refused_in_browser = post(server, {**me, "origin": "https://app.test"})
    assert_limited(refused_in_browser, quota=2)
    assert refused_in_browser.headers["access-control-allow-origin"] == "https://app.test"
    exposed = refused_in_browser.headers["access-control-expose-headers"]
    assert {"Retry-After", "RateLimit", "RateLimit-Policy"} <= {
        name.strip() for name in exposed.split(",")
    }


async def _chunks(data: bytes) -> Any:
    yield data[:500]
    yield data[500:]


# -- 5. whose budget: identity, address, forwarded addresses ---------------------------------


@pytest.fixture(scope="module")
def by_address(launcher: Launcher) -> list[Server]:
    """No identity: the limit is per client address; no trusted proxies."""
    return launcher.start(
        *({**spec, "authorize": False} for spec in _pair("2/minute", "memory://"))
    )


@pytest.fixture(scope="module")
def behind_proxy(launcher: Launcher) -> list[Server]:
    """No identity; 127.0.0.1 is a trusted proxy."""
    return launcher.start(
        *(
            {**spec, "authorize": False}
            for spec in _pair("2/minute", "memory://", trusted_proxies=["127.0.0.1"])
        )
    )


@pytest.mark.parametrize("index", [0, 1], ids=["uvicorn", "waitress"])
def test_without_trusted_proxies_forwarded_headers_change_nothing(
    by_address: list[Server], index: int
) -> None:
    server = by_address[index]
    inside_window(3)
    assert_minted(post(server, {"x-forwarded-for": "203.0.113.1"}))
    assert_minted(post(server, {"forwarded": "for=203.0.113.2"}))
    # The same peer, 127.0.0.1, whatever it claims to forward for.
    for spoof in ("203.0.113.3", "203.0.113.4, 198.51.100.1", "unknown"):
        assert_limited(post(server, {"x-forwarded-for": spoof}), quota=2)
    assert_limited(post(server, {"forwarded": "for=203.0.113.5"}), quota=2)
    # An identity is not asked for here: a user header changes nothing either.
    assert_limited(post(server, {"x-user": "someone-else"}), quota=2)


@pytest.mark.parametrize("index", [0, 1], ids=["uvicorn", "waitress"])
def test_trusted_proxy_forwarded_for_separates_clients(
    behind_proxy: list[Server], index: int
) -> None:
    server = behind_proxy[index]
    inside_window(3)
    one, two = (f"198.51.100.{n}" for n in _fresh_octets(2))
    spend(server, {"x-forwarded-for": one}, quota=2)
    # Anything a client writes left of what the proxy appended is not believed;
    # a trusted hop to the right of it is skipped.
    assert_limited(post(server, {"x-forwarded-for": f"192.0.2.77, {one}"}), quota=2)
    assert_limited(post(server, {"x-forwarded-for": f"{one}, 127.0.0.1"}), quota=2)
    assert_limited(post(server, {"forwarded": f'for="{one}:4711"'}), quota=2)
    # Another client behind the same proxy has a budget of its own.
    spend(server, {"x-forwarded-for": two}, quota=2)
    # The proxy itself, forwarding for nobody, is one more client.
    spend(server, {}, quota=2)


@pytest.mark.parametrize("index", [0, 1], ids=["uvicorn", "waitress"])
def test_trusted_proxy_client_cannot_pick_its_budget_with_a_forwarded_header(
    behind_proxy: list[Server], index: int
) -> None:
    """The usual proxy (nginx with ``$proxy_add_x_forwarded_for``) sets
    X-Forwarded-For and passes a client's own ``Forwarded`` header through
    untouched. The client's address is the X-Forwarded-For hop the proxy
    appended; a ``Forwarded`` header the client made up must not give it a
    fresh budget on every request."""
    server = behind_proxy[index]
    inside_window(3)
    (client,) = (f"198.51.100.{n}" for n in _fresh_octets(1))
    proxied = [
        {"x-forwarded-for": client, "forwarded": f"for=192.0.2.{n}"} for n in _fresh_octets(5)
    ]
    replies = [post(server, headers) for headers in proxied]
    assert [reply.status for reply in replies] == [200, 200, 429, 429, 429]


_octets = iter(range(1, 255))


def _fresh_octets(count: int) -> list[int]:
    """Addresses no other test of the module has used."""
    return [next(_octets) for _ in range(count)]


def test_uvicorn_default_proxy_headers_decide_the_client_address(launcher: Launcher) -> None:
    """What users get with uvicorn's defaults (``proxy_headers=True``,
    ``forwarded_allow_ips="127.0.0.1"``): uvicorn itself rewrites
    ``scope["client"]`` from the X-Forwarded-For of a loopback peer, before
    the middleware sees the request. Without ``trusted_proxies``, the budget
    still follows X-Forwarded-For for a peer on 127.0.0.1 (a proxy on the
    same host, or any local process); from any other peer it is ignored."""
    (server,) = launcher.start(
        {
            "server": "uvicorn",
            "authorize": False,
            "uvicorn": {},  # uvicorn's defaults
            "kwargs": {"rate_limit": "2/minute", "rate_limit_storage": "memory://"},
        }
    )
    inside_window(3)
    assert _seen(server, {"x-forwarded-for": "203.0.113.9"}) == "203.0.113.9"
    spend(server, {"x-forwarded-for": "203.0.113.10"}, quota=2)
    spend(server, {"x-forwarded-for": "203.0.113.11"}, quota=2)
    spend(server, {}, quota=2)  # no header: the peer, 127.0.0.1
    server.stop()


def test_waitress_defaults_drop_forwarding_headers(launcher: Launcher) -> None:
    """What users get with waitress's defaults (3.x:
    ``clear_untrusted_proxy_headers=True``, no ``trusted_proxy``): waitress
    removes X-Forwarded-For and Forwarded before the middleware sees the
    request, so ``trusted_proxies=`` alone finds nothing to believe, and every
    client behind the proxy shares the proxy's budget. Telling waitress about
    the proxy (``trusted_proxy=``, ``trusted_proxy_headers=``) makes it
    rewrite REMOTE_ADDR itself; ``clear_untrusted_proxy_headers=False``
    leaves the headers for ``trusted_proxies=`` to read."""
    limit = {"rate_limit": "2/minute", "rate_limit_storage": "memory://"}
    stripped, rewritten = launcher.start(
        {
            "server": "waitress",
            "authorize": False,
            "waitress": {},  # waitress's defaults
            "kwargs": {**limit, "trusted_proxies": ["127.0.0.1"]},
        },
        {
            "server": "waitress",
            "authorize": False,
            "waitress": {"trusted_proxy": "127.0.0.1", "trusted_proxy_headers": "x-forwarded-for"},
            "kwargs": limit,
        },
    )
    inside_window(3)
    forwarded = {"x-forwarded-for": "203.0.113.9"}
    assert _seen(stripped, forwarded) == "127.0.0.1 -"
    spend(stripped, {"x-forwarded-for": "203.0.113.10"}, quota=2)
    assert_limited(post(stripped, {"x-forwarded-for": "203.0.113.11"}), quota=2)

    assert _seen(rewritten, forwarded).startswith("203.0.113.9 ")
    spend(rewritten, {"x-forwarded-for": "203.0.113.10"}, quota=2)
    spend(rewritten, {"x-forwarded-for": "203.0.113.11"}, quota=2)
    stop(stripped, rewritten)


def _seen(server: Server, headers: dict[str, str]) -> str:
    """The wrapped app's view of the client: its address (and, under WSGI,
    the X-Forwarded-For it was given)."""
    return httpx.get(server.url + "/ready", headers=headers, trust_env=False, verify=TLS).text


# -- 6. a mapping per route group, and the environment ----------------------------------------


@pytest.mark.parametrize("server_name", ["uvicorn", "waitress"])
def test_keywords_win_over_the_environment(launcher: Launcher, server_name: str) -> None:
    (server,) = launcher.start(
        {
            "server": server_name,
            "env": {
                "NAVAI_RATE_LIMIT": "1/minute",
                # Never used: the keyword wins (else every request were a 503).
                "NAVAI_RATE_LIMIT_STORAGE": f"redis://127.0.0.1:{closed_port()}",
            },
            "kwargs": {"rate_limit": {"mint": "3/minute"}, "rate_limit_storage": "memory://"},
        }
    )
    inside_window(3)
    spend(server, {"x-user": users()[0]}, quota=3)
    server.stop()


def test_environment_is_read_even_when_opts_are_given(
    launcher: Launcher, shared_redis: RedisServer
) -> None:
    """The servers pass ``opts=`` in code and no guard keyword but
    ``authorize``: ``NAVAI_RATE_LIMIT`` and ``NAVAI_RATE_LIMIT_STORAGE``
    from the process environment apply (one budget in Redis, for both)."""
    env = {"NAVAI_RATE_LIMIT": "2/minute", "NAVAI_RATE_LIMIT_STORAGE": shared_redis.url}
    asgi, wsgi = launcher.start(
        {"server": "uvicorn", "env": env}, {"server": "waitress", "env": env}
    )
    (user,) = users()
    assert_minted(post(asgi, {"x-user": user}))
    assert_minted(post(wsgi, {"x-user": user}))
    assert_limited(post(asgi, {"x-user": user}), quota=2)
    assert_limited(post(wsgi, {"x-user": user}), quota=2)
    keys = _redis_keys(shared_redis)
    assert any(user in key for key in keys), keys
    stop(asgi, wsgi)


def test_environment_fail_open(launcher: Launcher) -> None:
    env = {
        "NAVAI_RATE_LIMIT": "1/minute",
        "NAVAI_RATE_LIMIT_STORAGE": f"redis://127.0.0.1:{closed_port()}",
        "NAVAI_RATE_LIMIT_FAIL_OPEN": "yes",
    }
    servers = launcher.start({"server": "uvicorn", "env": env}, {"server": "waitress", "env": env})
    (user,) = users()
    for reply in burst([(server, {"x-user": user}) for server in servers for _ in range(3)]):
        assert reply.seconds < DEADLINE
        assert_minted(reply)
    stop(*servers)


def _redis_keys(redis: RedisServer) -> list[str]:
    import redis as redis_py

    client = redis_py.Redis(host="127.0.0.1", port=redis.port or 0, decode_responses=True)
    try:
        return [str(key) for key in client.keys("*")]
    finally:
        client.close()
