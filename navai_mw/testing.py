"""Fake upstreams, for your tests and for ``navai-mw demo``: OpenAI Realtime
and ElevenLabs text-to-speech.

:class:`FakeOpenAIRealtime` is an ASGI app that answers
``POST /v1/realtime/client_secrets`` the way OpenAI does, records every
request it gets, and can be told to misbehave::

    from navai_mw import NavaiVoiceBackendOptions, create_realtime_client_secret_sync
    from navai_mw.testing import FakeOpenAIRealtime

    fake = FakeOpenAIRealtime()
    opts = NavaiVoiceBackendOptions(openai_api_key="sk-test", openai_base_url=fake.base_url)
    with fake.sync_transport() as transport:
        secret = create_realtime_client_secret_sync(opts, transport=transport)
    assert secret.value.startswith("ek_fake_")
    assert fake.requests[0].json["session"]["model"] == "gpt-realtime"

    fake.fail(503, times=1)        # the next request gets a 503, then all is well
    fake.rate_limit(retry_after="7")
    fake.stall(5.0)                # answer only after five seconds
    fake.return_garbage()          # 200 with a body that is not JSON

Its secrets start with ``ek_fake_`` and work nowhere.

:class:`FakeElevenLabs` answers ``POST /v1/text-to-speech/{voice_id}`` the
way ElevenLabs does, with a few hundred bytes of made-up audio that
:meth:`~FakeElevenLabs.audio_for` predicts, and misbehaves on request the
same way (but for ``return_garbage``)::

    from navai_mw import HttpRequest
    from navai_mw.testing import FakeElevenLabs

    fake = FakeElevenLabs(api_key="xi-test")
    request = HttpRequest(
        method="POST",
        url=f"{fake.base_url}/v1/text-to-speech/voice123?output_format=pcm_16000",
        headers=(("xi-api-key", "xi-test"), ("content-type", "application/json")),
        body=b'{"text": "Hello", "model_id": "eleven_multilingual_v2"}',
    )
    with fake.sync_transport() as transport:
        response = transport.send(request, timeout=5)
    assert response.status == 200
    assert response.header("content-type") == "audio/pcm"
    assert response.body == fake.audio_for("Hello", "voice123", "pcm_16000")
    assert fake.requests[0].query == {"output_format": "pcm_16000"}

    fake.fail(503, "Busy", times=1)  # {"detail": {"status": ..., "message": "Busy"}}
    fake.rate_limit(retry_after="3")  # 429, "Too many concurrent requests"

In-process, reach either fake with its ``sync_transport()`` or
``async_transport()``; for a real server on loopback, ``serve()`` it (needs
uvicorn, the ``server`` extra).

:class:`FakeRealtimeWebRTC` is OpenAI's WebRTC side, over real WebRTC (aiortc,
the ``webrtc`` extra): ``POST /v1/realtime/calls`` answers a browser's SDP
offer, and ``session.created`` arrives on its data channel; GPT-Live's
``POST /v1/live/sessions`` and its sideband WebSocket too. ``serve()`` it
(on exit, every peer connection is closed).
"""

from __future__ import annotations

import email.policy
import hashlib
import json
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from email.parser import BytesParser
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import anyio
import attrs
import httpx

from .transports import HttpxAsyncTransport, HttpxSyncTransport

__all__ = [
    "FakeElevenLabs",
    "FakeOpenAIRealtime",
    "FakeRealtimeWebRTC",
    "RecordedCall",
    "RecordedLiveSession",
    "RecordedRequest",
]

CLIENT_SECRETS_PATH = "/v1/realtime/client_secrets"
TEXT_TO_SPEECH_PATH = "/v1/text-to-speech/"
DEFAULT_OUTPUT_FORMAT = "mp3_44100_128"


@attrs.frozen
class RecordedRequest:
    """One request the fake received: method, path (URL-decoded), headers
    (lower-case names), raw body, the body parsed as JSON (None if it is
    not), and the query parameters (the last value of each name)."""

    method: str
    path: str
    headers: dict[str, str] = attrs.field(repr=False)
    body: bytes
    json: Any
    query: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class _Behaviour:
    kind: str  # "ok", "fail", "garbage", "stall", "rate_limit"
    status: int = 200
    message: str = ""
    seconds: float = 0.0
    retry_after: str = ""


