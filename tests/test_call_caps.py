"""The relayed calls' time caps on real servers: where they run, how many
at once, and what they hold.

uvicorn (ASGI) and waitress (WSGI) relay calls to a loopback upstream that
speaks OpenAI's calls API and records every hangup; the calls' store is in
memory or in a real redis-server. Shown by counting and by the order of
events, never by timing: due hangups all start before the first slow one
ends; a WSGI worker's capped calls leave no upstream client behind; the
Redis client keeps to its pool; a worker killed mid-hangup leaves a lease
that another worker takes over; an entry whose owner expired is dropped;
and an async Django view under a WSGI server keeps its caps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from navai_mw import NavaiASGIMiddleware, NavaiVoiceBackendOptions, NavaiWSGIMiddleware
from navai_mw.runtime.call_deadlines import DEADLINES, MAX_CONNECTIONS, owner_key
from navai_mw.runtime.call_store import HANGUPS_AT_ONCE
from navai_mw.testing import serve_asgi
from navai_mw.transports import HttpxSyncTransport

from .conftest import CANARY_KEY
from .redis_server import RedisServer, redis_fixture
from .test_relay import OFFER, SDP, SyncUpstream, Upstream, app_asgi, app_wsgi
from .test_servers import serve_waitress
from .test_upstream_connections import established_to

CALLS = "/navai/realtime/calls"
ANSWER = "v=0\r\no=- 9 9 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
BOUND = 20.0  # how long a wait may last: a bound, never a measurement
ROOT = Path(__file__).resolve().parent.parent

shared_redis = redis_fixture(scope="module")


def until(check: Callable[[], bool], bound: float = BOUND) -> bool:
    deadline = time.monotonic() + bound
    while not check() and time.monotonic() < deadline:
        time.sleep(0.02)
    return check()


class CallsUpstream:
    """OpenAI's calls API on loopback: offers answered, hangups recorded.

    With ``hold_for=n``, each hangup is held until ``n`` are in flight at
    once (or a bound passes): the hangups then end together, so the most
    seen at once tells whether they ran side by side or one after another.
    """

    def __init__(self, *, hold_for: int = 0) -> None:
        self.hold_for = hold_for
        self.released = hold_for == 0
        self.in_flight = 0
        self.most = 0
        self.started: list[str] = []
        self.hangups: list[str] = []
        self.ids = (f"rtc_{n:04d}" for n in itertools.count())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        while (await receive()).get("more_body"):
            pass
        path = scope["path"]
        if path.endswith("/hangup"):
            await self._hang_up(path.rsplit("/", 2)[-2])
            status, headers, body = 200, [(b"content-type", b"application/json")], b"{}"
        else:
            call_id = next(self.ids)
            location = f"/v1/realtime/calls/{call_id}".encode()
            status, headers, body = 201, [(b"location", location)], ANSWER.encode()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _hang_up(self, call_id: str) -> None:
        self.started.append(call_id)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        if self.in_flight >= self.hold_for:
            self.released = True
        deadline = time.monotonic() + 10  # a bound: the failing case ends too
        while not self.released and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.in_flight -= 1
        self.hangups.append(call_id)


@contextlib.contextmanager
def upstream_on_loopback(upstream: CallsUpstream) -> Iterator[tuple[str, int]]:
    with serve_asgi(upstream) as url:
        yield f"{url}/v1", int(url.rsplit(":", 1)[1])


@contextlib.contextmanager
def serve_shell(shell: str, base_url: str, **keywords: Any) -> Iterator[tuple[str, Any]]:
    """The middleware relaying to ``base_url`` under uvicorn or waitress;
    yields the server's URL and the middleware."""
    opts = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=base_url, upstream_timeout_seconds=15
    )
    keywords.setdefault("functions", [])
    if shell == "uvicorn":
        app = NavaiASGIMiddleware(app_asgi, opts, relay=True, **keywords)
        with serve_asgi(app, lifespan="on") as url:
            yield url, app
        return
    wsgi = NavaiWSGIMiddleware(app_wsgi, opts, relay=True, **keywords)
    try:
        with serve_waitress(wsgi) as url:
            yield url, wsgi
    finally:
        wsgi.close()


