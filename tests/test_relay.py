"""The WebRTC relay on both shells, in process, against a recorded upstream:
the multipart body OpenAI expects (its session checked with openai-python),
per-request overrides from the query, the answer and its Location (mount
point included), every refusal, upstream failures, hangups and their
owners, and the time cap.

The browser over real WebRTC is in test_browser_relay.py."""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.from_thread
import httpx
import pytest
from openai.types.realtime import RealtimeSessionCreateRequest

from navai_mw import (
    HttpRequest,
    HttpResponse,
    NavaiASGIMiddleware,
    NavaiVoiceBackendOptions,
    NavaiWSGIMiddleware,
)
from navai_mw.core.errors import RequestError
from navai_mw.endpoint.routes.relay_steps import check_offer, overrides_from_query
from navai_mw.upstreams.realtime_calls import multipart

from .conftest import CANARY_KEY
from .redis_server import RedisServer, redis_fixture


@pytest.fixture(autouse=True)
def _relay_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relays are off unless switched on: every test here switches them on
    through the environment, as a deployment would (NAVAI_RELAY)."""
    monkeypatch.setenv("NAVAI_RELAY", "true")


CALLS = "/navai/realtime/calls"
OFFER = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
)
ANSWER = "v=0\r\no=- 9 9 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
SDP = {"content-type": "application/sdp"}


class Upstream:
    """OpenAI's calls API, recorded: every request, and what to answer."""

    def __init__(self) -> None:
        self.requests: list[HttpRequest] = []
        self.answer_status = 201
        self.ids = (f"rtc_{n:04d}" for n in itertools.count())
        self.lock = threading.Lock()

    def reply(self, request: HttpRequest) -> HttpResponse:
        with self.lock:
            self.requests.append(request)
        if request.url.endswith("/hangup"):
            return HttpResponse(status=200, body=b"{}")
        if self.answer_status != 201:
            body = json.dumps({"error": {"message": f"sorry {CANARY_KEY}"}}).encode()
            headers = (("retry-after", "9"),) if self.answer_status == 429 else ()
            return HttpResponse(status=self.answer_status, headers=headers, body=body)
        call_id = next(self.ids)
        return HttpResponse(
            status=201,
            headers=(("location", f"/v1/realtime/calls/{call_id}"),),
            body=ANSWER.encode(),
        )

    def offers(self) -> list[HttpRequest]:
        return [r for r in self.requests if not r.url.endswith("/hangup")]

    def hangups(self) -> list[str]:
        return [r.url.rsplit("/", 2)[-2] for r in self.requests if r.url.endswith("/hangup")]


class SyncUpstream:
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    def send(self, request: HttpRequest, *, timeout: float) -> HttpResponse:
        return self.upstream.reply(request)


class AsyncUpstream:
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    async def send(self, request: HttpRequest, *, timeout: float) -> HttpResponse:
        return self.upstream.reply(request)

    async def aclose(self) -> None:
        return None


async def app_asgi(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


def app_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"app"]


Request = Callable[..., httpx.Response]


@contextmanager
def both_shells(
    upstream: Upstream, opts: NavaiVoiceBackendOptions | None = None, **keywords: Any
) -> Iterator[list[tuple[str, Request, Any]]]:
    opts = opts or NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY)
    keywords.setdefault("functions", [])
    with anyio.from_thread.start_blocking_portal() as portal:
        asgi = NavaiASGIMiddleware(app_asgi, opts, transport=AsyncUpstream(upstream), **keywords)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=asgi, root_path="/app"), base_url="http://api.test"
        )

        def asgi_request(method: str, path: str, **kw: Any) -> httpx.Response:
            return portal.call(lambda: client.request(method, "/app" + path, **kw))

        wsgi = NavaiWSGIMiddleware(app_wsgi, opts, transport=SyncUpstream(upstream), **keywords)
        with httpx.Client(
            transport=httpx.WSGITransport(app=wsgi, script_name="/app"),
            base_url="http://api.test",
        ) as sync_client:

            def wsgi_request(method: str, path: str, **kw: Any) -> httpx.Response:
                # httpx's WSGI transport leaves PATH_INFO whole; a server
                # mounting the app at /app would strip it, as here.
                return sync_client.request(method, path, **kw)

            yield [("asgi", asgi_request, asgi), ("wsgi", wsgi_request, wsgi)]
        wsgi.close()
        portal.call(asgi.aclose)
        portal.call(client.aclose)


