"""The GPT-Live relay, and both relays end to end over real WebRTC.

In process against a recorded upstream: the Live request body checked
against openai-python's ``openai.types.live`` shapes (no key they do not
know), the safety identifier in the body, the live_session template and its
start-up checks. Then through the ASGI middleware to the WebRTC fake on
loopback with an aiortc peer as the browser: the offer relayed, the call
connected, the first event carrying the session navai built, and the end
(a hangup for Realtime, ``session.close`` on the sideband for Live), also
at the time cap."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, get_type_hints

import anyio
import httpx
import pytest
from openai.types.live import LiveCreateParams
from openai.types.live.live_create_params import Transport
from openai.types.live.media_session_config_param import MediaSessionConfigParam
from pydantic import TypeAdapter

from navai_mw import (
    CallReport,
    HttpRequest,
    HttpResponse,
    NavaiASGIMiddleware,
    NavaiVoiceBackendOptions,
    OptionsError,
    UpstreamError,
)
from navai_mw.core.effects import Attempt, Outcome
from navai_mw.core.http import Credential
from navai_mw.core.sessions import check_live_session
from navai_mw.endpoint.call_sideband import LIVE_CLIENT_EVENTS
from navai_mw.testing import FakeRealtimeWebRTC
from navai_mw.transports import HttpxAsyncTransport
from navai_mw.upstreams.live import live_request, relay_live, with_fields
from navai_mw.upstreams.openai_secrets import MAX_CLIENT_SECRET_RESPONSE_BYTES, is_phrase

from .conftest import CANARY_KEY
from .test_fake_webrtc import Browser
from .test_relay import (
    KEY_HEADER,
    OFFER,
    SDP,
    Sockets,
    app_asgi,
    both_shells,
    report_of,
    until_opened,
)


@pytest.fixture(autouse=True)
def _relay_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relays are off unless switched on: every test here switches them on
    through the environment, as a deployment would (NAVAI_RELAY)."""
    monkeypatch.setenv("NAVAI_RELAY", "true")


LIVE = "/navai/live/sessions"
CALLS = "/navai/realtime/calls"
DEADLINE = 20.0  # a bound, never a measurement


class LiveUpstream:
    """OpenAI's Live sessions API, recorded; ``answer`` (status, body)
    replaces its answer when set."""

    def __init__(self) -> None:
        self.requests: list[HttpRequest] = []
        self.answer: tuple[int, bytes] | None = None

    def reply(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        body = json.loads(request.body)
        assert body["transport"]["type"] == "webrtc"
        if self.answer is not None:
            status, raw = self.answer
            return HttpResponse(status=status, body=raw)
        answer = {
            "session": {"id": f"live_{len(self.requests):04d}"},
            "transport": {"type": "webrtc", "sdp": "v=0\r\ns=answer\r\n"},
        }
        return HttpResponse(status=200, body=json.dumps(answer).encode())

    def offers(self) -> list[HttpRequest]:
        return self.requests

    def hangups(self) -> list[str]:
        return []


def unknown_keys(data: dict[str, Any], shape: Any) -> set[str]:
    return set(data) - set(get_type_hints(shape))


def test_the_live_body_has_openais_shape_and_navais_session() -> None:
    upstream = LiveUpstream()
    template = {"delegation": {"type": "client"}, "idle_timeout_s": 60}
    opts = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, live_session=template, default_language="Spanish"
    )
    with both_shells(upstream, opts, authorize=lambda info: "ana") as shells:  # type: ignore[arg-type]
        for shell, request, _ in shells:
            response = request("POST", LIVE + "?voice=cedar", content=OFFER, headers=SDP)
            assert response.status_code == 201, (shell, response.text)
            assert response.headers["content-type"] == "application/sdp"
            session_id = f"live_{len(upstream.requests):04d}"
            assert response.headers["location"] == f"/app{LIVE}/{session_id}"
            sent = upstream.requests[-1]
            assert sent.url == "https://api.openai.com/v1/live/sessions"
            body = json.loads(sent.body)
            TypeAdapter(LiveCreateParams).validate_python(body)
            assert unknown_keys(body, LiveCreateParams) == set()
            assert unknown_keys(body["transport"], Transport) == set()
            session = body["session"]
            assert unknown_keys(session, MediaSessionConfigParam) == set()
            assert session["model"] == "gpt-live-1"
            assert session["audio"] == {"output": {"voice": "cedar"}}
            assert session["instructions"].endswith("Always reply in Spanish.")
            assert session["delegation"] == {"type": "client"}
            assert session["idle_timeout_s"] == 60
            # Live takes the safety identifier in the body, not in a header.
            assert len(session["safety_identifier"]) == 64
            assert "OpenAI-Safety-Identifier" not in dict(sent.headers)
            assert body["transport"] == {"type": "webrtc", "sdp": OFFER}


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ({"model": "x"}, "live_session sets model, which navai sets itself; use live_model."),
        ({"audio": {}}, "live_session sets audio, which navai sets itself; use default_voice."),
        (
            {"voice": "x"},
            "live_session has an unknown field 'voice'. Known: client, delegation, "
            "idle_timeout_s, input, store, triggers, wake_policy.",
        ),
        (
            {"delegation": {"type": "magic"}},
            "live_session.delegation.type must be 'client', 'responses' or 'decisions'.",
        ),
        ({"idle_timeout_s": True}, "live_session.idle_timeout_s must be a JSON int."),
        ({"input": [1]}, "live_session.input must be a list of items (JSON objects)."),
        ({"triggers": {}}, "live_session.triggers must be a JSON list."),
        ({"wake_policy": []}, "live_session.wake_policy must be a JSON dict."),
    ],
)
def test_bad_live_templates_fail_at_start_up(template: Any, message: str) -> None:
    with pytest.raises(OptionsError) as caught:
        NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, live_session=template)
    assert caught.value.message == message


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("[]", "live_session must be a JSON object of Live session fields."),
        ([], "live_session must be a JSON object of Live session fields."),
        (("delegation",), "live_session must be a JSON object of Live session fields."),
        ('{"input": [', "live_session is not valid JSON: Expecting value: line 1 column 12"),
    ],
)
def test_a_live_template_that_is_not_a_json_object_is_named(template: Any, message: str) -> None:
    with pytest.raises(OptionsError) as caught:
        NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, live_session=template)
    assert caught.value.message.startswith(message)
    with pytest.raises(OptionsError) as checked:
        check_live_session(template)
    assert checked.value.message == caught.value.message


