"""The voice page in a real browser, through navai's WebRTC relay.

Headless Chromium, with a fake microphone, loads the page that ``navai-mw
demo`` serves at ``/``, presses Start, and talks over real WebRTC to
``FakeRealtimeWebRTC`` (aiortc) through the relay: the offer goes to navai,
navai adds the session and the server's key and posts both upstream, the
answer comes back, and the fake's first event arrives on the data channel.
The test drives Chromium over the DevTools protocol (clicks and DOM reads
with ``Runtime.evaluate``; the network log, response bodies included, and
the console from the protocol's events) and checks that:

* the peer connection reaches ``connected`` and the page shows the fake's
  first event, carrying the session navai built, with the overrides of the
  page's own query string (``/?voice=cedar&language=Spanish``);
* Stop hangs up upstream (the page's ``DELETE`` of the call's Location);
* no ``ek_`` value and no API key ever appears in the page, its network log
  (requests and responses, bodies included) or its console.

It runs on the real command (``python -m navai_mw demo``), on the same
application in process under uvicorn (ASGI) and under waitress (WSGI, the
page served by a small WSGI app of the test's own), with GPT-Live, with the
guard on (a bearer token, then a same-origin cookie), and with a call cut
short by ``max_call_seconds``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import httpx
import pytest

from navai_mw import (
    AuthError,
    NavaiASGIMiddleware,
    NavaiVoiceBackendOptions,
    NavaiWSGIMiddleware,
    RequestInfo,
)
from navai_mw.cli import (
    DEMO_API_KEY,
    WEBRTC_MISSING,
    _demo_upstream,
    _own_routes,
    page_file,
)
from navai_mw.testing import FakeOpenAIRealtime, FakeRealtimeWebRTC, serve_asgi

from .conftest import CANARY_KEY
from .test_browser import CHROMIUM_FLAGS, _chromium
from .test_cli import Cli, _env, _free_port
from .test_cli import started as started  # a fixture
from .test_servers import serve_waitress


@pytest.fixture(autouse=True)
def _relay_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relays are off unless switched on: every test here switches them on
    through the environment, as a deployment would (NAVAI_RELAY)."""
    monkeypatch.setenv("NAVAI_RELAY", "true")


pytest.importorskip("aiortc")

TOKEN_PATH = "/navai/realtime/client-secret"
CALLS_PATH = "/navai/realtime/calls"
LIVE_PATH = "/navai/live/sessions"
OVERRIDES = "voice=cedar&language=Spanish"
SPANISH = "Always reply in Spanish."
# Bounds against hangs only; a healthy run is done in a few seconds.
DEADLINE = 30.0
MEDIA_FLAGS = (
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    # No mDNS host candidates: aioice could not resolve them here.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
)
# What must never reach the page: a client secret, an OpenAI key (the
# server's own, above all). Only at the start of a word: "task-" is fine,
# and SDP's random fields (ICE credentials, ids) have neither "_" nor "-".
SECRETS = re.compile(r"(?<![A-Za-z0-9])(?:ek_|sk-)")

# The page's DOM, read in one evaluation.
SNAPSHOT = """(() => ({
  state: document.getElementById("state").textContent,
  states: document.getElementById("states").textContent,
  status: document.getElementById("status").textContent,
  events: [...document.querySelectorAll("#events pre")].map((pre) => pre.textContent),
  start: !document.getElementById("start").disabled,
  href: location.href,
}))()"""
LOADED = 'document.readyState === "complete" && !!document.getElementById("start")'
STARTED = (
    "(() => { const s = document.getElementById('states').textContent;"
    " const status = document.getElementById('status').textContent;"
    " return status.startsWith('could not start') || (s.includes('connected')"
    " && document.querySelectorAll('#events pre').length > 0); })()"
)
STOPPED = (
    "(() => { const s = document.getElementById('status').textContent;"
    " return s === 'hung up' || s.startsWith('hang-up failed') || s === 'the call ended'; })()"
)

T = TypeVar("T")


# -- Chromium over the DevTools protocol --------------------------------------------


