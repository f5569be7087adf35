"""Regression tests for the adversarial review: a hostile client, a broken
upstream and a careless operator. Each test failed before its fix."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from navai_mw import (
    HttpRequest,
    HttpResponse,
    NavaiASGIMiddleware,
    NavaiVoiceBackendOptions,
    NavaiWSGIMiddleware,
    OptionsError,
    UpstreamError,
    create_realtime_client_secret,
    create_realtime_client_secret_sync,
    get_navai_voice_backend_options_from_env,
)
from navai_mw.core.errors import log_safe
from navai_mw.testing import FakeOpenAIRealtime
from navai_mw.transports import AiohttpTransport, HttpxAsyncTransport, HttpxSyncTransport
from navai_mw.upstreams.openai_secrets import (
    MAX_CLIENT_SECRET_RESPONSE_BYTES,
    exchange,
    parse_upstream_response,
)

from .conftest import CANARY_KEY, log_message, raw_server

pytestmark = pytest.mark.anyio

PATH = "/navai/realtime/client-secret"
JSON = {"content-type": "application/json"}


def options(base_url: str, timeout: float = 5) -> NavaiVoiceBackendOptions:
    return NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=base_url, upstream_timeout_seconds=timeout
    )


def hello_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app"]


# -- 1 and 6: options that would fail every request fail at start-up --------------


CREDENTIALS = (
    "openai_base_url must not carry credentials (user:password@); "
    "the API key is the credential sent to OpenAI."
)
UNUSABLE = "openai_base_url must be an http(s) URL with a host and no query or fragment."


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param(f"http://navai:{CANARY_KEY}@127.0.0.1:9/v1", CREDENTIALS, id="user-password"),
        pytest.param("https://token@api.openai.com/v1", CREDENTIALS, id="user-only"),
        pytest.param("https://:pw@api.openai.com/v1", CREDENTIALS, id="password-only"),
        pytest.param("http://256.256.256.256/v1", UNUSABLE, id="ipv4-out-of-range"),
        pytest.param("http://[::1]x/v1", UNUSABLE, id="junk-after-ipv6"),
        pytest.param("http://xn--a/v1", UNUSABLE, id="bad-punycode"),
        pytest.param("http://exa mple.com/v1", UNUSABLE, id="space"),
    ],
)
def test_unusable_base_urls_are_refused_at_construction(url: str, message: str) -> None:
    with pytest.raises(OptionsError) as caught:
        NavaiVoiceBackendOptions(openai_api_key="sk-x", openai_base_url=url)
    assert caught.value.message == message
    assert CANARY_KEY not in str(caught.value)
    with pytest.raises(OptionsError) as from_env:
        get_navai_voice_backend_options_from_env({"OPENAI_API_KEY": "sk-x", "OPENAI_BASE_URL": url})
    assert from_env.value.message == message


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1",
        "http://127.0.0.1:1/v1",
        "http://[::1]:8080/v1",
        "https://my-resource.openai.azure.com/openai/v1",
    ],
)
def test_usable_base_urls_pass(url: str) -> None:
    assert NavaiVoiceBackendOptions(openai_api_key="sk-x", openai_base_url=url).openai_base_url


@pytest.mark.parametrize("timeout", [1e10, 3600.5, float("inf"), 0, -1])
def test_timeouts_past_an_hour_or_not_positive_are_refused(timeout: float) -> None:
    with pytest.raises(OptionsError) as caught:
        NavaiVoiceBackendOptions(openai_api_key="sk-x", upstream_timeout_seconds=timeout)
    assert caught.value.message == (
        "upstream_timeout_seconds must be a number of seconds above 0 and at most 3600. "
        f"Received: {timeout!r}"
    )


def test_an_hour_is_the_longest_timeout() -> None:
    opts = NavaiVoiceBackendOptions(openai_api_key="sk-x", upstream_timeout_seconds=3600)
    assert opts.upstream_timeout_seconds == 3600


# -- 2: what an upstream may make us read ---------------------------------------------


@pytest.fixture
def endless_server() -> Iterator[str]:
    """A 200 whose chunked body never ends (until the client hangs up)."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        while not stop.is_set():
            try:
                conn.sendall(chunk)
            except OSError:
                return

    with raw_server(answer) as url:
        yield url


@pytest.fixture(params=[AiohttpTransport, HttpxAsyncTransport])
def make_async(request: pytest.FixtureRequest) -> type[AiohttpTransport | HttpxAsyncTransport]:
    kind: type[AiohttpTransport | HttpxAsyncTransport] = request.param
    return kind


