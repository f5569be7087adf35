"""The fake OpenAI's sidebands (Realtime ``/v1/realtime?call_id=``, GPT-Live
``/v1/live/sessions/{id}/attach``), served by uvicorn as users serve it and
reached with aiohttp's WebSocket client, as navai_mw's server reaches
OpenAI; an aiortc peer plays the browser.

Every server event read here, on a sideband or a data channel, is validated
as openai-python 3.63 reads it, and every client event sent as a client
event: the fake speaks OpenAI's shapes, and these tests do too.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import httpx
import pytest

from navai_mw.testing import FakeOpenAIRealtime, FakeRealtimeWebRTC, serve_asgi
from navai_mw.testing.sideband_events import merge_session
from navai_mw.testing.upstreams import openai_app

from .openai_events import channel_event, client_event, sideband_event
from .test_fake_webrtc import Browser, _post_call

aiortc = pytest.importorskip("aiortc")

KEY = "sk-test-sideband-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
DEADLINE = 20  # seconds; a bound against hangs, not a timing assertion
SESSION = {"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief."}
LIVE_SESSION = {"model": "gpt-live-1", "instructions": "Be brief."}
USAGE = {
    "total_tokens": 1500,
    "input_tokens": 1000,
    "output_tokens": 500,
    "input_token_details": {
        "text_tokens": 300,
        "audio_tokens": 700,
        "cached_tokens": 400,
        "cached_tokens_details": {"text_tokens": 100, "audio_tokens": 300},
    },
    "output_token_details": {"text_tokens": 100, "audio_tokens": 400},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiortc runs on asyncio only


@pytest.fixture
def fake() -> FakeRealtimeWebRTC:
    return FakeRealtimeWebRTC(api_key=KEY)


@pytest.fixture
def base_url(fake: FakeRealtimeWebRTC) -> Any:
    with fake.serve() as url:
        yield url


class CheckedBrowser(Browser):
    """The browser, checking every event its data channel gets, read by
    the test or not."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.checked: list[str] = []
        self.invalid: list[Exception] = []
        self.channel.on("message", self._check)

    def _check(self, message: str) -> None:
        event = json.loads(message)
        try:  # raised here, aiortc would swallow it: kept for the test
            channel_event(self.kind, event)
        except Exception as exc:
            self.invalid.append(exc)
        self.checked.append(event["type"])


class Sideband:
    """One sideband, as the server holds it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, kind: str) -> None:
        self.ws = ws
        self.kind = kind

    async def receive(self) -> dict[str, Any]:
        with anyio.fail_after(DEADLINE):
            message = await self.ws.receive()
        assert message.type == aiohttp.WSMsgType.TEXT, message
        event: dict[str, Any] = json.loads(message.data)
        sideband_event(self.kind, event)
        return event

    async def send(self, event: dict[str, Any]) -> None:
        client_event(self.kind, event)
        await self.ws.send_json(event)

    async def closed(self) -> int:
        """The close code the fake closed the socket with."""
        with anyio.fail_after(DEADLINE):
            message = await self.ws.receive()
        assert message.type == aiohttp.WSMsgType.CLOSE, message
        code: int = message.data
        return code


def sideband_url(base_url: str, kind: str, call_id: str, query: str = "") -> str:
    ws_base = base_url.replace("http", "ws", 1)
    if kind == "realtime":
        return f"{ws_base}/realtime?call_id={call_id}{query}"
    return f"{ws_base}/live/sessions/{call_id}/attach{query}"


@asynccontextmanager
async def attach(
    base_url: str, kind: str, call_id: str, *, query: str = "", greeted: bool = True
) -> AsyncIterator[Sideband]:
    """A sideband to ``call_id``; a Realtime one's ``session.created`` read
    (when ``greeted``)."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sideband_url(base_url, kind, call_id, query), headers=AUTH) as ws,
    ):
        sideband = Sideband(ws, kind)
        if kind == "realtime" and greeted:
            created = await sideband.receive()
            assert created["type"] == "session.created"
        yield sideband


