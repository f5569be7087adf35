"""A fake OpenAI ``/v1/realtime/client_secrets``."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from .scripted import (
    RecordedRequest,
    _Behaviour,
    _error_reply,
    _Reply,
    _ScriptedUpstream,
    _unauthorized,
)

CLIENT_SECRETS_PATH = "/v1/realtime/client_secrets"


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
