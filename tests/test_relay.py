"""The WebRTC relay on both shells, in process, against a recorded upstream:
the multipart body OpenAI expects (its session checked with openai-python),
per-request overrides from the query, the answer and its Location (mount
point included), every refusal, upstream failures, hangups and their
owners, and the time cap.

The browser over real WebRTC is in test_browser_relay.py."""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import itertools
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any

import anyio
import anyio.from_thread
import httpx
import pytest
from openai.types.realtime import RealtimeSessionCreateRequest

from navai_mw import (
    CallReport,
    FunctionContext,
    HttpRequest,
    HttpResponse,
    NavaiASGIMiddleware,
    NavaiVoiceBackendOptions,
    NavaiWSGIMiddleware,
    SessionContext,
)
from navai_mw.core.effects import (
    Admission,
    AdmitCall,
    Attempt,
    Outcome,
    RememberCall,
    Reservation,
    SidebandRoom,
)
from navai_mw.core.errors import RequestError
from navai_mw.endpoint.endpoint import Endpoint
from navai_mw.endpoint.routes.relay_steps import check_offer, overrides_from_query
from navai_mw.runtime import sidebands
from navai_mw.upstreams.realtime_calls import multipart

from .conftest import CANARY_KEY, log_message
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
        self.location = "/v1/realtime/calls/{call_id}"
        self.answer = ANSWER.encode()
        self.hangup_status = 200
        self.hangup_body = b"{}"
        self.unreachable = False
        self.ids = (f"rtc_{n:04d}" for n in itertools.count())
        self.lock = threading.Lock()

    def reply(self, request: HttpRequest) -> HttpResponse:
        with self.lock:
            self.requests.append(request)
        if self.unreachable:
            raise ConnectionRefusedError("nobody home")
        failure = json.dumps({"error": {"message": f"sorry {CANARY_KEY}"}}).encode()
        if request.url.endswith("/hangup"):
            if self.hangup_status >= 300:
                return HttpResponse(status=self.hangup_status, body=failure)
            return HttpResponse(status=self.hangup_status, body=self.hangup_body)
        if self.answer_status >= 300:
            headers = (("retry-after", "9"),) if self.answer_status == 429 else ()
            return HttpResponse(status=self.answer_status, headers=headers, body=failure)
        call_id = next(self.ids)
        return HttpResponse(
            status=self.answer_status,
            headers=(("location", self.location.format(call_id=call_id)),),
            body=self.answer,
        )

    def offers(self) -> list[HttpRequest]:
        return [r for r in self.requests if not r.url.endswith("/hangup")]

    def hangups(self) -> list[str]:
        return [r.url.rsplit("/", 2)[-2] for r in self.requests if r.url.endswith("/hangup")]


class Sockets:
    """OpenAI's sideband WebSockets, recorded: the URL and headers each was
    opened with, and the events sent on it. Each hears ``events`` (JSON
    objects), waits until it was sent ``until_sent`` events and ``release``
    is set, and then closes with ``close_code``; with ``refuse``, none
    opens."""

    def __init__(
        self,
        *events: dict[str, Any],
        close_code: int | None = 1000,
        until_sent: int = 0,
        refuse: bool = False,
    ) -> None:
        self.events = events
        self.close_code = close_code
        self.until_sent = until_sent
        self.refuse = refuse
        self.release = threading.Event()
        self.release.set()
        self.opened: list[tuple[str, dict[str, str]]] = []
        self.timeouts: list[float] = []
        self.sent: list[dict[str, Any]] = []

    @contextlib.asynccontextmanager
    async def connect_websocket(
        self, url: str, headers: Sequence[tuple[str, str]], *, timeout: float
    ) -> AsyncIterator[Any]:
        if self.refuse:
            raise ConnectionRefusedError("no sideband here")
        self.opened.append((url, dict(headers)))
        self.timeouts.append(timeout)
        yield _Socket(self)