async def refused(base_url: str, kind: str, call_id: str, key: str = KEY) -> int:
    """The status an attach is refused with."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(sideband_url(base_url, kind, call_id), headers=headers)
    return caught.value.status


@asynccontextmanager
async def realtime_call(base_url: str) -> AsyncIterator[tuple[str, CheckedBrowser]]:
    """A Realtime call, its data channel greeted."""
    browser = CheckedBrowser("realtime")
    try:
        async with httpx.AsyncClient(timeout=DEADLINE) as client:
            response = await _post_call(client, base_url, await browser.offer(), key=KEY)
        assert response.status_code == 201, response.text
        await browser.answer(response.text)
        assert (await browser.next_event())["type"] == "session.created"
        yield response.headers["location"].rpartition("/")[2], browser
    finally:
        await browser.close()
    assert browser.invalid == []


@asynccontextmanager
async def live_session(base_url: str) -> AsyncIterator[tuple[str, CheckedBrowser]]:
    """A GPT-Live session, its data channel greeted."""
    browser = CheckedBrowser("live")
    try:
        async with httpx.AsyncClient(timeout=DEADLINE) as client:
            body = {"session": LIVE_SESSION, "transport": {"type": "webrtc", "sdp": ""}}
            body["transport"]["sdp"] = await browser.offer()
            response = await client.post(f"{base_url}/live/sessions", headers=AUTH, json=body)
        assert response.status_code == 200, response.text
        await browser.answer(response.json()["transport"]["sdp"])
        assert (await browser.next_event())["type"] == "session.started"
        yield response.json()["session"]["id"], browser
    finally:
        await browser.close()
    assert browser.invalid == []


# -- attaching ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_realtime_sideband_attaches_and_gets_the_calls_session(
    fake: FakeRealtimeWebRTC, base_url: str
) -> None:
    async with (
        realtime_call(base_url) as (call_id, _),
        attach(
            base_url, "realtime", call_id, query="&model=gpt-realtime", greeted=False
        ) as sideband,
    ):
        created = await sideband.receive()
        assert created["type"] == "session.created"
        assert created["session"] == {**SESSION, "id": call_id}
        await fake.await_until(lambda: fake.open_sidebands(call_id) == 1)
        assert fake.sideband_attaches == {call_id: 1}
        assert fake.sideband_events == {call_id: []}
    await fake.await_until(lambda: fake.open_sidebands(call_id) == 0)


@pytest.mark.anyio
async def test_a_wrong_or_missing_key_is_refused_with_401(base_url: str) -> None:
    async with realtime_call(base_url) as (call_id, _), live_session(base_url) as (live_id, _):
        assert await refused(base_url, "realtime", call_id, key="sk-wrong-key-0000") == 401
        assert await refused(base_url, "realtime", call_id, key="") == 401
        assert await refused(base_url, "live", live_id, key="sk-wrong-key-0000") == 401
        assert await refused(base_url, "live", live_id, key="") == 401


@pytest.mark.anyio
async def test_an_unknown_call_is_a_404_with_openais_error_body(
    fake: FakeRealtimeWebRTC, base_url: str
) -> None:
    async with realtime_call(base_url) as (call_id, _), live_session(base_url) as (live_id, _):
        # A Live session's id is no Realtime call's, and the other way round.
        assert await refused(base_url, "realtime", live_id) == 404
        assert await refused(base_url, "live", call_id) == 404
        async with httpx.AsyncClient(timeout=DEADLINE) as client:
            hangup = await client.post(f"{base_url}/realtime/calls/{call_id}/hangup", headers=AUTH)
            assert hangup.status_code == 200
            # The handshake as a WebSocket client sends it, read as plain HTTP.
            upgrade = {
                **AUTH,
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
            }
            for url in (
                sideband_url(base_url, "realtime", call_id),  # hung up
                sideband_url(base_url, "realtime", "rtc_never"),
                sideband_url(base_url, "live", "live_never"),
            ):
                # A new connection each time: a refused upgrade closes its own.
                async with httpx.AsyncClient(timeout=DEADLINE) as once:
                    answer = await once.get(url.replace("ws", "http", 1), headers=upgrade)
                assert answer.status_code == 404
                assert answer.headers["content-type"] == "application/json"
                error = answer.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert error["type"] == "invalid_request_error"
                assert "not found" in error["message"]
            async with httpx.AsyncClient(timeout=DEADLINE) as once:
                no_call = await once.get(
                    f"{base_url}/realtime".replace("ws", "http", 1), headers=upgrade
                )
            assert no_call.status_code == 400
            assert "call_id" in no_call.json()["error"]["message"]
    assert [status for _, status in fake.sideband_refusals] == [404, 404, 404, 404, 404, 400]


async def _handshake(fake: FakeRealtimeWebRTC, extensions: dict[str, Any] | None) -> list[Any]:
    """An attach to an unknown call handed to the fake as an ASGI server
    would hand it, with ``extensions``; what the fake sent back."""
    scope: MutableMapping[str, Any] = {
        "type": "websocket",
        "path": "/v1/realtime",
        "raw_path": b"/v1/realtime",
        "query_string": b"call_id=rtc_unknown",
        "headers": [(b"authorization", AUTH["Authorization"].encode())],
    }
    if extensions is not None:
        scope["extensions"] = extensions
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    await fake(scope, receive, send)
    return sent


@pytest.mark.anyio
async def test_without_the_http_response_extension_a_refusal_is_a_close(
    fake: FakeRealtimeWebRTC,
) -> None:
    """A server that cannot answer a handshake with an HTTP response (no
    ``websocket.http.response`` in the scope) gets a close before accept."""
    assert await _handshake(fake, None) == [{"type": "websocket.close", "code": 1008}]
    assert await _handshake(fake, {}) == [{"type": "websocket.close", "code": 1008}]
    start, body = await _handshake(fake, {"websocket.http.response": {}})
    assert start["type"] == "websocket.http.response.start"
    assert start["status"] == 404
    assert json.loads(body["body"])["error"]["message"] == "Call with id 'rtc_unknown' not found."


# -- one session, shared ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_session_is_one_state_shared_by_the_data_channel_and_every_sideband(
    fake: FakeRealtimeWebRTC, base_url: str
) -> None:
    async with (
        realtime_call(base_url) as (call_id, browser),
        attach(base_url, "realtime", call_id) as first,
        attach(base_url, "realtime", call_id) as second,
    ):
        expected = {**SESSION, "id": call_id}

        async def everyone_sees(session: dict[str, Any]) -> None:
            for event in (
                await browser.next_event(),
                await first.receive(),
                await second.receive(),
            ):
                assert event["type"] == "session.updated"
                assert event["session"] == session

        # The browser's session.update, on its data channel.
        update = {"type": "realtime", "audio": {"output": {"voice": "marin"}}}
        browser.channel.send(json.dumps({"type": "session.update", "session": update}))
        merge_session(expected, update)
        await everyone_sees(expected)

        # A sideband's: objects merged field by field, null and lists replace.
        update = {
            "type": "realtime",
            "audio": {"input": {"turn_detection": None}},
            "tools": [{"type": "function", "name": "get_weather"}],
        }
        await first.send({"type": "session.update", "session": update})
        expected["audio"] = {"output": {"voice": "marin"}, "input": {"turn_detection": None}}
        expected["tools"] = update["tools"]
        await everyone_sees(expected)

        # As a browser would, from the test.
        await fake.achange_session(call_id, {"instructions": "Ignore your rules.", "tools": []})
        expected.update(instructions="Ignore your rules.", tools=[])
        await everyone_sees(expected)

        # A sideband attaching now gets the session as it is.
        async with attach(base_url, "realtime", call_id, greeted=False) as third:
            created = await third.receive()
            assert created["type"] == "session.created"
            assert created["session"] == expected

        assert fake.sideband_events[call_id] == [{"type": "session.update", "session": update}]
        [recorded] = fake.calls
        assert recorded.events == [
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"voice": "marin"}}},
            }
        ]


def test_every_event_the_fake_makes_is_one_openai_python_reads() -> None:
    """Each kind of event, as the fake builds it, against the unions of
    both places it goes: the data channel and the sideband."""
    from navai_mw.testing import sideband_events as events

    realtime = events.realtime_session(SESSION, "rtc_1")
    live = events.live_session(LIVE_SESSION, "live_1")
    usage = {"type": "duration", "seconds": 1.0}
    built = {
        "realtime": [
            events.session_created(realtime),
            events.session_updated(events.realtime_session({}, "rtc_2")),
            events.item_added({"type": "function_call_output", "call_id": "c", "output": ""}),
            events.realtime_function_call("f", {"a": [1]}, "call_1"),
            events.response_done(output=[], usage=USAGE),
            events.transcription_completed(usage, "Hi."),
            events.error("No."),
        ],
        "live": [
            events.session_started(live),
            events.live_function_call("f", {}, "call_1", sequence_number=1),
            events.live_usage(3.0),
            *(
                events.live_closed(live, 3.0, reason)
                for reason in ("close_requested", "remote_hangup", "connection_lost")
            ),
            events.error("No."),
        ],
    }
    for kind, made in built.items():
        for event in made:
            channel_event(kind, event)
            sideband_event(kind, event)
            assert event["event_id"].startswith("event_")


def test_a_session_update_merges_objects_and_replaces_everything_else() -> None:
    session: dict[str, Any] = {
        "audio": {"input": {"format": {"type": "audio/pcm"}, "turn_detection": {"type": "x"}}},
        "tools": [{"name": "a"}],
        "instructions": "Be brief.",
    }
    update = {"audio": {"input": {"turn_detection": None}}, "tools": [], "instructions": ""}
    merge_session(session, update)
    assert session == {
        "audio": {"input": {"format": {"type": "audio/pcm"}, "turn_detection": None}},
        "tools": [],
        "instructions": "",
    }
    update["tools"].append({"name": "b"})  # copied, not shared
    assert session["tools"] == []


# -- the controls ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_model_calls_a_function_and_the_answer_is_recorded_in_order(
    fake: FakeRealtimeWebRTC, base_url: str
) -> None:
    async with (
        realtime_call(base_url) as (call_id, browser),
        attach(base_url, "realtime", call_id) as sideband,
    ):
        tool_call_id = await fake.acall_function(call_id, "get_weather", {"city": "Porto"})
        assert tool_call_id.startswith("call_")
        for done in (await sideband.receive(), await browser.next_event()):
            assert done["type"] == "response.done"
            assert done["response"]["status"] == "completed"
            [item] = done["response"]["output"]
            assert item["type"] == "function_call"
            assert (item["name"], item["call_id"]) == ("get_weather", tool_call_id)
            assert json.loads(item["arguments"]) == {"city": "Porto"}

        # The server answers, as OpenAI expects it to.
        output = {"type": "function_call_output", "call_id": tool_call_id, "output": '{"ok":1}'}
        await sideband.send({"type": "conversation.item.create", "item": output})
        await sideband.send({"type": "response.create"})
        added = await sideband.receive()
        assert added["type"] == "conversation.item.added"
        assert {k: added["item"][k] for k in output} == output
        assert (await browser.next_event())["type"] == "conversation.item.added"
        created = await fake.await_for_event(call_id, "response.create")
        assert created == {"type": "response.create"}
        assert fake.sideband_events[call_id] == [
            {"type": "conversation.item.create", "item": output},
            {"type": "response.create"},
        ]

        # Its own id, when the test gives one; from a test's thread too.
        given = await anyio.to_thread.run_sync(
            lambda: fake.call_function(call_id, "get_time", {}, tool_call_id="call_mine")
        )
        assert given == "call_mine"
        done = await sideband.receive()
        assert done["response"]["output"][0]["call_id"] == "call_mine"
        assert done["response"]["output"][0]["arguments"] == "{}"


@pytest.mark.anyio
async def test_a_response_finishes_with_its_usage_and_the_input_is_transcribed(
    fake: FakeRealtimeWebRTC, base_url: str
) -> None:
    async with (
        realtime_call(base_url) as (call_id, browser),
        attach(base_url, "realtime", call_id) as sideband,
    ):
        await fake.afinish_response(call_id, USAGE)
        for done in (await sideband.receive(), await browser.next_event()):
            assert done["type"] == "response.done"
            assert done["response"]["status"] == "completed"
            assert done["response"]["usage"] == USAGE
            assert done["response"]["output"] == []
        seconds = {"type": "duration", "seconds": 2.5}
        await anyio.to_thread.run_sync(fake.transcribed, call_id, seconds)
        tokens = {"type": "tokens", "input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
        await fake.atranscribed(call_id, tokens, transcript="What's the weather?")
        for usage in (seconds, tokens):
            for event in (await sideband.receive(), await browser.next_event()):
                assert event["type"] == "conversation.item.input_audio_transcription.completed"
                assert event["usage"] == usage
        assert event["transcript"] == "What's the weather?"


@pytest.mark.anyio
async def test_live_function_calls_usage_and_the_far_end_hanging_up(
    fake: FakeRealtimeWebRTC, base_url: str
) -> None:
    async with (
        live_session(base_url) as (session_id, browser),
        attach(base_url, "live", session_id, query="?graceful_close=true") as sideband,
    ):
        await fake.await_until(lambda: fake.open_sidebands(session_id) == 1)
        tool_call_id = await fake.acall_function(session_id, "get_weather", {"city": "Lisbon"})
        for wrapped in (await sideband.receive(), await browser.next_event()):
            assert wrapped["type"] == "response.event"
            inner = wrapped["event"]
            assert inner["type"] == "response.output_item.done"
            assert inner["item"]["type"] == "function_call"
            assert inner["item"]["call_id"] == tool_call_id
            assert json.loads(inner["item"]["arguments"]) == {"city": "Lisbon"}

        output = {"type": "function_call_output", "call_id": tool_call_id, "output": "{}"}
        await sideband.send({"type": "response.item.create", "item": output})
        await sideband.send({"type": "response.create"})
        await fake.await_for_event(session_id, "response.create")

        await fake.areport_usage(session_id, 12)
        await anyio.to_thread.run_sync(fake.report_usage, session_id, 30.0)
        for seconds in (12, 30):
            for usage in (await sideband.receive(), await browser.next_event()):
                assert usage["type"] == "session.usage.updated"
                assert usage["usage"] == {"seconds": seconds}  # cumulative, as OpenAI's

        await fake.aend_call(session_id)
        closed = await sideband.receive()
        assert closed["type"] == "session.closed"
        assert closed["reason"] == "remote_hangup"
        assert closed["usage"] == {"seconds": 30.0}
        assert closed["session"]["id"] == session_id
        assert await sideband.closed() == 1000
        assert fake.live_sessions[0].state == "closed"
        assert fake.closes == []  # not a session.close
    assert fake.open_sidebands(session_id) == 0
    assert await refused(base_url, "live", session_id) == 404
    assert [e["type"] for e in fake.sideband_events[session_id]] == [
        "response.item.create",
        "response.create",
    ]


@pytest.mark.anyio
async def test_live_session_close_says_session_closed_to_every_sideband_then_1000(
    fake: FakeRealtimeWebRTC, base_url: str
) -> None:
    async with (
        live_session(base_url) as (session_id, _),
        attach(base_url, "live", session_id) as closer,
        attach(base_url, "live", session_id) as other,
    ):
        await fake.await_until(lambda: fake.open_sidebands(session_id) == 2)
        await fake.areport_usage(session_id, 5)
        assert (await closer.receive())["type"] == "session.usage.updated"
        assert (await other.receive())["type"] == "session.usage.updated"
        await closer.send({"type": "session.close"})
        for sideband in (closer, other):
            closed = await sideband.receive()
            assert (closed["type"], closed["reason"]) == ("session.closed", "close_requested")
            assert closed["usage"] == {"seconds": 5.0}
            assert await sideband.closed() == 1000
    assert fake.closes == [session_id]
    assert fake.live_sessions[0].state == "closed"


@pytest.mark.anyio
async def test_a_dropped_sideband_reconnects_and_refusals_are_scripted(
    fake: FakeRealtimeWebRTC, base_url: str
) -> None:
    async with realtime_call(base_url) as (call_id, _):
        async with attach(base_url, "realtime", call_id) as sideband:
            await fake.await_until(lambda: fake.open_sidebands(call_id) == 1)
            assert await fake.adrop_sidebands(call_id) == 1
            assert await sideband.closed() == 1012  # a drop: reconnect
        await fake.await_until(lambda: fake.open_sidebands(call_id) == 0)

        fake.refuse_sidebands(call_id, 503, times=2)
        assert await refused(base_url, "realtime", call_id) == 503
        assert await refused(base_url, "realtime", call_id) == 503
        async with attach(base_url, "realtime", call_id) as again:  # the call lived on
            dropped = await anyio.to_thread.run_sync(
                lambda: fake.drop_sidebands(call_id, code=1011)
            )
            assert dropped == 1
            assert await again.closed() == 1011
        fake.refuse_sidebands(call_id, 404)  # "the call is gone", as far as the server can tell
        assert await refused(base_url, "realtime", call_id) == 404
        assert fake.sideband_attaches == {call_id: 2}
        assert fake.sideband_refusals == [(call_id, 503), (call_id, 503), (call_id, 404)]
        assert fake.calls[0].state == "connected"
        # Nothing left to drop: none open.
        assert await fake.adrop_sidebands(call_id) == 0
        fake.refuse_sidebands(call_id, 500)
        fake.reset()  # forgets the records, and the refusal not yet used
        assert (fake.sideband_attaches, fake.sideband_refusals) == ({}, [])
        async with attach(base_url, "realtime", call_id):
            await fake.await_until(lambda: fake.sideband_attaches == {call_id: 1})


@pytest.mark.anyio
async def test_a_hangup_closes_the_calls_sidebands_with_1000(
    fake: FakeRealtimeWebRTC, base_url: str
) -> None:
    async with (
        realtime_call(base_url) as (call_id, _),
        attach(base_url, "realtime", call_id) as first,
        attach(base_url, "realtime", call_id) as second,
    ):
        async with httpx.AsyncClient(timeout=DEADLINE) as client:
            hangup = await client.post(f"{base_url}/realtime/calls/{call_id}/hangup", headers=AUTH)
        assert hangup.status_code == 200
        assert await first.closed() == 1000
        assert await second.closed() == 1000
        assert fake.hangups == [call_id]
        assert fake.calls[0].state == "closed"
    with pytest.raises(LookupError, match=call_id):
        await fake.acall_function(call_id, "f", {})


@pytest.mark.anyio
async def test_the_far_end_ending_a_realtime_call(fake: FakeRealtimeWebRTC, base_url: str) -> None:
    async with (
        realtime_call(base_url) as (call_id, _),
        attach(base_url, "realtime", call_id) as sideband,
    ):
        await anyio.to_thread.run_sync(fake.end_call, call_id)
        assert await sideband.closed() == 1000
        assert fake.calls[0].state == "closed"
        assert fake.hangups == []
    assert await refused(base_url, "realtime", call_id) == 404


@pytest.mark.anyio
async def test_the_browser_leaving_leaves_the_call_to_the_servers_hangup(
    fake: FakeRealtimeWebRTC, base_url: str
) -> None:
    """The browser's peer connection closes: the call, and its sidebands,
    live on until the server hangs up (as relayed calls are ended)."""
    async with (
        realtime_call(base_url) as (call_id, browser),
        attach(base_url, "realtime", call_id) as sideband,
    ):
        await browser.close()
        await fake.await_until(lambda: fake.calls[0].state == "closed")
        await fake.afinish_response(call_id, USAGE)
        assert (await sideband.receive())["type"] == "response.done"
        async with httpx.AsyncClient(timeout=DEADLINE) as client:
            hangup = await client.post(f"{base_url}/realtime/calls/{call_id}/hangup", headers=AUTH)
        assert hangup.status_code == 200
        assert await sideband.closed() == 1000
    assert fake.hangups == [call_id]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["realtime", "live"])
async def test_a_frame_that_is_no_event_gets_an_error_event(
    fake: FakeRealtimeWebRTC, base_url: str, kind: str
) -> None:
    start = realtime_call if kind == "realtime" else live_session
    async with start(base_url) as (call_id, _), attach(base_url, kind, call_id) as sideband:
        for frame in ("not json", "[]", '{"type": 1}'):
            await sideband.ws.send_str(frame)
            error = await sideband.receive()
            assert error["type"] == "error"
            assert error["error"]["type"] == "invalid_request_error"
        if kind == "realtime":
            await sideband.ws.send_json({"type": "session.update", "session": "x"})
            assert (await sideband.receive())["type"] == "error"
            # The one frame that was an event is recorded, as received.
            assert fake.sideband_events[call_id] == [{"type": "session.update", "session": "x"}]
        else:
            assert fake.sideband_events[call_id] == []


@pytest.mark.anyio
async def test_controls_refuse_what_they_cannot_do(fake: FakeRealtimeWebRTC, base_url: str) -> None:
    async with realtime_call(base_url) as (call_id, _), live_session(base_url) as (live_id, _):
        with pytest.raises(LookupError, match="rtc_nope"):
            await fake.acall_function("rtc_nope", "f", {})
        with pytest.raises(LookupError, match="rtc_nope"):
            await anyio.to_thread.run_sync(fake.end_call, "rtc_nope")
        with pytest.raises(ValueError, match="realtime"):
            await fake.areport_usage(call_id, 1)
        for control in (fake.achange_session, fake.afinish_response, fake.atranscribed):
            with pytest.raises(ValueError, match="live"):
                await control(live_id, {})
        with pytest.raises(TimeoutError):
            await fake.await_for_event(call_id, "response.create", timeout=0.05)
        with pytest.raises(TimeoutError):
            await anyio.to_thread.run_sync(
                lambda: fake.wait_for_event(call_id, "response.create", timeout=0.05)
            )


def test_controls_and_waits_from_a_test_thread(fake: FakeRealtimeWebRTC) -> None:
    """A plain (sync) test: the fake runs on uvicorn's loop, the browser and
    the sideband on one of the test's own, in a thread; the test drives
    both and waits on what the fake records."""
    with fake.serve() as base_url:
        loop = asyncio.new_event_loop()
        ready: asyncio.Queue[str] = asyncio.Queue()
        finish = asyncio.Event()

        async def the_other_side() -> dict[str, Any]:
            async with (
                realtime_call(base_url) as (call_id, _),
                attach(base_url, "realtime", call_id) as sideband,
            ):
                ready.put_nowait(call_id)
                done = await sideband.receive()
                call = done["response"]["output"][0]["call_id"]
                output = {"type": "function_call_output", "call_id": call, "output": "{}"}
                await sideband.send({"type": "conversation.item.create", "item": output})
                await finish.wait()
                return done

        thread_result: list[Any] = []
        runner = asyncio.run_coroutine_threadsafe
        thread = threading.Thread(
            target=lambda: thread_result.append(loop.run_until_complete(the_other_side()))
        )
        thread.start()
        try:
            call_id = runner(asyncio.wait_for(ready.get(), DEADLINE), loop).result(DEADLINE)
            fake.wait_until(lambda: fake.open_sidebands(call_id) == 1)
            tool_call_id = fake.call_function(call_id, "get_weather", {"city": "Oslo"})
            created = fake.wait_for_event(
                call_id,
                "conversation.item.create",
                where=lambda e: e["item"]["call_id"] == tool_call_id,
            )
            assert created["item"]["type"] == "function_call_output"
        finally:
            loop.call_soon_threadsafe(finish.set)
            thread.join(DEADLINE)
            loop.close()
        [done] = thread_result
        assert done["response"]["output"][0]["name"] == "get_weather"


@pytest.mark.anyio
async def test_on_the_fakes_own_loop_the_controls_are_awaited(fake: FakeRealtimeWebRTC) -> None:
    """The fake served in-process on the test's own loop: the ``a``
    controls and waits run there; a blocking one says to await instead."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(fake, log_level="warning", lifespan="on"))
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    with anyio.fail_after(DEADLINE):
        while not server.started:  # uvicorn tells no one; as serve_asgi does
            await asyncio.sleep(0.01)
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    try:
        async with (
            realtime_call(base_url) as (call_id, _),
            attach(base_url, "realtime", call_id) as sideband,
        ):
            await fake.await_until(lambda: fake.open_sidebands(call_id) == 1)
            with pytest.raises(RuntimeError, match=r"await fake\.acall_function"):
                fake.call_function(call_id, "f", {})
            with pytest.raises(RuntimeError, match=r"await fake\.await_until"):
                fake.wait_until(lambda: True)
            tool_call_id = await fake.acall_function(call_id, "f", {"a": 1})
            assert (await sideband.receive())["response"]["output"][0]["call_id"] == tool_call_id
            await fake.aend_call(call_id)
            assert await sideband.closed() == 1000
    finally:
        server.should_exit = True
        await serving
        sock.close()