class DevTools:
    """One page target's DevTools session: commands, and every event kept."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._next = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                self.events.append(data)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next] = future
        await self.ws.send_json({"id": self._next, "method": method, "params": params})
        reply = await asyncio.wait_for(future, DEADLINE)
        assert "error" not in reply, (method, reply["error"])
        result: dict[str, Any] = reply["result"]
        return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
            userGesture=True,  # as a click would be
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def wait(self, condition: str) -> dict[str, Any]:
        """Poll until ``condition`` holds; the page's snapshot then."""
        deadline = time.monotonic() + DEADLINE
        while not await self.evaluate(condition):
            if time.monotonic() > deadline:
                pytest.fail(f"waited for {condition}: {await self.evaluate(SNAPSHOT)}")
            await asyncio.sleep(0.05)
        snapshot: dict[str, Any] = await self.evaluate(SNAPSHOT)
        return snapshot

    async def click(self, element_id: str) -> None:
        await self.evaluate(f"document.getElementById({json.dumps(element_id)}).click()")


@dataclass
class Exchange:
    """One HTTP request the page made, and what came back."""

    method: str
    url: str
    request_headers: dict[str, str]
    body: str = ""
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: str = ""
    failed: str = ""


@dataclass
class Log:
    """What the browser saw: the network, the console, the page's HTML, and
    the DevTools protocol's raw events (all of them)."""

    exchanges: list[Exchange]
    console: list[tuple[str, str]]
    exceptions: list[Any]
    html: str
    raw: str

    def to(self, method: str, path: str) -> list[Exchange]:
        return [x for x in self.exchanges if x.method == method and urlsplit(x.url).path == path]

    def everything(self) -> str:
        parts = [self.html, self.raw, *(text for _, text in self.console)]
        for x in self.exchanges:
            parts += [x.url, json.dumps(x.request_headers), x.body]
            parts += [json.dumps(x.response_headers), x.response_body]
        return "\n".join(parts)


async def _network(tools: DevTools) -> list[Exchange]:
    exchanges: dict[str, Exchange] = {}
    extra: dict[str, dict[str, str]] = {}
    finished: list[str] = []
    for event in tools.events:
        params = event.get("params", {})
        if event["method"] == "Network.requestWillBeSent":
            request = params["request"]
            headers = {name.lower(): value for name, value in request["headers"].items()}
            exchanges[params["requestId"]] = Exchange(
                request["method"], request["url"], headers, request.get("postData", "")
            )
            if request.get("hasPostData") and "postData" not in request:
                posted = await tools.call(
                    "Network.getRequestPostData", requestId=params["requestId"]
                )
                exchanges[params["requestId"]].body = posted["postData"]
        elif event["method"] == "Network.requestWillBeSentExtraInfo":
            # The headers as sent, cookies included (this may come first).
            sent = {name.lower(): value for name, value in params["headers"].items()}
            extra.setdefault(params["requestId"], {}).update(sent)
        elif event["method"] == "Network.responseReceived":
            response = params["response"]
            exchange = exchanges[params["requestId"]]
            exchange.status = response["status"]
            exchange.response_headers = {k.lower(): v for k, v in response["headers"].items()}
        elif event["method"] == "Network.loadingFinished":
            finished.append(params["requestId"])
        elif event["method"] == "Network.loadingFailed":
            exchanges[params["requestId"]].failed = params["errorText"]
    for request_id, sent in extra.items():
        if request_id in exchanges:
            exchanges[request_id].request_headers.update(sent)
    for request_id in finished:
        exchange = exchanges[request_id]
        if exchange.method in ("DELETE", "HEAD") or exchange.status == 204:
            continue  # nothing to read
        got = await tools.call("Network.getResponseBody", requestId=request_id)
        body = got["body"]
        exchange.response_body = base64.b64decode(body).decode() if got["base64Encoded"] else body
    return list(exchanges.values())


def _console(tools: DevTools) -> tuple[list[tuple[str, str]], list[Any]]:
    """The console's messages (level, text) and the page's uncaught exceptions."""
    console, exceptions = [], []
    for event in tools.events:
        params = event.get("params", {})
        if event["method"] == "Runtime.consoleAPICalled":
            console.append((params["type"], json.dumps(params["args"])))
        elif event["method"] == "Log.entryAdded":
            console.append((params["entry"]["level"], json.dumps(params["entry"])))
        elif event["method"] == "Runtime.exceptionThrown":
            exceptions.append(params["exceptionDetails"])
    return console, exceptions


