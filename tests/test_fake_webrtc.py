"""FakeRealtimeWebRTC over real WebRTC: an aiortc client offers, the fake,
served by uvicorn as users will, answers; the data channel carries its
first event, hangups and the Live sideband close the fake's side. Last,
headless Chromium does the same from a page on another origin."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import anyio
import httpx
import pytest

from navai_mw.testing import FakeRealtimeWebRTC, serve_asgi

from .openai_events import channel_event, sideband_event

aiortc = pytest.importorskip("aiortc")

KEY = "sk-test-webrtc-0123456789"
SESSION = {"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief."}
AUTH = {"Authorization": f"Bearer {KEY}"}
DEADLINE = 20  # seconds; a bound against hangs, not a timing assertion


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiortc runs on asyncio only


@pytest.fixture
def fake() -> FakeRealtimeWebRTC:
    return FakeRealtimeWebRTC(api_key=KEY)


@pytest.fixture
def base_url(fake: FakeRealtimeWebRTC) -> Iterator[str]:
    with fake.serve() as url:
        yield url


class Browser:
    """The offering side, as a browser front end does it: a data channel
    named ``oai-events`` and a sendrecv audio transceiver."""

    def __init__(self) -> None:
        self.pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
        self.channel = self.pc.createDataChannel("oai-events")
        self.pc.addTransceiver("audio", direction="sendrecv")
        self._received: asyncio.Queue[Any] = asyncio.Queue()
        self.channel.on("message", lambda message: self._received.put_nowait(json.loads(message)))

    async def offer(self) -> str:
        # aiortc's setLocalDescription returns once ICE gathering is complete.
        await self.pc.setLocalDescription(await self.pc.createOffer())
        assert self.pc.iceGatheringState == "complete"
        sdp: str = self.pc.localDescription.sdp
        return sdp

    async def answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(aiortc.RTCSessionDescription(sdp=sdp, type="answer"))

    async def next_event(self) -> Any:
        with anyio.fail_after(DEADLINE):
            return await self._received.get()

    async def close(self) -> None:
        await self.pc.close()


async def _post_call(
    client: httpx.AsyncClient, base_url: str, offer: str, key: str = KEY
) -> httpx.Response:
    """POST /realtime/calls exactly as OpenAI's unified interface expects."""
    return await client.post(
        f"{base_url}/realtime/calls",
        headers={"Authorization": f"Bearer {key}", "Accept": "application/sdp"},
        files={"sdp": (None, offer), "session": (None, json.dumps(SESSION))},
    )


@pytest.mark.anyio
async def test_call_connects_greets_and_hangs_up(fake: FakeRealtimeWebRTC, base_url: str) -> None:
    browser = Browser()
    try:
        async with httpx.AsyncClient(timeout=DEADLINE) as client:
            offer = await browser.offer()
            response = await _post_call(client, base_url, offer)
            assert response.status_code == 201, response.text
            assert response.headers["content-type"] == "application/sdp"
            assert "a=candidate:" in response.text  # gathered before answering
            call_id = response.headers["location"].rpartition("/")[2]
            assert response.headers["location"] == f"/v1/realtime/calls/{call_id}"
            assert call_id.startswith("rtc_")
            int(call_id.removeprefix("rtc_"), 16)
            await browser.answer(response.text)

            event = await browser.next_event()
            channel_event("realtime", event)
            assert event["type"] == "session.created"
            assert event["event_id"]
            assert event["session"] == {**SESSION, "id": call_id}
            assert browser.pc.connectionState == "connected"

            [call] = fake.calls
            assert call.call_id == call_id
            assert call.session == SESSION
            assert call.offer == offer
            assert call.answer == response.text
            assert call.headers["authorization"] == f"Bearer {KEY}"
            assert call.headers["accept"] == "application/sdp"
            assert call.connected
            assert call.state == "connected"

            # The Realtime protocol's acknowledgement, which front ends await.
            browser.channel.send(
                json.dumps({"type": "session.update", "session": {"instructions": "Hi."}})
            )
            updated = await browser.next_event()
            channel_event("realtime", updated)
            assert updated["type"] == "session.updated"
            assert updated["session"] == {**SESSION, "instructions": "Hi.", "id": call_id}
            assert call.events == [{"type": "session.update", "session": {"instructions": "Hi."}}]

            hangup = await client.post(f"{base_url}/realtime/calls/{call_id}/hangup", headers=AUTH)
            assert hangup.status_code == 200
            assert hangup.json() == {}
            assert fake.hangups == [call_id]
            assert call.state == "closed"
    finally:
        await browser.close()