def relay(client: httpx.Client, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        made = client.post(CALLS, content=OFFER, headers=SDP)
        assert made.status_code == 201, made.text
        ids.append(made.headers["location"].rsplit("/", 1)[-1])
    return ids


# -- 3: due hangups run side by side ---------------------------------------------------------


@pytest.mark.parametrize("store", ["memory", "redis"])
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
def test_due_hangups_all_start_before_the_first_slow_one_ends(
    shell: str, store: str, request: pytest.FixtureRequest
) -> None:
    """Five calls due together, each hangup held until all five are in
    flight: one worker runs them side by side, never one after another."""
    storage = {}
    if store == "redis":
        server: RedisServer = request.getfixturevalue("shared_redis")
        redis.Redis.from_url(server.url).flushall()
        storage = {"rate_limit_storage": server.url}
    upstream = CallsUpstream(hold_for=5)
    with (
        upstream_on_loopback(upstream) as (base_url, _),
        serve_shell(shell, base_url, max_call_seconds=1, **storage) as (url, _),
        httpx.Client(base_url=url, timeout=BOUND) as client,
    ):
        ids = relay(client, 5)
        assert until(lambda: len(upstream.hangups) == 5)
    assert sorted(upstream.hangups) == sorted(ids)
    assert upstream.most == 5  # every due hangup started before the first ended


# -- 1: the WSGI caps hold no client per call ------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="counts Linux's sockets")
def test_capped_calls_under_waitress_leave_no_client_behind() -> None:
    """100 capped calls, every one hung up; the hangups ran on a few
    long-lived threads whose clients are reused: the connections left open
    are the server's threads' and the hangup threads', not one per call."""
    upstream = CallsUpstream()
    before = {t.ident for t in threading.enumerate()}
    with (
        upstream_on_loopback(upstream) as (base_url, port),
        serve_shell("waitress", base_url, max_call_seconds=0.3) as (url, wsgi),
        httpx.Client(base_url=url, timeout=BOUND) as client,
    ):
        ids = relay(client, 100)
        assert until(lambda: len(upstream.hangups) == 100)
        transport = wsgi.transport
        assert isinstance(transport, HttpxSyncTransport)
        waitress_threads = 8
        assert transport.open_clients <= waitress_threads + HANGUPS_AT_ONCE
        assert established_to(port) <= waitress_threads + HANGUPS_AT_ONCE
        started = [t for t in threading.enumerate() if t.ident not in before]
        assert len([t for t in started if t.name == "navai-hangup"]) <= HANGUPS_AT_ONCE
        assert not [t for t in started if isinstance(t, threading.Timer)]
    assert sorted(upstream.hangups) == sorted(ids)
    # Closed with the middleware: its hangup threads end.
    assert until(
        lambda: (
            not [
                t
                for t in threading.enumerate()
                if t.name == "navai-hangup" and t.ident not in before
            ]
        )
    )


# -- the Redis client keeps to its pool --------------------------------------------------------


def test_the_calls_redis_client_keeps_to_its_pool(shared_redis: RedisServer) -> None:
    """200 calls relayed at once through one ASGI worker: the calls' store
    opens at most its pool's connections to Redis."""
    inspect = redis.Redis.from_url(shared_redis.url)
    inspect.flushall()
    upstream = Upstream()

    class Quick:
        async def send(self, request: Any, *, timeout: float) -> Any:
            return upstream.reply(request)

    async def main() -> list[int]:
        app = NavaiASGIMiddleware(
            app_asgi,
            NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY),
            transport=Quick(),
            functions=[],
            relay=True,
            rate_limit_storage=shared_redis.url,
            max_call_seconds=3600,
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=BOUND
        ) as client:
            made = await asyncio.gather(
                *(client.post(CALLS, content=OFFER, headers=SDP) for _ in range(200))
            )
        opened = sum(entry.get("name") == "navai-calls" for entry in inspect.client_list())
        await app.aclose()
        return [*(m.status_code for m in made), opened]

    *statuses, opened = asyncio.run(main())
    assert statuses == [201] * 200
    assert 1 <= opened <= MAX_CONNECTIONS
    assert inspect.zcard(DEADLINES) == 200  # every one remembered and capped


# -- the lease: a worker killed mid-hangup --------------------------------------------------------

WORKER_A = """
import sys, time
import httpx
from navai_mw import HttpResponse, NavaiVoiceBackendOptions, NavaiWSGIMiddleware

class Stuck:
    def send(self, request, *, timeout):
        if request.url.endswith("/hangup"):
            print("HANGUP", request.url.rsplit("/", 2)[-2], flush=True)
            time.sleep(3600)  # killed before it ends
        return HttpResponse(
            status=201,
            headers=(("location", "/v1/realtime/calls/rtc_leased"),),
            body=b"v=0\\r\\ns=-\\r\\n",
        )

opts = NavaiVoiceBackendOptions(openai_api_key="sk-test", upstream_timeout_seconds=1)
app = NavaiWSGIMiddleware(
    lambda e, s: [], opts, transport=Stuck(), functions=[], relay=True,
    rate_limit_storage=sys.argv[1], max_call_seconds=0.3,
)
with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://a") as client:
    made = client.post(
        "/navai/realtime/calls",
        content="v=0\\r\\nm=audio 9 UDP/TLS/RTP/SAVPF 111\\r\\n",
        headers={"content-type": "application/sdp"},
    )
    print("RELAYED", made.status_code, flush=True)
time.sleep(3600)
"""


