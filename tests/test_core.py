"""The sans-IO core, with no mocks: values in, values out.

The tables walk the reference's rules (defaults, overrides, instruction
lines, key policy, upstream errors) and the places where navai_mw
deliberately differs from it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from navai_mw import (
    CreateClientSecretRequest,
    HttpResponse,
    NavaiVoiceBackendOptions,
    OpenAIRealtimeClientSecretResponse,
    OptionsError,
    RequestError,
    UpstreamError,
)
from navai_mw.core.effects import Attempt, Outcome
from navai_mw.core.exchange import MAX_QUOTED_UPSTREAM_CHARS, redact, retry_delay
from navai_mw.core.storage import is_memory, is_redis, redis_client_url, shown_url
from navai_mw.core.urls import websocket_url
from navai_mw.core.values import seconds
from navai_mw.upstreams.openai_secrets import (
    build_upstream_request,
    exchange,
    parse_upstream_response,
)

KEY = "sk-core-test-key"
BASE = "You are a helpful assistant."


def session_of(opts: NavaiVoiceBackendOptions, req: Any = None) -> dict[str, Any]:
    body = json.loads(build_upstream_request(opts, req).body)
    assert body["expires_after"] == {
        "anchor": "created_at",
        "seconds": opts.client_secret_ttl_seconds,
    }
    assert set(body) == {"expires_after", "session"}
    session: dict[str, Any] = body["session"]
    assert set(session) == {"type", "model", "instructions", "audio"}
    assert session["type"] == "realtime"
    return session


def with_key(**fields: Any) -> NavaiVoiceBackendOptions:
    return NavaiVoiceBackendOptions(openai_api_key=KEY, **fields)


# -- value resolution: request, else option default, else built-in ---------------

RESOLUTION = [
    pytest.param({}, None, "gpt-realtime", "marin", BASE, id="built-in-defaults"),
    pytest.param(
        {"default_model": "gpt-realtime-mini", "default_voice": "cedar"},
        None,
        "gpt-realtime-mini",
        "cedar",
        BASE,
        id="option-defaults",
    ),
    pytest.param(
        {"default_model": "m-opt", "default_voice": "v-opt", "default_instructions": "Opt."},
        {"model": "m-req", "voice": "v-req", "instructions": "Req."},
        "m-req",
        "v-req",
        "Req.",
        id="request-overrides-options",
    ),
    pytest.param(
        {"default_instructions": "  Be brief.  "},
        None,
        "gpt-realtime",
        "marin",
        "Be brief.",
        id="base-instructions-trimmed",
    ),
    pytest.param(
        {"default_model": "m-opt"},
        {"model": "   ", "voice": "", "instructions": "\t"},
        "m-opt",
        "marin",
        BASE,
        id="blank-request-strings-are-absent",
    ),
    pytest.param(
        {"default_model": "", "default_voice": "  ", "default_instructions": ""},
        None,
        "gpt-realtime",
        "marin",
        BASE,
        id="blank-options-are-absent",
    ),
    pytest.param(
        {},
        {"model": " gpt-realtime ", "voice": "ballad"},
        " gpt-realtime ",
        "ballad",
        BASE,
        id="model-and-voice-sent-as-given-like-the-reference",
    ),
    pytest.param(
        {},
        CreateClientSecretRequest(instructions="Réponds en 日本語 😀"),
        "gpt-realtime",
        "marin",
        "Réponds en 日本語 😀",
        id="unicode-survives",
    ),
]


@pytest.mark.parametrize(("fields", "req", "model", "voice", "instructions"), RESOLUTION)
def test_values_resolve_request_then_option_then_default(
    fields: dict[str, Any], req: Any, model: str, voice: str, instructions: str
) -> None:
    session = session_of(with_key(**fields), req)
    assert session["model"] == model
    assert session["audio"] == {"output": {"voice": voice}}
    assert session["instructions"] == instructions


# -- instruction lines -------------------------------------------------------------

LANG = "Always reply in Spanish."
ACCENT = "Use a neutral Latin American accent while speaking."
TONE = "Use a warm and enthusiastic tone while speaking."

INSTRUCTION_LINES = [
    pytest.param({}, {"language": "Spanish"}, [BASE, LANG], id="language-alone"),
    pytest.param({}, {"voiceAccent": "neutral Latin American"}, [BASE, ACCENT], id="accent-alone"),
    pytest.param({}, {"voiceTone": "warm and enthusiastic"}, [BASE, TONE], id="tone-alone"),
    pytest.param(
        {},
        {
            "voiceTone": "warm and enthusiastic",
            "language": "Spanish",
            "voiceAccent": "neutral Latin American",
        },
        [BASE, LANG, ACCENT, TONE],
        id="all-three-in-fixed-order",
    ),
    pytest.param(
        {
            "default_language": "Spanish",
            "default_voice_accent": "neutral Latin American",
            "default_voice_tone": "warm and enthusiastic",
        },
        None,
        [BASE, LANG, ACCENT, TONE],
        id="all-three-from-options",
    ),
    pytest.param(
        {"default_language": "French", "default_voice_tone": "calm"},
        {"language": "Spanish"},
        [BASE, LANG, "Use a calm tone while speaking."],
        id="request-language-overrides-option-tone-kept",
    ),
    pytest.param({}, {"language": "  Spanish \n"}, [BASE, LANG], id="directive-values-trimmed"),
    pytest.param(
        {"default_language": "Spanish"},
        {"language": "  "},
        [BASE, LANG],
        id="blank-request-language-falls-back",
    ),
    pytest.param({}, {"language": "", "voiceAccent": " ", "voiceTone": ""}, [BASE], id="all-blank"),
]


@pytest.mark.parametrize(("fields", "req", "lines"), INSTRUCTION_LINES)
def test_instruction_lines(fields: dict[str, Any], req: Any, lines: list[str]) -> None:
    assert session_of(with_key(**fields), req)["instructions"] == "\n".join(lines)


# -- the request itself --------------------------------------------------------------


def test_upstream_request_shape() -> None:
    opts = NavaiVoiceBackendOptions(
        openai_api_key=f"  {KEY}  ",
        client_secret_ttl_seconds=120,
        openai_base_url="http://127.0.0.1:9/v1/",
    )
    request = build_upstream_request(opts)
    assert request.method == "POST"
    assert request.url == "http://127.0.0.1:9/v1/realtime/client_secrets"
    assert request.headers == (
        ("Authorization", f"Bearer {KEY}"),
        ("Content-Type", "application/json"),
    )
    assert json.loads(request.body)["expires_after"]["seconds"] == 120
    assert KEY not in repr(request)
    identified = build_upstream_request(opts, safety_identifier="a" * 64)
    assert identified.headers[-1] == ("OpenAI-Safety-Identifier", "a" * 64)


def test_body_is_ascii_json_even_with_lone_surrogates() -> None:
    request = build_upstream_request(with_key(), {"instructions": "bad \ud800 half"})
    assert request.body.isascii()
    assert json.loads(request.body)["session"]["instructions"] == "bad \ud800 half"


# -- key policy ----------------------------------------------------------------------

KEY_POLICY = [
    # backend key present: it always wins, whatever the request and the switch say
    pytest.param(KEY, None, False, KEY, id="backend-key-no-request-key-allow-off"),
    pytest.param(KEY, None, True, KEY, id="backend-key-no-request-key-allow-on"),
    pytest.param(KEY, "sk-client", False, KEY, id="backend-key-wins-over-request-allow-off"),
    pytest.param(KEY, "sk-client", True, KEY, id="backend-key-wins-over-request-allow-on"),
    # no backend key: the request's key, when allowed
    pytest.param(None, "sk-client", True, "sk-client", id="request-key-allowed"),
    pytest.param(None, "  sk-client  ", True, "sk-client", id="request-key-trimmed"),
]


@pytest.mark.parametrize(("backend", "client", "allow", "used"), KEY_POLICY)
def test_key_policy(backend: str | None, client: str | None, allow: bool, used: str) -> None:
    opts = NavaiVoiceBackendOptions(openai_api_key=backend, allow_api_key_from_request=allow)
    request = build_upstream_request(opts, {"apiKey": client} if client else None)
    assert dict(request.headers)["Authorization"] == f"Bearer {used}"


_UNPRINTABLE = "Invalid request field apiKey: expected printable ASCII."


@pytest.mark.parametrize(
    ("client", "message"),
    [
        pytest.param(
            None,
            "Missing API key. Configure openai_api_key or send apiKey in request.",
            id="no-key-at-all",
        ),
        pytest.param(
            "   ",
            "Missing API key. Configure openai_api_key or send apiKey in request.",
            id="blank-request-key",
        ),
        pytest.param("sk bad", _UNPRINTABLE, id="request-key-with-space"),
        pytest.param("sk-é", _UNPRINTABLE, id="request-key-not-ascii"),
        pytest.param("sk-\r\nX-Injected: 1", _UNPRINTABLE, id="request-key-header-injection"),
    ],
)
def test_request_key_refused(client: str | None, message: str) -> None:
    opts = NavaiVoiceBackendOptions(allow_api_key_from_request=True)
    with pytest.raises(RequestError) as caught:
        build_upstream_request(opts, {"apiKey": client})
    assert (caught.value.status, caught.value.message) == (400, message)


# -- structuring the wire request ----------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        pytest.param({"language": 5}, "language", id="number"),
        pytest.param({"voiceAccent": ["x"]}, "voiceAccent", id="list-wire-name"),
        pytest.param({"voiceTone": {"a": 1}}, "voiceTone", id="object-wire-name"),
        pytest.param({"apiKey": True}, "apiKey", id="bool"),
        pytest.param({"model": 1, "voice": 2}, "model, voice", id="two-fields-named"),
    ],
)
def test_wrong_field_type_is_400_naming_the_wire_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(RequestError) as caught:
        build_upstream_request(with_key(), data)
    assert caught.value.status == 400
    assert caught.value.message == f"Invalid request field {field}: expected a string."


def test_nulls_and_unknown_keys_are_ignored() -> None:
    session = session_of(
        with_key(default_voice="cedar"), {"voice": None, "extra": {"deep": [1]}, "speech": 1}
    )
    assert session["audio"]["output"]["voice"] == "cedar"


# -- reading OpenAI's answer -----------------------------------------------------------


def ok(body: object, status: int = 200) -> HttpResponse:
    return HttpResponse(status=status, body=json.dumps(body).encode())


def test_parse_success() -> None:
    session = {"type": "realtime", "model": "gpt-realtime"}
    parsed = parse_upstream_response(
        ok({"value": "ek_abc", "expires_at": 1730000000, "session": session, "more": 1})
    )
    assert parsed == OpenAIRealtimeClientSecretResponse(
        value="ek_abc", expires_at=1730000000, session=session
    )
    assert "ek_abc" not in repr(parsed)


def test_parse_success_without_session() -> None:
    parsed = parse_upstream_response(ok({"value": "ek_abc", "expires_at": 1, "session": "x"}))
    assert parsed.session is None


_NOT_OBJECT = "OpenAI client_secrets returned a body that is not a JSON object."
_NO_VALUE = "OpenAI client_secrets returned no client secret value."
_NO_EXPIRY = "OpenAI client_secrets returned no integer expires_at."


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"<html>", _NOT_OBJECT, id="not-json"),
        pytest.param(b"[1, 2]", _NOT_OBJECT, id="json-list"),
        pytest.param(b'{"expires_at": 1}', _NO_VALUE, id="no-value"),
        pytest.param(b'{"value": 7, "expires_at": 1}', _NO_VALUE, id="value-number"),
        pytest.param(b'{"value": "", "expires_at": 1}', _NO_VALUE, id="value-empty"),
        pytest.param(b'{"value": "ek_x"}', _NO_EXPIRY, id="no-expiry"),
        pytest.param(b'{"value": "ek_x", "expires_at": 1.5}', _NO_EXPIRY, id="float-expiry"),
        pytest.param(b'{"value": "ek_x", "expires_at": true}', _NO_EXPIRY, id="bool-expiry"),
        pytest.param(b"[" * 100_000, _NOT_OBJECT, id="nesting-past-recursion-limit"),
    ],
)
def test_unreadable_success_is_502(body: bytes, message: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        parse_upstream_response(HttpResponse(status=200, body=body))
    assert (caught.value.status, caught.value.message) == (502, message)


OPENAI_401 = {
    "error": {
        "message": "Invalid API key",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}

UPSTREAM_ERRORS = [
    pytest.param(
        401,
        json.dumps(OPENAI_401).encode(),
        "OpenAI client_secrets failed (401): Invalid API key",
        id="401-openai-json",
    ),
    pytest.param(
        401,
        b"Invalid API key\n",
        "OpenAI client_secrets failed (401): Invalid API key",
        id="401-text",
    ),
    pytest.param(
        400,
        b'{"error": "flat"}',
        'OpenAI client_secrets failed (400): {"error": "flat"}',
        id="json-without-error-object",
    ),
    pytest.param(
        400,
        b'{"error": {"message": 5}}',
        'OpenAI client_secrets failed (400): {"error": {"message": 5}}',
        id="json-error-message-not-string",
    ),
    pytest.param(
        503,
        b"\xff\xfe down",
        "OpenAI client_secrets failed (503): \ufffd\ufffd down",
        id="undecodable-text",
    ),
    pytest.param(500, b"[]", "OpenAI client_secrets failed (500): []", id="json-list"),
    pytest.param(
        502,
        b"[" * 100_000,
        "OpenAI client_secrets failed (502): " + "[" * 500 + "...",
        id="nesting-past-recursion-limit",
    ),
]


@pytest.mark.parametrize(("status", "body", "message"), UPSTREAM_ERRORS)
def test_upstream_error_is_502_with_its_message(status: int, body: bytes, message: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        parse_upstream_response(HttpResponse(status=status, body=body))
    assert caught.value.status == 502
    assert caught.value.message == message
    assert caught.value.headers == ()


def test_upstream_text_is_redacted_and_bounded() -> None:
    body = f"echo of {KEY} " + "x" * 2000
    with pytest.raises(UpstreamError) as caught:
        parse_upstream_response(HttpResponse(status=401, body=body.encode()), secret=KEY)
    message = caught.value.message
    assert KEY not in message
    assert "[redacted]" in message
    assert message.endswith("...")
    assert len(message) < MAX_QUOTED_UPSTREAM_CHARS + 60


@pytest.mark.parametrize(
    ("retry_after", "passed"),
    [
        pytest.param("7", ("Retry-After", "7"), id="seconds"),
        pytest.param(" 20 ", ("Retry-After", "20"), id="trimmed"),
        pytest.param(
            "Wed, 21 Oct 2026 07:28:00 GMT",
            ("Retry-After", "Wed, 21 Oct 2026 07:28:00 GMT"),
            id="http-date",
        ),
        pytest.param(None, None, id="absent"),
        pytest.param("", None, id="empty"),
        pytest.param("x" * 200, None, id="absurdly-long"),
        pytest.param("7\u00e9", None, id="not-ascii"),
    ],
)
def test_rate_limit_is_429_passing_retry_after(
    retry_after: str | None, passed: tuple[str, str] | None
) -> None:
    headers = () if retry_after is None else (("retry-after", retry_after),)
    response = HttpResponse(status=429, headers=headers, body=b'{"error": {"message": "slow"}}')
    with pytest.raises(UpstreamError) as caught:
        parse_upstream_response(response)
    assert caught.value.status == 429
    assert caught.value.message == "OpenAI client_secrets failed (429): slow"
    assert caught.value.headers == (() if passed is None else (passed,))


# -- the exchange: retries and the time budget -------------------------------------------

GOOD = ok({"value": "ek_ok", "expires_at": 5})


def run(budget: float, outcomes: list[Outcome]) -> tuple[list[Attempt], Any]:
    """Drive an exchange by hand; returns the attempts and the result or error."""
    steps = exchange(build_upstream_request(with_key()), budget=budget)
    attempts = [next(steps)]
    try:
        for outcome in outcomes:
            attempts.append(steps.send(outcome))
    except StopIteration as done:
        return attempts, done.value
    except UpstreamError as error:
        return attempts, error
    raise AssertionError("the exchange wanted more attempts than the test gave")


def test_first_attempt_uses_the_whole_budget() -> None:
    attempts, result = run(30, [Outcome(GOOD, elapsed=0.1)])
    assert [(a.delay, a.timeout) for a in attempts] == [(0.0, 30)]
    assert result.value == "ek_ok"


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(Outcome(None), id="connection-error"),
        pytest.param(Outcome(HttpResponse(status=408)), id="408"),
        pytest.param(Outcome(HttpResponse(status=409)), id="409"),
        pytest.param(Outcome(HttpResponse(status=500)), id="500"),
        pytest.param(Outcome(HttpResponse(status=503)), id="503"),
    ],
)
def test_retryable_failures_are_retried_with_backoff(failure: Outcome) -> None:
    second = Outcome(failure.response, elapsed=1.0, jitter=0.0)
    attempts, result = run(30, [failure, second, Outcome(GOOD, elapsed=2.0)])
    assert [a.delay for a in attempts] == [0.0, 0.5, 1.0]
    assert attempts[1].timeout == pytest.approx(29.5)
    assert attempts[2].timeout == pytest.approx(28.0)
    assert result.value == "ek_ok"


def test_at_most_two_retries_then_the_last_failure_counts() -> None:
    failure = Outcome(HttpResponse(status=500, body=b"boom"))
    attempts, result = run(30, [failure, failure, failure])
    assert len(attempts) == 3
    assert isinstance(result, UpstreamError)
    assert result.status == 502
    assert result.message == "OpenAI client_secrets failed (500): boom"


def test_connection_errors_exhausted_are_502() -> None:
    attempts, result = run(30, [Outcome(None)] * 3)
    assert len(attempts) == 3
    assert (result.status, result.message) == (502, "OpenAI client_secrets could not be reached.")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 429])
def test_client_errors_and_rate_limits_are_not_retried(status: int) -> None:
    attempts, result = run(30, [Outcome(HttpResponse(status=status, body=b"no"))])
    assert len(attempts) == 1
    assert result.status == (429 if status == 429 else 502)


def test_jitter_shortens_the_delay_by_up_to_a_quarter() -> None:
    assert retry_delay(0, jitter=0.0) == 0.5
    assert retry_delay(0, jitter=0.999) == pytest.approx(0.5 * 0.75, rel=1e-3)
    assert retry_delay(1, jitter=0.0) == 1.0
    assert retry_delay(4, jitter=0.0) == 8.0
    assert retry_delay(10, jitter=0.0) == 8.0


def test_a_retry_that_would_overrun_the_budget_is_not_made() -> None:
    # 0.9 s spent, the next try would start at 1.4 s of a 1.2 s budget.
    attempts, result = run(1.2, [Outcome(HttpResponse(status=500, body=b"x"), elapsed=0.9)])
    assert len(attempts) == 1
    assert result.status == 502


def test_time_running_out_is_504() -> None:
    attempts, result = run(1.0, [Outcome(None, timed_out=True, elapsed=1.0)])
    assert len(attempts) == 1
    assert (result.status, result.message) == (504, "OpenAI client_secrets timed out.")


def test_an_answer_after_the_budget_is_still_a_504() -> None:
    _attempts, result = run(1.0, [Outcome(GOOD, elapsed=1.5)])
    assert result.status == 504


def test_redaction_uses_the_key_that_was_sent() -> None:
    echo = HttpResponse(status=401, body=f"bad key {KEY}".encode())
    _attempts, result = run(30, [Outcome(echo)])
    assert KEY not in result.message
    assert result.message.endswith("bad key [redacted]")


def test_a_redacted_layer_reads_every_json_escape_as_json_does() -> None:
    # The key escaped as JSON, beside a character whose escape starts with no 0.
    escaped = "".join(f"\\u{ord(char):04x}" for char in KEY)
    assert redact(f"\\u4e2d\\u00e9 {escaped}", KEY) == "\u4e2d\u00e9 [redacted]"


def test_an_error_shows_its_kind_message_and_status() -> None:
    assert repr(RequestError("No.", status=404)) == "RequestError('No.', status=404)"
    assert repr(UpstreamError("Down.")) == "UpstreamError('Down.', status=502)"


def test_a_storage_is_named_by_its_first_scheme_only() -> None:
    assert is_redis("async+Valkeys://:p@cache.example:6380/0?to=memory://")
    assert not is_memory("redis://cache.example/0?fallback=memory://")
    assert is_memory("MEMORY://")


@pytest.mark.parametrize(
    ("uri", "client"),
    [
        ("redis://cache.example:6379/0", "redis://cache.example:6379/0"),
        ("async+redis://cache.example:6379/0", "redis://cache.example:6379/0"),
        ("async+valkeys://:p@cache.example:6380/1", "rediss://:p@cache.example:6380/1"),
        ("Valkey://cache.example/0", "redis://cache.example/0"),
        ("VALKEY://Cache.example/0?to=memory://X", "redis://Cache.example/0?to=memory://X"),
        ("memory://", None),
        (None, None),
    ],
)
def test_a_shared_storage_is_spelled_as_a_redis_client_takes_it(
    uri: str | None, client: str | None
) -> None:
    # Valkey is spelled as Redis, the limits library's async+ prefix dropped,
    # the scheme lower-cased, and everything after the first :// kept whole.
    assert redis_client_url(uri) == client


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("rediss://:s3cret@cache.example:6380/0?password=s3cret", "rediss://cache.example:6380/0"),
        ("redis://u:s3cret@cache.example/0?next=memory://x", "redis://cache.example/0"),
        ("memory://", "memory://"),
        ("redis://BOX.example:6379/0#X", "redis://BOX.example:6379/0"),
        ("s3cret", "(not a URL)"),
        ("", "none"),
        (None, "none"),
    ],
)
def test_a_storage_is_shown_without_its_credentials(uri: str | None, shown: str) -> None:
    assert shown_url(uri) == shown


def test_a_websocket_url_turns_only_the_first_scheme() -> None:
    proxied = "https://proxy.example/to/http://api.example/v1"
    assert websocket_url(proxied) == "wss://proxy.example/to/http://api.example/v1"
    assert websocket_url("http://127.0.0.1:8000/v1") == "ws://127.0.0.1:8000/v1"


@pytest.mark.parametrize(
    ("value", "keywords", "message"),
    [
        (0, {}, "wait must be a number of seconds above 0. Received: 0"),
        (-1, {"zero_ok": True}, "wait must be a number of seconds 0 or more. Received: -1"),
        (9, {"most": 8.0}, "wait must be a number of seconds above 0 and at most 8. Received: 9"),
        (
            9,
            {"most": 8.0, "most_text": "a while"},
            "wait must be a number of seconds above 0 and at most a while. Received: 9",
        ),
    ],
)
def test_seconds_say_what_they_may_be(value: float, keywords: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionsError) as caught:
        seconds(value, "wait", **keywords)
    assert caught.value.message == message
    assert seconds(0, "wait", zero_ok=True) == 0.0