def parts(request: HttpRequest) -> dict[str, tuple[str, bytes]]:
    """The multipart body's fields: name → (content type, bytes)."""
    content_type = dict(request.headers)["Content-Type"]
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + request.body
    )
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        fields[str(name)] = (part.get_content_type(), part.get_payload(decode=True))
    return fields


# -- relaying an offer --------------------------------------------------------------------


def test_an_offer_is_relayed_with_the_session_navai_builds() -> None:
    upstream = Upstream()
    template = {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, session=template)
    with both_shells(upstream, opts) as shells:
        for shell, request, _ in shells:
            response = request(
                "POST", CALLS + "?voice=cedar&language=Spanish", content=OFFER, headers=SDP
            )
            assert response.status_code == 201, (shell, response.text)
            assert response.headers["content-type"] == "application/sdp"
            assert response.headers["cache-control"] == "no-store"
            assert response.text == ANSWER
            call_id = upstream.offers()[-1] and response.headers["location"].rsplit("/", 1)[-1]
            # As the browser must call it: below the mount point.
            assert response.headers["location"] == f"/app{CALLS}/{call_id}"
            sent = upstream.offers()[-1]
            assert sent.url == "https://api.openai.com/v1/realtime/calls"
            headers = dict(sent.headers)
            assert headers["Authorization"] == f"Bearer {CANARY_KEY}"
            assert headers["Accept"] == "application/sdp"
            fields = parts(sent)
            assert set(fields) == {"sdp", "session"}
            assert fields["sdp"] == ("application/sdp", OFFER.encode())
            kind, raw_session = fields["session"]
            assert kind == "application/json"
            session = json.loads(raw_session)
            RealtimeSessionCreateRequest.model_validate(session)
            assert session["audio"]["output"]["voice"] == "cedar"
            assert session["instructions"].endswith("Always reply in Spanish.")
            assert session["audio"]["input"]["turn_detection"] == {"type": "semantic_vad"}
            assert CANARY_KEY not in response.text


REFUSED = [
    pytest.param("?apiKey=sk-user", OFFER, SDP, 400, "apiKey is not allowed in a URL", id="key"),
    pytest.param("?colour=red", OFFER, SDP, 400, "Unknown query parameter 'colour'", id="query"),
    pytest.param("", "hello", SDP, 400, "Request body is not an SDP offer", id="not-sdp"),
    pytest.param("", OFFER, {"content-type": "text/plain"}, 415, "application/sdp", id="415"),
    pytest.param("", "v=0\r\n" + "a" * 40_000, SDP, 413, "larger than", id="413"),
    pytest.param("?voice=5", OFFER, SDP, 200, "", id="voice-as-text"),
]


@pytest.mark.parametrize(("query", "body", "headers", "status", "message"), REFUSED)
def test_what_the_relay_refuses(
    query: str, body: str, headers: dict[str, str], status: int, message: str
) -> None:
    upstream = Upstream()
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, allowed_voices=["marin", "5"])
    with both_shells(upstream, opts) as shells:
        for _, request, _ in shells:
            response = request("POST", CALLS + query, content=body, headers=headers)
            if status == 200:
                assert response.status_code == 201
                continue
            assert response.status_code == status
            assert message in response.json()["error"]
    if status != 200:
        assert upstream.requests == []


def test_the_relay_needs_the_servers_key_and_answers_post_only() -> None:
    upstream = Upstream()
    opts = NavaiVoiceBackendOptions(allow_api_key_from_request=True)
    with both_shells(upstream, opts) as shells:
        for _, request, _ in shells:
            response = request("POST", CALLS, content=OFFER, headers=SDP)
            assert response.status_code == 400
            assert response.json()["error"].startswith("Missing API key.")
            got = request("GET", CALLS)
            assert got.status_code == 405
            assert got.json() == {"error": "Method not allowed. Use POST."}
    assert upstream.requests == []


@pytest.mark.parametrize(("status", "answered"), [(500, 502), (429, 429), (401, 502)])
def test_upstream_failures_map_and_are_never_retried(status: int, answered: int) -> None:
    upstream = Upstream()
    upstream.answer_status = status
    with both_shells(upstream) as shells:
        for _, request, _ in shells:
            response = request("POST", CALLS, content=OFFER, headers=SDP)
            assert response.status_code == answered
            assert response.json()["error"].startswith(f"OpenAI realtime calls failed ({status})")
            assert CANARY_KEY not in response.text
            if status == 429:
                assert response.headers["retry-after"] == "9"
    assert len(upstream.requests) == 2  # one per shell: a POST is never sent twice