class _Socket:
    def __init__(self, sockets: Sockets) -> None:
        self.sockets = sockets
        self.unheard = [json.dumps(event) for event in sockets.events]
        self.sent = 0
        self.close_code: int | None = None

    async def send_text(self, text: str) -> None:
        self.sent += 1
        self.sockets.sent.append(json.loads(text))

    async def receive_text(self) -> str | None:
        if self.unheard:
            return self.unheard.pop(0)
        with anyio.fail_after(20):  # a bound against hangs, not a measurement
            while self.sent < self.sockets.until_sent or not self.sockets.release.is_set():
                await anyio.sleep(0.01)
        self.close_code = self.sockets.close_code
        return None


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


class _OpensSockets:
    """Sideband WebSockets opened the way a transport of one's own opens them."""

    sockets: Sockets

    def connect_websocket(
        self, url: str, headers: Sequence[tuple[str, str]], *, timeout: float
    ) -> AbstractAsyncContextManager[Any]:
        return self.sockets.connect_websocket(url, headers, timeout=timeout)


class SyncUpstreamAndSockets(_OpensSockets, SyncUpstream):
    """The upstream, and its sideband WebSockets."""

    def __init__(self, upstream: Upstream, sockets: Sockets) -> None:
        super().__init__(upstream)
        self.sockets = sockets


class AsyncUpstreamAndSockets(_OpensSockets, AsyncUpstream):
    def __init__(self, upstream: Upstream, sockets: Sockets) -> None:
        super().__init__(upstream)
        self.sockets = sockets


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
    upstream: Upstream,
    opts: NavaiVoiceBackendOptions | None = None,
    *,
    sockets: Sockets | None = None,
    **keywords: Any,
) -> Iterator[list[tuple[str, Request, Any]]]:
    opts = opts or NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY)
    keywords.setdefault("functions", [])
    if sockets is None:
        async_transport: AsyncUpstream = AsyncUpstream(upstream)
        sync_transport: SyncUpstream = SyncUpstream(upstream)
    else:
        async_transport = AsyncUpstreamAndSockets(upstream, sockets)
        sync_transport = SyncUpstreamAndSockets(upstream, sockets)
    with anyio.from_thread.start_blocking_portal() as portal:
        asgi = NavaiASGIMiddleware(app_asgi, opts, transport=async_transport, **keywords)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=asgi, root_path="/app"), base_url="http://api.test"
        )

        def asgi_request(method: str, path: str, **kw: Any) -> httpx.Response:
            return portal.call(lambda: client.request(method, "/app" + path, **kw))

        wsgi = NavaiWSGIMiddleware(app_wsgi, opts, transport=sync_transport, **keywords)
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
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["content-length"] == str(len(ANSWER))
            assert response.text == ANSWER
            call_id = upstream.offers()[-1] and response.headers["location"].rsplit("/", 1)[-1]
            # As the browser must call it: below the mount point.
            assert response.headers["location"] == f"/app{CALLS}/{call_id}"
            sent = upstream.offers()[-1]
            assert (sent.method, sent.url) == ("POST", "https://api.openai.com/v1/realtime/calls")
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


def test_a_relayed_session_goes_through_the_customize_session_hook() -> None:
    upstream = Upstream()
    seen: list[tuple[str, str | None, str | None, str]] = []

    def customize(context: SessionContext) -> dict[str, Any]:
        request = context.request
        seen.append((context.kind, context.identity, request and request.route, request.path))
        return {**context.session, "instructions": f"Greet {context.identity}."}

    with both_shells(upstream, customize_session=customize, authorize=lambda info: "ana") as shells:
        for shell, request, _ in shells:
            response = request("POST", CALLS, content=OFFER, headers=SDP)
            assert response.status_code == 201, (shell, response.text)
            session = json.loads(parts(upstream.offers()[-1])["session"][1])
            RealtimeSessionCreateRequest.model_validate(session)
            assert session["instructions"] == "Greet ana.", shell
    assert seen == [("realtime", "ana", "calls", CALLS)] * 2


