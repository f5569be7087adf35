"""The framework recipes in ``examples/``, each run on a real server.

Two ways, as users meet them:

* imported with the environment pointing at the fake upstream, then served
  on loopback by the server the framework is usually deployed with (uvicorn,
  hypercorn, waitress): a token is minted through the recipe, the fake saw
  the request, and the framework's own routes and lifespan still work;
* run as scripts (``python examples/x.py``, ``python -m django_app.asgi``),
  all started at once so that the start-up costs overlap.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from navai_mw import NavaiWSGIMiddleware
from navai_mw.testing import FakeOpenAIRealtime, serve_asgi

from .conftest import CANARY_KEY

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TOKEN_PATH = "/navai/realtime/client-secret"
# Hang guards only: a healthy run takes a fraction of these.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


@pytest.fixture
def upstream(
    monkeypatch: pytest.MonkeyPatch, fake: FakeOpenAIRealtime, served_fake: str
) -> FakeOpenAIRealtime:
    """The fake upstream on loopback, with the environment pointing at it."""
    _clear_navai_env(monkeypatch)
    monkeypatch.setenv("OPENAI_API_KEY", CANARY_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", served_fake)
    return fake


def _clear_navai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "NAVAI_")):
            monkeypatch.delenv(name)


def _load(monkeypatch: pytest.MonkeyPatch, name: str) -> ModuleType:
    module_name = f"navai_recipe_{name}"
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Frameworks that read annotations look the module up by name.
    monkeypatch.setitem(sys.modules, module_name, module)
    spec.loader.exec_module(module)
    return module


def _mint(base_url: str, fake: FakeOpenAIRealtime, path: str = TOKEN_PATH) -> None:
    """A token through the recipe: the fake's secret, for exactly this request."""
    before = len(fake.requests)
    response = httpx.post(base_url + path, json={"voice": "cedar"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["value"].startswith("ek_fake_")
    assert len(fake.requests) == before + 1
    sent = fake.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert sent.json["session"]["audio"]["output"]["voice"] == "cedar"


# -- servers in a thread ------------------------------------------------------------


def _listening_socket() -> socket.socket:
    # Listening before the server runs: early requests wait in the backlog.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@contextmanager
def _serve_hypercorn(app: Any) -> Iterator[str]:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    sock = _listening_socket()
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns and closes it
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def run() -> None:
        loop.run_until_complete(serve(app, config, shutdown_trigger=stop.wait))
        loop.run_until_complete(loop.shutdown_asyncgens())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(STOP_TIMEOUT)
        loop.close()


@contextmanager
def _serve_waitress(app: Any) -> Iterator[str]:
    import waitress

    from .test_servers import stop_waitress

    server: Any = waitress.create_server(app, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        stop_waitress(server, server._map)
        thread.join(STOP_TIMEOUT)
        # WSGI has no shutdown event: the upstream client is closed by hand.
        wsgi_app = getattr(app, "wsgi_app", app)
        if isinstance(wsgi_app, NavaiWSGIMiddleware):
            wsgi_app.close()


Server = Callable[[Any], AbstractContextManager[str]]

IMPORTED = [
    pytest.param("starlette_app", "app", serve_asgi, "", {"hello": "starlette"}, id="starlette"),
    pytest.param(
        "starlette_app",
        "prefixed_app",
        serve_asgi,
        "/api",
        {"hello": "starlette"},
        id="starlette-mounted",
    ),
    pytest.param("fastapi_app", "app", serve_asgi, "", {"hello": "fastapi"}, id="fastapi"),
    # The greeting is set by an on_startup hook: Litestar's lifespan ran.
    pytest.param(
        "litestar_app",
        "app",
        serve_asgi,
        "",
        {"greeting": "hello from litestar"},
        id="litestar",
    ),
    pytest.param("quart_app", "app", _serve_hypercorn, "", {"hello": "quart"}, id="quart"),
    pytest.param("flask_app", "app", _serve_waitress, "", {"hello": "flask"}, id="flask"),
]


@pytest.mark.parametrize(("name", "attr", "server", "prefix", "hello"), IMPORTED)
def test_imported_recipe_mints_and_keeps_its_routes(
    monkeypatch: pytest.MonkeyPatch,
    upstream: FakeOpenAIRealtime,
    name: str,
    attr: str,
    server: Server,
    prefix: str,
    hello: dict[str, str],
) -> None:
    app = getattr(_load(monkeypatch, name), attr)
    with server(app) as base_url:
        _mint(base_url, upstream, prefix + TOKEN_PATH)
        own = httpx.get(f"{base_url}{prefix}/hello", timeout=10)
        assert own.status_code == 200
        assert own.json() == hello
        # The token path answers POST only; the framework never sees it.
        assert httpx.get(base_url + prefix + TOKEN_PATH, timeout=10).status_code == 405


def test_mounted_recipe_answers_below_its_prefix_only(
    monkeypatch: pytest.MonkeyPatch, upstream: FakeOpenAIRealtime
) -> None:
    app = _load(monkeypatch, "starlette_app").prefixed_app
    with serve_asgi(app) as base_url:
        response = httpx.post(base_url + TOKEN_PATH, json={}, timeout=10)
    assert response.status_code == 404  # Starlette's router: not below /api
    assert upstream.requests == []


# -- the recipes run as scripts ------------------------------------------------------


SCRIPTS = {
    "starlette": (["starlette_app.py"], {"hello": "starlette"}),
    "fastapi": (["fastapi_app.py"], {"hello": "fastapi"}),
    "litestar": (["litestar_app.py"], {"greeting": "hello from litestar"}),
    "quart": (["quart_app.py"], {"hello": "quart"}),
    "flask": (["flask_app.py"], {"hello": "flask"}),
    "django-asgi": (["-m", "django_app.asgi"], {"hello": "django"}),
    "django-wsgi": (["-m", "django_app.wsgi"], {"hello": "django"}),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Script:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        self.log = log
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, *args],
                cwd=EXAMPLES,
                env={**env, "PORT": str(self.port)},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                httpx.get(self.url + "/hello", timeout=5)
                return
            except httpx.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the script did not start:\n{self.log.read_text()}")
                time.sleep(0.05)

    def wait_stopped(self) -> None:
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def script_upstream() -> Iterator[FakeOpenAIRealtime]:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    with fake.serve():
        yield fake


@pytest.fixture(scope="module")
def scripts(
    script_upstream: FakeOpenAIRealtime, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, _Script]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "NAVAI_"))}
    env["OPENAI_API_KEY"] = CANARY_KEY
    env["OPENAI_BASE_URL"] = script_upstream.base_url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    logs = tmp_path_factory.mktemp("scripts")
    running = {
        name: _Script(args, env, logs / f"{name}.log") for name, (args, _) in SCRIPTS.items()
    }
    try:
        yield running
    finally:
        for script in running.values():
            script.process.terminate()  # all at once: their shutdowns overlap too
        for script in running.values():
            script.wait_stopped()


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_recipe_runs_as_a_script(
    scripts: dict[str, _Script], script_upstream: FakeOpenAIRealtime, name: str
) -> None:
    script = scripts[name]
    script.wait_ready()
    _mint(script.url, script_upstream)
    own = httpx.get(script.url + "/hello", timeout=10)
    assert own.status_code == 200
    assert own.json() == SCRIPTS[name][1]
    assert CANARY_KEY not in script.log.read_text()