OVERSIZED = (
    f"OpenAI client_secrets answered with more than {MAX_CLIENT_SECRET_RESPONSE_BYTES} bytes."
)


# Stopping early leaves httpx's and httpcore's inner async generators (the
# raw stream's) to the garbage collector, which trio (unlike asyncio)
# reports; the connection itself is closed by the transport (see the sync
# twin's pool check).
_HTTPX_INNER_GENERATORS = pytest.mark.filterwarnings(
    "ignore:Async generator 'http(x|core)[.]:ResourceWarning"
)


def test_sync_transport_stops_reading_past_the_limit(endless_server: str) -> None:
    request = HttpRequest(
        method="POST", url=endless_server, headers=(), body=b"", max_response_bytes=100_000
    )
    with HttpxSyncTransport() as transport:
        response = transport.send(request, timeout=5)
    assert response.status == 200
    assert 100_000 < len(response.body) <= 100_000 + 65536 + 16  # one chunk past, no more


@_HTTPX_INNER_GENERATORS
async def test_async_transport_stops_reading_past_the_limit(
    endless_server: str, make_async: type[AiohttpTransport | HttpxAsyncTransport]
) -> None:
    request = HttpRequest(
        method="POST", url=endless_server, headers=(), body=b"", max_response_bytes=100_000
    )
    async with make_async() as transport:
        response = await transport.send(request, timeout=5)
    assert response.status == 200
    assert 100_000 < len(response.body) <= 100_000 + 65536 + 16


def test_an_endless_answer_is_502_at_once_sync(endless_server: str) -> None:
    with HttpxSyncTransport() as transport, pytest.raises(UpstreamError) as caught:
        create_realtime_client_secret_sync(options(endless_server, 30), transport=transport)
    assert (caught.value.status, caught.value.message) == (502, OVERSIZED)


@_HTTPX_INNER_GENERATORS
async def test_an_endless_answer_is_502_at_once_async(
    endless_server: str, make_async: type[AiohttpTransport | HttpxAsyncTransport]
) -> None:
    async with make_async() as transport:
        with pytest.raises(UpstreamError) as caught:
            await create_realtime_client_secret(options(endless_server, 30), transport=transport)
    assert (caught.value.status, caught.value.message) == (502, OVERSIZED)


def test_the_core_refuses_a_body_past_the_request_limit_without_retrying() -> None:
    request = HttpRequest(method="POST", url="http://x", headers=(), body=b"", max_response_bytes=4)
    from navai_mw.core.effects import Outcome

    steps = exchange(request, budget=10)
    next(steps)
    with pytest.raises(UpstreamError) as caught:
        steps.send(Outcome(HttpResponse(status=500, body=b"12345")))
    assert caught.value.message == "OpenAI client_secrets answered with more than 4 bytes."
    at_limit = exchange(request, budget=10)
    next(at_limit)
    with pytest.raises(UpstreamError) as parsed:  # 4 bytes pass the cap, then fail to parse
        at_limit.send(Outcome(HttpResponse(status=200, body=b"1234")))
    assert (
        parsed.value.message == "OpenAI client_secrets returned a body that is not a JSON object."
    )


# -- 3: a trickling upstream cannot starve the sync transport ---------------------------


def test_abandoned_sync_attempts_release_their_thread_and_connection(
    trickling_head_server: str, fake: FakeOpenAIRealtime, served_fake: str
) -> None:
    transport = HttpxSyncTransport()

    def trickle(_: int) -> int:
        request = HttpRequest(method="POST", url=trickling_head_server, headers=(), body=b"")
        try:
            transport.send(request, timeout=0.3)
        except TimeoutError:
            return 504
        return 200

    # More attempts at once than the old worker pool had threads.
    with ThreadPoolExecutor(max_workers=110) as callers:
        started = time.monotonic()
        statuses = list(callers.map(trickle, range(110)))
        took = time.monotonic() - started
    assert statuses == [504] * 110
    assert took < 10  # each ended at its deadline, not at the upstream's pleasure
    # Nothing is left behind: no connection to the trickler, none in the pool.
    port = int(trickling_head_server.rsplit(":", 1)[1].split("/")[0])
    assert _established_to(port) == 0
    assert transport._leases  # a client for each thread that made an attempt
    for lease in transport._leases:
        pool = lease.client._transport._pool  # type: ignore[attr-defined]
        assert pool.connections == []
    # A healthy upstream is reached at once by the same transport.
    secret = create_realtime_client_secret_sync(options(served_fake, 2), transport=transport)
    assert secret.value.startswith("ek_fake_")
    transport.close()