def test_a_trailing_slash_is_the_same_route_and_the_same_location() -> None:
    upstream = Upstream()
    with both_shells(upstream) as shells:
        for shell, request, _ in shells:
            response = request("POST", CALLS + "/", content=OFFER, headers=SDP)
            assert response.status_code == 201, (shell, response.text)
            assert response.headers["location"].startswith(f"/app{CALLS}/rtc_")
            assert "//" not in response.headers["location"]


_NO_KEY = (
    "apiKey is not allowed in a URL (URLs end up in access logs); the relay uses the server's key."
)
_NOT_UTF8 = "Request body is not an SDP offer: it is not UTF-8 text."


def _unknown(name: str) -> str:
    allowed = "instructions, language, model, voice, voiceAccent, voiceTone"
    return f"Unknown query parameter {name!r}. Allowed: {allowed}."


REFUSED = [
    pytest.param("?apiKey=sk-user", OFFER, SDP, 400, _NO_KEY, id="key"),
    pytest.param("?colour=red", OFFER, SDP, 400, _unknown("colour"), id="query"),
    pytest.param("?" + "x" * 100 + "=1", OFFER, SDP, 400, _unknown("x" * 64), id="long-name"),
    pytest.param(
        "",
        "hello",
        SDP,
        400,
        "Request body is not an SDP offer (v=0 and an m= line).",
        id="not-sdp",
    ),
    pytest.param(
        "",
        OFFER,
        {"content-type": "text/plain"},
        415,
        "Content-Type must be application/sdp.",
        id="415",
    ),
    pytest.param("", "v=0\r\n" + "a" * 40_000, SDP, 413, "larger than", id="413"),
    pytest.param("?voice=5", OFFER, SDP, 200, "", id="voice-as-text"),
    pytest.param("", OFFER, {}, 415, "Content-Type must be application/sdp.", id="no-type"),
    pytest.param(
        "", OFFER, {"content-type": "Application/SDP; charset=utf-8"}, 200, "", id="typed"
    ),
    pytest.param("", b"v=0\r\n\xff", SDP, 400, _NOT_UTF8, id="not-utf-8"),
]


@pytest.mark.parametrize(("query", "body", "headers", "status", "message"), REFUSED)
def test_what_the_relay_refuses(
    query: str, body: str | bytes, headers: dict[str, str], status: int, message: str
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
            error = response.json()["error"]
            if message.endswith("."):  # the whole message
                assert error == message
            else:
                assert message in error
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
            refused = request("DELETE", location, headers={"x-user": "ben"})
            assert (refused.status_code, refused.json()) == (404, {"error": "Unknown call."})
            assert (
                request("DELETE", f"{CALLS}/rtc_nope", headers={"x-user": "ana"}).status_code == 404
            )
            ended = request("DELETE", location, headers={"x-user": "ana"})
            assert ended.status_code == 204
            assert ended.content == b""
            assert upstream.hangups()[-1] == call_id
            hangup = upstream.requests[-1]
            assert (hangup.method, hangup.url, hangup.body) == (
                "POST",
                f"https://api.openai.com/v1/realtime/calls/{call_id}/hangup",
                b"{}",
            )
            assert dict(hangup.headers) == {
                "Authorization": f"Bearer {CANARY_KEY}",
                "Content-Type": "application/json",
            }
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


def test_each_caller_s_offer_carries_their_safety_identifier() -> None:
    upstream = Upstream()

    def user(info: Any) -> str | None:
        return info.headers.get("x-user")

    with both_shells(upstream, authorize=user) as shells:
        for _, request, _ in shells:
            for name in ("ana", "ben", "ana"):
                made = request("POST", CALLS, content=OFFER, headers={**SDP, "x-user": name})
                assert made.status_code == 201
    ids = [dict(sent.headers)["OpenAI-Safety-Identifier"] for sent in upstream.offers()]
    assert len(set(ids)) == 2
    assert ids[0] == ids[2] == ids[3] == ids[5] != ids[1] == ids[4]
    assert all(len(value) == 64 for value in ids)
    anonymous = Upstream()
    with both_shells(anonymous) as shells:
        for _, request, _ in shells:
            assert request("POST", CALLS, content=OFFER, headers=SDP).status_code == 201
    assert ["OpenAI-Safety-Identifier" in dict(sent.headers) for sent in anonymous.offers()] == [
        False,
        False,
    ]


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        pytest.param({"answer_status": 200}, 201, "", id="200-is-fine"),
        pytest.param({"location": "/v1/realtime/calls/{call_id}/"}, 201, "", id="trailing-slash"),
        pytest.param({"answer_status": 300}, 502, "failed (300): sorry [redacted]", id="300"),
        pytest.param({"location": ""}, 502, "answered without a call id.", id="no-location"),
        pytest.param(
            {"answer": b"v=0\xff"}, 502, "answered with an SDP that is not text.", id="bytes"
        ),
        pytest.param({"answer": b"<html>"}, 502, "answered with no SDP answer.", id="not-sdp"),
        pytest.param({"unreachable": True}, 502, "could not be reached.", id="unreachable"),
    ],
)
def test_what_openai_answers_an_offer_with(
    change: dict[str, Any], status: int, message: str
) -> None:
    upstream = Upstream()
    for name, value in change.items():
        setattr(upstream, name, value)
    with both_shells(upstream) as shells:
        for shell, request, _ in shells:
            response = request("POST", CALLS, content=OFFER, headers=SDP)
            assert response.status_code == status, (shell, response.text)
            if status == 201:
                call_id = response.headers["location"].rsplit("/", 1)[-1]
                assert call_id.startswith("rtc_")
                assert request("DELETE", f"{CALLS}/{call_id}").status_code == 204
                assert upstream.hangups()[-1] == call_id
                continue
            assert response.json()["error"] == f"OpenAI realtime calls {message}"
            assert CANARY_KEY not in response.text
    if status == 502:
        assert len(upstream.offers()) == 2  # never retried