def test_a_worker_killed_mid_hangup_leaves_a_lease_another_takes_over(
    shared_redis: RedisServer, tmp_path: Path
) -> None:
    inspect = redis.Redis.from_url(shared_redis.url)
    inspect.flushall()
    script = tmp_path / "worker_a.py"
    script.write_text(WORKER_A)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker_a = subprocess.Popen(
        [sys.executable, str(script), shared_redis.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert worker_a.stdout is not None
        lines = iter(worker_a.stdout.readline, "")
        assert next(lines).split() == ["RELAYED", "201"]
        assert next(lines).split() == ["HANGUP", "rtc_leased"]  # claimed, mid-hangup
        lease_ends = inspect.zscore(DEADLINES, "rtc_leased")
        assert lease_ends is not None
        assert lease_ends > time.time()  # leased, not removed
    finally:
        worker_a.send_signal(signal.SIGKILL)
        worker_a.wait(10)
        if worker_a.stdout is not None:
            worker_a.stdout.close()
    upstream = Upstream()
    worker_b = NavaiWSGIMiddleware(
        app_wsgi,
        NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, upstream_timeout_seconds=1),
        transport=SyncUpstream(upstream),
        functions=[],
        relay=True,
        rate_limit_storage=shared_redis.url,
    )
    try:
        # Once A's lease runs out, B claims the call and ends it.
        assert until(lambda: "rtc_leased" in upstream.hangups(), bound=BOUND + 10)
        assert until(lambda: inspect.zscore(DEADLINES, "rtc_leased") is None)
        assert inspect.get(owner_key("rtc_leased")) is None
        assert upstream.hangups() == ["rtc_leased"]
    finally:
        worker_b.close()


def test_a_deadline_whose_owner_expired_is_dropped_not_ended(shared_redis: RedisServer) -> None:
    """An entry older than the owner keys' lifetime (its owner key gone) is
    never claimed: a call that can never be hung up is not tried forever."""
    inspect = redis.Redis.from_url(shared_redis.url)
    inspect.flushall()
    inspect.zadd(DEADLINES, {"rtc_orphan": time.time() - 10})
    upstream = Upstream()
    worker = NavaiWSGIMiddleware(
        app_wsgi,
        NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY),
        transport=SyncUpstream(upstream),
        functions=[],
        relay=True,
        rate_limit_storage=shared_redis.url,
    )
    try:
        assert until(lambda: inspect.zscore(DEADLINES, "rtc_orphan") is None)
    finally:
        worker.close()
    assert upstream.hangups() == []


def test_a_hangup_that_failed_is_tried_again_after_its_lease(shared_redis: RedisServer) -> None:
    """With Redis, a cap whose hangup failed stays due: the next claim, once
    its lease has run out, ends the call."""
    inspect = redis.Redis.from_url(shared_redis.url)
    inspect.flushall()
    upstream = Upstream()
    failures = [503]

    class FailsOnce(SyncUpstream):
        def send(self, request: Any, *, timeout: float) -> Any:
            if request.url.endswith("/hangup") and failures:
                from navai_mw import HttpResponse

                failures.pop()
                return HttpResponse(status=400, body=b"{}")  # not retried by the core
            return super().send(request, timeout=timeout)

    worker = NavaiWSGIMiddleware(
        app_wsgi,
        NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, upstream_timeout_seconds=0.5),
        transport=FailsOnce(upstream),
        functions=[],
        relay=True,
        rate_limit_storage=shared_redis.url,
        max_call_seconds=0.3,
    )
    try:
        with httpx.Client(transport=httpx.WSGITransport(app=worker), base_url="http://w") as c:
            [call_id] = relay(c, 1)
        assert until(lambda: call_id in upstream.hangups(), bound=BOUND + 10)
        assert failures == []  # the first try failed; the second ended it
        assert until(lambda: inspect.zscore(DEADLINES, call_id) is None)
    finally:
        worker.close()


# -- 4: an async Django view under a WSGI server --------------------------------------------------

