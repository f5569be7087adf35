"""The ASGI middleware across event loops and lifespans, as test harnesses
and servers really drive it (Starlette's TestClient, uvicorn run twice)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from navai_mw import NavaiASGIMiddleware, NavaiVoiceBackendOptions
from navai_mw.testing import FakeOpenAIRealtime, serve_asgi

TOKEN = "/navai/realtime/client-secret"


def app_for(opts: NavaiVoiceBackendOptions) -> Starlette:
    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/hello", hello)])
    app.add_middleware(NavaiASGIMiddleware, opts=opts)
    return app


def opts_for(base_url: str) -> NavaiVoiceBackendOptions:
    from .conftest import CANARY_KEY

    return NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, openai_base_url=base_url)


SCRIPT = """
import sys
import warnings

warnings.simplefilter("ignore")  # the harness's own deprecation notices
from starlette.applications import Starlette
from starlette.testclient import TestClient
from navai_mw import NavaiASGIMiddleware, NavaiVoiceBackendOptions

app = Starlette()
app.add_middleware(
    NavaiASGIMiddleware,
    opts=NavaiVoiceBackendOptions(openai_api_key=sys.argv[1], openai_base_url=sys.argv[2]),
)
client = TestClient(app)  # no `with`: every request on an event loop of its own
print(" ".join(str(client.post("/navai/realtime/client-secret", json={}).status_code)
               for _ in range(3)))
"""


def test_a_new_event_loop_per_request(fake: FakeOpenAIRealtime, served_fake: str) -> None:
    # In a process of its own: the clients of loops that are gone cannot be
    # closed from the next loop, and their sockets are only reclaimed at exit.
    from .conftest import CANARY_KEY

    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, CANARY_KEY, served_fake],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.split() == ["200", "200", "200"], result.stderr
    assert len(fake.requests) == 3


def test_the_same_app_through_two_lifespans(fake: FakeOpenAIRealtime, served_fake: str) -> None:
    # One app object, served, stopped and served again: the middleware closes
    # its client at the first shutdown and must mint again after that.
    app = app_for(opts_for(served_fake))
    for _ in range(2):
        with serve_asgi(app) as url:
            assert httpx.post(f"{url}{TOKEN}", json={}).status_code == 200
            assert httpx.get(f"{url}/hello").text == "hello"
    assert len(fake.requests) == 2


def test_a_failed_startup_is_not_hidden(opts: NavaiVoiceBackendOptions) -> None:
    async def broken_startup(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()  # lifespan.startup
        raise RuntimeError("database unreachable")

    middleware = NavaiASGIMiddleware(broken_startup, opts)
    sent: list[Any] = []

    async def receive() -> dict[str, str]:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        sent.append(message)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="database unreachable"):
            await middleware({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    anyio.run(main)
    assert sent == []  # nothing claimed the startup went well