@pytest.mark.parametrize(("granted", "deadline"), [(30.0, 30.0), (None, 60.0)])
def test_a_relayed_call_under_a_budget_reserves_at_most_its_cap_and_ends_when_its_grant_does(
    granted: float | None, deadline: float
) -> None:
    # Driven by hand: what the store is asked, and the time cap the call is held with.
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY)
    endpoint = Endpoint(
        opts, relay=True, budget="10 minutes/day", max_call_seconds=60, budget_clock=time.time
    )
    steps = endpoint.handle("POST", CALLS, SDP, OFFER.encode(), peer="203.0.113.9")
    assert isinstance(next(steps), SidebandRoom)
    admit = steps.send(True)
    assert isinstance(admit, AdmitCall)
    assert admit.cap == 60  # max_call_seconds, not the whole budget
    reservation = Reservation(
        id="r1",
        subject=admit.subject,
        limits=admit.limits,
        starts=(0.0,),
        granted=granted,
        started_at=time.time(),
    )
    attempt = steps.send(Admission(reservation=reservation))
    assert isinstance(attempt, Attempt)
    answered = HttpResponse(
        status=201, headers=(("location", "/v1/realtime/calls/rtc_1"),), body=ANSWER.encode()
    )
    held = steps.send(Outcome(answered))
    assert held == RememberCall("rtc_1", None, deadline)
    steps.close()


def test_the_location_of_a_relayed_call_is_under_the_calls_path_as_configured() -> None:
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY)
    endpoint = Endpoint(opts, relay=True, calls_path="/voice/callsX")
    steps = endpoint.handle("POST", "/voice/callsX", SDP, OFFER.encode())
    answered = HttpResponse(
        status=201, headers=(("location", "/v1/realtime/calls/rtc_1"),), body=ANSWER.encode()
    )
    effect = next(steps)
    while True:  # OpenAI's answer to the offer; None for what the server holds
        try:
            effect = steps.send(Outcome(answered) if isinstance(effect, Attempt) else None)
        except StopIteration as done:
            answer = done.value
            break
    assert answer.status == 201
    assert ("Location", "/voice/callsX/rtc_1") in answer.headers