def test_a_live_template_may_be_given_as_json_text() -> None:
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, live_session='{"triggers": []}')
    assert opts.live_session == {"triggers": []}
    assert check_live_session('{"triggers": []}') == {"triggers": []}


@pytest.mark.parametrize("delegation", ["client", "responses", "decisions"])
def test_a_live_template_may_set_triggers_a_wake_policy_and_delegate_decisions(
    delegation: str,
) -> None:
    template = {"triggers": [], "wake_policy": {}, "delegation": {"type": delegation}}
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, live_session=template)
    assert opts.live_session == template


def test_live_model_comes_from_the_environment() -> None:
    from navai_mw import get_navai_voice_backend_options_from_env

    opts = get_navai_voice_backend_options_from_env(
        {"OPENAI_API_KEY": CANARY_KEY, "OPENAI_LIVE_MODEL": "gpt-live-1.1"}
    )
    assert opts.live_model == "gpt-live-1.1"


def test_the_servers_default_voice_speaks_a_live_session() -> None:
    upstream = LiveUpstream()
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, default_voice="cedar")
    with both_shells(upstream, opts) as shells:  # type: ignore[arg-type]
        for shell, request, _ in shells:
            assert request("POST", LIVE, content=OFFER, headers=SDP).status_code == 201, shell
            session = json.loads(upstream.requests[-1].body)["session"]
            assert session["audio"] == {"output": {"voice": "cedar"}}


def test_a_live_model_outside_allowed_models_is_named_and_the_list_given() -> None:
    upstream = LiveUpstream()
    opts = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY,
        live_model="m" * 70,
        allowed_models=["gpt-realtime", "gpt-realtime-mini"],
    )
    with both_shells(upstream, opts) as shells:  # type: ignore[arg-type]
        for shell, request, _ in shells:
            refused = request("POST", LIVE, content=OFFER, headers=SDP)
            assert refused.status_code == 403, (shell, refused.text)
            assert refused.json()["error"] == (
                f"Model {'m' * 64!r} is not allowed for GPT-Live. "
                "Allowed: gpt-realtime, gpt-realtime-mini."
            )
    assert upstream.requests == []


def _live_answer(session: Any = None, transport: Any = None) -> bytes:
    return json.dumps(
        {
            "session": {"id": "live_0001"} if session is None else session,
            "transport": {"type": "webrtc", "sdp": "v=0\r\n"} if transport is None else transport,
        }
    ).encode()


FAILED = json.dumps({"error": {"message": f"sorry {CANARY_KEY}"}}).encode()