@attrs.frozen
class _Reply:
    delay: float
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _json_reply(status: int, payload: Any, **headers: str) -> _Reply:
    pairs = [
        ("content-type", "application/json"),
        *((k.replace("_", "-"), v) for k, v in headers.items()),
    ]
    return _Reply(0.0, status, pairs, json.dumps(payload).encode())


def _error_reply(status: int, message: str, kind: str, **headers: str) -> _Reply:
    """OpenAI's error shape."""
    error = {"message": message, "type": kind, "param": None, "code": None}
    return _json_reply(status, {"error": error}, **headers)


def _unauthorized(headers: dict[str, str], api_key: str | None) -> _Reply | None:
    """OpenAI's 401 when the bearer key is missing, or is not ``api_key``."""
    key = headers.get("authorization", "").removeprefix("Bearer ").strip()
    if key and (api_key is None or key == api_key):
        return None
    shown = f"{key[:3]}***{key[-4:]}" if len(key) > 8 else "***"
    return _error_reply(401, f"Incorrect API key provided: {shown}.", "invalid_request_error")


def _detail_reply(status: int, detail_status: str, message: str, **headers: str) -> _Reply:
    """ElevenLabs' error shape."""
    return _json_reply(status, {"detail": {"status": detail_status, "message": message}}, **headers)


async def _lifespan(receive: Any, send: Any, on_shutdown: Any = None) -> None:
    """Answer ASGI lifespan messages; await ``on_shutdown()`` before the
    shutdown completes."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            if on_shutdown is not None:
                await on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


def _scope_parts(scope: MutableMapping[str, Any]) -> tuple[str, str, dict[str, str]]:
    """The raw path (still percent-encoded, no query), the query string and
    the headers (lower-case names) of an HTTP or WebSocket scope."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    raw = scope.get("raw_path")
    raw_path = raw.decode("latin-1").partition("?")[0] if raw else quote(scope["path"])
    query = scope.get("query_string", b"").decode("latin-1")
    return raw_path, query, headers


async def _read_body(receive: Any) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return bytes(body)


async def _send_reply(send: Any, reply: _Reply) -> None:
    if reply.delay:
        await anyio.sleep(reply.delay)
    await send(
        {
            "type": "http.response.start",
            "status": reply.status,
            "headers": [(k.encode(), v.encode()) for k, v in reply.headers],
        }
    )
    await send({"type": "http.response.body", "body": reply.body})


