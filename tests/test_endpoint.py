"""The sans-IO endpoint on its own: decisions in, answers out, no I/O at all.

The shared HTTP table (test_http.py) proves the shells agree; this file pins
the endpoint's own edges that are awkward to reach through a server.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest

from navai_mw import NavaiVoiceBackendOptions, OptionsError
from navai_mw.auth import BearerTokens
from navai_mw.config.configure import configure_endpoint
from navai_mw.core.errors import RequestError
from navai_mw.endpoint.answers import Answer
from navai_mw.endpoint.body import parse_body
from navai_mw.endpoint.endpoint import BodyWanted, Endpoint, route_path
from navai_mw.endpoint.route import Route

from .conftest import log_message

OPTS = NavaiVoiceBackendOptions(openai_api_key="sk-endpoint")
JSON = {"content-type": "application/json"}


def finish_now(endpoint: Endpoint, wanted: BodyWanted, body: bytes | None) -> Answer:
    """Run ``finish`` for answers that need no upstream call."""
    steps = endpoint.finish(wanted, body)
    with pytest.raises(StopIteration) as done:
        next(steps)
    answer: Answer = done.value.value
    return answer


def error_of(answer: Answer) -> str:
    message: str = json.loads(answer.body)["error"]
    return message


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        pytest.param({"path": "navai"}, "path must start with '/'", id="relative-path"),
        pytest.param({"max_body_size": -1}, "max_body_size", id="negative-limit"),
        pytest.param({"max_body_size": 1.5}, "max_body_size", id="float-limit"),
        pytest.param({"max_body_size": True}, "max_body_size", id="bool-limit"),
    ],
)
def test_bad_configuration_fails_when_built(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        Endpoint(OPTS, **kwargs)


@pytest.mark.parametrize("prefix", ["api", None, 5])
def test_a_prefix_not_starting_with_a_slash_fails_when_built(prefix: Any) -> None:
    with pytest.raises(OptionsError) as caught:
        Endpoint(OPTS, prefix=prefix)
    assert caught.value.message == f"prefix must be empty or start with '/'. Received: {prefix!r}"


@pytest.mark.parametrize(("prefix", "kept"), [("/api/", "/api"), ("/AUX//", "/AUX"), ("/", "")])
def test_a_trailing_slash_on_the_prefix_is_dropped(prefix: str, kept: str) -> None:
    endpoint = Endpoint(OPTS, prefix=prefix)
    assert endpoint.path == f"{kept}/navai/realtime/client-secret"
    assert endpoint.owns(f"{kept}/navai/realtime/client-secret")


@pytest.mark.parametrize(
    ("path", "root_path", "route"),
    [
        pytest.param("/api/x", "/api", "/x", id="below-mount"),
        pytest.param("/api", "/api", "/", id="the-mount-itself"),
        pytest.param("/other/x", "/api", "/other/x", id="outside-mount"),
        pytest.param("/x", "", "/x", id="no-mount"),
    ],
)
def test_route_path(path: str, root_path: str, route: str) -> None:
    assert route_path(path, root_path) == route


def test_owns_tolerates_one_trailing_slash() -> None:
    endpoint = Endpoint(OPTS, path="/token/")
    assert endpoint.owns("/token")
    assert endpoint.owns("/token/")
    assert not endpoint.owns("/token//")
    assert not endpoint.owns("/token/x")


def test_incomplete_body_is_400_without_upstream_call() -> None:
    endpoint = Endpoint(OPTS)
    wanted = endpoint.begin("POST", {**JSON, "content-length": "10"})
    assert isinstance(wanted, BodyWanted)
    answer = finish_now(endpoint, wanted, b"{}")
    assert (answer.status, error_of(answer)) == (400, "Request body is incomplete.")


def test_unframed_body_is_400() -> None:
    endpoint = Endpoint(OPTS)
    wanted = endpoint.begin("POST", JSON)
    assert isinstance(wanted, BodyWanted)
    answer = finish_now(endpoint, wanted, None)
    assert answer.status == 400
    assert "Content-Length" in error_of(answer)


def test_chunked_body_with_wrong_type_is_415_after_reading() -> None:
    endpoint = Endpoint(OPTS)
    wanted = endpoint.begin("POST", {"content-type": "text/plain"})
    assert isinstance(wanted, BodyWanted)  # no length: the type matters only if a body comes
    answer = finish_now(endpoint, wanted, b"hello")
    assert (answer.status, error_of(answer)) == (
        415,
        "Content-Type must be application/json (UTF-8).",
    )


def test_a_chunked_offer_with_wrong_type_is_415_naming_sdp_after_reading() -> None:
    endpoint = Endpoint(OPTS, relay=True)
    wanted = endpoint.begin("POST", {"content-type": "text/plain"}, path="/navai/realtime/calls")
    assert isinstance(wanted, BodyWanted)
    answer = finish_now(endpoint, wanted, b"v=0")
    assert (answer.status, error_of(answer)) == (415, "Content-Type must be application/sdp.")


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        pytest.param("http://evil.test:18010", "evil.test:18010", id="dns-rebinding"),
        pytest.param("http://api.test:3000", "api.test:3000", id="unlisted-own-origin"),
        pytest.param("https://api.test", "api.test", id="scheme-and-host"),
    ],
)
def test_cors_trusts_no_host_header(origin: str, host: str) -> None:
    # The Host header is the client's to write: a page on a rebound name
    # sends a matching one. Only listed origins pass.
    endpoint = Endpoint(OPTS, cors_origins=["https://app.example.com"])
    refused = endpoint.begin("POST", {**JSON, "origin": origin, "host": host})
    assert isinstance(refused, Answer)
    assert refused.status == 403
    assert json.loads(refused.body) == {"error": "Origin not allowed."}
    listed = Endpoint(OPTS, cors_origins=["https://app.example.com", origin])
    wanted = listed.begin("POST", {**JSON, "origin": origin, "host": host})
    assert isinstance(wanted, BodyWanted)
    assert ("Access-Control-Allow-Origin", origin) in wanted.cors


def test_cors_other_origin_is_refused_before_reading() -> None:
    endpoint = Endpoint(OPTS, cors_origins=["http://front.test/"])
    refused = endpoint.begin("POST", {**JSON, "origin": "http://evil.test", "host": "api.test"})
    assert isinstance(refused, Answer)
    assert refused.status == 403
    assert not any(name.startswith("Access-Control") for name, _ in refused.headers)
    allowed = endpoint.begin("POST", {**JSON, "origin": "HTTP://FRONT.TEST"})
    assert isinstance(allowed, BodyWanted)
    assert ("Access-Control-Allow-Origin", "HTTP://FRONT.TEST") in allowed.cors


def test_405_from_an_allowed_origin_carries_cors_headers() -> None:
    endpoint = Endpoint(OPTS, cors_origins=["http://front.test"])
    answer = endpoint.begin("GET", {"origin": "http://front.test"})
    assert isinstance(answer, Answer)
    assert answer.status == 405
    assert ("Allow", "POST, OPTIONS") in answer.headers
    assert ("Access-Control-Allow-Origin", "http://front.test") in answer.headers
    assert answer.status_line == "405 Method Not Allowed"


def test_preflight_echoes_requested_headers() -> None:
    endpoint = Endpoint(OPTS, cors_origins=["*"])
    answer = endpoint.begin(
        "OPTIONS",
        {
            "origin": "http://any.test",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, x-trace",
        },
    )
    assert isinstance(answer, Answer)
    assert answer.status == 204
    assert answer.body == b""
    assert dict(answer.headers) == {
        "Access-Control-Allow-Origin": "*",
        "Vary": "Origin",
        "Access-Control-Allow-Methods": "POST",
        "Access-Control-Max-Age": "600",
        "Access-Control-Allow-Headers": "content-type, x-trace",
    }


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param(b'{"a": {"b": 1, "b": 2}}', "duplicate key: 'b'", id="nested-duplicate"),
        pytest.param(b"[" * 33 + b"]" * 33, "deeper than 32", id="33-levels"),
        pytest.param(b'{"a": "' + b"[" * 40 + b'"}', None, id="brackets-inside-strings-are-text"),
        pytest.param(b'{"a": "\\"' + b"[" * 40 + b'" }', None, id="escaped-quote-then-brackets"),
        pytest.param(b"[" * 32 + b"]" * 32, "must be a JSON object", id="32-levels-allowed"),
        pytest.param(b'{"n": -Infinity}', "-Infinity is not allowed", id="minus-infinity"),
        pytest.param('{"a": "\ufeff"}'.encode(), None, id="bom-inside-a-string-is-text"),
    ],
)
def test_parse_body_edges(body: bytes, fragment: str | None) -> None:
    if fragment is None:
        assert isinstance(parse_body(body), dict)
    else:
        with pytest.raises(RequestError, match=fragment):
            parse_body(body)


def test_no_options_means_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("OPENAI_REALTIME_VOICE", "cedar")
    monkeypatch.setenv("NAVAI_CORS_ORIGIN", "http://front.test")
    kwargs: dict[str, Any] = {"path": "/t", "max_body_size": 10}
    from_env = configure_endpoint(None, cors_origins=None, **kwargs)
    assert from_env.opts.default_voice == "cedar"
    assert isinstance(from_env.begin("POST", {"origin": "http://front.test"}), BodyWanted)
    assert isinstance(from_env.begin("POST", {"origin": "http://other.test"}), Answer)
    # Options given in code cover the options' own fields only: the other
    # navai variables (NAVAI_CORS_ORIGIN here) are read all the same.
    in_code = configure_endpoint(OPTS, cors_origins=None, **kwargs)
    assert in_code.opts is OPTS
    assert isinstance(in_code.begin("POST", {"origin": "http://front.test"}), BodyWanted)
    assert isinstance(in_code.begin("POST", {"origin": "http://other.test"}), Answer)
    # CORS given in code wins over the environment.
    explicit = configure_endpoint(None, cors_origins=["http://other.test"], **kwargs)
    assert isinstance(explicit.begin("POST", {"origin": "http://front.test"}), Answer)


def test_a_listed_origin_sets_aside_only_its_case_and_a_trailing_slash() -> None:
    endpoint = Endpoint(OPTS, cors_origins=["https://App.Example.BOX/"])
    allowed = endpoint.begin("POST", {"origin": "https://app.example.box"})
    assert isinstance(allowed, BodyWanted)
    for origin in ("https://app.example.bo", "https://app.example.box.test"):
        refused = endpoint.begin("POST", {"origin": origin})
        assert isinstance(refused, Answer)
        assert refused.status == 403


def test_cors_origins_as_one_string() -> None:
    endpoint = Endpoint(OPTS, cors_origins="http://a.test, http://b.test")
    for origin in ("http://a.test", "http://b.test"):
        assert isinstance(endpoint.begin("POST", {"origin": origin}), BodyWanted)
    refused = endpoint.begin("POST", {"origin": "http://c.test"})
    assert isinstance(refused, Answer)
    assert ("Vary", "Origin") in refused.headers


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"origin": "null", "host": ""}, id="null-origin-empty-host"),
        pytest.param({"origin": "null"}, id="null-origin-no-host"),
        pytest.param({"origin": "http://evil.test", "host": "api.test"}, id="other-host"),
    ],
)
def test_cors_refuses_what_is_not_same_origin(headers: dict[str, str]) -> None:
    answer = Endpoint(OPTS, cors_origins=["http://front.test"]).begin("POST", headers)
    assert isinstance(answer, Answer)
    assert answer.status == 403


def test_a_body_longer_than_declared_is_named_so() -> None:
    endpoint = Endpoint(OPTS)
    wanted = endpoint.begin("POST", {**JSON, "content-length": "2"})
    assert isinstance(wanted, BodyWanted)
    answer = finish_now(endpoint, wanted, b"{}  ")
    assert answer.status == 400
    assert json.loads(answer.body) == {"error": "Request body is longer than its Content-Length."}


@pytest.mark.parametrize("media_type", ["application/+json", "application/json+", "text/+json"])
def test_a_json_suffix_needs_a_subtype(media_type: str) -> None:
    answer = Endpoint(OPTS).begin("POST", {"content-type": media_type, "content-length": "2"})
    assert isinstance(answer, Answer)
    assert answer.status == 415


@pytest.mark.parametrize("keyword", ["client_secret_path", "path"])
def test_the_client_secret_path_has_its_name_and_its_alias(keyword: str) -> None:
    endpoint = Endpoint(OPTS, **{keyword: "/token"})
    assert endpoint.path == "/token"
    assert endpoint.route_for("/token").name == "client_secret"
    assert not endpoint.owns("/navai/realtime/client-secret")


def test_the_client_secret_path_given_twice_is_refused() -> None:
    with pytest.raises(OptionsError) as caught:
        Endpoint(OPTS, path="/a", client_secret_path="/b")
    assert caught.value.message == (
        "path and client_secret_path both set the client-secret route's path: give one."
    )


def test_the_client_secret_route_switched_off_leaves_no_path() -> None:
    endpoint = Endpoint(OPTS, client_secret_path=None)
    assert endpoint.path is None
    assert not endpoint.owns("/navai/realtime/client-secret")


def test_unknown_path_keywords_are_named_in_order() -> None:
    with pytest.raises(TypeError) as caught:
        Endpoint(OPTS, webhooks_path="/w", client_path="/c")  # type: ignore[arg-type]
    assert str(caught.value) == "Endpoint got unexpected keywords: client_path, webhooks_path"


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({}, "budget needs a clock (UNIX seconds) to count its periods."),
        (
            {"budget_fail_open": "yes"},
            "budget_fail_open must be True or False. Received: 'yes'",
        ),
        (
            {"budget_secret_seconds": 3600.5},
            "budget_secret_seconds must be a number of seconds above 0 and at most an hour. "
            "Received: 3600.5",
        ),
    ],
)
def test_a_budgets_settings_are_named_when_wrong(keywords: dict[str, Any], message: str) -> None:
    clock = {} if not keywords else {"budget_clock": lambda: 0.0}
    with pytest.raises(OptionsError) as caught:
        Endpoint(OPTS, relay=True, budget="3 minutes/day", **clock, **keywords)
    assert caught.value.message == message


def test_a_budgets_secret_may_be_charged_up_to_an_hour() -> None:
    endpoint = Endpoint(
        OPTS,
        relay=True,
        budget="3 minutes/day",
        budget_clock=lambda: 0.0,
        budget_secret_seconds=3600,
    )
    assert endpoint.settings.budgets is not None
    assert endpoint.settings.budgets.secret_seconds == 3600


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"max_body_size": -1}, "max_body_size must be a non-negative integer. Received: -1"),
        ({"max_offer_size": 0}, "max_offer_size must be a positive integer. Received: 0"),
    ],
)
def test_a_size_is_named_with_its_least_value(keywords: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionsError) as caught:
        Endpoint(OPTS, **keywords)
    assert caught.value.message == message


def test_a_budget_without_the_relay_says_how_to_switch_it_on() -> None:
    with pytest.raises(OptionsError) as caught:
        Endpoint(OPTS, budget="3 minutes/day", budget_clock=lambda: 0.0)
    assert caught.value.message == (
        "budget meters the calls navai_mw relays: switch the relay on "
        "(relay=True, NAVAI_RELAY=true)."
    )


def point() -> dict[str, int]:
    """Where the point is."""
    return {"x": 1}


@pytest.mark.parametrize(
    ("keywords", "loaded"),
    [
        pytest.param({}, True, id="both-routes"),
        pytest.param({"functions_list_path": None}, True, id="execute-route"),
        pytest.param({"functions_execute_path": None}, True, id="list-route"),
        pytest.param(
            {"functions_list_path": None, "functions_execute_path": None}, False, id="no-route"
        ),
        pytest.param({"include_functions_routes": False}, False, id="routes-off"),
        pytest.param(
            {"include_functions_routes": False, "relay": True, "server_functions": True},
            True,
            id="server-functions",
        ),
    ],
)
def test_functions_are_loaded_only_for_a_route_or_a_sideband_that_calls_them(
    keywords: dict[str, Any], loaded: bool
) -> None:
    endpoint = configure_endpoint(OPTS, env={}, functions=[point], **keywords)
    assert endpoint.functions.names == (["point"] if loaded else [])


def test_budgets_without_authorization_are_said_to_count_per_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="navai_mw")
    budgeted: dict[str, Any] = {"env": {}, "functions": [], "relay": True}

    def warned(**keywords: Any) -> list[str]:
        caplog.clear()
        configure_endpoint(OPTS, **budgeted, **keywords)
        return [log_message(record) for record in caplog.records if record.name == "navai_mw"]

    assert warned(budget="3 minutes/day") == [
        "navai_mw: budgets are on without authorization: they count per client address, "
        "so callers behind one proxy or NAT share one budget"
    ]
    tokens = BearerTokens({"ops": "0123456789abcdef"})
    assert warned(budget="3 minutes/day", authorize=tokens) == []
    assert warned() == []


@pytest.mark.parametrize("keyword", ["server_functions", "pin_session", "sideband_required"])
def test_a_sideband_switch_that_is_not_a_flag_is_named(keyword: str) -> None:
    with pytest.raises(OptionsError) as caught:
        Endpoint(OPTS, relay=True, **{keyword: "yes"})
    assert caught.value.message == f"{keyword} must be True or False. Received: 'yes'"


def test_a_sideband_without_the_relay_says_how_to_switch_it_on() -> None:
    with pytest.raises(OptionsError) as caught:
        Endpoint(OPTS, sideband=True)
    assert caught.value.message == (
        "sideband (and server_functions, pin_session, sideband_required) attaches to the "
        "calls navai_mw relays: switch the relay on (relay=True, NAVAI_RELAY=true)."
    )


def test_server_functions_without_a_function_are_said_to_serve_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="navai_mw")

    def warned(**keywords: Any) -> list[str]:
        caplog.clear()
        Endpoint(OPTS, relay=True, **keywords)
        return [log_message(record) for record in caplog.records if record.name == "navai_mw"]

    assert warned(server_functions=True) == [
        "navai_mw: server_functions is on, but no backend function is loaded"
    ]
    assert warned(sideband=True) == []


@pytest.mark.parametrize(
    ("keywords", "named"),
    [
        ({"sip_accept": "realtime", "on_openai_event": print}, "sip_accept, on_openai_event"),
        ({"accept_call": print}, "accept_call"),
    ],
)
def test_webhook_hooks_without_the_signing_secret_are_named_together(
    keywords: dict[str, Any], named: str
) -> None:
    with pytest.raises(OptionsError) as caught:
        Endpoint(OPTS, **keywords)
    assert caught.value.message == (
        f"{named} needs OpenAI's webhooks: set openai_webhook_secret "
        "(OPENAI_WEBHOOK_SECRET), the signing secret of the project's webhook."
    )


def test_the_webhook_route_without_a_clock_is_refused() -> None:
    with pytest.raises(OptionsError) as caught:
        Endpoint(OPTS, openai_webhook_secret="whsec_c2lnbmluZyBrZXk=")
    assert caught.value.message == "the webhook route needs a clock (UNIX seconds)."


WEBHOOKS: dict[str, Any] = {
    "openai_webhook_secret": "whsec_c2lnbmluZyBrZXk=",
    "webhook_clock": lambda: 0.0,
}
A_YEAR_AND_MORE = 4e7


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"customize_session": "x"}, "customize_session must be a function (or None)."),
        ({"openai_webhook_secret": 5}, "openai_webhook_secret must be a string."),
        (
            {**WEBHOOKS, "webhook_dedup_seconds": A_YEAR_AND_MORE},
            "webhook_dedup_seconds must be a number of seconds above 0 and at most a year. "
            "Received: 40000000.0",
        ),
        (
            {**WEBHOOKS, "block_seconds": A_YEAR_AND_MORE},
            "block_seconds must be a number of seconds above 0 and at most a year. "
            "Received: 40000000.0",
        ),
        ({**WEBHOOKS, "accept_call": "x"}, "accept_call must be a function (or None)."),
        ({**WEBHOOKS, "on_openai_event": "x"}, "on_openai_event must be a function (or None)."),
        (
            {"max_call_seconds": 86401},
            "max_call_seconds must be a number of seconds above 0 and at most a day. "
            "Received: 86401",
        ),
        (
            {"function_timeout_seconds": 0},
            "function_timeout_seconds must be a number of seconds above 0 and at most 3600. "
            "Received: 0",
        ),
    ],
)
def test_a_wrong_keyword_is_named_in_these_words(keywords: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionsError) as caught:
        Endpoint(OPTS, **keywords)
    assert caught.value.message == message


def test_answering_phone_calls_needs_the_servers_key() -> None:
    without_a_key = NavaiVoiceBackendOptions(allow_api_key_from_request=True)
    with pytest.raises(OptionsError) as caught:
        Endpoint(without_a_key, sip_accept="realtime", **WEBHOOKS)
    assert caught.value.message == (
        "Answering phone calls (accept_call, sip_accept) needs the server's key: "
        "configure openai_api_key."
    )


@pytest.mark.parametrize("keyword", ["include_functions_routes", "transcription"])
def test_a_route_switch_that_is_not_a_flag_is_named(keyword: str) -> None:
    with pytest.raises(OptionsError) as caught:
        Endpoint(OPTS, **{keyword: "yes"})
    assert caught.value.message == f"{keyword} must be True or False. Received: 'yes'"


def test_an_offer_may_be_one_byte_and_a_body_none() -> None:
    endpoint = Endpoint(OPTS, max_offer_size=1, max_body_size=0)
    assert (endpoint.max_offer_size, endpoint.max_body_size) == (1, 0)


def test_an_endpoints_defaults_are_its_documented_ones() -> None:
    plain = Endpoint(OPTS)
    assert plain.functions.names == []
    assert not plain.guard.blocklist  # only OpenAI's webhooks say whom it blocked
    assert Endpoint(OPTS, **WEBHOOKS).guard.blocklist
    budgeted = Endpoint(OPTS, relay=True, budget="3 minutes/day", budget_clock=lambda: 0.0)
    assert budgeted.settings.budgets is not None
    assert not budgeted.settings.budgets.fail_open


def test_a_route_of_no_known_group_cannot_be_made() -> None:
    message = "route group must be one of mint, functions, speech, usage, end, webhook: 'pings'"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Route("ping", "/ping", "GET", "pings", print)  # type: ignore[arg-type]


def test_a_path_no_route_serves_is_named_by_the_key_error() -> None:
    with pytest.raises(KeyError) as caught:
        Endpoint(OPTS).route_for("/nowhere")
    assert caught.value.args == ("/nowhere",)