def test_a_call_id_is_the_locations_last_segment_whole() -> None:
    upstream = Upstream()
    ids = ["rtc_endsWithXX", "rtc_X-X_"]  # one per shell, as OpenAI might name them
    upstream.ids = (call_id for call_id in ids)
    with both_shells(upstream) as shells:
        for (shell, request, _), call_id in zip(shells, ids, strict=True):
            response = request("POST", CALLS, content=OFFER, headers=SDP)
            assert response.status_code == 201, (shell, response.text)
            assert response.headers["location"].rsplit("/", 1)[-1] == call_id
            assert request("DELETE", f"{CALLS}/{call_id}").status_code == 204
            assert upstream.hangups()[-1] == call_id


@pytest.mark.parametrize(
    ("status", "answered"),
    [(200, 204), (204, 204), (404, 204), (300, 502), (400, 502), (405, 502)],
)
def test_a_hangup_openai_refuses_is_a_502_and_the_call_stays(status: int, answered: int) -> None:
    upstream = Upstream()
    with both_shells(upstream) as shells:
        for shell, request, _ in shells:
            made = request("POST", CALLS, content=OFFER, headers=SDP)
            location = made.headers["location"].removeprefix("/app")
            upstream.hangup_status = status
            ended = request("DELETE", location)
            assert ended.status_code == answered, (shell, ended.text)
            if answered == 204:
                assert request("DELETE", location).status_code == 404  # over, and forgotten
                continue
            error = ended.json()["error"]
            assert error == f"OpenAI realtime calls failed ({status}): sorry [redacted]"
            upstream.hangup_status = 200  # still its owner's to end
            assert request("DELETE", location).status_code == 204


def test_a_hangups_answer_is_bounded() -> None:
    upstream = Upstream()
    upstream.hangup_body = b"{" + b" " * (64 * 1024) + b"}"
    with both_shells(upstream) as shells:
        for shell, request, _ in shells:
            made = request("POST", CALLS, content=OFFER, headers=SDP)
            ended = request("DELETE", made.headers["location"].removeprefix("/app"))
            assert ended.status_code == 502, (shell, ended.text)
            assert ended.json()["error"] == (
                "OpenAI realtime calls answered with more than 65536 bytes."
            )


def test_a_hangup_that_cannot_reach_openai_names_it() -> None:
    upstream = Upstream()
    # A budget shorter than the first retry's delay (at least 0.375 s): the
    # refused attempt is the only one, whatever the jitter draws. (With
    # 0.4 s a retry could fit, and the time run out in it: a 504.)
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, upstream_timeout_seconds=0.3)
    with both_shells(upstream, opts) as shells:
        for shell, request, _ in shells:
            upstream.unreachable = False
            made = request("POST", CALLS, content=OFFER, headers=SDP)
            upstream.unreachable = True
            ended = request("DELETE", made.headers["location"].removeprefix("/app"))
            assert ended.status_code == 502, (shell, ended.text)
            assert ended.json()["error"] == "OpenAI realtime calls could not be reached."


# -- the call's sideband, in process ------------------------------------------------------


def until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 20  # a bound against hangs, not a measurement
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert check()


def report_of(reports: list[CallReport], call_id: str) -> CallReport:
    """The report of ``call_id``, once it is given to ``on_call_end``."""
    until(lambda: any(report.call_id == call_id for report in reports))
    return next(report for report in reports if report.call_id == call_id)


def hung_up(upstream: Upstream, call_id: str) -> None:
    until(lambda: call_id in upstream.hangups())


def until_opened(sockets: Sockets, url: str) -> None:
    until(lambda: url in [opened for opened, _ in sockets.opened])


KEY_HEADER = {"Authorization": f"Bearer {CANARY_KEY}"}