# -- hanging up -------------------------------------------------------------------------------


def test_a_call_is_hung_up_by_its_owner_only() -> None:
    upstream = Upstream()

    def user(info: Any) -> str | None:
        return info.headers.get("x-user")

    with both_shells(upstream, authorize=user) as shells:
        for _, request, _ in shells:
            made = request("POST", CALLS, content=OFFER, headers={**SDP, "x-user": "ana"})
            location = made.headers["location"].removeprefix("/app")
            call_id = location.rsplit("/", 1)[-1]
            # Someone else's call does not exist, as far as they can tell.
            assert request("DELETE", location, headers={"x-user": "ben"}).status_code == 404
            assert (
                request("DELETE", f"{CALLS}/rtc_nope", headers={"x-user": "ana"}).status_code == 404
            )
            ended = request("DELETE", location, headers={"x-user": "ana"})
            assert ended.status_code == 204
            assert ended.content == b""
            assert upstream.hangups()[-1] == call_id
            assert request("DELETE", location, headers={"x-user": "ana"}).status_code == 404
            assert request("POST", location, headers={"x-user": "ana"}).status_code == 405
            # A path that is not a call id is not ours.
            assert request("DELETE", f"{CALLS}/a/b", headers={"x-user": "ana"}).text == "app"


def test_the_time_cap_hangs_up_on_both_shells() -> None:
    upstream = Upstream()
    with both_shells(upstream, max_call_seconds=0.2) as shells:
        for _, request, _ in shells:
            made = request("POST", CALLS, content=OFFER, headers=SDP)
            call_id = made.headers["location"].rsplit("/", 1)[-1]
            deadline = time.monotonic() + 10  # a bound, not a measurement
            while call_id not in upstream.hangups() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert call_id in upstream.hangups()
            # Hung up: its owner can no longer end it.
            assert request("DELETE", made.headers["location"][4:]).status_code == 404


def test_pending_hangups_are_cancelled_at_shutdown() -> None:
    upstream = Upstream()
    with both_shells(upstream, max_call_seconds=30) as shells:
        for _, request, _ in shells:
            assert request("POST", CALLS, content=OFFER, headers=SDP).status_code == 201
    # Both middlewares closed: their timers and tasks are gone, nothing hung up.
    assert upstream.hangups() == []
    assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer) and t.is_alive()]


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_the_relay_and_its_cap_run_under_trio(store: str, request: pytest.FixtureRequest) -> None:
    """The cap's timer, the Redis client and the hangup run on the calls'
    store's own loop, so a trio server's calls are capped as well."""
    upstream = Upstream()
    storage = {}
    if store == "redis":
        storage = {"rate_limit_storage": request.getfixturevalue("shared_redis").url}

    async def main() -> str:
        app = NavaiASGIMiddleware(
            app_asgi,
            NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY),
            transport=AsyncUpstream(upstream),
            functions=[],
            max_call_seconds=0.2,
            **storage,
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api.test"
        ) as client:
            made = await client.post(CALLS, content=OFFER, headers=SDP)
            assert made.status_code == 201
            call_id = made.headers["location"].rsplit("/", 1)[-1]
            with anyio.fail_after(10):  # a bound, not a measurement
                while call_id not in upstream.hangups():
                    await anyio.sleep(0.02)
            assert (await client.delete(made.headers["location"])).status_code == 404
        await app.aclose()
        return call_id

    call_id = anyio.run(main, backend="trio")
    assert upstream.hangups() == [call_id]


# -- the pieces --------------------------------------------------------------------------------


def test_multipart_is_deterministic_and_its_boundary_is_not_in_the_parts() -> None:
    fields = {"sdp": ("application/sdp", OFFER.encode()), "session": ("application/json", b"{}")}
    first, body = multipart(fields)
    assert multipart(fields) == (first, body)
    boundary = first.split("boundary=", 1)[1]
    assert body.count(boundary.encode()) == 3  # two openings and the end
    assert body.endswith(f"--{boundary}--\r\n".encode())


@pytest.mark.parametrize("body", [b"", b"v=0\r\n", b"\xff\xfe", b"m=audio 9\r\n", b"V=0\nm=x"])
def test_what_is_not_an_offer(body: bytes) -> None:
    with pytest.raises(RequestError):
        check_offer(body)


