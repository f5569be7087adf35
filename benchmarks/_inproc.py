"""Calling ASGI apps directly, with no server: prebuilt scopes, canned
``receive``, a ``send`` that checks the status, and a canned upstream."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from navai_mw import HttpRequest, HttpResponse

from ._harness import MINT_PATH, REQUEST_BODY

Message = dict[str, Any]
# Loosely typed on purpose: Starlette, navai_mw and plain functions all fit.
ASGIApp = Callable[..., Awaitable[None]]


def http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


MINT_HEADERS = [
    (b"host", b"127.0.0.1:8000"),
    (b"content-type", b"application/json"),
    (b"content-length", str(len(REQUEST_BODY)).encode()),
]


def mint_scope() -> dict[str, Any]:
    return http_scope("POST", MINT_PATH, MINT_HEADERS)


async def receive_mint_body() -> Message:
    return {"type": "http.request", "body": REQUEST_BODY, "more_body": False}


async def receive_nothing() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send_nothing(message: Message) -> None:
    return None


async def send_expect_200(message: Message) -> None:
    if message["type"] == "http.response.start" and message["status"] != 200:
        raise RuntimeError(f"answered {message['status']}")


def mint_call(app: ASGIApp) -> Callable[[], Awaitable[None]]:
    """One POST to the token path of ``app``, failing unless it answers 200."""

    async def call() -> None:
        # A fresh scope per request, as a server would make.
        await app(mint_scope(), receive_mint_body, send_expect_200)

    return call


# What the fake upstream answers, minus the per-request randomness.
CANNED_UPSTREAM_BODY = json.dumps(
    {
        "value": "ek_fake_0123456789abcdef0123456789abcdef",
        "expires_at": 1_900_000_000,
        "session": {
            "id": "sess_fake_0123456789abcdef",
            "object": "realtime.session",
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": "You are a helpful assistant.\nAlways reply in Spanish.",
            "audio": {"output": {"voice": "marin"}},
        },
    }
).encode()
CANNED_UPSTREAM_RESPONSE = HttpResponse(
    status=200, headers=(("content-type", "application/json"),), body=CANNED_UPSTREAM_BODY
)


class CannedTransport:
    """An AsyncTransport that answers every request at once, with no I/O:
    what is left to measure is navai_mw's own code."""

    async def send(self, request: HttpRequest, *, timeout: float) -> HttpResponse:
        return CANNED_UPSTREAM_RESPONSE

    async def aclose(self) -> None:
        return None
