"""A fake OpenAI Realtime upstream, for your tests and for ``navai-mw demo``.

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

In-process, use :meth:`~FakeOpenAIRealtime.sync_transport` or
:meth:`~FakeOpenAIRealtime.async_transport`; for a real server on loopback,
:meth:`~FakeOpenAIRealtime.serve` (needs uvicorn, the ``server`` extra).
Its secrets start with ``ek_fake_`` and work nowhere.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import anyio
import attrs
import httpx

from .transports import HttpxAsyncTransport, HttpxSyncTransport

__all__ = ["FakeOpenAIRealtime", "RecordedRequest"]

CLIENT_SECRETS_PATH = "/v1/realtime/client_secrets"


@attrs.frozen
class RecordedRequest:
    """One request the fake received: method, path, headers (lower-case
    names), raw body, and the body parsed as JSON (None if it is not)."""

    method: str
    path: str
    headers: dict[str, str] = attrs.field(repr=False)
    body: bytes
    json: Any


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


def _error_reply(status: int, message: str, kind: str, **headers: str) -> _Reply:
    body = json.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": None}}
    ).encode()
    pairs = [
        ("content-type", "application/json"),
        *((k.replace("_", "-"), v) for k, v in headers.items()),
    ]
    return _Reply(0.0, status, pairs, body)


class FakeOpenAIRealtime:
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
        self.api_key = api_key
        self.clock = clock
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

    def stall(self, seconds: float, *, times: int | None = None) -> None:
        """Wait ``seconds`` before answering (normally)."""
        self._set(_Behaviour("stall", seconds=seconds), times)

    def rate_limit(self, retry_after: str = "20", *, times: int | None = None) -> None:
        """Answer 429 with ``Retry-After``."""
        self._set(_Behaviour("rate_limit", retry_after=retry_after), times)

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

    def _reply(self, method: str, path: str, headers: dict[str, str], body: bytes) -> _Reply:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        self.requests.append(RecordedRequest(method, path, headers, body, payload))
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
        reply = self._mint(headers, payload)
        return attrs.evolve(reply, delay=behaviour.seconds)

    def _mint(self, headers: dict[str, str], payload: Any) -> _Reply:
        key = headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not key or (self.api_key is not None and key != self.api_key):
            shown = f"{key[:3]}***{key[-4:]}" if len(key) > 8 else "***"
            return _error_reply(
                401, f"Incorrect API key provided: {shown}.", "invalid_request_error"
            )
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

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        reply = self._reply(scope["method"], scope["path"], headers, bytes(body))
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

    # -- ways to reach it ---------------------------------------------------------

    def _handle_sync(self, request: httpx.Request) -> httpx.Response:
        reply = self._reply(request.method, request.url.path, dict(request.headers), request.read())
        if reply.delay:
            time.sleep(reply.delay)
        return httpx.Response(reply.status, headers=reply.headers, content=reply.body)

    def sync_transport(self) -> HttpxSyncTransport:
        """A sync transport that reaches this fake in-process (no sockets).

        A stall blocks for its full length here; to test timeouts on the sync
        side, :meth:`serve` the fake on loopback instead.
        """
        return HttpxSyncTransport(httpx.Client(transport=httpx.MockTransport(self._handle_sync)))

    def async_transport(self) -> HttpxAsyncTransport:
        """An async transport that reaches this fake in-process (no sockets)."""
        return HttpxAsyncTransport(httpx.AsyncClient(transport=httpx.ASGITransport(app=self)))

    @contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve the fake with uvicorn on ``host``; yields its base URL
        (``http://127.0.0.1:PORT/v1``, ready for ``openai_base_url``)."""
        with serve_asgi(self, host=host, port=port) as url:
            previous, self.base_url = self.base_url, f"{url}/v1"
            try:
                yield self.base_url
            finally:
                self.base_url = previous


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