def test_query_overrides_keep_the_wire_names() -> None:
    assert overrides_from_query("voiceAccent=Irish&voice=marin") == {
        "voiceAccent": "Irish",
        "voice": "marin",
    }


# -- with a shared Redis ---------------------------------------------------------------------

shared_redis = redis_fixture(scope="module")


def _until(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 15  # a bound, not a measurement
    while not check() and time.monotonic() < deadline:
        time.sleep(0.02)
    return check()


def test_with_redis_another_worker_ends_the_call(shared_redis: RedisServer) -> None:
    """Worker A relays a capped call and dies; worker B, started after, ends
    it at its deadline. And B can hang up what A relayed for its owner."""
    upstream = Upstream()
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY)
    shared = {"rate_limit_storage": shared_redis.url, "functions": []}
    worker_a = NavaiWSGIMiddleware(
        app_wsgi, opts, transport=SyncUpstream(upstream), max_call_seconds=1, **shared
    )
    with httpx.Client(transport=httpx.WSGITransport(app=worker_a), base_url="http://a") as a:
        capped = a.post(CALLS, content=OFFER, headers=SDP)
        held = a.post(CALLS + "?voice=cedar", content=OFFER, headers=SDP)
    worker_a.close()  # A stops: it ends nothing from now on
    capped_id = capped.headers["location"].rsplit("/", 1)[-1]
    held_id = held.headers["location"].rsplit("/", 1)[-1]

    worker_b = NavaiWSGIMiddleware(
        app_wsgi, opts, transport=SyncUpstream(upstream), max_call_seconds=3600, **shared
    )
    try:
        with httpx.Client(transport=httpx.WSGITransport(app=worker_b), base_url="http://b") as b:
            # B knows A's calls: it ends the one whose owner asks.
            assert b.delete(held.headers["location"]).status_code == 204
            assert held_id in upstream.hangups()
            assert b.delete(held.headers["location"]).status_code == 404
            # And the capped one, at its deadline, without being asked.
            assert _until(lambda: capped_id in upstream.hangups())
            assert upstream.hangups().count(capped_id) == 1
    finally:
        worker_b.close()


def test_with_redis_under_asgi_the_cap_holds_too(shared_redis: RedisServer) -> None:
    upstream = Upstream()
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY)

    async def main() -> str:
        app = NavaiASGIMiddleware(
            app_asgi,
            opts,
            transport=AsyncUpstream(upstream),
            max_call_seconds=0.5,
            rate_limit_storage=shared_redis.url,
            functions=[],
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api.test"
        ) as client:
            made = await client.post(CALLS, content=OFFER, headers=SDP)
            call_id = made.headers["location"].rsplit("/", 1)[-1]
            with anyio.fail_after(15):
                while call_id not in upstream.hangups():
                    await anyio.sleep(0.02)
        await app.aclose()
        return call_id

    call_id = anyio.run(main, backend="asyncio")
    assert upstream.hangups() == [call_id]


def test_the_guard_applies_to_calls_as_to_secrets() -> None:
    upstream = Upstream()

    def only_ana(info: Any) -> str | None:
        assert info.route in ("calls", "call_hangup", "client_secret")
        return "ana" if info.headers.get("x-user") == "ana" else None

    with both_shells(upstream, authorize=only_ana, rate_limit={"mint": "2/minute"}) as shells:
        for _, request, _ in shells:
            refused = request("POST", CALLS, content=OFFER, headers=SDP)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
            ana = {**SDP, "x-user": "ana"}
            assert request("POST", CALLS, content=OFFER, headers=ana).status_code == 201
            # Calls and secrets count in one group: the third mint is refused.
            secret = request(
                "POST", "/navai/realtime/client-secret", json={}, headers={"x-user": "ana"}
            )
            assert secret.status_code == 502  # counted; the canned upstream is not OpenAI's
            over = request("POST", CALLS, content=OFFER, headers=ana)
            assert over.status_code == 429
    assert len(upstream.offers()) == 4  # per shell: one call and one secret reached upstream


