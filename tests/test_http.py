"""The HTTP contract (CONTRACT.md §3), one table of cases, every shell.

Each case is run against every way a server can reach the middleware:

* ``asgi``: :class:`NavaiASGIMiddleware` in-process (httpx's ASGI transport);
* ``wsgi``: :class:`NavaiWSGIMiddleware` in-process (httpx's WSGI transport);
* ``wsgi-validated``: the same, inside :func:`wsgiref.validate.validator`;
* ``wsgi-input-terminated``: the same, with ``wsgi.input_terminated`` set, as
  gunicorn does (a chunked body then comes without Content-Length);
* ``wsgi-as-asgi``: the WSGI middleware served as ASGI by ``a2wsgi.WSGIMiddleware``;
* ``asgi-as-wsgi``: the ASGI middleware served as WSGI by ``a2wsgi.ASGIMiddleware``.

All six are driven by one synchronous ``httpx.Client``; the ASGI apps run in
the event loop of a blocking portal. Both middlewares wrap an inner app that
echoes what it got, so pass-through is checked byte for byte. The upstream is
:class:`FakeOpenAIRealtime`, in-process.

A few cases depend on what the server, not the middleware, does with
Content-Length (a WSGI server hands over that many bytes and no more); those
name the shells they apply to. The ASGI-only behaviour (lifespan, websocket,
a client that leaves mid-body) is at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import wsgiref.validate
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import a2wsgi
import anyio
import anyio.from_thread
import attrs
import httpx
import pytest

from navai_mw import (
    HttpRequest,
    NavaiASGIMiddleware,
    NavaiVoiceBackendOptions,
    NavaiWSGIMiddleware,
)
from navai_mw.testing import FakeOpenAIRealtime
from navai_mw.transports import AsyncTransport

from .conftest import CANARY_KEY, is_closed

TOKEN = "/navai/realtime/client-secret"
# Every status the token path may answer with (CONTRACT.md §3, plus the
# CORS preflight's 204).
STATUSES = frozenset({200, 204, 400, 403, 405, 413, 415, 429, 502, 504})
# A small body limit, so that the 413 cases need only small bodies.
LIMIT = 64
# Long enough that a shell which waited for it would be noticed; the shells
# under test give up after SHORT_BUDGET and cancel the wait.
STALL_SECONDS = 2.0
SHORT_BUDGET = 0.3

JSON = {"Content-Type": "application/json"}
DEFAULT_INSTRUCTIONS = "You are a helpful assistant."


def upstream_body(
    *,
    model: str = "gpt-realtime",
    voice: str = "marin",
    instructions: str = DEFAULT_INSTRUCTIONS,
    ttl: int = 600,
) -> dict[str, Any]:
    """What the fake should have received, in full."""
    return {
        "expires_after": {"anchor": "created_at", "seconds": ttl},
        "session": {
            "type": "realtime",
            "model": model,
            "instructions": instructions,
            "audio": {"output": {"voice": voice}},
        },
    }


# -- the inner apps: echo the request, so that pass-through is visible ------


def _echo(method: str, path: str, mount: str, query: str, body: bytes) -> bytes:
    return json.dumps(
        {
            "method": method,
            "path": path,
            "mount": mount,
            "query": query,
            "body": body.decode("utf-8", "replace"),
        }
    ).encode()


def echoed(method: str, path: str, *, mount: str = "", query: str = "", body: str = "") -> Any:
    """The inner app's answer for a request (``path`` in full, mount included)."""
    return {"method": method, "path": path, "mount": mount, "query": query, "body": body}


async def inner_asgi(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    payload = _echo(
        scope["method"],
        scope["path"],
        scope.get("root_path", ""),
        scope["query_string"].decode("ascii"),
        body,
    )
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"x-inner", b"asgi")],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def inner_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    length = environ.get("CONTENT_LENGTH")
    body = environ["wsgi.input"].read(int(length)) if length else b""
    payload = _echo(
        environ["REQUEST_METHOD"],
        environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
        environ.get("SCRIPT_NAME", ""),
        environ.get("QUERY_STRING", ""),
        body,
    )
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            ("X-Inner", "wsgi"),
        ],
    )
    return [payload]


# -- the five shells ---------------------------------------------------------


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> Any:
        for chunk in self._chunks:
            yield chunk


