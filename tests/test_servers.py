"""The middlewares under real servers on loopback.

The ASGI middleware runs under uvicorn, the WSGI middleware under waitress
and under ``wsgiref.simple_server``; each makes its own upstream client and
talks over a socket to the fake upstream, itself served by uvicorn. These
are the cases an in-process transport cannot show: chunked request bodies
as servers deliver them, timeouts on real sockets, concurrent requests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import wsgiref.simple_server
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import httpx
import pytest
import waitress

from navai_mw import NavaiASGIMiddleware, NavaiVoiceBackendOptions, NavaiWSGIMiddleware
from navai_mw.testing import FakeOpenAIRealtime, serve_asgi

from .conftest import CANARY_KEY, is_closed
from .shells import stop_waitress

TOKEN = "/navai/realtime/client-secret"
LIMIT = 64


# -- the wrapped apps ------------------------------------------------------------


async def inner_asgi(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-inner", b"1")]})
    await send({"type": "http.response.body", "body": f"inner {scope['path']}".encode()})


def inner_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    body = f"inner {environ['PATH_INFO']}".encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), ("X-Inner", "1")],
    )
    return [body]


# -- the servers -------------------------------------------------------------------


@contextlib.contextmanager
def serve_waitress(app: Any) -> Iterator[str]:
    """Run ``app`` under waitress in a thread; yields its base URL."""
    socket_map: dict[int, Any] = {}
    server = waitress.create_server(app, map=socket_map, host="127.0.0.1", port=0, threads=8)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        stop_waitress(server, socket_map)
        thread.join(timeout=10)
        assert not thread.is_alive()


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_wsgiref(app: Any) -> Iterator[str]:
    """Run ``app`` under wsgiref's reference server in a thread."""
    server = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


Serve = Callable[..., str]


@pytest.fixture
def upstream_opts(served_fake: str) -> NavaiVoiceBackendOptions:
    return NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=served_fake, upstream_timeout_seconds=5
    )


def _server_fixture(names: list[str]) -> Any:
    @pytest.fixture(params=names)
    def fixture(
        request: pytest.FixtureRequest, upstream_opts: NavaiVoiceBackendOptions
    ) -> Iterator[Serve]:
        """A function serving the middleware (options, keyword arguments) on
        loopback under one server; returns the base URL."""
        with contextlib.ExitStack() as stack:

            def serve(opts: NavaiVoiceBackendOptions | None = None, **kwargs: Any) -> str:
                opts = opts or upstream_opts
                if request.param == "uvicorn":
                    # The middleware closes its own client at lifespan shutdown.
                    app = NavaiASGIMiddleware(inner_asgi, opts, **kwargs)
                    return stack.enter_context(serve_asgi(app, lifespan="on"))
                wsgi_app = NavaiWSGIMiddleware(inner_wsgi, opts, **kwargs)
                stack.callback(wsgi_app.close)
                if request.param == "waitress":
                    return stack.enter_context(serve_waitress(wsgi_app))
                return stack.enter_context(serve_wsgiref(wsgi_app))

            yield serve

    return fixture


every_server = _server_fixture(["uvicorn", "waitress", "wsgiref"])
# wsgiref.simple_server speaks HTTP/1.0: no chunked request bodies, and it
# closes the connection on a body it did not read.
streaming_server = _server_fixture(["uvicorn", "waitress"])


def _chunks(*parts: bytes) -> Iterator[bytes]:
    yield from parts  # a generator: httpx sends it chunked, without Content-Length