class _ScriptedUpstream:
    """What the fakes share: the script of behaviours, the record of
    requests, the ASGI plumbing and the ways to reach them. A subclass
    answers one recorded request in :meth:`_answer`."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._queue: deque[_Behaviour] = deque()
        self._default = _Behaviour("ok")

    # -- telling it what to do ------------------------------------------------

    def _set(self, behaviour: _Behaviour, times: int | None) -> None:
        with self._lock:
            if times is None:
                self._default = behaviour
            else:
                self._queue.extend([behaviour] * times)

    def stall(self, seconds: float, *, times: int | None = None) -> None:
        """Wait ``seconds`` before answering (normally)."""
        self._set(_Behaviour("stall", seconds=seconds), times)

    def reset(self) -> None:
        """Forget scripted behaviour and recorded requests."""
        with self._lock:
            self._queue.clear()
            self._default = _Behaviour("ok")
            self.requests.clear()

    # -- answering --------------------------------------------------------------

    def _next(self) -> _Behaviour:
        with self._lock:
            return self._queue.popleft() if self._queue else self._default

    def _reply(
        self, method: str, raw_path: str, query: str, headers: dict[str, str], body: bytes
    ) -> _Reply:
        """Record the request (``raw_path`` still percent-encoded, without
        the query) and answer it."""
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        params = dict(parse_qsl(query, keep_blank_values=True))
        request = RecordedRequest(method, unquote(raw_path), headers, body, payload, params)
        self.requests.append(request)
        return self._answer(request, raw_path)

    def _answer(self, request: RecordedRequest, raw_path: str) -> _Reply:
        raise NotImplementedError

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        raw_path, query, headers = _scope_parts(scope)
        body = await _read_body(receive)
        reply = self._reply(scope["method"], raw_path, query, headers, body)
        await _send_reply(send, reply)

    # -- ways to reach it ---------------------------------------------------------

    def _handle_sync(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        reply = self._reply(
            request.method,
            url.raw_path.decode("ascii").partition("?")[0],
            url.query.decode("ascii"),
            dict(request.headers),
            request.read(),
        )
        if reply.delay:
            time.sleep(reply.delay)
        return httpx.Response(reply.status, headers=reply.headers, content=reply.body)

    def sync_transport(self) -> HttpxSyncTransport:
        """A sync transport that reaches this fake in-process (no sockets).

        A stall blocks for its full length here; to test timeouts on the sync
        side, ``serve()`` the fake on loopback instead.
        """
        return HttpxSyncTransport(httpx.Client(transport=httpx.MockTransport(self._handle_sync)))

    def async_transport(self) -> HttpxAsyncTransport:
        """An async transport that reaches this fake in-process (no sockets)."""
        return HttpxAsyncTransport(httpx.AsyncClient(transport=httpx.ASGITransport(app=self)))

    @contextmanager
    def _serving(self, host: str, port: int, suffix: str, **config: Any) -> Iterator[str]:
        with serve_asgi(self, host=host, port=port, **config) as url:
            previous, self.base_url = self.base_url, f"{url}{suffix}"
            try:
                yield self.base_url
            finally:
                self.base_url = previous


class FakeOpenAIRealtime(_ScriptedUpstream):
    """An ASGI app that mints fake client secrets like OpenAI.

    ``api_key``, when given, is the only key accepted (others get OpenAI's
    401). ``clock`` gives the Unix time used for ``expires_at``.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        clock: Callable[[], float] = time.time,
        base_url: str = "http://fake-openai.invalid/v1",
    ) -> None:
        super().__init__(base_url)
        self.api_key = api_key
        self.clock = clock

    # -- telling it what to do ------------------------------------------------

    def fail(
        self,
        status: int = 500,
        message: str = "The server had an error.",
        *,
        times: int | None = None,
    ) -> None:
        """Answer ``status`` with OpenAI's JSON error body (every time, or ``times`` times)."""
        self._set(_Behaviour("fail", status=status, message=message), times)

    def return_garbage(self, *, times: int | None = None) -> None:
        """Answer 200 with a body that is not JSON."""
        self._set(_Behaviour("garbage"), times)

    def rate_limit(self, retry_after: str = "20", *, times: int | None = None) -> None:
        """Answer 429 with ``Retry-After``."""
        self._set(_Behaviour("rate_limit", retry_after=retry_after), times)

    # -- answering --------------------------------------------------------------

    def _answer(self, request: RecordedRequest, raw_path: str) -> _Reply:
        method, path = request.method, request.path
        if path.rstrip("/") != CLIENT_SECRETS_PATH or method != "POST":
            return _error_reply(404, f"Invalid URL ({method} {path})", "invalid_request_error")
        behaviour = self._next()
        if behaviour.kind == "fail":
            return _error_reply(behaviour.status, behaviour.message, "server_error")
        if behaviour.kind == "rate_limit":
            return _error_reply(
                429, "Rate limit reached.", "rate_limit_error", retry_after=behaviour.retry_after
            )
        if behaviour.kind == "garbage":
            return _Reply(0.0, 200, [("content-type", "text/html")], b"<html>upstream proxy</html>")
        reply = self._mint(request.headers, request.json)
        return attrs.evolve(reply, delay=behaviour.seconds)

    def _mint(self, headers: dict[str, str], payload: Any) -> _Reply:
        denied = _unauthorized(headers, self.api_key)
        if denied is not None:
            return denied
        if not isinstance(payload, dict) or not isinstance(payload.get("session"), dict):
            return _error_reply(400, "Invalid body: expected a session.", "invalid_request_error")
        ttl = payload.get("expires_after", {}).get("seconds", 600)
        if not isinstance(ttl, int) or not 10 <= ttl <= 7200:
            return _error_reply(
                400, "expires_after.seconds must be between 10 and 7200.", "invalid_request_error"
            )
        now = int(self.clock())
        session = {
            "id": f"sess_fake_{secrets.token_hex(8)}",
            "object": "realtime.session",
            **payload["session"],
        }
        body = json.dumps(
            {
                "value": f"ek_fake_{secrets.token_hex(16)}",
                "expires_at": now + ttl,
                "session": session,
            }
        ).encode()
        return _Reply(0.0, 200, [("content-type", "application/json")], body)

    # -- ways to reach it ---------------------------------------------------------

    @contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve the fake with uvicorn on ``host``; yields its base URL
        (``http://127.0.0.1:PORT/v1``, ready for ``openai_base_url``)."""
        with self._serving(host, port, "/v1") as url:
            yield url


# Output format prefix -> (content type, first bytes of the made-up audio).
# Any other format is answered as MP3, ElevenLabs' default.
_AUDIO_FORMATS: dict[str, tuple[str, bytes]] = {
    "mp3": ("audio/mpeg", b"ID3"),
    "pcm": ("audio/pcm", b""),
    "wav": ("audio/wav", b"RIFF"),
    "ulaw": ("audio/basic", b""),
}


def _audio_format(output_format: str) -> tuple[str, bytes]:
    return _AUDIO_FORMATS.get(output_format.partition("_")[0], _AUDIO_FORMATS["mp3"])


def _detail_status(status: int) -> str:
    """``service_unavailable`` for 503, and so on."""
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


class FakeElevenLabs(_ScriptedUpstream):
    """An ASGI app that speaks made-up audio like ElevenLabs' text-to-speech.

    It answers ``POST /v1/text-to-speech/{voice_id}`` (query
    ``output_format``, default ``mp3_44100_128``) with
    :meth:`audio_for` the body's ``text``, and everything else with a 404.
    ``api_key``, when given, is the only ``xi-api-key`` accepted (others,
    and none, get a 401); without it any key, or none, is accepted.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str = "http://fake-elevenlabs.invalid",
    ) -> None:
        super().__init__(base_url)
        self.api_key = api_key

    # -- telling it what to do ------------------------------------------------

    def fail(
        self,
        status: int = 500,
        message: str = "An internal server error occurred.",
        *,
        times: int | None = None,
    ) -> None:
        """Answer ``status`` with ElevenLabs' JSON error body,
        ``{"detail": {"status": ..., "message": message}}`` (every time, or
        ``times`` times)."""
        self._set(_Behaviour("fail", status=status, message=message), times)

    def rate_limit(self, retry_after: str = "20", *, times: int | None = None) -> None:
        """Answer 429 "Too many concurrent requests" with ``Retry-After``."""
        self._set(_Behaviour("rate_limit", retry_after=retry_after), times)

    # -- answering --------------------------------------------------------------

    def audio_for(
        self, text: str, voice_id: str, output_format: str = DEFAULT_OUTPUT_FORMAT
    ) -> bytes:
        """The audio this fake answers for ``text`` in ``voice_id``: a short
        header for the format (``ID3`` for MP3, ``RIFF`` for WAV, none for
        PCM and μ-law), then a SHA-256 of the three, repeated to 256 bytes.
        The same inputs always give the same bytes, different ones differ."""
        digest = hashlib.sha256(json.dumps([text, voice_id, output_format]).encode()).digest()
        return _audio_format(output_format)[1] + digest * 8

    def _answer(self, request: RecordedRequest, raw_path: str) -> _Reply:
        prefix, _, segment = raw_path.rpartition("/")
        if request.method != "POST" or f"{prefix}/" != TEXT_TO_SPEECH_PATH or not segment:
            return _detail_reply(404, "not_found", "Not found")
        behaviour = self._next()
        if behaviour.kind == "fail":
            status = behaviour.status
            return _detail_reply(status, _detail_status(status), behaviour.message)
        if behaviour.kind == "rate_limit":
            return _detail_reply(
                429,
                "too_many_concurrent_requests",
                "Too many concurrent requests",
                retry_after=behaviour.retry_after,
            )
        reply = self._speak(request, unquote(segment))
        return attrs.evolve(reply, delay=behaviour.seconds)

    def _speak(self, request: RecordedRequest, voice_id: str) -> _Reply:
        if self.api_key is not None and request.headers.get("xi-api-key") != self.api_key:
            return _detail_reply(401, "invalid_api_key", "Invalid API key")
        payload = request.json
        text = payload.get("text") if isinstance(payload, dict) else None
        if not isinstance(text, str) or not text:
            missing = {"loc": ["body", "text"], "msg": "field required"}
            return _json_reply(422, {"detail": [{**missing, "type": "value_error.missing"}]})
        output_format = request.query.get("output_format") or DEFAULT_OUTPUT_FORMAT
        content_type = _audio_format(output_format)[0]
        audio = self.audio_for(text, voice_id, output_format)
        return _Reply(0.0, 200, [("content-type", content_type)], audio)

    # -- ways to reach it ---------------------------------------------------------

    @contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve the fake with uvicorn on ``host``; yields its base URL
        (``http://127.0.0.1:PORT``, no ``/v1``: ElevenLabs' base URL is the
        host, and its clients append ``/v1/text-to-speech/...``)."""
        with self._serving(host, port, "") as url:
            yield url


# -- WebRTC ---------------------------------------------------------------------

REALTIME_CALLS_PATH = "/v1/realtime/calls"
LIVE_SESSIONS_PATH = "/v1/live/sessions"
_HANGUP_PATH = re.compile(r"/v1/realtime/calls/(?P<id>[^/]+)/hangup/?")
_ATTACH_PATH = re.compile(r"/v1/live/sessions/(?P<id>[^/]+)/attach/?")
_WEBRTC_MISSING = "FakeRealtimeWebRTC needs aiortc, which is not installed: " + (
    "pip install 'navai-mw[webrtc]'"
)


def _aiortc() -> Any:
    """aiortc, imported on first use: it is an optional dependency."""
    try:
        import aiortc
    except ImportError as exc:
        raise ImportError(_WEBRTC_MISSING) from exc
    return aiortc


@attrs.define(kw_only=True, eq=False)
class _RecordedPeer:
    session: dict[str, Any]
    headers: dict[str, str] = attrs.field(repr=False)
    offer: str = attrs.field(repr=False)
    answer: str = attrs.field(default="", repr=False)
    states: list[str] = attrs.field(factory=list)
    events: list[Any] = attrs.field(factory=list, repr=False)

    @property
    def state(self) -> str:
        """The peer connection's latest ``connectionState``."""
        return self.states[-1] if self.states else "new"

    @property
    def connected(self) -> bool:
        """Whether the peer connection ever reached ``connected``."""
        return "connected" in self.states


@attrs.define(kw_only=True, eq=False)
class RecordedCall(_RecordedPeer):
    """One ``POST /v1/realtime/calls`` the fake answered: ``call_id``, the
    ``session`` it received, the headers (lower-case names), the ``offer``
    and ``answer`` SDP, the peer connection's ``states`` so far (updated
    from the server's thread; :attr:`connected`, :attr:`state`), and the
    JSON ``events`` the browser sent on the data channel."""

    call_id: str


@attrs.define(kw_only=True, eq=False)
class RecordedLiveSession(_RecordedPeer):
    """One ``POST /v1/live/sessions`` the fake answered; as
    :class:`RecordedCall`, with ``session_id`` for ``call_id``."""

    session_id: str


def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """The fields of a ``multipart/form-data`` body (none if it is not one)."""
    if content_type.partition(";")[0].strip().lower() != "multipart/form-data":
        return {}
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        return {}
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload.decode("utf-8", errors="replace")
    return fields


def _preflight_headers(headers: dict[str, str]) -> list[tuple[str, str]]:
    asked = headers.get("access-control-request-headers", "authorization, content-type")
    return [
        ("access-control-allow-methods", "GET, POST, OPTIONS"),
        ("access-control-allow-headers", asked),
        ("access-control-max-age", "600"),
    ]


def _event_id() -> str:
    return f"event_{secrets.token_hex(10)}"


class FakeRealtimeWebRTC(_ScriptedUpstream):
    """A fake OpenAI upstream for WebRTC: an ASGI app that answers a
    browser's SDP offer with a real peer connection (aiortc), so a voice
    front end runs offline, media and data channel included. It needs the
    ``webrtc`` extra (``pip install 'navai-mw[webrtc]'``) and an asyncio
    loop; :meth:`serve` runs it on uvicorn::

        fake = FakeRealtimeWebRTC(api_key="sk-test")
        with fake.serve() as base_url:  # http://127.0.0.1:PORT/v1
            ...  # the browser POSTs its offer to f"{base_url}/realtime/calls"
        assert fake.calls[0].connected

    It answers:

    * ``POST /v1/realtime/calls``, OpenAI's unified interface: a
      ``multipart/form-data`` body with the fields ``sdp`` (the offer) and
      ``session`` (JSON), or a bare ``application/sdp`` offer (what a
      browser holding an ephemeral key sends; its session is then ``{}``).
      ``201`` with the answer SDP and ``Location: /v1/realtime/calls/rtc_...``.
      When the browser's data channel opens (``oai-events``; any name
      will do) the fake sends ``session.created`` with the session and
      the call id, and answers each ``session.update`` with
      ``session.updated``; it sends silence on the audio track.
    * ``POST /v1/realtime/calls/{call_id}/hangup``: closes that peer
      connection; ``200 {}``.
    * ``POST /v1/live/sessions`` (GPT-Live), JSON ``{"session": {...},
      "transport": {"type": "webrtc", "sdp": offer}}``: ``200`` with the
      session (its ``id`` is ``live_...``) and ``{"type": "webrtc", "sdp":
      answer}``; the data channel gets ``session.started``.
    * ``GET /v1/live/sessions/{id}/attach``, a WebSocket (the server's
      sideband): ``{"type": "session.close"}`` closes the session's peer
      connection, then the socket.

    It records :attr:`calls` (:class:`RecordedCall`), :attr:`live_sessions`
    (:class:`RecordedLiveSession`), :attr:`hangups` (call ids),
    :attr:`closes` (live session ids) and every HTTP request in
    ``requests``. ``api_key``, when given, is the only bearer key accepted
    (others, and none, get OpenAI's 401); without it any key is accepted,
    but not none. ``fail``, ``rate_limit`` and ``stall`` script the next
    answers, as with :class:`FakeOpenAIRealtime`.

    Every peer connection is closed when :meth:`serve` exits; mounted some
    other way (under another asyncio server, or reached in-process with
    ``async_transport()``), close them with :meth:`aclose` on the loop that
    answered. Responses allow any origin (CORS), as OpenAI's do.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str = "http://fake-openai.invalid/v1",
    ) -> None:
        _aiortc()
        super().__init__(base_url)
        self.api_key = api_key
        self.calls: list[RecordedCall] = []
        self.live_sessions: list[RecordedLiveSession] = []
        self.hangups: list[str] = []
        self.closes: list[str] = []
        self._peers: dict[str, Any] = {}  # call or session id -> RTCPeerConnection

    # -- telling it what to do ------------------------------------------------

    def fail(
        self,
        status: int = 500,
        message: str = "The server had an error.",
        *,
        times: int | None = None,
    ) -> None:
        """Answer ``status`` with OpenAI's JSON error body (every time, or ``times`` times)."""
        self._set(_Behaviour("fail", status=status, message=message), times)

    def rate_limit(self, retry_after: str = "20", *, times: int | None = None) -> None:
        """Answer 429 with ``Retry-After``."""
        self._set(_Behaviour("rate_limit", retry_after=retry_after), times)

    def reset(self) -> None:
        """Forget scripted behaviour and everything recorded (open peer
        connections stay open)."""
        super().reset()
        self.calls.clear()
        self.live_sessions.clear()
        self.hangups.clear()
        self.closes.clear()

    # -- answering --------------------------------------------------------------

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, on_shutdown=self.aclose)
        elif scope["type"] == "websocket":
            await self._attach(scope, receive, send)
        elif scope["type"] == "http":
            raw_path, query, headers = _scope_parts(scope)
            body = await _read_body(receive)
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
            params = dict(parse_qsl(query, keep_blank_values=True))
            method = scope["method"]
            request = RecordedRequest(method, unquote(raw_path), headers, body, payload, params)
            self.requests.append(request)
            if method == "OPTIONS":  # a browser's CORS preflight
                reply = _Reply(0.0, 204, _preflight_headers(headers), b"")
            else:
                reply = await self._answer_async(request)
            # Like OpenAI, any origin may call (browsers post offers directly).
            cors = [
                ("access-control-allow-origin", "*"),
                ("access-control-expose-headers", "Location"),
            ]
            await _send_reply(send, attrs.evolve(reply, headers=[*reply.headers, *cors]))

    async def _answer_async(self, request: RecordedRequest) -> _Reply:
        method, path = request.method, request.path
        handler: Callable[[RecordedRequest], Awaitable[_Reply]] | None = None
        if method == "POST" and path.rstrip("/") == REALTIME_CALLS_PATH:
            handler = self._create_call
        elif method == "POST" and path.rstrip("/") == LIVE_SESSIONS_PATH:
            handler = self._create_live_session
        elif method == "POST" and _HANGUP_PATH.fullmatch(path):
            handler = self._hangup
        if handler is None:
            return _error_reply(404, f"Invalid URL ({method} {path})", "invalid_request_error")
        behaviour = self._next()
        if behaviour.kind == "fail":
            return _error_reply(behaviour.status, behaviour.message, "server_error")
        if behaviour.kind == "rate_limit":
            return _error_reply(
                429, "Rate limit reached.", "rate_limit_error", retry_after=behaviour.retry_after
            )
        reply = _unauthorized(request.headers, self.api_key) or await handler(request)
        return attrs.evolve(reply, delay=behaviour.seconds)

    async def _create_call(self, request: RecordedRequest) -> _Reply:
        content_type = request.headers.get("content-type", "")
        if content_type.partition(";")[0].strip().lower() == "application/sdp":
            offer, session_json = request.body.decode("utf-8", errors="replace"), "{}"
        else:
            fields = _form_fields(content_type, request.body)
            offer, session_json = fields.get("sdp", ""), fields.get("session", "")
        try:
            session = json.loads(session_json)
        except ValueError:
            session = None
        if not offer.strip() or not isinstance(session, dict):
            return _error_reply(
                400,
                "Expected multipart/form-data with the fields sdp (the SDP offer) "
                "and session (a JSON object).",
                "invalid_request_error",
            )
        call_id = f"rtc_{secrets.token_hex(16)}"
        record = RecordedCall(
            call_id=call_id, session=session, headers=request.headers, offer=offer
        )
        greeting = {
            "type": "session.created",
            "event_id": _event_id(),
            "session": {**session, "id": call_id},
        }
        if not await self._connect(call_id, record, greeting, acknowledge_updates=True):
            return _error_reply(400, "Invalid SDP offer.", "invalid_request_error")
        self.calls.append(record)
        headers = [
            ("content-type", "application/sdp"),
            ("location", f"{REALTIME_CALLS_PATH}/{call_id}"),
        ]
        return _Reply(0.0, 201, headers, record.answer.encode())

    async def _hangup(self, request: RecordedRequest) -> _Reply:
        match = _HANGUP_PATH.fullmatch(request.path)
        call_id = match["id"] if match else ""
        if not call_id.startswith("rtc_") or call_id not in self._peers:
            return _error_reply(
                404, f"Call with id '{call_id}' not found.", "invalid_request_error"
            )
        self.hangups.append(call_id)
        await self._close_peer(call_id)
        return _json_reply(200, {})

    async def _create_live_session(self, request: RecordedRequest) -> _Reply:
        payload = request.json if isinstance(request.json, dict) else {}
        session = payload.get("session", {})
        transport = payload.get("transport")
        offer = transport.get("sdp") if isinstance(transport, dict) else None
        kind = transport.get("type", "webrtc") if isinstance(transport, dict) else None
        if not isinstance(session, dict) or not isinstance(offer, str) or kind != "webrtc":
            return _error_reply(
                400,
                'Expected {"session": {...}, "transport": {"type": "webrtc", "sdp": offer}}.',
                "invalid_request_error",
            )
        session_id = f"live_{secrets.token_hex(16)}"
        record = RecordedLiveSession(
            session_id=session_id, session=session, headers=request.headers, offer=offer
        )
        started = {**session, "id": session_id}
        greeting = {"type": "session.started", "session": started}
        if not await self._connect(session_id, record, greeting, acknowledge_updates=False):
            return _error_reply(400, "Invalid SDP offer.", "invalid_request_error")
        self.live_sessions.append(record)
        transport_out = {"type": "webrtc", "sdp": record.answer}
        return _json_reply(200, {"session": started, "transport": transport_out})

    async def _attach(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        """The sideband WebSocket, ``/v1/live/sessions/{id}/attach``."""
        if (await receive())["type"] != "websocket.connect":
            return
        raw_path, _, headers = _scope_parts(scope)
        match = _ATTACH_PATH.fullmatch(unquote(raw_path))
        session_id = match["id"] if match else ""
        known = session_id.startswith("live_") and session_id in self._peers
        if not known or _unauthorized(headers, self.api_key) is not None:
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return  # websocket.disconnect
            try:
                event = json.loads(message.get("text") or message.get("bytes") or b"")
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("type") == "session.close":
                self.closes.append(session_id)
                await self._close_peer(session_id)
                await send({"type": "websocket.close", "code": 1000})
                return

    # -- the peer connections ---------------------------------------------------

    async def _connect(
        self,
        peer_id: str,
        record: _RecordedPeer,
        greeting: dict[str, Any],
        *,
        acknowledge_updates: bool,
    ) -> bool:
        """Answer ``record.offer`` with a new peer connection (the answer
        goes to ``record.answer``); False if the offer will not do."""
        aiortc = _aiortc()
        # No ICE servers: aiortc's default STUN server is unreachable offline.
        pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
        session = dict(greeting["session"])

        def _on_state() -> None:
            record.states.append(pc.connectionState)

        def _on_channel(channel: Any) -> None:
            def _on_message(message: str | bytes) -> None:
                try:
                    event = json.loads(message)
                except ValueError:
                    return
                record.events.append(event)
                if not acknowledge_updates or not isinstance(event, dict):
                    return
                update = event.get("session")
                if event.get("type") == "session.update" and isinstance(update, dict):
                    session.update(update)
                    reply = {"type": "session.updated", "event_id": _event_id()}
                    channel.send(json.dumps({**reply, "session": session}))

            channel.on("message", _on_message)
            channel.send(json.dumps(greeting))

        pc.on("connectionstatechange", _on_state)
        pc.on("datachannel", _on_channel)
        self._peers[peer_id] = pc
        try:
            offer = aiortc.RTCSessionDescription(sdp=record.offer, type="offer")
            await pc.setRemoteDescription(offer)
            if not pc.getTransceivers() and pc.sctp is None:
                raise ValueError("the offer has no media and no data channel")
            if any(t.kind == "audio" for t in pc.getTransceivers()):
                pc.addTrack(aiortc.mediastreams.AudioStreamTrack())  # silence
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception:  # aiortc raises many kinds for an offer it cannot use
            await self._close_peer(peer_id)
            return False
        # aiortc's setLocalDescription returns once ICE gathering is complete,
        # so the answer carries every candidate (no trickle ICE).
        record.answer = pc.localDescription.sdp
        return True

    async def _close_peer(self, peer_id: str) -> None:
        pc = self._peers.pop(peer_id, None)
        if pc is not None:
            await pc.close()

    async def aclose(self) -> None:
        """Close every peer connection still open (on the loop that opened them)."""
        while self._peers:
            await self._close_peer(next(iter(self._peers)))

    # -- ways to reach it ---------------------------------------------------------

    def sync_transport(self) -> HttpxSyncTransport:
        """Not available: aiortc needs an event loop; :meth:`serve` the fake."""
        raise TypeError("FakeRealtimeWebRTC answers on an event loop only: serve() it.")

    @contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve the fake with uvicorn (on asyncio, with a lifespan) on
        ``host``; yields its base URL (``http://127.0.0.1:PORT/v1``). Every
        peer connection is closed before it returns."""
        with self._serving(host, port, "/v1", loop="asyncio", lifespan="on") as url:
            yield url


@contextmanager
def serve_asgi(app: Any, *, host: str = "127.0.0.1", port: int = 0, **config: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread; yields ``http://host:port``."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    config.setdefault("log_level", "warning")
    server = uvicorn.Server(uvicorn.Config(app, **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