class PortalASGITransport(httpx.BaseTransport):
    """Lets a sync ``httpx.Client`` call an ASGI app that runs in a portal's loop.

    The request goes on exactly as the client built it: same headers, body in
    the same chunks (a streamed body stays without Content-Length).
    """

    def __init__(
        self, portal: anyio.from_thread.BlockingPortal, app: Any, root_path: str = ""
    ) -> None:
        self._portal = portal
        self._asgi = httpx.ASGITransport(app=app, root_path=root_path)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        chunks = list(request.stream)  # type: ignore[arg-type]
        return self._portal.call(self._send, request, chunks)

    async def _send(self, request: httpx.Request, chunks: list[bytes]) -> httpx.Response:
        forwarded = httpx.Request(
            request.method, request.url, headers=request.headers, stream=_Chunks(chunks)
        )
        response = await self._asgi.handle_async_request(forwarded)
        content = await response.aread()
        return httpx.Response(response.status_code, headers=response.headers, content=content)


class PortalUpstream:
    """A sync transport for the WSGI shells: the fake, reached through the portal.

    ``fake.sync_transport()`` cannot time out (a stall blocks the calling
    thread for its whole length); this one gives up after ``timeout`` with
    :class:`TimeoutError`, as a socket would, so that the sync shells run the
    same 504 cases as the async ones.
    """

    def __init__(self, portal: anyio.from_thread.BlockingPortal, upstream: AsyncTransport):
        self._portal = portal
        self._upstream = upstream

    def send(self, request: HttpRequest, *, timeout: float) -> Any:
        return self._portal.call(self._send, request, timeout)

    async def _send(self, request: HttpRequest, timeout: float) -> Any:
        with anyio.fail_after(timeout):
            return await self._upstream.send(request, timeout=timeout)


SHELLS = (
    "asgi",
    "wsgi",
    "wsgi-validated",
    "wsgi-input-terminated",
    "wsgi-as-asgi",
    "asgi-as-wsgi",
)
# The shells whose outermost protocol is ASGI see the mount point in the URL
# path (ASGI's root_path is a prefix of path); the others get it as SCRIPT_NAME.
_ASGI_OUTSIDE = frozenset({"asgi", "wsgi-as-asgi"})


class Shell:
    """Builds clients that reach the middleware one particular way."""

    def __init__(
        self,
        name: str,
        fake: FakeOpenAIRealtime,
        portal: anyio.from_thread.BlockingPortal,
        stack: contextlib.ExitStack,
    ) -> None:
        self.name = name
        self._fake = fake
        self._portal = portal
        self._stack = stack

    def url(self, path: str, mount: str = "") -> str:
        return mount + path if self.name in _ASGI_OUTSIDE else path

    def _upstream(self) -> AsyncTransport:
        transport = self._fake.async_transport()
        self._stack.callback(self._portal.call, transport.aclose)
        return transport

    def _asgi(self, opts: NavaiVoiceBackendOptions, kwargs: Mapping[str, Any]) -> Any:
        return NavaiASGIMiddleware(inner_asgi, opts, transport=self._upstream(), **kwargs)

    def _wsgi(self, opts: NavaiVoiceBackendOptions, kwargs: Mapping[str, Any]) -> Any:
        upstream = PortalUpstream(self._portal, self._upstream())
        return NavaiWSGIMiddleware(inner_wsgi, opts, transport=upstream, **kwargs)

    def client(
        self, opts: NavaiVoiceBackendOptions, *, mount: str = "", **kwargs: Any
    ) -> httpx.Client:
        transport: httpx.BaseTransport
        if self.name == "asgi":
            transport = PortalASGITransport(self._portal, self._asgi(opts, kwargs), mount)
        elif self.name == "wsgi":
            transport = httpx.WSGITransport(self._wsgi(opts, kwargs), script_name=mount)
        elif self.name == "wsgi-validated":
            app = wsgiref.validate.validator(self._wsgi(opts, kwargs))
            transport = httpx.WSGITransport(app, script_name=mount)
        elif self.name == "wsgi-input-terminated":
            transport = httpx.WSGITransport(
                _input_terminated(self._wsgi(opts, kwargs)), script_name=mount
            )
        elif self.name == "wsgi-as-asgi":
            bridge = a2wsgi.WSGIMiddleware(self._wsgi(opts, kwargs))
            self._stack.callback(bridge.executor.shutdown)
            transport = PortalASGITransport(self._portal, bridge, mount)
        else:
            assert self.name == "asgi-as-wsgi"
            loop = self._portal.call(_running_loop)
            bridge = a2wsgi.ASGIMiddleware(self._asgi(opts, kwargs), loop=loop)
            transport = httpx.WSGITransport(bridge, script_name=mount)
        client = httpx.Client(transport=transport, base_url="http://testserver")
        self._stack.callback(client.close)
        return client


