"""A fake OpenAI WebRTC side over real WebRTC (aiortc): Realtime calls,
GPT-Live sessions, and (from ``sidebands.py``) their sidebands."""

from __future__ import annotations

import email.policy
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qsl, unquote

import attrs

from ..runtime.sync_transport import HttpxSyncTransport
from . import sideband_events as events
from .scripted import (
    RecordedRequest,
    _Behaviour,
    _error_reply,
    _json_reply,
    _lifespan,
    _read_body,
    _Reply,
    _scope_parts,
    _ScriptedUpstream,
    _send_reply,
    _unauthorized,
)
from .sideband_controls import _SidebandControls
from .sidebands import ScriptedModel
from .sip_calls import SIP_ANSWER_PATH, _SipCalls

REALTIME_CALLS_PATH = "/v1/realtime/calls"

LIVE_SESSIONS_PATH = "/v1/live/sessions"

_HANGUP_PATH = re.compile(r"/v1/realtime/calls/(?P<id>[^/]+)/hangup/?")

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


class FakeRealtimeWebRTC(_SipCalls, _SidebandControls, _ScriptedUpstream):
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
      browser holding an ephemeral key sends; its session is then
      ``{"type": "realtime"}``). ``201`` with the answer SDP and
      ``Location: /v1/realtime/calls/rtc_...``. When the browser's data
      channel opens (``oai-events``; any name will do) the fake sends
      ``session.created`` with the call's session (its ``id`` is the call
      id); it sends silence on the audio track.
    * ``POST /v1/realtime/calls/{call_id}/hangup``: ends the call (its
      sidebands are closed with 1000, then the peer connection); ``200 {}``.
    * Phone calls (``sip_calls.py``): :meth:`ring` announces one (a
      :class:`~navai_mw.testing.sip_calls.RingingCall` under an ``rtc_``
      and a ``live_`` id, whose webhook events a
      :class:`~navai_mw.testing.WebhookSender` delivers), and
      ``POST /v1/realtime/calls/{call_id}/accept|reject|refer`` and
      ``POST /v1/live/sessions/{session_id}/accept|reject|refer`` answer
      it: recorded in :attr:`sip_answers`; the first answer decides the
      call (another gets 409); an accepted call's sideband attaches as a
      relayed call's does.
    * ``POST /v1/live/sessions`` (GPT-Live), JSON ``{"session": {...},
      "transport": {"type": "webrtc", "sdp": offer}}``: ``200`` with the
      session resolved (its ``id`` is ``live_...``; ``expires_at``,
      ``status`` and a ``model`` filled in) and ``{"type": "webrtc", "sdp":
      answer}``; the data channel gets ``session.started``.
    * The sidebands, WebSockets a server opens with its key to a call it
      started: Realtime's ``GET /v1/realtime?call_id=rtc_...`` and Live's
      ``GET /v1/live/sessions/{id}/attach`` (``?graceful_close=true`` or
      not). A wrong or missing key gets OpenAI's 401, a call the fake does
      not know (never made, hung up, ended) 404, with OpenAI's JSON error
      body when the server can answer a handshake with one (uvicorn can),
      else a close before the handshake (403). On a Realtime sideband the
      fake first sends ``session.created``; a ``session.update`` from it
      or from the data channel is merged into the call's one session
      (objects field by field, anything else replaced: see
      :func:`~navai_mw.testing.sideband_events.merge_session`) and the
      whole session goes out in ``session.updated`` to the data channel
      and every sideband of the call; ``conversation.item.create`` is
      answered with ``conversation.item.added``. On a Live sideband,
      ``session.close`` ends the session: ``session.closed`` (reason
      ``close_requested``, with the usage), every sideband closed with
      1000, the peer connection closed. A frame that is not a JSON event
      gets an ``error`` event.

    It records :attr:`calls` (:class:`RecordedCall`), :attr:`live_sessions`
    (:class:`RecordedLiveSession`), :attr:`hangups` (call ids),
    :attr:`closes` (Live session ids closed by ``session.close``), every
    HTTP request in ``requests``, and of the sidebands:
    ``sideband_events[call_id]`` (every client event a sideband of the
    call received, in order, as dicts), ``sideband_attaches[call_id]``
    (handshakes accepted), ``sideband_refusals`` (``(call_id, status)``)
    and :meth:`open_sidebands` (``call_id`` -> how many are open now).
    ``api_key``, when given, is the only bearer key accepted (others, and
    none, get OpenAI's 401); without it any key is accepted, but not none.
    ``fail``, ``rate_limit`` and ``stall`` script the next HTTP answers,
    as with :class:`FakeOpenAIRealtime`.

    A test plays OpenAI's part with these (each sends to the call's data
    channel, once open, and every open sideband; a call the fake does not
    know raises :class:`LookupError`):

    * :meth:`call_function` ``(call_id, name, arguments, *, tool_call_id=None)``:
      the model calls a function (Realtime: ``response.done`` with a
      ``function_call`` item; Live: a ``response.event`` around a Responses
      ``response.output_item.done``); returns the tool call's id;
    * :meth:`finish_response` ``(call_id, usage)`` and :meth:`transcribed`
      ``(call_id, usage)`` (Realtime), :meth:`report_usage`
      ``(session_id, seconds)`` (Live, cumulative);
    * :meth:`change_session` ``(call_id, fields)``: the browser's
      ``session.update`` (Realtime);
    * :meth:`drop_sidebands` ``(call_id, code=1012)``: the sockets drop,
      the call goes on; :meth:`refuse_sidebands` ``(call_id, status=503,
      *, times=1)``: the next attaches are refused;
    * :meth:`end_call` ``(call_id)``: the far end hangs up;
    * :meth:`wait_until` ``(predicate)`` and :meth:`wait_for_event`
      ``(call_id, type, *, where=None)``: wait for what the fake records,
      never sleep on a guess.

    From a test's own thread they run on the fake's loop and wait for it;
    each has an ``a``-prefixed coroutine twin (``await
    fake.acall_function(...)``, ``await fake.await_for_event(...)``) for a
    test on an event loop: the fake's own (in-process), or another one.

    ``model``, when given, plays the model of Realtime calls: when the
    browser types a message (``conversation.item.create`` of a user
    ``input_text``) and asks for a response (``response.create``),
    ``model(text, tools)`` (``tools``: the names of the session's function
    tools) answers with a ``(name, arguments)`` to call that function, a
    ``str`` to say, or None; once a function's output comes back, the
    response says it. Without one, the fake answers no ``response.create``.

    Every peer connection and sideband is closed when :meth:`serve` exits;
    mounted some other way (under another asyncio server, or reached
    in-process with ``async_transport()``), close them with :meth:`aclose`
    on the loop that answered. Responses allow any origin (CORS), as
    OpenAI's do.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str = "http://fake-openai.invalid/v1",
        model: ScriptedModel | None = None,
    ) -> None:
        _aiortc()
        super().__init__(base_url)
        self.api_key = api_key
        self.calls: list[RecordedCall] = []
        self.live_sessions: list[RecordedLiveSession] = []
        self.hangups: list[str] = []
        self.closes: list[str] = []
        self._peers: dict[str, Any] = {}  # call or session id -> RTCPeerConnection
        self._init_sidebands()
        self._init_sip()
        self.model = model

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
        """Forget scripted behaviour (refused sidebands too) and everything
        recorded (open peer connections and sidebands stay open)."""
        super().reset()
        self._reset_sidebands()
        self._reset_sip()
        self.calls.clear()
        self.live_sessions.clear()
        self.hangups.clear()
        self.closes.clear()

    # -- answering --------------------------------------------------------------

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        self._note_loop()
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, on_shutdown=self.aclose)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
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
        elif method == "POST" and SIP_ANSWER_PATH.fullmatch(path):
            handler = self._sip_answer
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
        if not await self._connect(call_id, record):
            return _error_reply(400, "Invalid SDP offer.", "invalid_request_error")
        self._add_call("realtime", call_id, events.realtime_session(session, call_id))
        self.calls.append(record)
        headers = [
            ("content-type", "application/sdp"),
            ("location", f"{REALTIME_CALLS_PATH}/{call_id}"),
        ]
        return _Reply(0.0, 201, headers, record.answer.encode())

    async def _hangup(self, request: RecordedRequest) -> _Reply:
        match = _HANGUP_PATH.fullmatch(request.path)
        call_id = match["id"] if match else ""
        # A relayed call has a peer connection; an accepted phone call only
        # its place among the calls.
        known = call_id in self._peers or call_id in self._calls
        if not call_id.startswith("rtc_") or not known:
            return _error_reply(
                404, f"Call with id '{call_id}' not found.", "invalid_request_error"
            )
        self.hangups.append(call_id)
        await self._end(call_id)
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
        if not await self._connect(session_id, record):
            return _error_reply(400, "Invalid SDP offer.", "invalid_request_error")
        resolved = events.live_session(session, session_id)
        self._add_call("live", session_id, resolved)
        self.live_sessions.append(record)
        transport_out = {"type": "webrtc", "sdp": record.answer}
        return _json_reply(200, {"session": resolved, "transport": transport_out})

    # -- the peer connections ---------------------------------------------------

    async def _connect(
        self,
        peer_id: str,
        record: _RecordedPeer,
    ) -> bool:
        """Answer ``record.offer`` with a new peer connection (the answer
        goes to ``record.answer``); False if the offer will not do."""
        aiortc = _aiortc()
        # No ICE servers: aiortc's default STUN server is unreachable offline.
        pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))

        def _on_state() -> None:
            record.states.append(pc.connectionState)
            self._notify()  # a test may wait on it; the call goes on until it is hung up

        def _on_channel(channel: Any) -> None:
            def _on_message(message: str | bytes) -> None:
                try:
                    event = json.loads(message)
                except ValueError:
                    return
                record.events.append(event)
                self._channel_event(peer_id, event)

            channel.on("message", _on_message)
            self._channel_open(peer_id, channel)

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
        """Close every sideband (with 1001, as a server going away does) and
        every peer connection still open (on the loop that opened them)."""
        await self._end_all()
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
        peer connection and sideband is closed before it returns."""
        with self._serving(host, port, "/v1", loop="asyncio", lifespan="on") as url:
            yield url
