"""A bad setting stops the server at start-up, whichever documented way the
middleware is mounted.

Built directly, the middleware raises at construction. Built lazily by
Starlette or FastAPI (``app.add_middleware``: the stack is made on the first
ASGI call, the lifespan's), raising would make uvicorn's default ``--lifespan
auto`` decide that the app does not speak lifespan, start, and answer every
request with a 500. The middleware answers ``lifespan.startup.failed``
instead: uvicorn (default settings), hypercorn and granian exit, with the
message, and serve nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

from navai_mw import NavaiASGIMiddleware, NavaiVoiceBackendOptions, OptionsError

BAD_TTL = "client_secret_ttl_seconds must be an integer. Received: 'abc'"
APP = """
from fastapi import FastAPI
from navai_mw import NavaiASGIMiddleware

app = FastAPI()


@app.get("/hello")
def hello() -> dict[str, str]:
    return {"hello": "world"}


app.add_middleware(NavaiASGIMiddleware)
"""
EXIT_TIMEOUT = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "voice_app.py").write_text(textwrap.dedent(APP))
    return tmp_path


def _server_command(server: str, port: int) -> list[str]:
    if server == "uvicorn":  # its default settings: --lifespan auto
        return [sys.executable, "-m", "uvicorn", "voice_app:app", "--port", str(port)]
    if server == "hypercorn":
        return [sys.executable, "-m", "hypercorn", "voice_app:app", "--bind", f"127.0.0.1:{port}"]
    granian = shutil.which("granian", path=os.path.dirname(sys.executable))
    assert granian is not None, "granian is in the test extra"
    return [granian, "--interface", "asgi", "--port", str(port), "voice_app:app"]


@pytest.mark.parametrize("server", ["uvicorn", "hypercorn", "granian"])
def test_a_bad_setting_stops_the_server_with_its_message(server: str, app_dir: Path) -> None:
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "NAVAI_"))},
        "OPENAI_API_KEY": "sk-startup-failure",
        "OPENAI_REALTIME_CLIENT_SECRET_TTL": "abc",
        "PYTHONPATH": os.pathsep.join([str(app_dir), str(Path(__file__).parent.parent)]),
    }
    process = subprocess.Popen(
        _server_command(server, port),
        cwd=app_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"{server} kept running with a bad setting:\n{output}")
    # It stopped by itself (hypercorn exits with 0 after a failed lifespan
    # startup, its own choice; the others with an error status).
    assert process.returncode != 0 or server == "hypercorn", output
    assert BAD_TTL in output, output
    assert "sk-startup-failure" not in output
    # Nothing was served: the port is free again, and never answered.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/hello", timeout=2)


def test_built_directly_the_middleware_raises_at_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-startup-failure")
    monkeypatch.setenv("OPENAI_REALTIME_CLIENT_SECRET_TTL", "abc")
    with pytest.raises(OptionsError, match="client_secret_ttl_seconds"):
        NavaiASGIMiddleware(FastAPI())


def _lifespan_messages(app: Any) -> list[dict[str, Any]]:
    """Drive a lifespan, as a server does (startup, then shutdown once it
    has started); what the app sent."""
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def main() -> None:
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    anyio.run(main)
    return sent


def test_built_inside_the_lifespan_the_failure_is_the_startups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-startup-failure")
    monkeypatch.setenv("NAVAI_RATE_LIMIT", "ten per minute")
    app = FastAPI()
    app.add_middleware(NavaiASGIMiddleware)  # built on the first ASGI call
    [failed] = _lifespan_messages(app)
    assert failed["type"] == "lifespan.startup.failed"
    assert failed["message"].startswith("navai_mw: rate_limit for 'mint' is not in")


def test_a_request_to_a_middleware_that_could_not_start_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A server running without lifespan: no request is served as if all were well.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-startup-failure")

    async def main() -> None:
        middleware = NavaiASGIMiddleware(FastAPI(), max_body_size=-1)
        scope = {"type": "http", "method": "GET", "path": "/hello", "headers": []}
        with pytest.raises(OptionsError, match="max_body_size"):
            await middleware(scope, None, None)

    anyio.run(main)


def test_well_configured_the_app_starts_as_before() -> None:
    opts = NavaiVoiceBackendOptions(openai_api_key="sk-startup-failure")
    app = FastAPI()
    app.add_middleware(NavaiASGIMiddleware, opts=opts)
    assert _lifespan_messages(app) == [
        {"type": "lifespan.startup.complete"},
        {"type": "lifespan.shutdown.complete"},
    ]