def _input_terminated(app: Any) -> Any:
    def server(environ: Any, start_response: Any) -> Any:
        environ["wsgi.input_terminated"] = True
        return app(environ, start_response)

    return server


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


@pytest.fixture(scope="module")
def portal() -> Iterator[anyio.from_thread.BlockingPortal]:
    with anyio.from_thread.start_blocking_portal() as portal:
        yield portal


@pytest.fixture
def shell(
    request: pytest.FixtureRequest,
    fake: FakeOpenAIRealtime,
    portal: anyio.from_thread.BlockingPortal,
) -> Iterator[Shell]:
    with contextlib.ExitStack() as stack:
        yield Shell(request.param, fake, portal, stack)


# -- what every answer must satisfy ------------------------------------------


def assert_no_canary(response: httpx.Response) -> None:
    assert CANARY_KEY.encode() not in response.content
    for name, value in response.headers.multi_items():
        assert CANARY_KEY not in name
        assert CANARY_KEY not in value


def assert_token_answer(response: httpx.Response) -> None:
    """The promises of CONTRACT.md §3 that hold for any answer on the token path."""
    assert_no_canary(response)
    assert response.status_code in STATUSES, response.text
    assert "x-inner" not in response.headers
    if response.status_code == 204:
        assert response.content == b""
        return
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    payload = response.json()
    if response.status_code == 200:
        assert set(payload) == {"value", "expires_at", "speech"}
        assert payload["speech"] == {"provider": "openai"}
        assert payload["value"].startswith("ek_fake_")
        assert type(payload["expires_at"]) is int
    else:
        assert set(payload) == {"error"}
        assert isinstance(payload["error"], str)
        assert payload["error"]


