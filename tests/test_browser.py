"""CORS, proven in a real browser and then header by header.

A headless Chromium loads a page from origin A (allowed) or origin B (not
allowed); the page POSTs JSON to the token endpoint on a third port, which
makes the browser send a real preflight, and reports what ``fetch`` gave back
to its own page server. Everything listens on loopback only.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import AbstractContextManager, contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from navai_mw import NavaiASGIMiddleware, NavaiVoiceBackendOptions
from navai_mw.testing import FakeOpenAIRealtime, serve_asgi

from .conftest import CANARY_KEY

TOKEN_PATH = "/navai/realtime/client-secret"
# Generous bounds: they only stop a broken run from hanging, they are never
# what a passing run is measured against.
REPORT_TIMEOUT = 15.0
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
)

# The page reads the token URL from its query string, does the JSON POST a
# voice front end does, and reports the outcome to the server it came from.
PAGE = b"""<!doctype html>
<meta charset="utf-8">
<title>navai_mw CORS probe</title>
<script>
(async () => {
  const tokenUrl = new URLSearchParams(location.search).get("token");
  let report;
  try {
    const res = await fetch(tokenUrl, {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({language: "Spanish"}),
    });
    const data = await res.json();
    report = {
      outcome: "response",
      ok: res.ok,
      status: res.status,
      valuePrefix: typeof data.value === "string" ? data.value.slice(0, 8) : null,
      error: data.error ?? null,
    };
  } catch (err) {
    report = {outcome: "thrown", name: err.name, message: String(err.message)};
  }
  await fetch("/report", {method: "POST", body: JSON.stringify(report)});
})();
</script>
"""


# -- servers ---------------------------------------------------------------


class _PageHandler(BaseHTTPRequestHandler):
    server: _PageServer

    def do_GET(self) -> None:
        if self.path.startswith("/?"):
            self._answer(200, PAGE, "text/html; charset=utf-8")
        else:
            self._answer(404, b"not found", "text/plain")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path == "/report":
            self.server.reports.put(json.loads(body))
            self._answer(204, b"", "text/plain")
        else:
            self._answer(404, b"not found", "text/plain")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest's output for failures


class _PageServer(ThreadingHTTPServer):
    daemon_threads = True
    reports: queue.Queue[dict[str, Any]]


@contextmanager
def page_server() -> Iterator[_PageServer]:
    """A page origin on its own loopback port; its ``reports`` queue fills
    with what the page posts to ``/report``."""
    server = _PageServer(("127.0.0.1", 0), _PageHandler)
    server.reports = queue.Queue()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def origin_of(server: _PageServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


async def _not_found(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """The wrapped app: 404 for anything the middleware passes on.

    It speaks lifespan, so that uvicorn's shutdown reaches the middleware,
    which then closes its pooled upstream client.
    """
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


class _Seen:
    """ASGI wrapper that records (method, Origin) of every HTTP request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls: list[tuple[str, str | None]] = []

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            origin = dict(scope["headers"]).get(b"origin")
            self.calls.append((scope["method"], origin.decode() if origin else None))
        await self.app(scope, receive, send)


TokenServer = Callable[[list[str]], AbstractContextManager[tuple[str, _Seen]]]


@pytest.fixture
def token_server(fake: FakeOpenAIRealtime, served_fake: str) -> TokenServer:
    """Serves the middleware (in front of a 404 app) under uvicorn, with the
    given ``cors_origins``; yields its base URL and the request recorder."""
    opts = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=served_fake, upstream_timeout_seconds=5
    )

    @contextmanager
    def start(cors_origins: list[str]) -> Iterator[tuple[str, _Seen]]:
        seen = _Seen(NavaiASGIMiddleware(_not_found, opts, cors_origins=cors_origins))
        with serve_asgi(seen) as url:
            yield url, seen

    return start


# -- the browser -------------------------------------------------------------


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is missing: apt-get install chromium (scripts/test does it)"
    return path


def run_page(page: _PageServer, token_url: str, tmp_path: Path) -> dict[str, Any]:
    """Load the probe page in a fresh headless Chromium; return its report."""
    url = f"{origin_of(page)}/?token={quote(token_url, safe='')}"
    log = (tmp_path / "chromium.log").open("wb")
    proc = subprocess.Popen(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", url],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: renderers die with it
    )
    try:
        deadline = time.monotonic() + REPORT_TIMEOUT
        while time.monotonic() < deadline:
            try:
                return page.reports.get(timeout=0.1)
            except queue.Empty:
                if proc.poll() is not None:
                    break
        tail = (tmp_path / "chromium.log").read_text(errors="replace")[-2000:]
        pytest.fail(f"no report from the page (chromium exit {proc.poll()}):\n{tail}")
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        log.close()