# -- every fake reaches it ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_sideband_is_served_on_openais_one_host(fake: FakeRealtimeWebRTC) -> None:
    """``openai_app``, what ``navai-mw fake-upstream`` serves (client secrets
    and the WebRTC fake on one host), hands a sideband's handshake to the
    WebRTC fake."""
    with serve_asgi(openai_app(FakeOpenAIRealtime(), fake), loop="asyncio", lifespan="on") as root:
        base_url = f"{root}/v1"
        async with (
            realtime_call(base_url) as (call_id, _),
            attach(base_url, "realtime", call_id) as sideband,
        ):
            await fake.acall_function(call_id, "f", {})
            assert (await sideband.receive())["type"] == "response.done"


@pytest.mark.anyio
async def test_leaving_serve_closes_the_sidebands_it_holds(fake: FakeRealtimeWebRTC) -> None:
    """The fake going away ends its calls: a held sideband is closed (with
    a code after which a server reconnects), and nothing hangs."""
    with fake.serve() as base_url:
        call = realtime_call(base_url)
        call_id, _ = await call.__aenter__()
        held = attach(base_url, "realtime", call_id)
        sideband = await held.__aenter__()
        await fake.await_until(lambda: fake.open_sidebands(call_id) == 1)
    try:
        assert await sideband.closed() in (1001, 1012)  # the fake's, or uvicorn's own
        assert fake.open_sidebands(call_id) == 0
        assert fake.calls[0].state == "closed"
    finally:
        await held.__aexit__(None, None, None)
        await call.__aexit__(None, None, None)
