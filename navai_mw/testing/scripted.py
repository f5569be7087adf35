"""What every fake upstream shares: the requests it records, the
misbehaviour it is told (fail, stall, rate-limit), and the ASGI plumbing."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import anyio
import attrs
import httpx

from ..runtime.async_transports import HttpxAsyncTransport
from ..runtime.sync_transport import HttpxSyncTransport
from .servers import serve_asgi

__all__ = [
    "RecordedRequest",
]


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


# -- WebRTC ---------------------------------------------------------------------