def _assert_token(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    payload: dict[str, Any] = response.json()
    assert set(payload) == {"value", "expires_at", "speech"}
    assert payload["speech"] == {"provider": "openai"}
    assert payload["value"].startswith("ek_fake_")
    assert CANARY_KEY not in response.text
    return payload


def _assert_error(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]
    assert CANARY_KEY not in response.text


# -- the cases ---------------------------------------------------------------------


def test_mint_and_pass_through(every_server: Serve, fake: FakeOpenAIRealtime) -> None:
    url = every_server()
    with httpx.Client(base_url=url) as client:
        response = client.post(TOKEN, json={"language": "German", "voiceAccent": "Bavarian"})
        other = client.get("/elsewhere")
    _assert_token(response)
    (recorded,) = fake.requests
    assert recorded.headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert recorded.json["session"]["instructions"] == (
        "You are a helpful assistant.\nAlways reply in German.\n"
        "Use a Bavarian accent while speaking."
    )
    assert other.status_code == 200
    assert other.headers["x-inner"] == "1"
    assert other.text == "inner /elsewhere"


def test_chunked_body(streaming_server: Serve, fake: FakeOpenAIRealtime) -> None:
    url = streaming_server()
    body = json.dumps({"voice": "sage", "voiceTone": "cheerful"}).encode()
    with httpx.Client(base_url=url) as client:
        request = client.build_request(
            "POST",
            TOKEN,
            headers={"Content-Type": "application/json"},
            content=_chunks(body[:5], body[5:20], body[20:]),
        )
        assert "content-length" not in request.headers
        assert request.headers["transfer-encoding"] == "chunked"
        response = client.send(request)
    _assert_token(response)
    session = fake.requests[0].json["session"]
    assert session["audio"]["output"]["voice"] == "sage"
    assert session["instructions"].endswith("\nUse a cheerful tone while speaking.")


def test_chunked_body_over_the_limit(streaming_server: Serve, fake: FakeOpenAIRealtime) -> None:
    url = streaming_server(max_body_size=LIMIT)
    with httpx.Client(base_url=url) as client:
        response = client.post(
            TOKEN,
            headers={"Content-Type": "application/json"},
            content=_chunks(b'{"instructions":"', b"x" * LIMIT, b"y" * LIMIT, b'"}'),
        )
    _assert_error(response, 413, f"Request body is larger than {LIMIT} bytes.")
    assert fake.requests == []


def test_declared_length_over_the_limit(streaming_server: Serve, fake: FakeOpenAIRealtime) -> None:
    url = streaming_server(max_body_size=LIMIT)
    with httpx.Client(base_url=url) as client:
        response = client.post(TOKEN, json={"instructions": "x" * 4 * LIMIT})
    _assert_error(response, 413, f"Request body is larger than {LIMIT} bytes.")
    assert fake.requests == []


def test_upstream_stall_is_a_504(
    every_server: Serve, fake: FakeOpenAIRealtime, upstream_opts: NavaiVoiceBackendOptions
) -> None:
    # The fake stalls for longer than the budget; the token server gives up
    # at the budget. (The stall is kept short: the fake's server waits for
    # the stalled answer before it shuts down.)
    opts = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY,
        openai_base_url=upstream_opts.openai_base_url,
        upstream_timeout_seconds=0.3,
    )
    url = every_server(opts)
    fake.stall(1.0)
    with httpx.Client(base_url=url, timeout=10) as client:
        response = client.post(TOKEN, json={})
    _assert_error(response, 504, "OpenAI client_secrets timed out.")
    assert len(fake.requests) == 1


@pytest.mark.parametrize("server_name", ["uvicorn", "waitress"])
def test_twenty_parallel_requests(
    server_name: str, upstream_opts: NavaiVoiceBackendOptions, fake: FakeOpenAIRealtime
) -> None:
    with contextlib.ExitStack() as stack:
        if server_name == "uvicorn":
            app: Any = NavaiASGIMiddleware(inner_asgi, upstream_opts)
            url = stack.enter_context(serve_asgi(app, lifespan="on"))
        else:
            app = NavaiWSGIMiddleware(inner_wsgi, upstream_opts)
            stack.callback(app.close)
            url = stack.enter_context(serve_waitress(app))
        client = stack.enter_context(httpx.Client(base_url=url, timeout=10))

        def mint(i: int) -> httpx.Response:
            return client.post(TOKEN, json={"language": f"lang-{i}"})

        with ThreadPoolExecutor(max_workers=20) as pool:
            responses = list(pool.map(mint, range(20)))

    values = {_assert_token(response)["value"] for response in responses}
    assert len(values) == 20
    languages = sorted(r.json["session"]["instructions"].rpartition(" ")[2] for r in fake.requests)
    assert languages == sorted(f"lang-{i}." for i in range(20))


async def _no_lifespan(scope: Any, receive: Any, send: Any) -> None:
    # Like many small apps: HTTP only, and an error for anything else.
    if scope["type"] != "http":
        raise RuntimeError(f"unsupported scope {scope['type']}")
    await inner_asgi(scope, receive, send)


@pytest.mark.parametrize("app", [inner_asgi, _no_lifespan], ids=["lifespan-app", "http-only-app"])
def test_uvicorn_shutdown_closes_the_middleware_client(
    app: Any, upstream_opts: NavaiVoiceBackendOptions
) -> None:
    # uvicorn's default lifespan="auto" carries on when the app refuses the
    # lifespan scope; the middleware's own client must be closed all the same.
    middleware = NavaiASGIMiddleware(app, upstream_opts)
    with serve_asgi(middleware) as url:
        assert httpx.get(f"{url}/elsewhere").text == "inner /elsewhere"
        assert not anyio.run(is_closed, middleware.transport)
    assert anyio.run(is_closed, middleware.transport)


def test_a_request_in_flight_when_waitress_stops_finishes_and_nothing_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The helper stops waitress's workers before closing its sockets, so a
    worker finishing a response never wakes the loop through a closed
    trigger (EBADF, in a window too narrow to open at will here)."""
    entered, leave = threading.Event(), threading.Event()

    def slow(environ: Any, start_response: Any) -> list[bytes]:
        entered.set()
        leave.wait(10)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    with caplog.at_level("DEBUG", logger="waitress"), ThreadPoolExecutor(1) as caller:
        with serve_waitress(slow) as url:
            in_flight = caller.submit(httpx.get, url, timeout=10)
            assert entered.wait(10)
            # The worker answers only once the stop has begun.
            threading.Timer(0.2, leave.set).start()
        with contextlib.suppress(httpx.HTTPError):
            in_flight.result(timeout=10)
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not failures, [r.getMessage() for r in failures]