@pytest.mark.parametrize(
    ("answer", "status", "error"),
    [
        pytest.param((201, _live_answer()), 201, "", id="201-is-fine"),
        pytest.param((300, FAILED), 502, "failed (300): sorry [redacted]", id="300"),
        pytest.param((500, FAILED), 502, "failed (500): sorry [redacted]", id="500"),
        pytest.param((429, FAILED), 429, "failed (429): sorry [redacted]", id="429"),
        pytest.param((200, b"<html>"), 502, "answered without a session id.", id="not-json"),
        pytest.param((200, b"[]"), 502, "answered without a session id.", id="a-list"),
        pytest.param(
            (200, _live_answer(session=["live_0001"])),
            502,
            "answered without a session id.",
            id="session-not-an-object",
        ),
        pytest.param(
            (200, _live_answer(session={"id": 7})),
            502,
            "answered without a session id.",
            id="id-not-text",
        ),
        pytest.param(
            (200, _live_answer(session={"id": "a/b"})),
            502,
            "answered without a session id.",
            id="id-not-an-id",
        ),
        pytest.param(
            (200, _live_answer(transport=["v=0"])),
            502,
            "answered with no SDP answer.",
            id="transport-not-an-object",
        ),
        pytest.param(
            (200, _live_answer(transport={"sdp": 0})),
            502,
            "answered with no SDP answer.",
            id="sdp-not-text",
        ),
        pytest.param(
            (200, _live_answer(transport={"sdp": "hello"})),
            502,
            "answered with no SDP answer.",
            id="not-sdp",
        ),
    ],
)
def test_what_openai_answers_a_live_session_with(
    answer: tuple[int, bytes], status: int, error: str
) -> None:
    upstream = LiveUpstream()
    upstream.answer = answer
    with both_shells(upstream) as shells:  # type: ignore[arg-type]
        for shell, request, _ in shells:
            response = request("POST", LIVE, content=OFFER, headers=SDP)
            assert response.status_code == status, (shell, response.text)
            if status == 201:
                assert response.headers["location"] == f"/app{LIVE}/live_0001"
                assert response.text == "v=0\r\n"
                continue
            assert response.json()["error"] == f"OpenAI live sessions {error}"
    assert len(upstream.requests) == 2  # one per shell: a session is never started twice
    sent = upstream.requests[-1]
    assert sent.method == "POST"
    assert dict(sent.headers)["Content-Type"] == "application/json"


# -- ending a session, in process ------------------------------------------------------------


def test_a_live_session_is_ended_by_its_owner_with_session_close_on_its_sideband() -> None:
    upstream = LiveUpstream()
    sockets = Sockets()
    reports: list[CallReport] = []
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, upstream_timeout_seconds=7)

    def user(info: Any) -> str | None:
        return info.headers.get("x-user")

    with both_shells(
        upstream,  # type: ignore[arg-type]
        opts,
        sockets=sockets,
        sideband=True,
        authorize=user,
        on_call_end=reports.append,
    ) as shells:
        for shell, request, _ in shells:
            sockets.release.clear()  # the session's sideband stays open
            made = request("POST", LIVE, content=OFFER, headers={**SDP, "x-user": "ana"})
            assert made.status_code == 201, (shell, made.text)
            location = made.headers["location"].removeprefix("/app")
            session_id = location.rsplit("/", 1)[-1]
            attach = f"wss://api.openai.com/v1/live/sessions/{session_id}/attach"
            until_opened(sockets, f"{attach}?graceful_close=true")
            # Someone else's session does not exist, as far as they can tell.
            other = request("DELETE", location, headers={"x-user": "ben"})
            assert other.status_code == 404
            assert other.json() == {"error": "Unknown session."}
            ended = request("DELETE", location, headers={"x-user": "ana"})
            assert ended.status_code == 204, (shell, ended.text)
            assert ended.content == b""
            assert "content-type" not in ended.headers  # nothing to type
            assert sockets.opened[-1] == (attach, KEY_HEADER)
            assert sockets.timeouts[-1] == 7
            assert sockets.sent[-1] == {"type": "session.close"}
            sockets.release.set()  # OpenAI closes the sideband after the session
            report = report_of(reports, session_id)
            assert (report.kind, report.end_reason) == ("live", "hangup")
            assert request("DELETE", location, headers={"x-user": "ana"}).status_code == 404