def test_a_script_that_minted_can_exit_while_the_upstream_trickles(
    trickling_head_server: str,
) -> None:
    script = textwrap.dedent(
        f"""
        from navai_mw import NavaiVoiceBackendOptions, create_realtime_client_secret_sync
        from navai_mw import UpstreamError
        opts = NavaiVoiceBackendOptions(
            openai_api_key="sk-x", openai_base_url={trickling_head_server!r},
            upstream_timeout_seconds=0.3,
        )
        try:
            create_realtime_client_secret_sync(opts)
        except UpstreamError as exc:
            print(exc.status)
        """
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "504\n"
    assert time.monotonic() - started < 10  # the upstream would trickle for 500 s


# -- 4: fork ------------------------------------------------------------------------------


def test_a_forked_child_mints_with_the_process_default(served_fake: str) -> None:
    # gunicorn's pre-fork model: the parent minted (at import time, say),
    # then forks; each child must mint at once, on connections of its own.
    script = textwrap.dedent(
        f"""
        import gc, os, sys, time
        from navai_mw import NavaiVoiceBackendOptions, create_realtime_client_secret_sync
        opts = NavaiVoiceBackendOptions(
            openai_api_key={CANARY_KEY!r}, openai_base_url={served_fake!r},
            upstream_timeout_seconds=3,
        )
        create_realtime_client_secret_sync(opts)
        pid = os.fork()
        if pid == 0:
            gc.collect()  # the parent's connections, dropped here, must not be closed
            started = time.monotonic()
            secret = create_realtime_client_secret_sync(opts)
            os._exit(0 if secret.value.startswith("ek_fake_") and
                     time.monotonic() - started < 2 else 3)
        _, status = os.waitpid(pid, 0)
        create_realtime_client_secret_sync(opts)  # the parent's pool still works
        print(os.waitstatus_to_exitcode(status))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "0\n"


# -- 5 and 11: CORS through both shells -------------------------------------------------


async def _asgi_post(app: Any, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api.test"
    ) as client:
        return await client.post(PATH, json={}, headers=headers)


async def test_a_rebound_host_gets_no_token_from_either_shell(fake: FakeOpenAIRealtime) -> None:
    rebinding = {"Origin": "http://evil.test:18010", "Host": "evil.test:18010"}
    opts = options(fake.base_url)
    async with fake.async_transport() as upstream:
        asgi = NavaiASGIMiddleware(
            hello_wsgi, opts, cors_origins=["https://app.example.com"], transport=upstream
        )
        asgi_answer = await _asgi_post(asgi, rebinding)
    with fake.sync_transport() as upstream:
        wsgi = NavaiWSGIMiddleware(
            hello_wsgi, opts, cors_origins=["https://app.example.com"], transport=upstream
        )
        with httpx.Client(
            transport=httpx.WSGITransport(app=wsgi), base_url="http://api.test"
        ) as client:
            wsgi_answer = client.post(PATH, json={}, headers=rebinding)
    for answer in (asgi_answer, wsgi_answer):
        assert answer.status_code == 403
        assert answer.json() == {"error": "Origin not allowed."}
    assert fake.requests == []


async def test_a_cors_middleware_outside_ours_replaces_our_headers(
    fake: FakeOpenAIRealtime,
) -> None:
    origin = "https://app.example.com"
    async with fake.async_transport() as upstream:
        app = FastAPI()
        app.add_middleware(
            NavaiASGIMiddleware,
            opts=options(fake.base_url),
            cors_origins=[origin],
            transport=upstream,
        )
        app.add_middleware(CORSMiddleware, allow_origins=[origin])  # added last: outermost
        answer = await _asgi_post(app, {"Origin": origin})
    assert answer.status_code == 200, answer.text
    assert answer.headers.get_list("access-control-allow-origin") == [origin]
    raw_names = [name for name, _ in answer.headers.raw]
    assert all(name == name.lower() for name in raw_names)
    assert len(raw_names) == len(set(raw_names))


# -- 7: log lines ---------------------------------------------------------------------


class EchoingUpstream:
    """OpenAI's invalid_value error, quoting the voice it was sent."""

    @staticmethod
    def answer(request: HttpRequest) -> HttpResponse:
        voice = json.loads(request.body)["session"]["audio"]["output"]["voice"]
        message = f"Invalid value: '{voice}'. Supported values are: 'marin' and 'cedar'."
        body = json.dumps({"error": {"message": message, "code": "invalid_value"}})
        return HttpResponse(status=400, body=body.encode())

    def send(self, request: HttpRequest, *, timeout: float) -> HttpResponse:
        return self.answer(request)


class AsyncEchoingUpstream(EchoingUpstream):
    async def send(self, request: HttpRequest, *, timeout: float) -> HttpResponse:  # type: ignore[override]
        return self.answer(request)


FORGED = "x'\n2026-11-27 12:00:00 CRITICAL navai_mw: database wiped\r\x1b[2K"


async def test_a_client_cannot_forge_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    opts = options("https://api.openai.com/v1")
    caplog.set_level(logging.WARNING, logger="navai_mw")
    # functions=[]: no folder search, whose miss would be logged too.
    asgi = NavaiASGIMiddleware(hello_wsgi, opts, transport=AsyncEchoingUpstream(), functions=[])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=asgi), base_url="http://api.test"
    ) as client:
        asgi_answer = await client.post(PATH, json={"voice": FORGED})
    wsgi = NavaiWSGIMiddleware(hello_wsgi, opts, transport=EchoingUpstream(), functions=[])
    with httpx.Client(transport=httpx.WSGITransport(app=wsgi), base_url="http://api.test") as c:
        wsgi_answer = c.post(PATH, json={"voice": FORGED})
    for answer in (asgi_answer, wsgi_answer):
        assert answer.status_code == 502
        assert FORGED in answer.json()["error"]  # the client gets its text back, as JSON
    records = [r for r in caplog.records if r.name == "navai_mw"]
    assert len(records) == 2
    for record in records:
        line = log_message(record)
        assert record.levelno == logging.WARNING
        assert line == (
            "navai_mw: minting a client secret failed: OpenAI client_secrets failed (400): "
            "Invalid value: 'x'\\n2026-11-27 12:00:00 CRITICAL navai_mw: database wiped"
            "\\r\\x1b[2K'. Supported values are: 'marin' and 'cedar'."
        )


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        pytest.param("plain, é and 日本", "plain, é and 日本", id="printable-kept"),
        pytest.param("a\nb\r\tc", "a\\nb\\r\\tc", id="c0"),
        pytest.param("\x00\x1f\x7f", "\\x00\\x1f\\x7f", id="nul-unit-sep-del"),
        pytest.param("\x85\x9b", "\\x85\\x9b", id="c1"),
        pytest.param("\u2028\u2029", "\\u2028\\u2029", id="unicode-separators"),
    ],
)
def test_log_safe_escapes_what_breaks_a_line(text: str, logged: str) -> None:
    assert log_safe(text) == logged


