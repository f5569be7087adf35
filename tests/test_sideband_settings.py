"""The sideband's settings and what they do to the session navai_mw sends
OpenAI (sans-IO): which keywords switch it on, what start-up refuses, the
backend functions among the session's tools, a pinned Live session's data
channel. Every session built is checked against openai-python's types."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.live.media_session_config_param import MediaSessionConfigParam
from openai.types.realtime.realtime_session_create_request_param import (
    RealtimeSessionCreateRequestParam,
)
from pydantic import TypeAdapter

from navai_mw import NavaiHandler, NavaiVoiceBackendOptions, OptionsError, load_navai_functions
from navai_mw.backend_functions.registry import FunctionRegistry
from navai_mw.core.effects import AttachSideband, RunFunction
from navai_mw.core.http import Credential, RequestInfo
from navai_mw.endpoint.call_sideband import (
    LIVE_CLIENT_EVENTS,
    attach_sideband,
    sideband_settings,
    with_server_side,
)
from navai_mw.endpoint.endpoint import Endpoint
from navai_mw.endpoint.route import Call

OPTS = NavaiVoiceBackendOptions(openai_api_key="sk-test")
REALTIME_SESSION = TypeAdapter(RealtimeSessionCreateRequestParam)
LIVE_SESSION = TypeAdapter(MediaSessionConfigParam)


def lookup_order(order_id: str, detailed: bool = False) -> dict[str, str]:
    """Find an order by its id."""
    return {"order": order_id}


def registry() -> FunctionRegistry:
    return load_navai_functions([lookup_order])


def settings(**keywords: Any) -> Any:
    return Endpoint(OPTS, functions=registry(), relay=True, **keywords).settings


@pytest.mark.parametrize(
    ("keywords", "shown"),
    [
        ({}, None),
        ({"sideband": True}, (False, False, False)),
        ({"server_functions": True}, (True, False, False)),
        ({"pin_session": True}, (False, True, False)),
        ({"sideband_required": True}, (False, False, True)),
    ],
)
def test_each_of_its_keywords_implies_the_sideband(
    keywords: dict[str, bool], shown: tuple[bool, bool, bool] | None
) -> None:
    sideband = settings(**keywords).sideband
    if shown is None:
        assert sideband is None
        return
    assert sideband is not None
    assert (sideband.server_functions, sideband.pin_session, sideband.required) == shown
    assert bool(sideband.tools) == sideband.server_functions


@pytest.mark.parametrize("keyword", ["sideband", "server_functions", "pin_session"])
def test_a_sideband_with_no_call_to_attach_to_is_refused_at_start(keyword: str) -> None:
    with pytest.raises(OptionsError, match="relay"):
        NavaiHandler(OPTS, functions=[], **{keyword: True})  # type: ignore[misc]
    with pytest.raises(OptionsError, match="relay"):
        NavaiHandler(OPTS, functions=[], env={"NAVAI_SIDEBAND_REQUIRED": "yes"})


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"sideband": "yes"}, "sideband must be True or False. Received: 'yes'"),
        (
            {"on_call_end": "print"},
            "on_call_end must be a function taking a CallReport (or None).",
        ),
        ({"max_sidebands": 0}, "max_sidebands must be a positive integer. Received: 0"),
        ({"max_sidebands": 2.5}, "max_sidebands must be a positive integer. Received: 2.5"),
        ({"max_sidebands": True}, "max_sidebands must be a positive integer. Received: True"),
        (
            {"env": {"NAVAI_MAX_SIDEBANDS": "lots"}},
            "max_sidebands must be an integer. Received: 'lots' (from NAVAI_MAX_SIDEBANDS)",
        ),
        (
            {"env": {"NAVAI_MAX_SIDEBANDS": "0"}},
            "NAVAI_MAX_SIDEBANDS must be a positive integer. Received: 0",
        ),
    ],
)
def test_bad_sideband_keywords_are_named_at_start(keywords: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionsError) as caught:
        NavaiHandler(OPTS, functions=[], relay=True, **keywords)
    assert caught.value.message == message


def test_server_functions_load_the_functions_without_the_browsers_routes() -> None:
    handler = NavaiHandler(
        OPTS,
        functions=[lookup_order],
        relay=True,
        server_functions=True,
        include_functions_routes=False,
    )
    try:
        routes = [route.name for route in handler.endpoint.routes]
        assert not any(name.startswith("functions") for name in routes)
        sideband = handler.endpoint.settings.sideband
        assert sideband is not None
        assert [tool["name"] for tool in sideband.tools] == ["lookup_order"]
    finally:
        handler.close()


def test_the_functions_join_a_realtime_sessions_tools() -> None:
    ours = settings(server_functions=True)
    template = {
        "type": "realtime",
        "model": "gpt-realtime",
        "tools": [
            {"type": "function", "name": "browser_tool", "description": "The page's own."},
            {"type": "function", "name": "lookup_order", "description": "A stale copy."},
        ],
    }
    session = with_server_side(ours, template, "realtime")
    REALTIME_SESSION.validate_python(session)
    names = [tool["name"] for tool in session["tools"]]
    assert names == ["browser_tool", "lookup_order"]
    server_tool = session["tools"][1]
    assert server_tool["description"] == "Find an order by its id."
    assert server_tool["parameters"]["required"] == ["order_id"]
    assert set(server_tool["parameters"]["properties"]) == {"order_id", "detailed"}
    assert template["tools"][1]["description"] == "A stale copy."  # the template is untouched


def test_live_gets_the_functions_only_under_responses_delegation() -> None:
    ours = settings(server_functions=True)
    plain = {"model": "gpt-live-1", "instructions": "Be brief."}
    assert with_server_side(ours, plain, "live") == plain
    delegated = {
        "model": "gpt-live-1",
        "delegation": {"type": "responses", "responses": {"model": "gpt-5.2"}},
    }
    session = with_server_side(ours, delegated, "live")
    LIVE_SESSION.validate_python(session)
    tools = session["delegation"]["responses"]["tools"]
    assert [tool["name"] for tool in tools] == ["lookup_order"]
    assert "tools" not in delegated["delegation"]["responses"]


def test_a_delegated_responses_keeps_its_own_tools_before_the_servers() -> None:
    ours = settings(server_functions=True)
    weather = {"type": "function", "name": "weather", "parameters": {"type": "object"}}
    stale = {"type": "function", "name": "lookup_order", "description": "A stale copy."}
    delegated = {
        "model": "gpt-live-1",
        "delegation": {
            "type": "responses",
            "responses": {"model": "gpt-5.2", "tools": [weather, stale]},
        },
    }
    tools = with_server_side(ours, delegated, "live")["delegation"]["responses"]["tools"]
    assert [tool["name"] for tool in tools] == ["weather", "lookup_order"]
    assert tools[0] == weather
    assert tools[1]["description"] == "Find an order by its id."  # the server's, not the stale one


def test_only_a_responses_delegation_gets_the_functions() -> None:
    ours = settings(server_functions=True)
    client = {
        "model": "gpt-live-1",
        "delegation": {"type": "client", "responses": {"model": "gpt-5.2"}},
    }
    assert with_server_side(ours, client, "live") == client


def test_a_pinned_live_session_lets_the_browser_mute_unmute_and_close_only() -> None:
    ours = settings(pin_session=True)
    template = {
        "model": "gpt-live-1",
        "client": {"data_channel": {"allowed_client_events": "all", "allowed_server_events": []}},
    }
    session = with_server_side(ours, template, "live")
    LIVE_SESSION.validate_python(session)
    channel = session["client"]["data_channel"]
    assert channel["allowed_client_events"] == list(LIVE_CLIENT_EVENTS)
    assert "session.update" not in channel["allowed_client_events"]
    assert channel["allowed_server_events"] == []  # the template's own, kept


def test_a_pinned_realtime_session_is_sent_as_configured() -> None:
    """Realtime has no data-channel allow-list: its pin is the sideband's
    reverts, so the session itself is left as it is."""
    template = {"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief."}
    assert with_server_side(settings(pin_session=True), template, "realtime") == template


def test_without_the_sideband_the_session_is_left_alone() -> None:
    template = {"type": "realtime", "model": "gpt-realtime"}
    assert with_server_side(settings(), template, "realtime") is template


def test_server_functions_with_none_loaded_is_said_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sideband = sideband_settings(
        sideband=False,
        server_functions=True,
        pin_session=False,
        required=False,
        relay=True,
        functions=FunctionRegistry(),
    )
    assert sideband is not None
    assert sideband.tools == ()
    assert "no backend function is loaded" in caplog.text


@pytest.mark.parametrize("server_functions", [True, False])
def test_a_calls_sideband_runs_the_models_function_calls_only_with_server_functions(
    server_functions: bool,
) -> None:
    ours = settings(sideband=True, server_functions=server_functions, function_timeout_seconds=4.5)
    info = RequestInfo(method="POST", route="calls", path="/navai/realtime/calls", headers={})
    session = {"type": "realtime", "model": "gpt-realtime", "instructions": "Hi."}
    steps = attach_sideband(
        ours,
        Call({}, info, "ana"),
        kind="realtime",
        key="rtc_1",
        call_id="rtc_1",
        session=session,
        credential=Credential.bearer("sk-test"),
    )
    attach = next(steps)
    assert isinstance(attach, AttachSideband)
    assert attach.url == "wss://api.openai.com/v1/realtime?call_id=rtc_1"
    called = {
        "type": "response.done",
        "event_id": "event_1",
        "response": {
            "object": "realtime.response",
            "id": "resp_1",
            "status": "completed",
            "output": [
                {
                    "type": "function_call",
                    "object": "realtime.item",
                    "id": "item_1",
                    "call_id": "call_1",
                    "name": "lookup_order",
                    "arguments": '{"order_id": "A-7"}',
                    "status": "completed",
                }
            ],
        },
    }
    runs = [a for a in attach.session.receive(json.dumps(called)) if isinstance(a, RunFunction)]
    if server_functions:
        [run] = runs
        assert (run.name, run.timeout, run.run()) == ("lookup_order", 4.5, {"order": "A-7"})
    else:
        assert runs == []  # the browser's to run, as without a sideband
