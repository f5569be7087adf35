"""navai's CORS next to a framework's CORS middleware, proven in Chromium;
and the FastAPI recipe that puts every navai route under ``/api``.

Three arrangements of a FastAPI app with Starlette's ``CORSMiddleware`` and
navai, as ``docs/recipes.md`` describes them. A headless Chromium loads a
page from one loopback port and, from there, calls the app on another (a
different origin): the client secret (a JSON POST), the functions list and
the app's own route (GETs made to preflight by an ``Authorization`` header),
and a backend function. The page reports each ``fetch``'s outcome to the
server it came from. Only a fetch that the browser lets the page read comes
back as a ``response``; a CORS failure is a ``TypeError``, whatever the server
answered.

The recipe (``examples/fastapi_prefixed.py``) runs on uvicorn in its three
forms, and each closes its upstream client when the server stops.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from navai_mw import NavaiASGIMiddleware, NavaiVoiceBackendOptions
from navai_mw.testing import FakeOpenAIRealtime, serve_asgi
from navai_mw.transports import AiohttpTransport

from .conftest import CANARY_KEY
from .test_browser import _PageHandler, _PageServer, _Seen, origin_of, run_page

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TOKEN_PATH = "/navai/realtime/client-secret"
LIST_PATH = "/navai/functions"
EXECUTE_PATH = "/navai/functions/execute"
BEARER = {"Authorization": "Bearer probe"}  # not CORS-safelisted: forces a preflight

# The page reads a plan (a base URL and the requests to make, in order) from
# its query string (the parameter ``run_page`` names ``token``), makes each
# request with fetch, and posts what the browser let it see to /report.
PAGE = b"""<!doctype html>
<meta charset="utf-8">
<title>navai_mw CORS arrangements probe</title>
<script>
(async () => {
  const plan = JSON.parse(new URLSearchParams(location.search).get("token"));
  const results = {};
  for (const step of plan.steps) {
    const init = {method: step.method, headers: step.headers};
    if (step.body !== null) init.body = JSON.stringify(step.body);
    try {
      const res = await fetch(plan.base + step.path, init);
      const text = await res.text();
      let data = null;
      try { data = JSON.parse(text); } catch (err) { data = text; }
      results[step.name] = {outcome: "response", status: res.status, data};
    } catch (err) {
      results[step.name] = {outcome: "thrown", name: err.name};
    }
  }
  await fetch("/report", {method: "POST", body: JSON.stringify(results)});
})();
</script>
"""


def _step(
    name: str, method: str, path: str, headers: dict[str, str], body: object = None
) -> dict[str, Any]:
    return {"name": name, "method": method, "path": path, "headers": headers, "body": body}


MINT = _step(
    "mint", "POST", TOKEN_PATH, {"Content-Type": "application/json"}, {"language": "Spanish"}
)
LIST = _step("list", "GET", LIST_PATH, BEARER)
EXECUTE = _step(
    "execute",
    "POST",
    EXECUTE_PATH,
    {"Content-Type": "application/json"},
    {"function_name": "ping", "payload": {}},
)
HELLO = _step("hello", "GET", "/hello", BEARER)
PLAN = [MINT, LIST, EXECUTE, HELLO]


class _PlanPageHandler(_PageHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/?"):
            self._answer(200, PAGE, "text/html; charset=utf-8")
        else:
            self._answer(404, b"not found", "text/plain")


@contextmanager
def plan_page_server() -> Iterator[_PageServer]:
    """test_browser's page server, serving the plan-running page."""
    server = _PageServer(("127.0.0.1", 0), _PlanPageHandler)
    server.reports = queue.Queue()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run_plan(
    page: _PageServer, base_url: str, steps: list[dict[str, Any]], tmp_path: Path
) -> dict[str, Any]:
    """Run ``steps`` against ``base_url`` from ``page``'s origin in Chromium."""
    return run_page(page, json.dumps({"base": base_url, "steps": steps}), tmp_path)


# -- the applications -------------------------------------------------------------


def ping() -> dict[str, str]:
    """Answer pong."""
    return {"pong": "yes"}


def own_app() -> FastAPI:
    """The app's own routes: one GET."""
    app = FastAPI()

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "fastapi"}

    return app