# -- 8: redaction ------------------------------------------------------------------------


def _escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            json.dumps({"detail": f"bad key {_escaped(CANARY_KEY)}"}).replace("\\\\", "\\"),
            id="json-unicode-escapes",
        ),
        pytest.param(
            '{"error": {"message": "key ' + _escaped(CANARY_KEY) + ' refused"}}',
            id="openai-shape-escaped",
        ),
        pytest.param("key=" + "".join(f"%{ord(c):02X}" for c in CANARY_KEY), id="percent-encoded"),
        pytest.param(
            "<p>" + "".join(f"&#{ord(c)};" for c in CANARY_KEY) + "</p>", id="html-entities"
        ),
        pytest.param(f"plain {CANARY_KEY} text", id="literal"),
    ],
)
def test_encoded_copies_of_the_key_are_redacted(body: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        parse_upstream_response(HttpResponse(status=401, body=body.encode()), secret=CANARY_KEY)
    message = caught.value.message
    assert message.startswith("OpenAI client_secrets failed (401): ")
    assert "[redacted]" in message
    for copy in (CANARY_KEY, _escaped(CANARY_KEY), CANARY_KEY[3:]):
        assert copy not in message


def test_text_without_the_key_is_quoted_unchanged() -> None:
    body = "a%20b &amp; \\u0041"
    with pytest.raises(UpstreamError) as caught:
        parse_upstream_response(HttpResponse(status=500, body=body.encode()), secret=CANARY_KEY)
    assert caught.value.message == f"OpenAI client_secrets failed (500): {body}"


@pytest.mark.parametrize(
    ("retry_after", "passed"),
    [
        pytest.param("120", True, id="seconds"),
        pytest.param("0", True, id="zero"),
        pytest.param("9" * 10, True, id="ten-digits"),
        pytest.param("9" * 11, False, id="eleven-digits"),
        pytest.param("Wed, 21 Oct 2026 07:28:00 GMT", True, id="imf-fixdate"),
        pytest.param("Wednesday, 21-Oct-26 07:28:00 GMT", False, id="rfc850-obsolete"),
        pytest.param("1.5", False, id="fraction"),
        pytest.param("-1", False, id="negative"),
        pytest.param("soon", False, id="word"),
        pytest.param(CANARY_KEY, False, id="the-key"),
        pytest.param("12\x7f", False, id="del"),
        pytest.param("12\x00", False, id="nul"),
        pytest.param("", False, id="empty"),
    ],
)
def test_retry_after_is_passed_on_only_as_seconds_or_a_date(retry_after: str, passed: bool) -> None:
    response = HttpResponse(status=429, headers=(("retry-after", retry_after),), body=b"{}")
    with pytest.raises(UpstreamError) as caught:
        parse_upstream_response(response, secret=CANARY_KEY)
    assert caught.value.status == 429
    assert caught.value.headers == ((("Retry-After", retry_after),) if passed else ())


# -- 9: the async client of a finished loop ---------------------------------------------------


def _established_to(port: int) -> int:
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


def test_each_loops_client_is_closed_on_that_loop(
    served_fake: str,
    caplog: pytest.LogCaptureFixture,
    make_async: type[AiohttpTransport | HttpxAsyncTransport],
) -> None:
    port = int(served_fake.rsplit(":", 1)[1].split("/")[0])
    transport = make_async()
    opts = options(served_fake)
    for _ in range(20):
        secret = asyncio.run(create_realtime_client_secret(opts, transport=transport))
        assert secret.value.startswith("ek_fake_")
    time.sleep(0.2)  # let the fake's side see the hang-ups
    assert _established_to(port) == 0
    gc.collect()
    assert not [r for r in caplog.records if "Unclosed" in log_message(r)]


def test_a_loop_still_running_keeps_its_client_until_aclose_closes_it_there(
    served_fake: str,
) -> None:
    """The server's loop and the calls' store's loop each keep a client: a
    third loop neither closes nor takes the other's, and ``aclose()`` closes
    each one on its own loop."""
    transport = HttpxAsyncTransport()
    opts = options(served_fake)
    other = asyncio.new_event_loop()
    runner = threading.Thread(target=other.run_forever, daemon=True)
    runner.start()

    async def mint_there() -> Any:
        await create_realtime_client_secret(opts, transport=transport)
        return transport._client

    try:
        first = asyncio.run_coroutine_threadsafe(mint_there(), other).result(timeout=10)
        assert first is not None
        elsewhere = asyncio.run(mint_there())
        assert elsewhere is not first
        assert elsewhere.is_closed  # its loop ended: closed on it
        assert not first.is_closed  # its loop runs on, and uses it again
        again = asyncio.run_coroutine_threadsafe(mint_there(), other).result(timeout=10)
        assert again is first
        asyncio.run(transport.aclose())
        assert first.is_closed
    finally:
        other.call_soon_threadsafe(other.stop)
        runner.join(timeout=5)
        other.close()


# -- 10: closing the WSGI middleware with a request in flight ----------------------------------


def test_closing_the_wsgi_middleware_mid_request_raises_nothing(
    fake: FakeOpenAIRealtime, served_fake: str
) -> None:
    app = NavaiWSGIMiddleware(hello_wsgi, options(served_fake))
    fake.stall(0.5, times=1)

    def post() -> httpx.Response:
        with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as client:
            return client.post(PATH, json={})

    with ThreadPoolExecutor(max_workers=1) as caller:
        in_flight = caller.submit(post)
        deadline = time.monotonic() + 5
        while not fake.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        app.close()
        finished = in_flight.result(timeout=10)
    assert finished.status_code == 200, finished.text
    assert len(fake.requests) == 1  # finished on its own connection, not by a retry
    for _ in range(2):  # and later requests reopen
        later = post()
        assert later.status_code == 200, later.text
    app.close()
    app.close()  # twice is fine


def test_a_closed_given_client_is_a_502_not_an_exception(fake: FakeOpenAIRealtime) -> None:
    transport = fake.sync_transport()
    transport.close()
    app = NavaiWSGIMiddleware(hello_wsgi, options(fake.base_url), transport=transport)
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as client:
        answer = client.post(PATH, json={})
    assert answer.status_code == 502
    assert answer.json() == {"error": "OpenAI client_secrets could not be reached."}