@pytest.mark.anyio
async def test_bare_sdp_offer_as_an_ephemeral_key_sends(base_url: str) -> None:
    """Browsers holding an ``ek_`` key POST the bare offer (OpenAI's Agents SDK does)."""
    browser = Browser()
    try:
        async with httpx.AsyncClient(timeout=DEADLINE) as client:
            response = await client.post(
                f"{base_url}/realtime/calls",
                headers={**AUTH, "Content-Type": "application/sdp"},
                content=await browser.offer(),
            )
            assert response.status_code == 201, response.text
            await browser.answer(response.text)
            event = await browser.next_event()
            call_id = response.headers["location"].rpartition("/")[2]
            channel_event("realtime", event)
            assert event["type"] == "session.created"
            assert event["session"] == {"type": "realtime", "id": call_id}
    finally:
        await browser.close()


@pytest.mark.anyio
async def test_live_session_starts_and_the_sideband_closes_it(
    fake: FakeRealtimeWebRTC, base_url: str
) -> None:
    session = {"model": "gpt-live", "voice": "marin"}
    browser = Browser()
    try:
        async with httpx.AsyncClient(timeout=DEADLINE) as client:
            offer = await browser.offer()
            response = await client.post(
                f"{base_url}/live/sessions",
                headers=AUTH,
                json={"session": session, "transport": {"type": "webrtc", "sdp": offer}},
            )
        assert response.status_code == 200, response.text
        body = response.json()
        session_id = body["session"]["id"]
        assert session_id.startswith("live_")
        # Resolved, as OpenAI's SessionResource: the id, when it expires, its status.
        resolved = body["session"]
        assert resolved == {
            **session,
            "id": session_id,
            "expires_at": resolved["expires_at"],
            "status": "active",
        }
        assert isinstance(resolved["expires_at"], int)
        assert body["transport"]["type"] == "webrtc"
        await browser.answer(body["transport"]["sdp"])

        event = await browser.next_event()
        channel_event("live", event)
        assert event["type"] == "session.started"
        assert event["session"] == resolved
        assert browser.pc.connectionState == "connected"
        [live] = fake.live_sessions
        assert (live.session_id, live.session, live.offer) == (session_id, session, offer)
        assert live.connected

        ws_url = f"{base_url.replace('http', 'ws', 1)}/live/sessions/{session_id}/attach"
        async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, headers=AUTH) as ws:
            await ws.send_json({"type": "session.update", "session": {}})  # recorded only
            await ws.send_json({"type": "session.close"})
            with anyio.fail_after(DEADLINE):
                closed = await ws.receive_json()
                message = await ws.receive()
            sideband_event("live", closed)
            assert closed["type"] == "session.closed"
            assert closed["reason"] == "close_requested"
            assert message.type == aiohttp.WSMsgType.CLOSE
            assert message.data == 1000
        assert fake.closes == [session_id]
        assert live.state == "closed"
        assert [e["type"] for e in fake.sideband_events[session_id]] == [
            "session.update",
            "session.close",
        ]
    finally:
        await browser.close()


@pytest.mark.anyio
async def test_sideband_refuses_unknown_sessions_and_wrong_keys(base_url: str) -> None:
    """As OpenAI does: a wrong key is a 401, a session it does not know a 404."""
    ws_base = base_url.replace("http", "ws", 1)
    async with aiohttp.ClientSession() as http:
        for url, headers, status in [
            (f"{ws_base}/live/sessions/live_nope/attach", AUTH, 404),
            (
                f"{ws_base}/live/sessions/live_nope/attach",
                {"Authorization": "Bearer sk-wrong"},
                401,
            ),
        ]:
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await http.ws_connect(url, headers=headers)
            assert caught.value.status == status


@pytest.mark.anyio
async def test_serve_closes_every_peer_connection_on_exit(fake: FakeRealtimeWebRTC) -> None:
    browser = Browser()
    try:
        with fake.serve() as base_url:
            async with httpx.AsyncClient(timeout=DEADLINE) as client:
                response = await _post_call(client, base_url, await browser.offer())
            await browser.answer(response.text)
            assert (await browser.next_event())["type"] == "session.created"
        [call] = fake.calls
        assert call.connected
        assert call.state == "closed"
        assert fake.hangups == []
    finally:
        await browser.close()