def test_a_pinned_live_session_is_sent_with_its_client_events_limited() -> None:
    upstream = LiveUpstream()
    sockets = Sockets()
    with both_shells(
        upstream,  # type: ignore[arg-type]
        sockets=sockets,
        sideband=True,
        pin_session=True,
    ) as shells:
        for shell, request, _ in shells:
            made = request("POST", LIVE, content=OFFER, headers=SDP)
            assert made.status_code == 201, (shell, made.text)
            sent = json.loads(upstream.requests[-1].body)["session"]
            channel = sent["client"]["data_channel"]
            assert channel["allowed_client_events"] == list(LIVE_CLIENT_EVENTS), shell
            assert "session.update" not in channel["allowed_client_events"]


def test_a_live_session_that_cannot_be_closed_is_a_502_and_stays_its_owners() -> None:
    upstream = LiveUpstream()
    sockets = Sockets(refuse=True)
    with both_shells(upstream, sockets=sockets) as shells:  # type: ignore[arg-type]
        for shell, request, _ in shells:
            made = request("POST", LIVE, content=OFFER, headers=SDP)
            assert made.status_code == 201, (shell, made.text)
            location = made.headers["location"].removeprefix("/app")
            for _ in range(2):  # not forgotten: its owner may try again
                failed = request("DELETE", location)
                assert failed.status_code == 502, (shell, failed.text)
                assert failed.json()["error"] == (
                    "OpenAI live sessions could not be closed: ConnectionRefusedError."
                )


# -- over real WebRTC --------------------------------------------------------------------


@contextmanager
def relay_to_fake(**keywords: Any) -> Iterator[tuple[FakeRealtimeWebRTC, Any]]:
    """The ASGI middleware relaying to the WebRTC fake on loopback; yields
    the fake and an async ``request(method, path, **kw)``."""
    fake = FakeRealtimeWebRTC()
    with fake.serve() as base_url:
        opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, openai_base_url=base_url)
        yield fake, (opts, keywords)


async def _run(opts: NavaiVoiceBackendOptions, keywords: dict[str, Any], steps: Any) -> None:
    transport = HttpxAsyncTransport()
    app = NavaiASGIMiddleware(app_asgi, opts, transport=transport, functions=[], **keywords)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api.test", timeout=DEADLINE
    ) as client:
        await steps(client)
    await app.aclose()
    await transport.aclose()


async def _until(check: Any) -> None:
    with anyio.fail_after(DEADLINE):
        while not check():
            await anyio.sleep(0.02)


@pytest.mark.parametrize(("path", "first"), [(CALLS, "session.created"), (LIVE, "session.started")])
def test_a_browser_peer_talks_to_the_fake_through_the_relay(path: str, first: str) -> None:
    with relay_to_fake() as (fake, (opts, keywords)):

        async def steps(client: httpx.AsyncClient) -> None:
            browser = Browser()
            try:
                offer = await browser.offer()
                response = await client.post(path + "?voice=cedar", content=offer, headers=SDP)
                assert response.status_code == 201, response.text
                await browser.answer(response.text)
                event = await browser.next_event()
                assert event["type"] == first
                # The session navai built, the query's override included.
                assert event["session"]["audio"]["output"]["voice"] == "cedar"
                assert browser.pc.connectionState == "connected"
                ended = await client.delete(response.headers["location"])
                assert ended.status_code == 204
                call_id = response.headers["location"].rsplit("/", 1)[-1]
                await _until(lambda: call_id in (*fake.hangups, *fake.closes))
            finally:
                await browser.close()

        anyio.run(_run, opts, keywords, steps, backend="asyncio")


@pytest.mark.parametrize("path", [CALLS, LIVE])
def test_the_time_cap_ends_a_real_call(path: str) -> None:
    with relay_to_fake(max_call_seconds=0.5) as (fake, (opts, keywords)):

        async def steps(client: httpx.AsyncClient) -> None:
            browser = Browser()
            try:
                response = await client.post(path, content=await browser.offer(), headers=SDP)
                assert response.status_code == 201, response.text
                await browser.answer(response.text)
                await browser.next_event()
                call_id = response.headers["location"].rsplit("/", 1)[-1]
                # Nobody asked: the cap ended it (the wait is a bound only).
                await _until(lambda: call_id in (*fake.hangups, *fake.closes))
            finally:
                await browser.close()

        anyio.run(_run, opts, keywords, steps, backend="asyncio")