def test_allowed_origin_gets_a_token_in_chromium(
    token_server: TokenServer, fake: FakeOpenAIRealtime, tmp_path: Path
) -> None:
    with page_server() as page_a:
        origin_a = origin_of(page_a)
        with token_server([origin_a]) as (url, seen):
            report = run_page(page_a, url + TOKEN_PATH, tmp_path)

    assert report["outcome"] == "response", report
    assert report["ok"] is True
    assert report["status"] == 200
    assert report["valuePrefix"] == "ek_fake_"
    # The JSON content type made the browser ask first, then POST.
    assert seen.calls == [("OPTIONS", origin_a), ("POST", origin_a)]
    assert len(fake.requests) == 1
    instructions = fake.requests[0].json["session"]["instructions"]
    assert instructions.endswith("Always reply in Spanish.")


def test_refused_origin_cannot_fetch_in_chromium(
    token_server: TokenServer, fake: FakeOpenAIRealtime, tmp_path: Path
) -> None:
    with page_server() as page_a, page_server() as page_b:
        origin_b = origin_of(page_b)
        with token_server([origin_of(page_a)]) as (url, seen):
            report = run_page(page_b, url + TOKEN_PATH, tmp_path)

    # The page learns nothing but a network error...
    assert report["outcome"] == "thrown", report
    assert report["name"] == "TypeError"
    # ...because the browser stopped at the refused preflight.
    assert seen.calls == [("OPTIONS", origin_b)]
    assert fake.requests == []


# -- the same rules, header by header -----------------------------------------

ORIGIN_A = "http://127.0.0.1:8001"
ORIGIN_B = "http://127.0.0.1:8002"
BODY = {"language": "Spanish"}


def _preflight(url: str, origin: str) -> httpx.Response:
    return httpx.options(
        url + TOKEN_PATH,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )


def test_preflight_from_allowed_origin(token_server: TokenServer) -> None:
    with token_server([ORIGIN_A]) as (url, _):
        response = _preflight(url, ORIGIN_A)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == ORIGIN_A
    assert response.headers["vary"] == "Origin"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-headers"].lower() == "content-type"
    assert response.content == b""


def test_preflight_from_refused_origin(token_server: TokenServer) -> None:
    with token_server([ORIGIN_A]) as (url, _):
        response = _preflight(url, ORIGIN_B)
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers
    assert response.json() == {"error": "Origin not allowed."}


def test_post_from_refused_origin_never_reaches_upstream(
    token_server: TokenServer, fake: FakeOpenAIRealtime
) -> None:
    with token_server([ORIGIN_A]) as (url, _):
        response = httpx.post(url + TOKEN_PATH, json=BODY, headers={"Origin": ORIGIN_B})
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers
    assert fake.requests == []


def test_post_from_allowed_origin(token_server: TokenServer, fake: FakeOpenAIRealtime) -> None:
    with token_server([ORIGIN_A]) as (url, _):
        response = httpx.post(url + TOKEN_PATH, json=BODY, headers={"Origin": ORIGIN_A})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN_A
    assert response.headers["vary"] == "Origin"
    assert response.json()["value"].startswith("ek_fake_")
    assert len(fake.requests) == 1


def test_post_without_origin_is_served(token_server: TokenServer, fake: FakeOpenAIRealtime) -> None:
    # Servers, curl and same-origin GET-style callers send no Origin at all.
    with token_server([ORIGIN_A]) as (url, _):
        response = httpx.post(url + TOKEN_PATH, json=BODY)
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    assert response.json()["value"].startswith("ek_fake_")
    assert len(fake.requests) == 1


def test_any_origin_with_star(token_server: TokenServer, fake: FakeOpenAIRealtime) -> None:
    with token_server(["*"]) as (url, _):
        preflight = _preflight(url, ORIGIN_B)
        response = httpx.post(url + TOKEN_PATH, json=BODY, headers={"Origin": ORIGIN_B})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert len(fake.requests) == 1