def response_done(*items: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``response.done`` of a completed response with ``items``."""
    response = {"id": "resp_1", "object": "realtime.response", "status": "completed"}
    return {"type": "response.done", "response": {**response, "output": list(items)}}


def function_call(call_id: str, arguments: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "call_id": call_id,
        "name": "lookup_order",
        "arguments": arguments,
        "status": "completed",
    }


def test_a_relayed_calls_sideband_opens_with_the_servers_key_and_its_end_is_reported() -> None:
    upstream = Upstream()
    sockets = Sockets()  # OpenAI closes it normally: the call is over
    reports: list[CallReport] = []
    with both_shells(
        upstream,
        sockets=sockets,
        pin_session=True,
        on_call_end=reports.append,
        authorize=lambda info: "ana",
    ) as shells:
        for shell, request, _ in shells:
            made = request("POST", CALLS, content=OFFER, headers=SDP)
            assert made.status_code == 201, (shell, made.text)
            call_id = made.headers["location"].rsplit("/", 1)[-1]
            report = report_of(reports, call_id)
            assert sockets.opened[-1] == (
                f"wss://api.openai.com/v1/realtime?call_id={call_id}",
                KEY_HEADER,
            )
            # Pinned: on attach, the server's fields are set once more
            # (model and voice aside: OpenAI takes neither once a call runs).
            session = json.loads(parts(upstream.offers()[-1])["session"][1])
            pinned = {k: v for k, v in session.items() if k not in ("type", "model", "audio")}
            assert pinned
            assert sockets.sent[-1] == {
                "type": "session.update",
                "session": {"type": "realtime", **pinned},
            }
            assert (report.kind, report.model) == ("realtime", session["model"])
            assert (report.identity, report.end_reason, report.metered) == ("ana", "remote", True)
    # A normal close ends the call: no socket is opened again.
    assert len(sockets.opened) == 2


def test_the_models_function_calls_run_on_the_server_with_the_calls_context() -> None:
    seen: list[tuple[str, str | None, str | None, str]] = []

    def lookup_order(order_id: str, context: FunctionContext) -> dict[str, str]:
        """Find an order by its id."""
        seen.append((order_id, context.identity, context.headers.get("x-shop"), context.function))
        return {"order": order_id}

    upstream = Upstream()
    calls = response_done(function_call("call_1", '{"order_id": "A7"}'))
    unfit = response_done(function_call("call_2", '{"order": "A7"}'))
    # Answering each call is two events; the socket closes once all are sent.
    sockets = Sockets(calls, unfit, until_sent=4)
    reports: list[CallReport] = []
    with both_shells(
        upstream,
        sockets=sockets,
        functions=[lookup_order],
        server_functions=True,
        include_functions_routes=False,
        on_call_end=reports.append,
        authorize=lambda info: "ana",
    ) as shells:
        for shell, request, _ in shells:
            sent_before = len(sockets.sent)
            made = request("POST", CALLS, content=OFFER, headers={**SDP, "x-shop": "north"})
            assert made.status_code == 201, (shell, made.text)
            call_id = made.headers["location"].rsplit("/", 1)[-1]
            tools = json.loads(parts(upstream.offers()[-1])["session"][1])["tools"]
            assert [tool["name"] for tool in tools] == ["lookup_order"]
            report = report_of(reports, call_id)
            assert seen[-1] == ("A7", "ana", "north", "lookup_order")
            outputs = {
                event["item"]["call_id"]: json.loads(event["item"]["output"])
                for event in sockets.sent[sent_before:]
                if event["type"] == "conversation.item.create"
            }
            assert outputs["call_1"]["ok"] is True
            assert outputs["call_1"]["result"] == {"order": "A7"}
            assert outputs["call_2"]["ok"] is False  # its arguments do not fit: no run
            assert "order_id" in outputs["call_2"]["error"]
            assert [event["type"] for event in sockets.sent[sent_before:]].count(
                "response.create"
            ) == 2
            records = {(record.name, record.ok) for record in report.function_calls}
            assert records == {("lookup_order", True), ("lookup_order", False)}
    assert len(seen) == 2  # once per shell: the unfit call never ran


def test_a_calls_report_says_who_ended_it() -> None:
    upstream = Upstream()
    sockets = Sockets()
    sockets.release.clear()  # OpenAI closes each sideband only once the call is over
    reports: list[CallReport] = []
    with both_shells(
        upstream, sockets=sockets, sideband=True, on_call_end=reports.append, max_call_seconds=1
    ) as shells:
        for shell, request, _ in shells:
            hung_up_by_owner = request("POST", CALLS, content=OFFER, headers=SDP)
            capped = request("POST", CALLS, content=OFFER, headers=SDP)
            assert (hung_up_by_owner.status_code, capped.status_code) == (201, 201), shell
            first = hung_up_by_owner.headers["location"].rsplit("/", 1)[-1]
            second = capped.headers["location"].rsplit("/", 1)[-1]
            until_opened(sockets, f"wss://api.openai.com/v1/realtime?call_id={first}")
            ended = request("DELETE", f"{CALLS}/{first}")
            assert ended.status_code == 204
            assert "content-type" not in ended.headers
            hung_up(upstream, second)  # by its time cap
            sockets.release.set()
            assert report_of(reports, first).end_reason == "hangup"
            assert report_of(reports, second).end_reason == "time_cap"
            sockets.release.clear()
        sockets.release.set()


@pytest.fixture
def quick_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sidebands, "FIRST_BACKOFF_SECONDS", 0.001)
    monkeypatch.setattr(sidebands, "MAX_BACKOFF_SECONDS", 0.001)


@pytest.mark.usefixtures("quick_reconnects")
@pytest.mark.parametrize("required", [True, False])
def test_a_required_sideband_that_cannot_open_hangs_its_call_up(required: bool) -> None:
    upstream = Upstream()
    sockets = Sockets(refuse=True)
    reports: list[CallReport] = []
    with both_shells(
        upstream,
        sockets=sockets,
        sideband=True,
        sideband_required=required,
        on_call_end=reports.append,
    ) as shells:
        for shell, request, _ in shells:
            made = request("POST", CALLS, content=OFFER, headers=SDP)
            assert made.status_code == 201, (shell, made.text)
            call_id = made.headers["location"].rsplit("/", 1)[-1]
            report = report_of(reports, call_id)
            assert (report.end_reason, report.metered) == ("sideband_lost", False)
            if required:
                hung_up(upstream, call_id)
    if not required:
        assert upstream.hangups() == []  # relayed unmetered, left to the browser


@pytest.mark.parametrize("required", [True, False])
def test_past_max_sidebands_a_call_is_refused_or_relayed_without_one(
    required: bool, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = Upstream()
    sockets = Sockets()
    sockets.release.clear()  # the first call's sideband stays open
    with both_shells(
        upstream, sockets=sockets, sideband_required=required, sideband=True, max_sidebands=1
    ) as shells:
        for shell, request, _ in shells:
            made = request("POST", CALLS, content=OFFER, headers=SDP)
            assert made.status_code == 201, (shell, made.text)
            call_id = made.headers["location"].rsplit("/", 1)[-1]
            until_opened(sockets, f"wss://api.openai.com/v1/realtime?call_id={call_id}")
            offers = len(upstream.offers())
            second = request("POST", CALLS, content=OFFER, headers=SDP)
            if required:
                assert second.status_code == 503, (shell, second.text)
                assert second.headers["retry-after"] == "30"
                assert second.json() == {
                    "error": "This server holds as many calls as it may; try again shortly."
                }
                assert len(upstream.offers()) == offers  # never relayed
            else:
                assert second.status_code == 201, (shell, second.text)
                unmetered = (
                    "navai_mw: a call is relayed without its sideband: this process holds its most"
                )
                lines = [(r.levelno, log_message(r)) for r in caplog.records]
                assert (logging.WARNING, unmetered) in lines
        sockets.release.set()
    assert len(sockets.opened) == 2  # one per shell: none for the second calls


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
            assert ended.json() == {
                "error": "Calls cannot be looked up right now; try again shortly."
            }
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