@contextmanager
def chromium(tmp_path: Path) -> Iterator[int]:
    """A headless Chromium with a fake microphone; yields its DevTools port."""
    profile = tmp_path / "profile"
    tmp_path.mkdir(parents=True, exist_ok=True)
    output = (tmp_path / "chromium.log").open("wb")
    proc = subprocess.Popen(
        [
            _chromium(),
            *CHROMIUM_FLAGS,
            *MEDIA_FLAGS,
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: renderers die with it
    )
    try:
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + DEADLINE
        while not (active.exists() and len(active.read_text().splitlines()) >= 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (tmp_path / "chromium.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"no DevTools port from Chromium (exit {proc.poll()}):\n{tail}")
            time.sleep(0.05)
        yield int(active.read_text().splitlines()[0])
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        output.close()


async def _drive(
    port: int,
    url: str,
    script: Callable[[DevTools], Awaitable[T]],
    cookies: list[dict[str, Any]],
) -> tuple[T, Log]:
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + DEADLINE
        pages: list[dict[str, Any]] = []
        while not pages:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as listing:
                pages = [t for t in await listing.json() if t["type"] == "page"]
            if not pages and time.monotonic() > deadline:
                pytest.fail("Chromium shows no page")
            await asyncio.sleep(0.05)
        async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            tools = DevTools(ws)
            reader = asyncio.create_task(tools.read())
            try:
                for domain in ("Network", "Runtime", "Log", "Page"):
                    await tools.call(f"{domain}.enable")
                for cookie in cookies:
                    await tools.call("Network.setCookie", **cookie)
                await tools.call("Page.navigate", url=url)
                await tools.wait(LOADED)
                outcome = await script(tools)
                await asyncio.sleep(0.2)  # the last network events
                exchanges = await _network(tools)
                html = await tools.evaluate("document.documentElement.outerHTML")
                console, exceptions = _console(tools)
                raw = json.dumps(tools.events)
            finally:
                reader.cancel()
                with suppress(asyncio.CancelledError):
                    await reader
    return outcome, Log(exchanges, console, exceptions, html, raw)


def in_chromium(
    tmp_path: Path,
    url: str,
    script: Callable[[DevTools], Awaitable[T]],
    *,
    cookies: list[dict[str, Any]] | None = None,
) -> tuple[T, Log]:
    """Load ``url`` in a fresh Chromium, run ``script`` on the page; its
    outcome and what the browser saw."""
    with chromium(tmp_path) as port:
        return asyncio.run(_drive(port, url, script, cookies or []))


@dataclass
class Call:
    """The page's state once connected (or refused), and after Stop."""

    started: dict[str, Any]
    stopped: dict[str, Any] | None

    @property
    def first_event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.started["events"][0])
        return event


def talk(select: str | None = None) -> Callable[[DevTools], Awaitable[Call]]:
    """Start (after choosing the API ``select``, if given), wait for the
    call, press Stop and wait for the hangup."""

    async def script(tools: DevTools) -> Call:
        if select is not None:
            await tools.evaluate(f"document.querySelector('input[value=\"{select}\"]').click()")
        await tools.click("start")
        started = await tools.wait(STARTED)
        if started["status"].startswith("could not start"):
            return Call(started, None)
        await tools.click("stop")
        return Call(started, await tools.wait(STOPPED))

    return script


def assert_no_secrets(log: Log, *keys: str) -> None:
    everything = log.everything()
    assert SECRETS.search(everything) is None, SECRETS.search(everything)
    for key in keys:
        assert key not in everything


def assert_only_same_origin(log: Log, origin: str) -> None:
    """The browser reached the page's server only, and never for a secret."""
    for exchange in log.exchanges:
        assert exchange.url.startswith(origin + "/"), exchange.url
        assert TOKEN_PATH not in exchange.url
    assert log.exceptions == []


def assert_clean(log: Log) -> None:
    """Every request completed; no error in the console."""
    assert [x.url for x in log.exchanges if x.failed or x.status is None] == []
    assert [text for level, text in log.console if level in ("error", "assert")] == []


def assert_relayed(log: Log, origin: str, path: str = CALLS_PATH) -> Exchange:
    """The offer went to ``path`` as SDP, with the page's overrides; the
    DELETE of its Location was answered 204. The POST's exchange."""
    [offer] = log.to("POST", path)
    assert offer.url == f"{origin}{path}?{OVERRIDES}"
    assert offer.request_headers["content-type"] == "application/sdp"
    assert offer.body.startswith("v=0")
    assert "m=audio" in offer.body
    assert "m=application" in offer.body  # the data channel, created before the offer
    assert offer.status == 201
    assert offer.response_headers["content-type"] == "application/sdp"
    assert offer.response_body.startswith("v=0")
    location = offer.response_headers["location"]
    assert location.startswith(path + "/")
    [hangup] = log.to("DELETE", location)
    assert hangup.status == 204
    return offer


def assert_connected_and_hung_up(call: Call) -> None:
    assert "connected" in call.started["states"].split(" → "), call.started
    assert call.started["status"].startswith("call started"), call.started
    assert call.stopped is not None
    assert call.stopped["status"] == "hung up", call.stopped
    assert call.stopped["state"] == "closed"
    assert call.stopped["start"] is True  # ready for another call


# -- the applications ---------------------------------------------------------------


@dataclass
class Upstream:
    """The demo's fake OpenAI, served: client secrets and WebRTC."""

    secrets: FakeOpenAIRealtime
    webrtc: FakeRealtimeWebRTC
    base_url: str

    def opts(self) -> NavaiVoiceBackendOptions:
        return NavaiVoiceBackendOptions(
            openai_api_key=CANARY_KEY, openai_base_url=self.base_url, upstream_timeout_seconds=10
        )


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    secrets, webrtc = FakeOpenAIRealtime(), FakeRealtimeWebRTC()
    app = _demo_upstream(secrets, webrtc)
    with serve_asgi(app, loop="asyncio", lifespan="on") as url:
        yield Upstream(secrets, webrtc, f"{url}/v1")


@contextmanager
def asgi_app(upstream: Upstream, **keywords: Any) -> Iterator[str]:
    """What ``navai-mw demo`` serves (the page, its own routes and the
    middleware) under uvicorn; yields its origin."""
    app = NavaiASGIMiddleware(
        _own_routes(TOKEN_PATH, page=True), upstream.opts(), cors_origins=None, **keywords
    )
    with serve_asgi(app, lifespan="on") as url:
        yield url


def page_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """A WSGI app of one's own that serves the voice page from the package."""
    file = page_file(environ.get("PATH_INFO") or "/")
    if file is None or environ["REQUEST_METHOD"] != "GET":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    content_type, body = file
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


# -- the tests ----------------------------------------------------------------------------


def test_the_demo_command_serves_the_page_and_relays_a_call(
    started: list[Cli], tmp_path: Path
) -> None:
    """``navai-mw demo`` as users run it: its banner names the page; Chromium
    talks to its embedded fake, a Realtime call then a GPT-Live session, each
    ended with Stop; both DELETEs show up in its access log."""
    port = _free_port()
    cli = Cli("demo", "--port", str(port), env=_env(OPENAI_API_KEY=CANARY_KEY))
    started.append(cli)
    banner = cli.banner()
    origin = f"http://127.0.0.1:{port}"
    assert f"voice page      {origin}/ " in banner
    assert "aiortc is missing" not in banner
    # The demo's calls have the server in them.
    assert (
        "sideband        on: every call is reported when it ends; "
        "the model's function calls run here; the session is pinned"
    ) in banner

    call, log = in_chromium(tmp_path, f"{origin}/?{OVERRIDES}", talk())

    assert_connected_and_hung_up(call)
    event = call.first_event
    assert event["type"] == "session.created"
    session = event["session"]
    assert session["id"].startswith("rtc_")
    assert session["model"] == "gpt-realtime"
    assert session["audio"] == {"output": {"voice": "cedar"}}
    assert session["instructions"].endswith(SPANISH)
    offer = assert_relayed(log, origin)
    assert offer.response_headers["location"] == f"{CALLS_PATH}/{session['id']}"
    assert_only_same_origin(log, origin)
    assert_clean(log)
    assert_no_secrets(log, CANARY_KEY, DEMO_API_KEY)

    # GPT-Live on the same demo: Stop closes the session over the sideband
    # WebSocket of the demo's own fake, which its server must upgrade.
    live_call, live_log = in_chromium(
        tmp_path / "live", f"{origin}/?{OVERRIDES}", talk(select="live")
    )
    assert not live_call.started["status"].startswith("could not start"), live_call.started
    assert_connected_and_hung_up(live_call)
    assert live_call.first_event["type"] == "session.started"
    live_id = live_call.first_event["session"]["id"]
    assert_relayed(live_log, origin, LIVE_PATH)
    assert_clean(live_log)
    assert_no_secrets(live_log, CANARY_KEY, DEMO_API_KEY)

    assert cli.stop(signal.SIGINT) == 0
    assert f'"POST {CALLS_PATH}?{OVERRIDES} HTTP/1.1" 201' in cli.output
    assert f'"DELETE {CALLS_PATH}/{session["id"]} HTTP/1.1" 204' in cli.output
    assert f'"DELETE {LIVE_PATH}/{live_id} HTTP/1.1" 204' in cli.output
    assert "No supported WebSocket library" not in cli.output
    assert "Traceback" not in cli.output
    for secret in (CANARY_KEY, DEMO_API_KEY):
        assert secret not in cli.output


def test_realtime_under_uvicorn(upstream: Upstream, tmp_path: Path) -> None:
    with asgi_app(upstream) as origin:
        call, log = in_chromium(tmp_path, f"{origin}/?{OVERRIDES}", talk())

    assert_connected_and_hung_up(call)
    [relayed] = upstream.webrtc.calls
    assert relayed.connected
    assert relayed.state == "closed"
    assert upstream.webrtc.hangups == [relayed.call_id]
    assert relayed.headers["authorization"] == f"Bearer {CANARY_KEY}"  # the server's key
    # The session navai built, overrides from the page's address included...
    assert relayed.session["audio"] == {"output": {"voice": "cedar"}}
    assert relayed.session["instructions"].endswith(SPANISH)
    # ...is what the page shows first.
    event = call.first_event
    assert event["type"] == "session.created"
    assert event["session"] == {**relayed.session, "id": relayed.call_id}
    offer = assert_relayed(log, origin)
    assert offer.body == relayed.offer  # relayed as it came
    assert offer.response_body == relayed.answer
    assert upstream.secrets.requests == []  # no client secret was ever minted
    assert_only_same_origin(log, origin)
    assert_clean(log)
    assert_no_secrets(log, CANARY_KEY)


def test_realtime_under_waitress(upstream: Upstream, tmp_path: Path) -> None:
    """WSGI: the page from the package's files, served by the app itself."""
    app = NavaiWSGIMiddleware(page_wsgi, upstream.opts(), cors_origins=None)
    try:
        with serve_waitress(app) as origin:
            call, log = in_chromium(tmp_path, f"{origin}/?{OVERRIDES}", talk())
    finally:
        app.close()

    assert_connected_and_hung_up(call)
    [relayed] = upstream.webrtc.calls
    assert relayed.connected
    assert upstream.webrtc.hangups == [relayed.call_id]
    assert relayed.session["audio"] == {"output": {"voice": "cedar"}}
    assert call.first_event["session"] == {**relayed.session, "id": relayed.call_id}
    assert_relayed(log, origin)
    assert_only_same_origin(log, origin)
    assert_clean(log)
    assert_no_secrets(log, CANARY_KEY)


def test_gpt_live_under_uvicorn(upstream: Upstream, tmp_path: Path) -> None:
    """The page's other choice: GPT-Live, through POST /navai/live/sessions."""
    with asgi_app(upstream) as origin:
        call, log = in_chromium(tmp_path, f"{origin}/?{OVERRIDES}", talk(select="live"))

    assert not call.started["status"].startswith("could not start"), call.started
    assert_connected_and_hung_up(call)
    [live] = upstream.webrtc.live_sessions
    assert live.connected
    assert upstream.webrtc.calls == []
    assert upstream.webrtc.closes == [live.session_id]  # ended upstream
    event = call.first_event
    assert event["type"] == "session.started"
    assert event["session"] == {  # resolved, as OpenAI's: when it expires, its status
        **live.session,
        "id": live.session_id,
        "expires_at": event["session"]["expires_at"],
        "status": "active",
    }
    assert "cedar" in json.dumps(live.session)  # the page's override reached the session
    assert_relayed(log, origin, LIVE_PATH)
    assert_only_same_origin(log, origin)
    assert_clean(log)
    assert_no_secrets(log, CANARY_KEY)


PAGE_TOKEN = "tok-page-0123456789abcdef"


def by_token_or_cookie(info: RequestInfo) -> str | None:
    """The guard's two ways for a same-origin page: a bearer token, or the
    site's session cookie."""
    if info.headers.get("authorization") == f"Bearer {PAGE_TOKEN}":
        return "page"
    if "session=alice" in info.headers.get("cookie", "").split("; "):
        return "alice"
    if "authorization" in info.headers or "cookie" in info.headers:
        raise AuthError("Not you.")
    return None


def test_the_page_works_with_the_guard_on(upstream: Upstream, tmp_path: Path) -> None:
    with asgi_app(upstream, authorize=by_token_or_cookie) as origin:
        refused, refused_log = in_chromium(tmp_path / "none", f"{origin}/?{OVERRIDES}", talk())
        # A token in the fragment never reaches the server; the page sends it as a bearer.
        token, token_log = in_chromium(
            tmp_path / "token", f"{origin}/?{OVERRIDES}#token={PAGE_TOKEN}", talk()
        )
        cookie = {"name": "session", "value": "alice", "url": origin + "/"}
        cookied, cookie_log = in_chromium(
            tmp_path / "cookie", f"{origin}/?{OVERRIDES}", talk(), cookies=[cookie]
        )

    assert refused.stopped is None
    assert refused.started["status"].startswith("could not start: 401"), refused.started
    assert refused.started["start"] is True
    assert refused_log.to("POST", CALLS_PATH)[0].status == 401

    assert_connected_and_hung_up(token)
    assert_clean(token_log)
    assert token.started["href"] == f"{origin}/?{OVERRIDES}"  # the token left the address
    [offer] = token_log.to("POST", CALLS_PATH)
    assert offer.request_headers["authorization"] == f"Bearer {PAGE_TOKEN}"
    hangup = next(x for x in token_log.exchanges if x.method == "DELETE")
    assert hangup.request_headers["authorization"] == f"Bearer {PAGE_TOKEN}"
    assert_relayed(token_log, origin)

    assert_connected_and_hung_up(cookied)
    assert_clean(cookie_log)
    assert_relayed(cookie_log, origin)
    assert cookie_log.to("POST", CALLS_PATH)[0].request_headers["cookie"] == "session=alice"

    assert len(upstream.webrtc.calls) == 2
    assert upstream.webrtc.hangups == [call.call_id for call in upstream.webrtc.calls]
    for log in (refused_log, token_log, cookie_log):
        assert_only_same_origin(log, origin)
        assert_no_secrets(log, CANARY_KEY)


def test_a_call_the_server_cuts_short_ends_on_the_page(upstream: Upstream, tmp_path: Path) -> None:
    """max_call_seconds: the server hangs up, the data channel closes, the
    page says so and is ready for another call."""

    async def script(tools: DevTools) -> dict[str, Any]:
        await tools.click("start")
        await tools.wait(STARTED)
        return await tools.wait(STOPPED)

    with asgi_app(upstream, max_call_seconds=1) as origin:
        ended, log = in_chromium(tmp_path, f"{origin}/?{OVERRIDES}", script)

    assert ended["status"] == "the call ended", ended
    assert ended["start"] is True
    assert upstream.webrtc.hangups == [upstream.webrtc.calls[0].call_id]
    assert log.to("DELETE", f"{CALLS_PATH}/{upstream.webrtc.calls[0].call_id}") == []
    assert_no_secrets(log, CANARY_KEY)


def test_the_page_files_come_from_the_package() -> None:
    page = page_file("/")
    script = page_file("/voice.js")
    assert page is not None
    assert script is not None
    assert page[0] == "text/html; charset=utf-8"
    assert b'<script src="voice.js"></script>' in page[1]
    assert script[0] == "text/javascript; charset=utf-8"
    assert b'createDataChannel("oai-events")' in script[1]
    assert page_file("/index.html") is None
    assert page_file("/../cli.py") is None
    for _, body in (page, script):
        assert SECRETS.search(body.decode()) is None


def test_serve_has_the_page_with_page_only(started: list[Cli], served_fake: str) -> None:
    env = _env(OPENAI_API_KEY=CANARY_KEY, OPENAI_BASE_URL=served_fake)
    plain_port, page_port = _free_port(), _free_port()
    plain = Cli("serve", "--port", str(plain_port), env=env)
    paged = Cli("serve", "--page", "--port", str(page_port), env=env)
    started += [plain, paged]
    assert "voice page" not in plain.banner()
    assert httpx.get(f"http://127.0.0.1:{plain_port}/", timeout=10).status_code == 404

    base = f"http://127.0.0.1:{page_port}"
    assert f"voice page      {base}/ " in paged.banner()
    page = httpx.get(f"{base}/", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.content == page_file("/")[1]  # type: ignore[index]
    script = httpx.get(f"{base}/voice.js", timeout=10)
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    head = httpx.head(f"{base}/", timeout=10)
    assert (head.status_code, head.content) == (200, b"")
    assert httpx.post(f"{base}/", timeout=10).status_code == 405
    for cli in (plain, paged):
        assert cli.stop(signal.SIGINT) == 0


def test_without_aiortc_the_demo_still_mints_and_says_what_to_install(
    started: list[Cli], tmp_path: Path
) -> None:
    shadow = tmp_path / "shadow" / "aiortc"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('aiortc is not installed here')\n")
    port = _free_port()
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(shadow.parent), env["PYTHONPATH"]])
    cli = Cli("demo", "--port", str(port), env=env)
    started.append(cli)
    banner = cli.banner()
    assert f"NOTE: {WEBRTC_MISSING}." in banner
    assert "pip install -e '.[demo]'" in banner
    base = f"http://127.0.0.1:{port}"
    minted = httpx.post(f"{base}{TOKEN_PATH}", json={}, timeout=10)
    assert minted.json()["value"].startswith("ek_fake_")
    assert httpx.get(f"{base}/", timeout=10).status_code == 200  # the page is there
    # The page's call gets the relay's 502, which it shows ("could not start: 502 ...").
    offer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    relayed = httpx.post(
        f"{base}{CALLS_PATH}", content=offer, headers={"Content-Type": "application/sdp"}
    )
    assert relayed.status_code == 502
    assert "(404)" in relayed.json()["error"]
    assert cli.stop(signal.SIGINT) == 0
    assert "Traceback" not in cli.output


def test_the_readme_installs_what_the_demo_needs() -> None:
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parent.parent
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    # The demo runs calls with their sideband (server functions, a pinned
    # session, the end-of-call report): its extra too.
    assert extras["demo"] == ["navai-mw[server,webrtc,sideband]"]
    readme = (root / "README.md").read_text()
    first = next(line for line in readme.splitlines() if "navai-mw demo" in line)
    assert first.startswith("pip install -e '.[demo]' && navai-mw demo")


def test_stop_while_the_offer_is_on_its_way_still_hangs_up(
    upstream: Upstream, tmp_path: Path
) -> None:
    """Stop pressed before the answer came: once it comes, the page hangs
    the call up, and the microphone is already off."""
    upstream.webrtc.stall(1.0, times=1)

    async def script(tools: DevTools) -> tuple[dict[str, Any], dict[str, Any]]:
        await tools.click("start")
        calling = await tools.wait("document.getElementById('status').textContent === 'calling…'")
        await tools.click("stop")
        return calling, await tools.wait(STOPPED)

    with asgi_app(upstream) as origin:
        (calling, stopped), log = in_chromium(tmp_path, f"{origin}/?{OVERRIDES}", script)

    assert calling["events"] == []
    assert stopped["status"] == "hung up", stopped
    assert stopped["start"] is True
    [relayed] = upstream.webrtc.calls
    assert upstream.webrtc.hangups == [relayed.call_id]
    [hangup] = log.to("DELETE", f"{CALLS_PATH}/{relayed.call_id}")
    assert hangup.status == 204
    assert_only_same_origin(log, origin)
    assert_clean(log)
    assert_no_secrets(log, CANARY_KEY)
