"""The ASGI middleware across event loops and lifespans, as test harnesses
and servers really drive it (Starlette's TestClient, real uvicorn)."""

from __future__ import annotations

import gc
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from navai_mw import NavaiASGIMiddleware, NavaiVoiceBackendOptions
from navai_mw.testing import FakeOpenAIRealtime

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


# Without its `with` block, TestClient runs every request on a new event loop;
# the client of the loop before cannot be closed from the next one.
@pytest.mark.filterwarnings("ignore:Unclosed client session:ResourceWarning")
@pytest.mark.filterwarnings("ignore:Unclosed connector:ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_new_event_loop_per_request(fake: FakeOpenAIRealtime, served_fake: str) -> None:
    client = TestClient(app_for(opts_for(served_fake)))
    for _ in range(3):
        response = client.post(TOKEN, json={})
        assert response.status_code == 200, response.text
    assert len(fake.requests) == 3
    del client
    gc.collect()  # the abandoned clients' warnings belong to this test, not the next


def test_the_same_app_through_two_lifespans(fake: FakeOpenAIRealtime, served_fake: str) -> None:
    app = app_for(opts_for(served_fake))
    for _ in range(2):
        with TestClient(app) as client:
            assert client.post(TOKEN, json={}).status_code == 200
            assert client.get("/hello").text == "hello"
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