def framework_cors(origin: str) -> dict[str, Any]:
    """Starlette's CORSMiddleware keywords, as the docs give them."""
    return {
        "allow_origins": [origin],
        "allow_methods": ["GET", "POST"],
        "allow_headers": ["Content-Type", "Authorization"],
    }


class _HeaderTap:
    """Sits right outside navai: records the header names navai sent, and
    can spell them in Title-Case, as the ASGI shell once did (the bug that
    gave browsers two ``Access-Control-Allow-Origin`` headers)."""

    def __init__(self, app: Any, *, names: list[str], title_case: bool = False) -> None:
        self.app = app
        self.names = names
        self.title_case = title_case

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        async def tapped(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = message["headers"]
                self.names.extend(name.decode("latin-1") for name, _ in headers)
                if self.title_case:
                    message["headers"] = [(name.title(), value) for name, value in headers]
            await send(message)

        await self.app(scope, receive, tapped)


@pytest.fixture
def upstream_opts(served_fake: str) -> NavaiVoiceBackendOptions:
    return NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=served_fake, upstream_timeout_seconds=5
    )


def _preflight(url: str, origin: str, method: str, headers: str) -> httpx.Response:
    return httpx.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
        timeout=10,
    )


def _each_preflighted(origin: str, steps: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """What the app sees when the browser preflights every step: OPTIONS,
    then the request itself."""
    return [call for step in steps for call in (("OPTIONS", origin), (step["method"], origin))]


def _all_served(results: dict[str, Any]) -> None:
    assert all(result["outcome"] == "response" for result in results.values()), results
    assert results["mint"]["status"] == 200
    assert results["mint"]["data"]["value"].startswith("ek_fake_")
    assert results["list"]["status"] == 200
    assert [item["name"] for item in results["list"]["data"]["items"]] == ["ping"]
    assert results["execute"]["status"] == 200
    assert results["execute"]["data"]["result"] == {"pong": "yes"}
    assert results["hello"] == {"outcome": "response", "status": 200, "data": {"hello": "fastapi"}}


# -- (a) the framework's CORS middleware outermost, navai's CORS on too ----------------


def cors_outside(
    opts: NavaiVoiceBackendOptions,
    origin: str,
    names: list[str],
    *,
    title_case: bool = False,
    navai_cors: bool = True,
) -> FastAPI:
    app = own_app()
    # add_middleware: the one added last runs first.
    app.add_middleware(
        NavaiASGIMiddleware,
        opts=opts,
        functions=[ping],
        cors_origins=[origin] if navai_cors else None,
    )
    app.add_middleware(_HeaderTap, names=names, title_case=title_case)
    app.add_middleware(CORSMiddleware, **framework_cors(origin))
    return app


def test_framework_cors_outside_navai_sends_one_allow_origin(
    upstream_opts: NavaiVoiceBackendOptions, fake: FakeOpenAIRealtime, tmp_path: Path
) -> None:
    names: list[str] = []
    with plan_page_server() as page:
        origin = origin_of(page)
        seen = _Seen(cors_outside(upstream_opts, origin, names))
        with serve_asgi(seen) as url:
            results = run_plan(page, url, PLAN, tmp_path)
            browser_calls = list(seen.calls)
            wire = httpx.post(url + TOKEN_PATH, json={}, headers={"Origin": origin}, timeout=10)

    # Chromium fails a request whose answer has two Access-Control-Allow-Origin
    # headers: every fetch was read, so each answer had exactly one.
    _all_served(results)
    assert browser_calls == _each_preflighted(origin, PLAN)
    # navai did send its own (lower-case), and the framework's replaced it.
    assert "access-control-allow-origin" in names
    assert wire.headers.get_list("access-control-allow-origin") == [origin]
    assert len(fake.requests) == 2


def test_title_case_headers_under_a_framework_cors_fail_in_chromium(
    upstream_opts: NavaiVoiceBackendOptions, fake: FakeOpenAIRealtime, tmp_path: Path
) -> None:
    """The control: the old Title-Case names make the outer middleware add a
    second header, and Chromium refuses the answer (so the test above can
    tell)."""
    names: list[str] = []
    with plan_page_server() as page:
        origin = origin_of(page)
        app = cors_outside(upstream_opts, origin, names, title_case=True)
        seen = _Seen(app)
        with serve_asgi(seen) as url:
            results = run_plan(page, url, [MINT, HELLO], tmp_path)
            wire = httpx.post(url + TOKEN_PATH, json={}, headers={"Origin": origin}, timeout=10)

    assert results["mint"] == {"outcome": "thrown", "name": "TypeError"}
    assert results["hello"]["outcome"] == "response"  # not navai's: one header
    assert wire.headers.get_list("access-control-allow-origin") == [origin, origin]
    # The preflight (the framework's) passed; the secret was minted, unread.
    assert seen.calls[:2] == [("OPTIONS", origin), ("POST", origin)]
    assert len(fake.requests) == 2


@pytest.mark.parametrize("navai_cors", [True, False], ids=["navai-cors-on", "navai-cors-off"])
def test_under_a_framework_cors_navais_list_stops_unlisted_origins(
    upstream_opts: NavaiVoiceBackendOptions, fake: FakeOpenAIRealtime, navai_cors: bool
) -> None:
    """Why navai keeps its own list under the framework's: a request the
    browser sends without a preflight (an empty POST from a page on any
    site) reaches navai whatever the framework's CORS middleware allows."""
    app = cors_outside(upstream_opts, "http://127.0.0.1:8001", [], navai_cors=navai_cors)
    with serve_asgi(app) as url:
        response = httpx.post(
            url + TOKEN_PATH, headers={"Origin": "http://evil.test"}, content=b"", timeout=10
        )
    assert "access-control-allow-origin" not in response.headers  # unreadable either way
    if navai_cors:
        assert response.status_code == 403
        assert fake.requests == []
    else:
        assert response.status_code == 200  # minted with the defaults, for nobody
        assert len(fake.requests) == 1


# -- (b) navai outermost with its CORS on; the framework's for its own routes ------------


def navai_outside(opts: NavaiVoiceBackendOptions, origin: str, *, navai_cors: bool) -> FastAPI:
    app = own_app()
    app.add_middleware(CORSMiddleware, **framework_cors(origin))
    app.add_middleware(
        NavaiASGIMiddleware,
        opts=opts,
        functions=[ping],
        cors_origins=[origin] if navai_cors else None,
    )
    return app


def test_navai_outside_with_its_cors_on_serves_every_route(
    upstream_opts: NavaiVoiceBackendOptions, fake: FakeOpenAIRealtime, tmp_path: Path
) -> None:
    with plan_page_server() as page:
        origin = origin_of(page)
        seen = _Seen(navai_outside(upstream_opts, origin, navai_cors=True))
        with serve_asgi(seen) as url:
            results = run_plan(page, url, PLAN, tmp_path)
            browser_calls = list(seen.calls)
            list_preflight = _preflight(url + LIST_PATH, origin, "GET", "authorization")
            mint_preflight = _preflight(url + TOKEN_PATH, origin, "POST", "content-type")
            own_preflight = _preflight(url + "/hello", origin, "GET", "authorization")

    _all_served(results)
    assert browser_calls == _each_preflighted(origin, PLAN)
    assert len(fake.requests) == 1
    # navai answers the preflights of its routes, each with its own method...
    assert list_preflight.status_code == 204
    assert list_preflight.headers["access-control-allow-methods"] == "GET"
    assert list_preflight.headers["access-control-allow-headers"] == "authorization"
    assert mint_preflight.status_code == 204
    assert mint_preflight.headers["access-control-allow-methods"] == "POST"
    # ...and the framework's middleware those of the app's routes.
    assert own_preflight.status_code == 200
    assert own_preflight.text == "OK"
    assert own_preflight.headers["access-control-allow-origin"] == origin


# -- (c) navai outermost with its CORS off: what does not work -----------------------------


def test_navai_outside_with_its_cors_off_fails_in_chromium(
    upstream_opts: NavaiVoiceBackendOptions, fake: FakeOpenAIRealtime, tmp_path: Path
) -> None:
    simple_list = _step("simple-list", "GET", LIST_PATH, {})  # needs no preflight
    with plan_page_server() as page:
        origin = origin_of(page)
        seen = _Seen(navai_outside(upstream_opts, origin, navai_cors=False))
        with serve_asgi(seen) as url:
            results = run_plan(page, url, [MINT, LIST, simple_list, HELLO], tmp_path)
            browser_calls = list(seen.calls)
            mint_preflight = _preflight(url + TOKEN_PATH, origin, "POST", "content-type")

    # navai answers its paths before the framework's CORS middleware sees
    # them, and with its CORS off a preflight is a method it does not serve.
    assert mint_preflight.status_code == 405
    assert mint_preflight.headers["allow"] == "POST"
    assert "access-control-allow-origin" not in mint_preflight.headers
    assert results["mint"] == {"outcome": "thrown", "name": "TypeError"}
    assert results["list"] == {"outcome": "thrown", "name": "TypeError"}
    # A GET that needs no preflight is served, but the page may not read it.
    assert results["simple-list"] == {"outcome": "thrown", "name": "TypeError"}
    # The app's own route still has the framework's CORS.
    assert results["hello"] == {"outcome": "response", "status": 200, "data": {"hello": "fastapi"}}
    assert browser_calls == [
        ("OPTIONS", origin),
        ("OPTIONS", origin),
        ("GET", origin),
        ("OPTIONS", origin),
        ("GET", origin),
    ]
    assert fake.requests == []


# -- the recipe: every navai route under /api ------------------------------------------


def _load_recipe(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    name = "navai_recipe_fastapi_prefixed"
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / "fastapi_prefixed.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # FastAPI reads annotations by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def recipe(monkeypatch: pytest.MonkeyPatch, served_fake: str) -> ModuleType:
    """The recipe, imported with the environment pointing at the fake."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "NAVAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_API_KEY", CANARY_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", served_fake)
    return _load_recipe(monkeypatch)


CLIENTS: dict[str, Callable[[ModuleType], AiohttpTransport]] = {
    "app": lambda module: module.app.transport,
    "mounted_app": lambda module: module.voice.transport,
    "own_transport_app": lambda module: module.upstream,
}


@pytest.mark.parametrize("attr", list(CLIENTS))
def test_prefixed_recipe_serves_below_api_and_closes_its_client(
    recipe: ModuleType, fake: FakeOpenAIRealtime, attr: str
) -> None:
    client = CLIENTS[attr](recipe)
    with serve_asgi(getattr(recipe, attr)) as url:
        minted = httpx.post(url + "/api" + TOKEN_PATH, json={"voice": "cedar"}, timeout=10)
        listed = httpx.get(url + "/api" + LIST_PATH, timeout=10)
        own = httpx.get(url + "/api/hello", timeout=10)
        unprefixed = httpx.post(url + TOKEN_PATH, json={}, timeout=10)
        running_closed = client.is_closed

    assert minted.status_code == 200, minted.text
    assert minted.json()["value"].startswith("ek_fake_")
    assert fake.requests[-1].json["session"]["audio"]["output"]["voice"] == "cedar"
    assert listed.status_code == 200
    assert listed.json()["items"] == []
    assert own.json() == {"hello": "fastapi"}
    assert unprefixed.status_code == 404  # FastAPI's: not a navai route
    assert len(fake.requests) == 1
    # Open while serving; closed by the lifespan shutdown: the middleware's
    # own, or the parent app's.
    assert running_closed is False
    assert client.is_closed is True


def test_a_mounted_middleware_is_not_closed_without_the_parents_lifespan(
    upstream_opts: NavaiVoiceBackendOptions,
) -> None:
    """Why the recipe's parent closes it: a mounted app gets no lifespan."""
    voice = NavaiASGIMiddleware(own_app(), upstream_opts, functions=[])
    parent = FastAPI()
    parent.mount("/api", voice)
    with serve_asgi(parent) as url:
        minted = httpx.post(url + "/api" + TOKEN_PATH, json={}, timeout=10)
    assert minted.status_code == 200
    assert isinstance(voice.transport, AiohttpTransport)
    assert voice.transport.is_closed is False  # aclose() never ran