def test_a_store_that_is_down_never_costs_the_call_nor_answers_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis unreachable: the relayed call is still answered (uncapped, and
    said in the log, which names the store without its password); a hangup
    cannot be authorized: 503, not 500."""
    upstream = Upstream()
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY)
    down = "redis://navai:store-PASSWORD-never-logged@127.0.0.1:1/0"
    with (
        caplog.at_level(logging.WARNING, logger="navai_mw"),
        both_shells(upstream, opts, rate_limit_storage=down, max_call_seconds=60) as shells,
    ):
        for shell, request, _ in shells:
            caplog.clear()
            made = request("POST", CALLS, content=OFFER, headers=SDP)
            assert made.status_code == 201
            assert made.text == ANSWER
            ended = request("DELETE", made.headers["location"].removeprefix("/app"))
            assert ended.status_code == 503
            assert ended.headers["retry-after"] == "5"
            lines = [r.getMessage() for r in caplog.records]
            failures = [line for line in lines if line.startswith("navai_mw: the calls' store")]
            assert failures, shell
            assert all(
                line.startswith("navai_mw: the calls' store redis://127.0.0.1:1/0 failed (")
                for line in failures
            ), failures
            # Said where it happens: the call runs on without its cap.
            uncapped = f"navai_mw: call {made.headers['location'].rsplit('/', 1)[-1]} is not capped"
            assert any(line.startswith(uncapped) for line in lines), lines
            assert "PASSWORD" not in caplog.text
    assert upstream.hangups() == []


def test_hanging_up_is_never_rate_limited() -> None:
    upstream = Upstream()
    with both_shells(upstream, rate_limit={"mint": "1/minute"}) as shells:
        for _, request, _ in shells:
            made = request("POST", CALLS, content=OFFER, headers=SDP)
            assert request("POST", CALLS, content=OFFER, headers=SDP).status_code == 429
            location = made.headers["location"].removeprefix("/app")
            assert request("DELETE", location).status_code == 204


@pytest.mark.parametrize("value", [0, -1, float("inf"), True, "60", 86401])
def test_a_bad_time_cap_fails_at_start_up(value: Any) -> None:
    from navai_mw import OptionsError

    with pytest.raises(OptionsError, match="max_call_seconds must be a number of seconds"):
        NavaiWSGIMiddleware(
            app_wsgi,
            NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY),
            functions=[],
            max_call_seconds=value,
        )


def test_only_a_relaying_middleware_watches_redis_for_deadlines(
    shared_redis: RedisServer,
) -> None:
    def pollers() -> int:
        return sum(t.name == "navai-calls" and t.is_alive() for t in threading.enumerate())

    before = pollers()
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY)
    quiet = NavaiWSGIMiddleware(
        app_wsgi,
        opts,
        functions=[],
        rate_limit_storage=shared_redis.url,
        calls_path=None,
        live_path=None,
    )
    assert pollers() == before  # no calls to end: Redis is not asked twice a second
    relaying = NavaiWSGIMiddleware(
        app_wsgi, opts, functions=[], rate_limit_storage=shared_redis.url
    )
    assert pollers() == before + 1
    relaying.close()
    quiet.close()
    assert _until(lambda: pollers() == before)


class QuotingHangups(Upstream):
    """OpenAI answers a hangup with an error that quotes the key it got."""

    def reply(self, request: HttpRequest) -> HttpResponse:
        if request.url.endswith("/hangup"):
            with self.lock:
                self.requests.append(request)
            sent = dict(request.headers)["Authorization"].removeprefix("Bearer ")
            message = f"Incorrect API key provided: {sent}. Bearer {sent}"
            body = json.dumps({"error": {"message": message}}).encode()
            return HttpResponse(status=401, body=body)
        return super().reply(request)


def test_a_failed_hangup_never_shows_the_key(caplog: pytest.LogCaptureFixture) -> None:
    """OpenAI's 401 on a hangup quotes the key: the caller's 502 and the log
    line quote OpenAI's message with the key redacted, on both shells."""
    upstream = QuotingHangups()
    with caplog.at_level(logging.WARNING, logger="navai_mw"), both_shells(upstream) as shells:
        for _, request, _ in shells:
            made = request("POST", CALLS, content=OFFER, headers=SDP)
            ended = request("DELETE", made.headers["location"].removeprefix("/app"))
            assert ended.status_code == 502
            assert "Incorrect API key provided: [redacted]" in ended.json()["error"]
            assert CANARY_KEY not in ended.text
    assert len(upstream.hangups()) == 2
    assert "[redacted]" in caplog.text
    assert CANARY_KEY not in caplog.text