# -- the table ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One request and what must come of it.

    ``body`` as a list is streamed in those chunks, without Content-Length.
    ``inner`` is the inner app's echo when the request must pass through.
    ``sent`` is the whole JSON body the fake must have received; ``calls``
    how many requests it got (by default: one for a 200, none otherwise).
    ``shells`` limits the case to those shells.
    """

    status: int
    body: bytes | list[bytes] = b""
    method: str = "POST"
    path: str = TOKEN
    headers: Mapping[str, str] = dataclasses.field(default_factory=lambda: JSON)
    mount: str = ""
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    middleware: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    upstream: Callable[[FakeOpenAIRealtime], None] | None = None
    error: str | None = None
    response_headers: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
    sent: Mapping[str, Any] | None = None
    calls: int | None = None
    bearer: str = CANARY_KEY
    inner: Any = None
    shells: frozenset[str] = frozenset(SHELLS)


def _case(id: str, *, shells: tuple[str, ...] = SHELLS, **fields: Any) -> Any:
    return pytest.param(Case(shells=frozenset(shells), **fields), id=id)


def _nested(depth: int) -> bytes:
    """An object whose innermost value sits ``depth`` containers deep."""
    return b'{"x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


_REQUEST_KEY_MODE = {"openai_api_key": None, "allow_api_key_from_request": True}
_CLIENT_KEY = "sk-client-key-0000000000000456"
_SMALL = {"max_body_size": LIMIT}
_CORS = {"cors_origins": ["https://app.example"]}
_NOT_JSON = "Content-Type must be application/json (UTF-8)."
_BAD_JSON = "Request body is not valid JSON: "


def _accept_client_key(fake: FakeOpenAIRealtime) -> None:
    fake.api_key = _CLIENT_KEY


def _body_of(size: int) -> bytes:
    """A valid request body of exactly ``size`` bytes."""
    body = b'{"instructions":"' + b"x" * (size - 19) + b'"}'
    assert len(body) == size
    return body


CASES = [
    # -- success -----------------------------------------------------------
    _case(
        "all-fields",
        status=200,
        body=json.dumps(
            {
                "model": "gpt-realtime-mini",
                "voice": "cedar",
                "instructions": "  Be brief.  ",
                "language": "French",
                "voiceAccent": "Parisian",
                "voiceTone": "warm",
            }
        ).encode(),
        sent=upstream_body(
            model="gpt-realtime-mini",
            voice="cedar",
            instructions="Be brief.\nAlways reply in French.\n"
            "Use a Parisian accent while speaking.\nUse a warm tone while speaking.",
        ),
    ),
    _case("empty-body-defaults", status=200, sent=upstream_body()),
    _case("empty-body-no-content-type", status=200, headers={}, sent=upstream_body()),
    _case("empty-object", status=200, body=b"{}", sent=upstream_body()),
    _case(
        "empty-body-text-plain",
        status=200,
        headers={"Content-Type": "text/plain"},
        sent=upstream_body(),
    ),
    _case("trailing-slash", status=200, path=TOKEN + "/", body=b"{}"),
    _case("query-string-ignored", status=200, path=TOKEN + "?debug=1&x=%20y", body=b"{}"),
    _case(
        "plus-json-media-type",
        status=200,
        headers={"Content-Type": "application/merge-patch+json"},
        body=b'{"voice":"ash"}',
        sent=upstream_body(voice="ash"),
    ),
    _case(
        "charset-utf-8",
        status=200,
        headers={"Content-Type": "application/json; charset=utf-8"},
        body='{"language":"Español"}'.encode(),
        sent=upstream_body(instructions=f"{DEFAULT_INSTRUCTIONS}\nAlways reply in Español."),
    ),
    _case(
        "media-type-any-case-quoted-charset",
        status=200,
        headers={"Content-Type": 'Application/JSON; Charset="UTF-8"'},
        body=b"{}",
    ),
    _case(
        "unknown-keys-ignored",
        status=200,
        body=b'{"model":"m1","foo":1,"nested":{"a":[1,{"b":null}]},"speech":true}',
        sent=upstream_body(model="m1"),
    ),
    _case(
        "blank-strings-are-absent",
        status=200,
        body=b'{"model":"  ","voice":"","instructions":"\\t","language":" ",'
        b'"voiceAccent":"","voiceTone":"\\n"}',
        sent=upstream_body(),
    ),
    _case("null-is-absent", status=200, body=b'{"model":null}', sent=upstream_body()),
    _case(
        "options-defaults-fill-in",
        status=200,
        options={
            "default_voice": "verse",
            "default_voice_tone": "calm",
            "client_secret_ttl_seconds": 60,
        },
        body=b'{"voice":""}',
        sent=upstream_body(
            voice="verse",
            instructions=f"{DEFAULT_INSTRUCTIONS}\nUse a calm tone while speaking.",
            ttl=60,
        ),
    ),
    _case("nesting-at-the-limit", status=200, body=_nested(32)),
    _case(
        "brackets-inside-strings-do-not-nest",
        status=200,
        body=b'{"instructions":"' + b"[{" * 40 + b'"}',
        sent=upstream_body(instructions="[{" * 40),
    ),
    _case(
        "server-key-wins-over-request-key",
        status=200,
        body=json.dumps({"apiKey": _CLIENT_KEY}).encode(),
        sent=upstream_body(),
    ),
    # -- 400 -----------------------------------------------------------------
    _case(
        "invalid-json",
        status=400,
        body=b'{"model":',
        error=f"{_BAD_JSON}Expecting value: line 1 column 10 (char 9).",
    ),
    _case("json-list", status=400, body=b"[]", error="Request body must be a JSON object."),
    _case("json-string", status=400, body=b'"hi"', error="Request body must be a JSON object."),
    _case("json-number", status=400, body=b"42", error="Request body must be a JSON object."),
    _case("json-null", status=400, body=b"null", error="Request body must be a JSON object."),
    _case(
        "invalid-utf-8",
        status=400,
        body=b'{"model":"\xff\xfe"}',
        error="Request body is not valid UTF-8.",
    ),
    _case(
        "duplicate-keys",
        status=400,
        body=b'{"model":"a","voice":"b","model":"c"}',
        error="Request body has a duplicate key: 'model'.",
    ),
    _case("nan", status=400, body=b'{"x":NaN}', error=f"{_BAD_JSON}NaN is not allowed."),
    _case(
        "infinity", status=400, body=b'{"x":Infinity}', error=f"{_BAD_JSON}Infinity is not allowed."
    ),
    _case(
        "minus-infinity",
        status=400,
        body=b'{"x":-Infinity}',
        error=f"{_BAD_JSON}-Infinity is not allowed.",
    ),
    _case(
        "nesting-past-the-limit",
        status=400,
        body=_nested(33),
        error="Request body nests deeper than 32 levels.",
    ),
    _case(
        "wrong-type-names-wire-field",
        status=400,
        body=b'{"voiceAccent":5}',
        error="Invalid request field voiceAccent: expected a string.",
    ),
    _case(
        "wrong-types-name-every-field",
        status=400,
        body=b'{"voiceTone":true,"model":{},"language":["x"]}',
        error="Invalid request field language, model, voiceTone: expected a string.",
    ),
    _case(
        "byte-order-mark",
        status=400,
        body=b"\xef\xbb\xbf{}",
        error=f"{_BAD_JSON}Unexpected UTF-8 BOM (decode using utf-8-sig): "
        "line 1 column 1 (char 0).",
    ),
    # -- the request's API key ----------------------------------------------------
    _case(
        "request-key-mode-missing-key",
        status=400,
        options=_REQUEST_KEY_MODE,
        body=b"{}",
        error="Missing API key. Configure openai_api_key or send apiKey in request.",
    ),
    _case(
        "request-key-mode-blank-key",
        status=400,
        options=_REQUEST_KEY_MODE,
        body=b'{"apiKey":"   "}',
        error="Missing API key. Configure openai_api_key or send apiKey in request.",
    ),
    _case(
        "request-key-mode-unprintable-key",
        status=400,
        options=_REQUEST_KEY_MODE,
        body=b'{"apiKey":"sk-a b"}',
        error="Invalid request field apiKey: expected printable ASCII.",
    ),
    _case(
        "request-key-mode-key-used",
        status=200,
        options=_REQUEST_KEY_MODE,
        upstream=_accept_client_key,
        body=json.dumps({"apiKey": f" {_CLIENT_KEY} ", "model": "m2"}).encode(),
        sent=upstream_body(model="m2"),
        bearer=_CLIENT_KEY,
    ),
    # -- 403: CORS ---------------------------------------------------------------
    _case(
        "cors-origin-refused",
        status=403,
        middleware=_CORS,
        headers={**JSON, "Origin": "https://evil.example"},
        body=b"{}",
        error="Origin not allowed.",
    ),
    _case(
        "cors-origin-allowed",
        status=200,
        middleware=_CORS,
        headers={**JSON, "Origin": "https://app.example"},
        body=b"{}",
        response_headers={"Access-Control-Allow-Origin": "https://app.example", "Vary": "Origin"},
    ),
    _case(
        "cors-method-405",
        status=405,
        method="GET",
        middleware=_CORS,
        headers={"Origin": "https://app.example"},
        error="Method not allowed. Use POST.",
        response_headers={
            "Allow": "POST, OPTIONS",
            "Access-Control-Allow-Origin": "https://app.example",
        },
    ),
    _case(
        "cors-preflight",
        status=204,
        method="OPTIONS",
        middleware=_CORS,
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        response_headers={
            "Access-Control-Allow-Origin": "https://app.example",
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "content-type",
        },
    ),
    # -- 405 -----------------------------------------------------------------------
    *(
        _case(
            f"method-{method.lower()}",
            status=405,
            method=method,
            error="Method not allowed. Use POST.",
            response_headers={"Allow": "POST"},
        )
        for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS")
    ),
    _case(
        "method-put-with-body",
        status=405,
        method="PUT",
        body=b"{}",
        error="Method not allowed. Use POST.",
        response_headers={"Allow": "POST"},
    ),
    # -- 413 -----------------------------------------------------------------------
    _case("body-at-the-limit", status=200, middleware=_SMALL, body=_body_of(LIMIT)),
    _case(
        "body-over-the-limit",
        status=413,
        middleware=_SMALL,
        body=_body_of(LIMIT + 1),
        error=f"Request body is larger than {LIMIT} bytes.",
    ),
    _case(
        "declared-length-over-the-limit",
        status=413,
        middleware=_SMALL,
        headers={**JSON, "Content-Length": str(LIMIT + 1)},
        body=_body_of(LIMIT + 1),
        error=f"Request body is larger than {LIMIT} bytes.",
    ),
    _case(
        "huge-declared-length",
        status=413,
        headers={**JSON, "Content-Length": "99999999999"},
        body=b"{}",
        error="Request body is larger than 65536 bytes.",
    ),
    # The bytes received count, not the declared length: an ASGI server
    # hands over the whole body, so it is refused ...
    _case(
        "understated-length-over-the-limit",
        status=413,
        middleware=_SMALL,
        headers={**JSON, "Content-Length": "10"},
        body=_body_of(4 * LIMIT),
        error=f"Request body is larger than {LIMIT} bytes.",
        shells=("asgi",),
    ),
    # ... while a WSGI server (and a2wsgi's bridge) hands over only the
    # declared bytes, which here are not JSON (PEP 3333 forbids reading past
    # Content-Length, terminated input or not).
    _case(
        "understated-length-truncates",
        status=400,
        middleware=_SMALL,
        headers={**JSON, "Content-Length": "10"},
        body=_body_of(4 * LIMIT),
        error=f"{_BAD_JSON}Unterminated string starting at: line 1 column 2 (char 1).",
        shells=(
            "wsgi",
            "wsgi-validated",
            "wsgi-input-terminated",
            "wsgi-as-asgi",
            "asgi-as-wsgi",
        ),
    ),
    _case(
        "chunked-over-the-limit",
        status=413,
        middleware=_SMALL,
        body=[b'{"instructions":"', b"x" * LIMIT, b'"}'],
        error=f"Request body is larger than {LIMIT} bytes.",
        # Without Content-Length a WSGI app may read only when the server
        # marks the input as terminated (PEP 3333).
        shells=("asgi", "wsgi-input-terminated"),
    ),
    _case(
        "chunked-within-the-limit",
        status=200,
        middleware=_SMALL,
        body=[b'{"voice":', b'"sage"', b"}"],
        sent=upstream_body(voice="sage"),
        shells=("asgi", "wsgi-input-terminated"),
    ),
    # Where the server neither gives a length nor terminates the input, the
    # body cannot be read; it must be refused, not taken for an empty one
    # (which would mint a session that ignores what the client asked for).
    _case(
        "chunked-body-unreadable",
        status=400,
        body=[b'{"voice":', b'"sage"', b"}"],
        error="Send the request body with a Content-Length.",
        shells=("wsgi", "wsgi-validated", "wsgi-as-asgi"),
    ),
    _case(
        "overstated-length",
        status=400,
        headers={**JSON, "Content-Length": "40"},
        body=b"{}",
        error="Request body is incomplete.",
        # a2wsgi's bridge would wait for the missing bytes forever.
        shells=("asgi", "wsgi", "wsgi-validated", "wsgi-input-terminated", "wsgi-as-asgi"),
    ),
    _case(
        "garbage-content-length",
        status=400,
        headers={**JSON, "Content-Length": "12abc"},
        body=b"{}",
        error="Invalid Content-Length.",
        # wsgiref's validator and a2wsgi's bridge reject it before us.
        shells=("asgi", "wsgi", "wsgi-input-terminated", "wsgi-as-asgi"),
    ),
    # -- 415 -----------------------------------------------------------------------
    _case(
        "text-plain-with-body",
        status=415,
        headers={"Content-Type": "text/plain"},
        body=b"{}",
        error=_NOT_JSON,
    ),
    _case("no-content-type-with-body", status=415, headers={}, body=b"{}", error=_NOT_JSON),
    _case(
        "form-with-body",
        status=415,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        body=b"model=x",
        error=_NOT_JSON,
    ),
    _case(
        "charset-latin-1",
        status=415,
        headers={"Content-Type": "application/json; charset=latin-1"},
        body=b"{}",
        error=_NOT_JSON,
    ),
    _case(
        "json-lookalike-media-type",
        status=415,
        headers={"Content-Type": "application/jsonx"},
        body=b"{}",
        error=_NOT_JSON,
    ),
    # -- upstream --------------------------------------------------------------------
    _case(
        "upstream-500-retried-then-502",
        status=502,
        upstream=lambda fake: fake.fail(500, message=f"boom for {CANARY_KEY}"),
        error="OpenAI client_secrets failed (500): boom for [redacted]",
        calls=3,
    ),
    _case(
        "upstream-503-once-then-200",
        status=200,
        upstream=lambda fake: fake.fail(503, times=1),
        calls=2,
        # One shell per driver (async, sync) is enough: it costs a real retry delay.
        shells=("asgi", "wsgi"),
    ),
    _case(
        "upstream-garbage-502",
        status=502,
        upstream=lambda fake: fake.return_garbage(),
        error="OpenAI client_secrets returned a body that is not a JSON object.",
        calls=1,
    ),
    _case(
        "upstream-401-502",
        status=502,
        upstream=lambda fake: fake.fail(401, message="Invalid API key"),
        error="OpenAI client_secrets failed (401): Invalid API key",
        calls=1,
    ),
    _case(
        "upstream-401-key-redacted",
        status=502,
        upstream=lambda fake: fake.fail(401, message=f"Incorrect API key provided: {CANARY_KEY}."),
        error="OpenAI client_secrets failed (401): Incorrect API key provided: [redacted].",
        calls=1,
    ),
    _case(
        "upstream-429-retry-after",
        status=429,
        upstream=lambda fake: fake.rate_limit(retry_after="7"),
        error="OpenAI client_secrets failed (429): Rate limit reached.",
        response_headers={"Retry-After": "7"},
        calls=1,
    ),
    _case(
        "upstream-429-unsafe-retry-after-dropped",
        status=429,
        upstream=lambda fake: fake.rate_limit(retry_after=" "),
        error="OpenAI client_secrets failed (429): Rate limit reached.",
        response_headers={"Retry-After": None},
        calls=1,
    ),
    _case(
        "upstream-stall-504",
        status=504,
        options={"upstream_timeout_seconds": SHORT_BUDGET},
        upstream=lambda fake: fake.stall(STALL_SECONDS),
        error="OpenAI client_secrets timed out.",
        calls=1,
    ),
    # -- pass-through --------------------------------------------------------------------
    _case(
        "other-path-get-with-query",
        status=200,
        method="GET",
        path="/other/page?a=1&b=%20x&c",
        inner=echoed("GET", "/other/page", query="a=1&b=%20x&c"),
    ),
    _case(
        "other-path-post-body-untouched",
        status=200,
        path="/api/things",
        headers={"Content-Type": "text/plain"},
        body=b'{"model": 5, "model": NaN}',
        inner=echoed("POST", "/api/things", body='{"model": 5, "model": NaN}'),
    ),
    _case(
        "below-token-path",
        status=200,
        path=TOKEN + "/extra",
        body=b"{}",
        inner=echoed("POST", TOKEN + "/extra", body="{}"),
    ),
    _case(
        "token-path-prefix",
        status=200,
        path=TOKEN + "x",
        inner=echoed("POST", TOKEN + "x"),
    ),
    _case(
        "token-path-parent",
        status=200,
        method="GET",
        path="/navai/realtime",
        inner=echoed("GET", "/navai/realtime"),
    ),
    _case(
        "token-path-other-case",
        status=200,
        path=TOKEN.upper(),
        inner=echoed("POST", TOKEN.upper()),
    ),
    _case(
        "other-path-big-body-untouched",
        status=200,
        middleware=_SMALL,
        path="/upload",
        headers={"Content-Type": "application/octet-stream"},
        body=b"z" * (LIMIT * 4),
        inner=echoed("POST", "/upload", body="z" * (LIMIT * 4)),
    ),
    # -- custom path, mount points ---------------------------------------------------------
    _case(
        "custom-path",
        status=200,
        middleware={"path": "/api/realtime-token/"},
        path="/api/realtime-token",
        body=b"{}",
    ),
    _case(
        "custom-path-frees-default",
        status=200,
        middleware={"path": "/api/realtime-token"},
        body=b"{}",
        inner=echoed("POST", TOKEN, body="{}"),
    ),
    _case(
        "mounted",
        status=200,
        mount="/voice",
        body=b'{"voice":"ash"}',
        sent=upstream_body(voice="ash"),
    ),
    _case("mounted-trailing-slash", status=200, mount="/voice", path=TOKEN + "/"),
    _case(
        "mounted-custom-path",
        status=200,
        mount="/voice/v2",
        middleware={"path": "/token"},
        path="/token",
    ),
    _case(
        "mounted-other-path",
        status=200,
        mount="/voice",
        method="GET",
        path="/other?q=1",
        inner=echoed("GET", "/voice/other", mount="/voice", query="q=1"),
    ),
    _case(
        "mounted-method-405",
        status=405,
        mount="/voice",
        method="GET",
        error="Method not allowed. Use POST.",
        response_headers={"Allow": "POST"},
    ),
]


def _table() -> list[Any]:
    params = []
    for param in CASES:
        (case,) = param.values
        for name in SHELLS:
            if name in case.shells:
                params.append(pytest.param(name, case, id=f"{param.id}-{name}"))
    return params


@pytest.mark.parametrize(("shell", "case"), _table(), indirect=["shell"])
def test_http(
    shell: Shell, case: Case, fake: FakeOpenAIRealtime, opts: NavaiVoiceBackendOptions
) -> None:
    if case.upstream is not None:
        case.upstream(fake)
    client = shell.client(attrs.evolve(opts, **case.options), mount=case.mount, **case.middleware)
    content: Any = case.body
    if isinstance(case.body, list):
        content = iter(case.body)  # streamed: chunked, no Content-Length
    response = client.request(
        case.method, shell.url(case.path, case.mount), headers=case.headers, content=content
    )

    assert response.status_code == case.status, response.text
    assert response.status_code != 500
    if case.inner is not None:
        assert_no_canary(response)
        assert response.headers["x-inner"] in ("asgi", "wsgi")
        assert response.json() == case.inner
        assert fake.requests == []
        return
    assert_token_answer(response)
    if case.error is not None:
        assert response.json() == {"error": case.error}
    for name, value in case.response_headers.items():
        assert response.headers.get(name) == value, name
    calls = case.calls if case.calls is not None else int(case.status == 200)
    assert len(fake.requests) == calls
    for recorded in fake.requests:
        assert recorded.method == "POST"
        assert recorded.path == "/v1/realtime/client_secrets"
        assert recorded.headers["authorization"] == f"Bearer {case.bearer}"
        assert recorded.headers["content-type"] == "application/json"
    if case.sent is not None:
        assert fake.requests[-1].json == case.sent


def test_every_shell_and_status_is_covered() -> None:
    """The table is the proof that the shells agree: keep it complete."""
    statuses = {param.values[0].status for param in CASES}
    assert statuses == STATUSES
    # Every refusal names its whole message.
    assert [p.id for p in CASES if p.values[0].status >= 400 and p.values[0].error is None] == []
    covered = {(param.values[1].status, param.values[0]) for param in _table()}
    for status in STATUSES:
        assert {name for s, name in covered if s == status} == set(SHELLS), status


# -- ASGI only: lifespan, websocket, disconnects -----------------------------


def _script(*messages: Any) -> Any:
    queue = list(messages)

    async def receive() -> Any:
        return queue.pop(0)

    return receive


@pytest.mark.parametrize("ending", ["complete", "failed"])
def test_lifespan_reaches_app_then_own_client_is_closed(
    opts: NavaiVoiceBackendOptions, ending: str
) -> None:
    seen: list[str] = []
    middleware: NavaiASGIMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        assert (await receive())["type"] == "lifespan.startup"
        seen.append("startup")
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        # The wrapped app shuts down first; the client is still open.
        seen.append(f"shutdown, client closed: {await is_closed(middleware.transport)}")
        await send({"type": f"lifespan.shutdown.{ending}", "message": "bye"})

    middleware = NavaiASGIMiddleware(app, opts)
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append((message["type"], await is_closed(middleware.transport)))

    async def main() -> None:
        receive = _script({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"})
        await middleware({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    anyio.run(main)
    assert seen == ["startup", "shutdown, client closed: False"]
    assert sent == [
        ("lifespan.startup.complete", False),
        (f"lifespan.shutdown.{ending}", True),
    ]


def test_lifespan_leaves_a_given_transport_open(
    fake: FakeOpenAIRealtime, opts: NavaiVoiceBackendOptions
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})

    async def main() -> None:
        async with fake.async_transport() as upstream:
            middleware = NavaiASGIMiddleware(app, opts, transport=upstream)
            receive = _script({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"})
            sent: list[Any] = []

            async def send(message: Any) -> None:
                sent.append(message["type"])

            await middleware({"type": "lifespan"}, receive, send)
            assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
            # The caller owns the transport: it still works after shutdown.
            transport = httpx.ASGITransport(app=middleware)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await client.post(TOKEN, json={})
            assert response.status_code == 200

    anyio.run(main)


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param({"type": "websocket", "path": TOKEN, "root_path": ""}, id="websocket"),
        pytest.param(
            {"type": "http", "method": "POST", "path": "/other", "root_path": "", "headers": []},
            id="http-other-path",
        ),
        pytest.param({"type": "lifespan"}, id="lifespan-given-transport"),
    ],
)
def test_other_scopes_pass_through_untouched(
    fake: FakeOpenAIRealtime, opts: NavaiVoiceBackendOptions, scope: dict[str, Any]
) -> None:
    calls: list[Any] = []

    async def app(*args: Any) -> None:
        calls.append(args)

    async def receive() -> Any:
        raise AssertionError("the middleware must not read")

    async def send(message: Any) -> None:
        raise AssertionError("the middleware must not answer")

    async def main() -> None:
        async with fake.async_transport() as upstream:
            middleware = NavaiASGIMiddleware(app, opts, transport=upstream)
            await middleware(scope, receive, send)

    anyio.run(main)
    assert len(calls) == 1
    assert calls[0][0] is scope
    assert calls[0][1] is receive
    assert calls[0][2] is send
    assert fake.requests == []


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param(
            [
                {"type": "http.request", "body": b'{"mod', "more_body": True},
                {"type": "http.disconnect"},
            ],
            id="mid-body",
        ),
        pytest.param([{"type": "http.disconnect"}], id="before-body"),
    ],
)
def test_client_leaving_mid_body(
    fake: FakeOpenAIRealtime, opts: NavaiVoiceBackendOptions, messages: list[Any]
) -> None:
    sent: list[Any] = []
    scope = {
        "type": "http",
        "method": "POST",
        "path": TOKEN,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"40")],
    }

    async def send(message: Any) -> None:
        sent.append(message)

    async def main() -> None:
        async with fake.async_transport() as upstream:
            middleware = NavaiASGIMiddleware(inner_asgi, opts, transport=upstream)
            await middleware(scope, _script(*messages), send)

    anyio.run(main)
    assert sent == []
    assert fake.requests == []