DJANGO_APP = """
import os, sys
import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="not-a-secret-0123456789",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    LOGGING_CONFIG=None,
)
django.setup()

from django.http import HttpResponse
from django.urls import re_path
from django.views.decorators.csrf import csrf_exempt
from navai_mw.views import AsyncNavaiHandler

navai = AsyncNavaiHandler(functions=[])


@csrf_exempt
async def navai_view(request):
    answer = await navai.handle(
        request.method, request.path_info, request.headers, request.body,
        client=request.META.get("REMOTE_ADDR"),
    )
    response = HttpResponse(answer.body, status=answer.status)
    for name, value in answer.headers:
        response[name] = value
    return response


urlpatterns = [re_path(r"^navai/", navai_view)]

from django.core.wsgi import get_wsgi_application
import waitress

waitress.serve(get_wsgi_application(), host="127.0.0.1", port=int(sys.argv[1]), threads=4)
"""


@contextlib.contextmanager
def django_async_view(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    from .conftest import closed_port

    port = closed_port()
    script = tmp_path / "django_async_view.py"
    script.write_text(textwrap.dedent(DJANGO_APP))
    log = tmp_path / "django.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, str(script), str(port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + BOUND
        while True:
            try:
                httpx.get(url + "/navai/", timeout=5)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the Django app did not start:\n{log.read_text()}")
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(15)
    text = log.read_text()
    assert CANARY_KEY not in text
    assert "RuntimeError" not in text, text
    assert "Traceback" not in text, text


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_an_async_django_view_under_a_wsgi_server_keeps_its_caps(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """asgiref runs each async view on an event loop of its own, closed when
    the view returns: the caps still fire (they live on the store's loop),
    and with Redis the owner's DELETEs are all 204."""
    upstream = CallsUpstream()
    with upstream_on_loopback(upstream) as (base_url, _):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "NAVAI_"))}
        env.update(
            OPENAI_API_KEY=CANARY_KEY,
            OPENAI_BASE_URL=base_url,
            NAVAI_RELAY="true",
            NAVAI_MAX_CALL_SECONDS="4",
            PYTHONPATH=str(ROOT),
        )
        if store == "redis":
            server: RedisServer = request.getfixturevalue("shared_redis")
            redis.Redis.from_url(server.url).flushall()
            env["NAVAI_RATE_LIMIT_STORAGE"] = server.url
        with (
            django_async_view(env, tmp_path) as url,
            httpx.Client(base_url=url, timeout=BOUND) as client,
        ):
            ids = relay(client, 6)
            # The owner ends three at once; each DELETE finds its call.
            ended = [client.delete(f"{CALLS}/{call_id}").status_code for call_id in ids[:3]]
            assert ended == [204, 204, 204]
            # Nobody asks for the other three: their caps end them.
            assert until(lambda: set(ids[3:]) <= set(upstream.hangups))
            assert sorted(upstream.hangups) == sorted(ids)
            gone = [client.delete(f"{CALLS}/{call_id}").status_code for call_id in ids]
            assert gone == [404] * 6


# -- no relay, no polling ------------------------------------------------------------------------


def test_an_app_that_never_relays_never_reads_deadlines(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relays off (the default) with an unreachable Redis: nothing polls for
    deadlines, so nothing logs that reading them failed."""
    monkeypatch.delenv("NAVAI_RELAY", raising=False)
    down = "redis://127.0.0.1:1"
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY)
    before = {t.ident for t in threading.enumerate()}
    wsgi = NavaiWSGIMiddleware(app_wsgi, opts, functions=[], rate_limit_storage=down)
    asgi = NavaiASGIMiddleware(app_asgi, opts, functions=[], rate_limit_storage=down)

    async def lifespan() -> None:
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive() -> Any:
            return next(messages)

        async def send(message: Any) -> None:
            pass

        await asgi({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    with caplog.at_level("WARNING", logger="navai_mw"):
        asyncio.run(lifespan())
        time.sleep(1.0)  # two poll periods, had anything polled
    wsgi.close()
    assert not [r for r in caplog.records if "call deadlines" in r.getMessage()]
    started = [t for t in threading.enumerate() if t.ident not in before]
    assert not [t for t in started if t.name.startswith("navai-call")]


def test_no_secret_in_what_the_store_logs(
    caplog: pytest.LogCaptureFixture, shared_redis: RedisServer
) -> None:
    upstream = Upstream()
    with caplog.at_level("DEBUG", logger="navai_mw"):
        worker = NavaiWSGIMiddleware(
            app_wsgi,
            NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY),
            transport=SyncUpstream(upstream),
            functions=[],
            relay=True,
            rate_limit_storage=shared_redis.url,
            max_call_seconds=0.2,
        )
        try:
            with httpx.Client(transport=httpx.WSGITransport(app=worker), base_url="http://w") as c:
                [call_id] = relay(c, 1)
            assert until(lambda: call_id in upstream.hangups())
        finally:
            worker.close()
    assert CANARY_KEY not in json.dumps([r.getMessage() for r in caplog.records])