@pytest.mark.anyio
async def test_wrong_key_is_401(base_url: str) -> None:
    async with httpx.AsyncClient(timeout=DEADLINE) as client:
        for headers in ({"Authorization": "Bearer sk-wrong-key-123456"}, {}):
            response = await client.post(
                f"{base_url}/realtime/calls",
                headers=headers,
                files={"sdp": (None, "v=0\r\n"), "session": (None, "{}")},
            )
            assert response.status_code == 401
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == "invalid_request_error"
            assert KEY not in response.text


@pytest.mark.anyio
@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"json": {"sdp": "v=0", "session": {}}},  # JSON, not multipart
        {"files": {"sdp": (None, "v=0\r\n")}},  # no session
        {"files": {"session": (None, "{}")}},  # no sdp
        {"files": {"sdp": (None, "v=0\r\n"), "session": (None, "not json")}},
        {"files": {"sdp": (None, "v=0\r\n"), "session": (None, "[]")}},
        {"files": {"sdp": (None, "not an offer"), "session": (None, "{}")}},
        {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data; boundary=y"}},
    ],
)
async def test_bad_call_body_is_400(
    fake: FakeRealtimeWebRTC, base_url: str, request_kwargs: dict[str, Any]
) -> None:
    headers = {**AUTH, **request_kwargs.pop("headers", {})}
    async with httpx.AsyncClient(timeout=DEADLINE) as client:
        response = await client.post(
            f"{base_url}/realtime/calls", headers=headers, **request_kwargs
        )
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert fake.calls == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        {"session": {}},
        {"session": {}, "transport": {"type": "webrtc"}},
        {"session": {}, "transport": {"type": "websocket", "sdp": "v=0"}},
        {"session": [], "transport": {"type": "webrtc", "sdp": "v=0"}},
        [],
    ],
)
async def test_bad_live_body_is_400(fake: FakeRealtimeWebRTC, base_url: str, body: Any) -> None:
    async with httpx.AsyncClient(timeout=DEADLINE) as client:
        response = await client.post(f"{base_url}/live/sessions", headers=AUTH, json=body)
    assert response.status_code == 400
    assert "error" in response.json()
    assert fake.live_sessions == []


@pytest.mark.anyio
async def test_unknown_call_and_route_are_404(fake: FakeRealtimeWebRTC, base_url: str) -> None:
    async with httpx.AsyncClient(timeout=DEADLINE) as client:
        hangup = await client.post(f"{base_url}/realtime/calls/rtc_0000/hangup", headers=AUTH)
        assert hangup.status_code == 404
        assert "rtc_0000" in hangup.json()["error"]["message"]
        other = await client.get(f"{base_url}/realtime/calls", headers=AUTH)
        assert other.status_code == 404
    assert fake.hangups == []
    assert [r.path for r in fake.requests] == [
        "/v1/realtime/calls/rtc_0000/hangup",
        "/v1/realtime/calls",
    ]


@pytest.mark.anyio
async def test_scripted_failures(fake: FakeRealtimeWebRTC, base_url: str) -> None:
    fake.fail(503, "Busy", times=1)
    fake.rate_limit(retry_after="3", times=1)
    async with httpx.AsyncClient(timeout=DEADLINE) as client:
        failed = await client.post(f"{base_url}/live/sessions", headers=AUTH, json={})
        limited = await client.post(f"{base_url}/live/sessions", headers=AUTH, json={})
        after = await client.post(f"{base_url}/live/sessions", headers=AUTH, json={})
    assert (failed.status_code, failed.json()["error"]["message"]) == (503, "Busy")
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "3")
    assert after.status_code == 400  # back to normal: the body is checked
    fake.reset()
    assert fake.requests == []


def test_sync_transport_is_refused(fake: FakeRealtimeWebRTC) -> None:
    with pytest.raises(TypeError, match=r"serve\(\)"):
        fake.sync_transport()