def test_azure_relays_to_its_own_paths() -> None:
    from .test_relay import Upstream

    upstream = Upstream()
    live = LiveUpstream()
    opts = NavaiVoiceBackendOptions(
        azure_endpoint="https://res.openai.azure.com", azure_api_key="az-key-0123"
    )
    with both_shells(upstream, opts) as shells:
        for _, request, _ in shells:
            assert request("POST", CALLS, content=OFFER, headers=SDP).status_code == 201
    sent = upstream.offers()[-1]
    assert sent.url == "https://res.openai.azure.com/openai/v1/realtime/calls"
    assert dict(sent.headers)["api-key"] == "az-key-0123"
    with both_shells(live, opts) as shells:  # type: ignore[arg-type]
        for _, request, _ in shells:
            assert request("POST", LIVE, content=OFFER, headers=SDP).status_code == 201
    assert live.requests[-1].url == "https://res.openai.azure.com/openai/v1/live/sessions"


# -- a phone call's fields, laid over the Live session ------------------------------------------

PHONE_OPTS = NavaiVoiceBackendOptions(
    openai_api_key=CANARY_KEY,
    allowed_models=("gpt-realtime", "gpt-live-1"),
    allowed_voices=("marin", "cedar"),
)
PHONE_SESSION = {
    "model": "gpt-live-1",
    "instructions": "Be brief.",
    "audio": {"output": {"voice": "marin"}},
}


def test_a_hooks_fields_are_laid_over_the_live_session() -> None:
    fields = {"instructions": "Greet.", "audio": {"output": {"voice": "cedar"}}, "store": False}
    assert with_fields(PHONE_OPTS, PHONE_SESSION, fields) == {
        "model": "gpt-live-1",
        "instructions": "Greet.",
        "audio": {"output": {"voice": "cedar"}},
        "store": False,
    }
    assert PHONE_SESSION["instructions"] == "Be brief."  # the template is untouched


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model": "gpt-x"}, "model 'gpt-x' is not in allowed_models"),
        ({"model": None}, "model None is not in allowed_models"),
        ({"instructions": 3}, "instructions must be a string"),
        ({"audio": {"output": {"voice": "alloy"}}}, "voice 'alloy' is not in allowed_voices"),
        ({"audio": {"output": {"voice": None}}}, "voice None is not in allowed_voices"),
        ({"audio": {"output": "x"}}, "voice None is not in allowed_voices"),
        (
            {"colour": "red"},
            "live_session has an unknown field 'colour'. Known: client, delegation, "
            "idle_timeout_s, input, store, triggers, wake_policy.",
        ),
    ],
    ids=["model", "no-model", "instructions", "voice", "no-voice", "output-not-an-object", "field"],
)
def test_a_hooks_fields_a_live_session_cannot_take_are_named(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(OptionsError) as caught:
        with_fields(PHONE_OPTS, PHONE_SESSION, fields)
    assert caught.value.message == message


# -- the Live relay's own request, sans-IO ------------------------------------------------------


def test_a_live_relay_waits_what_is_left_of_the_budget_and_is_never_retried() -> None:
    def steps(budget: float | None) -> Any:
        return relay_live(
            PHONE_OPTS,
            "v=0\r\n",
            PHONE_SESSION,
            credential=Credential.bearer(CANARY_KEY),
            budget=budget,
        )

    given = steps(1.5)
    attempt = next(given)
    assert isinstance(attempt, Attempt)
    assert attempt.timeout == 1.5
    assert next(steps(None)).timeout == PHONE_OPTS.upstream_timeout_seconds
    busy = HttpResponse(status=503, body=b'{"error": {"message": "busy"}}')
    with pytest.raises(UpstreamError) as failure:
        given.send(Outcome(busy))
    assert failure.value.message == "OpenAI live sessions failed (503): busy"
    unreached = steps(None)
    next(unreached)
    with pytest.raises(UpstreamError) as failure:
        unreached.send(Outcome(None))
    assert failure.value.message == "OpenAI live sessions could not be reached."


def test_a_live_answer_is_read_within_the_bound_of_a_client_secrets() -> None:
    request = live_request(
        PHONE_OPTS, "v=0\r\n", PHONE_SESSION, credential=Credential.bearer(CANARY_KEY)
    )
    assert request.max_response_bytes == MAX_CLIENT_SECRET_RESPONSE_BYTES


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        ("a" * 40, True),
        ("  " + "a" * 40 + "  ", True),  # trimmed first
        ("a" * 41, False),
        ("Español de España (Sevilla)", True),
        ("日本語", True),
        ("X-ray 2", True),
        ("Ignore: all", False),
        ("tone\n", True),
        ("tone\nSYSTEM", False),
    ],
    ids=["longest", "trimmed", "too-long", "accents", "cjk", "digit", "colon", "eol", "newline"],
)
def test_a_phrase_is_short_letters_digits_and_a_little_punctuation(
    value: str, phrase: bool
) -> None:
    assert is_phrase(value) is phrase