def test_without_aiortc_the_module_imports_and_the_fake_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = (
        "import sys; sys.modules['aiortc'] = None\n"
        "import navai_mw.testing as t\n"
        "assert 'av' not in sys.modules\n"
        "try:\n"
        "    t.FakeRealtimeWebRTC()\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'navai-mw[webrtc]'" in run.stdout
    monkeypatch.setitem(sys.modules, "aiortc", None)
    with pytest.raises(ImportError, match=r"navai-mw\[webrtc\]"):
        FakeRealtimeWebRTC()


# -- a real browser ----------------------------------------------------------------

PAGE = """<!doctype html><script>
const base = new URLSearchParams(location.search).get("base");
const report = (r) => fetch("/report", {method: "POST", body: JSON.stringify(r)});
async function run() {
  const pc = new RTCPeerConnection();
  const channel = pc.createDataChannel("oai-events");
  const first = new Promise((ok) => channel.onmessage = (e) => ok(JSON.parse(e.data)));
  const mic = await navigator.mediaDevices.getUserMedia({audio: true});
  pc.addTrack(mic.getAudioTracks()[0]);
  await pc.setLocalDescription(await pc.createOffer());
  const form = new FormData();
  form.set("sdp", pc.localDescription.sdp);
  form.set("session", JSON.stringify({type: "realtime", model: "gpt-realtime"}));
  const auth = {Authorization: "Bearer ek_fake_browser"};
  const answer = await fetch(base + "/realtime/calls", {method: "POST", body: form, headers: auth});
  const call = answer.headers.get("Location");
  await pc.setRemoteDescription({type: "answer", sdp: await answer.text()});
  const event = await first;
  const state = pc.connectionState;
  const hangup = await fetch(base + call.slice(3) + "/hangup", {method: "POST", headers: auth});
  report({status: answer.status, call, event, state, hangup: hangup.status});
}
run().catch((e) => report({error: String(e)}));
</script>"""
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
)


def test_chromium_calls_the_fake_from_another_origin(tmp_path: Path) -> None:
    """The browser preflights (CORS), posts FormData, reads Location and gets
    ``session.created`` over the data channel; then it hangs up."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is missing: apt-get install chromium")
    reports: queue.Queue[Any] = queue.Queue()

    async def page(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/report":
            reports.put(json.loads(body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": PAGE.encode()})

    fake = FakeRealtimeWebRTC()
    with fake.serve() as base_url, serve_asgi(page, lifespan="off") as page_url:
        proc = subprocess.Popen(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={tmp_path / 'profile'}",
                f"{page_url}/?base={quote(base_url, safe='')}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: renderers die with it
        )
        try:
            report = reports.get(timeout=60)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert "error" not in report, report
    [call] = fake.calls
    assert report["status"] == 201
    assert report["call"] == f"/v1/realtime/calls/{call.call_id}"
    assert report["event"]["type"] == "session.created"
    assert report["event"]["session"] == {
        "type": "realtime",
        "model": "gpt-realtime",
        "id": call.call_id,
    }
    assert report["state"] == "connected"
    assert report["hangup"] == 200
    assert call.connected
    assert call.state == "closed"
    assert fake.hangups == [call.call_id]
    assert [r.method for r in fake.requests] == ["OPTIONS", "POST", "OPTIONS", "POST"]


# -- the WebSocket library uvicorn needs for the sideband -------------------------------

_ATTACH = """
import asyncio, sys
import aiohttp
from navai_mw.testing import FakeRealtimeWebRTC

for name in sys.argv[1:]:
    sys.modules[name] = None  # as if not installed

async def attach(url):
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(
                url.replace("http", "ws", 1) + "/live/sessions/live_x/attach",
                headers={"Authorization": "Bearer sk-wrong"},
            ) as socket:
                message = await socket.receive()
                print("upgraded", message.type.name)
        except aiohttp.WSServerHandshakeError as exc:
            print("refused", exc.status)

with FakeRealtimeWebRTC(api_key="sk-right").serve() as url:
    asyncio.run(attach(url))
"""


@pytest.mark.parametrize(
    ("missing", "outcome"),
    [
        # The fake's own answer, the wrong key: it read the upgrade.
        pytest.param(["websockets"], "refused 401", id="wsproto-alone-is-enough"),
        # uvicorn's: it could not read the upgrade at all.
        pytest.param(["websockets", "wsproto"], "refused 404", id="no-websocket-library"),
    ],
)
def test_the_sideband_needs_the_websocket_library_the_extras_carry(
    missing: list[str], outcome: str
) -> None:
    """Without a WebSocket library uvicorn cannot upgrade the fake's /attach,
    and a Live session's close fails (the demo's "hang-up failed: 502");
    the wsproto the extras pin is enough."""
    result = subprocess.run(
        [sys.executable, "-c", _ATTACH, *missing],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [outcome]


@pytest.mark.parametrize("extra", ["server", "webrtc", "demo"])
def test_the_extras_that_serve_the_fakes_carry_a_pinned_websocket_library(extra: str) -> None:
    requires = importlib.metadata.requires("navai-mw") or []
    wanted = f"wsproto==1.3.2; extra == '{extra}'"
    assert wanted in requires, [r for r in requires if extra in r]
