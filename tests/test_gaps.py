"""Edges a mutation-testing review found unpinned: each test here fails on some
plausible mutant of navai_mw's sans-IO code.

Most cases drive :class:`~navai_mw.endpoint.endpoint.Endpoint` by hand (``begin``,
then ``finish`` with scripted :class:`~navai_mw.core.effects.Outcome` values sent
into its generator), so they need no server and no clock; the CORS headers
are also checked through both middlewares, with the in-process fake upstream.
Header names are compared case-insensitively throughout.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import anyio
import attrs
import httpx
import pytest

from navai_mw import (
    HttpResponse,
    NavaiASGIMiddleware,
    NavaiVoiceBackendOptions,
    NavaiWSGIMiddleware,
    OptionsError,
    get_navai_voice_backend_options_from_env,
)
from navai_mw.core.effects import Attempt, Outcome
from navai_mw.core.errors import RequestError, UpstreamError
from navai_mw.core.exchange import MAX_QUOTED_UPSTREAM_CHARS
from navai_mw.endpoint import body as body_rules
from navai_mw.endpoint.answers import Answer
from navai_mw.endpoint.body import MAX_JSON_DEPTH, parse_body
from navai_mw.endpoint.endpoint import Endpoint
from navai_mw.testing import FakeOpenAIRealtime
from navai_mw.upstreams.openai_secrets import parse_upstream_response

from .conftest import CANARY_KEY

TOKEN = "/navai/realtime/client-secret"
OPTS = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY)
REQUEST_KEYS = NavaiVoiceBackendOptions(allow_api_key_from_request=True)
ORIGIN = "https://app.example"
JSON_TYPE = {"content-type": "application/json"}
TOO_DEEP = f"Request body nests deeper than {MAX_JSON_DEPTH} levels."
NOT_JSON = "Content-Type must be application/json (UTF-8)."
MINTED = HttpResponse(
    status=200, body=b'{"value": "ek_gap", "expires_at": 1900000000, "session": {}}'
)


def openai_error(status: int, message: str) -> HttpResponse:
    """An error answer shaped like OpenAI's."""
    body = json.dumps({"error": {"message": message, "type": "x", "param": None, "code": None}})
    return HttpResponse(status=status, body=body.encode())


def posted(body: bytes, **headers: str) -> dict[str, str]:
    """Request headers (lower-case names) for a JSON POST of ``body``."""
    return {**JSON_TYPE, "content-length": str(len(body)), **headers}


def run(
    endpoint: Endpoint,
    method: str = "POST",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = b"",
    upstream: Sequence[Outcome] = (),
) -> tuple[Answer, list[Attempt]]:
    """Drive the endpoint as a shell would; ``upstream`` answers its attempts in turn.

    Returns the answer and every upstream attempt the endpoint made.
    """
    started = endpoint.begin(method, dict(headers if headers is not None else posted(body or b"")))
    if isinstance(started, Answer):
        return started, []
    steps = endpoint.finish(started, body)
    outcomes = iter(upstream)
    attempts: list[Attempt] = []
    try:
        attempts.append(next(steps))
        while True:
            outcome = next(outcomes, None)
            if outcome is None:
                raise AssertionError("the endpoint made more upstream attempts than scripted")
            attempts.append(steps.send(outcome))
    except StopIteration as done:
        answer: Answer = done.value
    return answer, attempts


def header_values(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    """Every value of header ``name``, whatever the case of the names."""
    return [value for key, value in headers if key.lower() == name.lower()]


def payload(answer: Answer) -> Any:
    return json.loads(answer.body)


# -- 1. CORS headers on every error answer ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class ErrorCase:
    """A request the endpoint must refuse, and how."""

    status: int
    error: str
    method: str = "POST"
    headers: Mapping[str, str] = dataclasses.field(default_factory=lambda: posted(b"{}"))
    body: bytes | None = b"{}"
    upstream: tuple[Outcome, ...] = ()
    max_body_size: int = 8


def _error_case(id: str, **fields: Any) -> Any:
    return pytest.param(ErrorCase(**fields), id=id)


ERROR_CASES = [
    _error_case(
        "400-bad-json",
        status=400,
        headers=posted(b'{"model":'),
        body=b'{"model":',
        error="Request body is not valid JSON: Expecting value: line 1 column 10 (char 9).",
        max_body_size=64,
    ),
    _error_case(
        "400-too-deep",
        status=400,
        headers=posted(b"[" * 33),
        body=b"[" * 33,
        error=TOO_DEEP,
        max_body_size=64,
    ),
    _error_case(
        "400-invalid-content-length",
        status=400,
        headers={**JSON_TYPE, "content-length": "2x"},
        error="Invalid Content-Length.",
    ),
    _error_case(
        "400-incomplete",
        status=400,
        headers={**JSON_TYPE, "content-length": "5"},
        error="Request body is incomplete.",
    ),
    _error_case(
        "400-unframed",
        status=400,
        headers=JSON_TYPE,
        body=None,
        error="Send the request body with a Content-Length.",
    ),
    _error_case(
        "413-by-content-length",
        status=413,
        headers=posted(b"{}" * 5),
        error="Request body is larger than 8 bytes.",
    ),
    _error_case(
        "413-by-bytes-received",
        status=413,
        headers=JSON_TYPE,
        body=b'{"a":"bc"}',
        error="Request body is larger than 8 bytes.",
    ),
    _error_case(
        "415-declared",
        status=415,
        headers={"content-type": "text/plain", "content-length": "2"},
        error=NOT_JSON,
    ),
    _error_case(
        "415-after-reading",
        status=415,
        headers={"content-type": "text/plain"},
        error=NOT_JSON,
    ),
    _error_case(
        "429-from-upstream",
        status=429,
        upstream=(Outcome(openai_error(429, "Rate limit reached.")),),
        error="OpenAI client_secrets failed (429): Rate limit reached.",
    ),
    _error_case(
        "502-upstream-error",
        status=502,
        upstream=(Outcome(openai_error(401, "Invalid API key")),),
        error="OpenAI client_secrets failed (401): Invalid API key",
    ),
    _error_case(
        "502-upstream-unreachable",
        status=502,
        upstream=(Outcome(None),) * 3,
        error="OpenAI client_secrets could not be reached.",
    ),
    _error_case(
        "504-upstream-timeout",
        status=504,
        upstream=(Outcome(None, timed_out=True),),
        error="OpenAI client_secrets timed out.",
    ),
    _error_case(
        "405",
        status=405,
        method="GET",
        headers={},
        error="Method not allowed. Use POST.",
    ),
]

# (allowed origins, the request's Origin, the Access-Control-Allow-Origin expected)
CORS_MODES = [
    pytest.param([ORIGIN], ORIGIN, [ORIGIN], id="allowed-origin"),
    pytest.param([ORIGIN], "HTTPS://APP.EXAMPLE/", ["HTTPS://APP.EXAMPLE/"], id="origin-as-sent"),
    pytest.param([ORIGIN], None, [], id="no-origin"),
    pytest.param(["*"], ORIGIN, ["*"], id="any-origin"),
    pytest.param(["*"], None, [], id="any-origin-none-sent"),
]


@pytest.mark.parametrize(("origins", "origin", "allow_origin"), CORS_MODES)
@pytest.mark.parametrize("case", ERROR_CASES)
def test_error_answers_carry_cors_headers(
    case: ErrorCase, origins: list[str], origin: str | None, allow_origin: list[str]
) -> None:
    endpoint = Endpoint(OPTS, max_body_size=case.max_body_size, cors_origins=origins)
    headers = dict(case.headers)
    if origin is not None:
        headers["origin"] = origin
    answer, _ = run(endpoint, case.method, headers, case.body, case.upstream)
    assert answer.status == case.status
    assert payload(answer) == {"error": case.error}
    assert header_values(answer.headers, "Access-Control-Allow-Origin") == allow_origin
    assert header_values(answer.headers, "Vary") == ["Origin"]
    assert header_values(answer.headers, "Content-Type") == ["application/json"]
    assert header_values(answer.headers, "Content-Length") == [str(len(answer.body))]
    if case.status == 405:
        assert header_values(answer.headers, "Allow") == ["POST, OPTIONS"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_error_answers_without_cors_configured_have_no_cors_headers(case: ErrorCase) -> None:
    endpoint = Endpoint(OPTS, max_body_size=case.max_body_size)
    headers = {**case.headers, "origin": ORIGIN}
    answer, _ = run(endpoint, case.method, headers, case.body, case.upstream)
    assert answer.status == case.status
    assert payload(answer) == {"error": case.error}
    names = {name.lower() for name, _ in answer.headers}
    assert not any(name.startswith("access-control-") for name in names)
    assert "vary" not in names
    if case.status == 405:
        assert header_values(answer.headers, "Allow") == ["POST"]


# Through the shells: what the endpoint decided must reach the wire.
SHELL_ERRORS = [
    pytest.param(400, "POST", {**JSON_TYPE}, b'{"model":', None, id="400"),
    pytest.param(413, "POST", {**JSON_TYPE}, b"{}" * 40, None, id="413-by-content-length"),
    pytest.param(415, "POST", {"Content-Type": "text/plain"}, b"{}", None, id="415"),
    pytest.param(405, "GET", {}, b"", None, id="405"),
    pytest.param(
        429, "POST", JSON_TYPE, b"{}", lambda fake: fake.rate_limit(), id="429-from-upstream"
    ),
    pytest.param(
        502, "POST", JSON_TYPE, b"{}", lambda fake: fake.fail(401), id="502-upstream-error"
    ),
]


async def _inner_asgi(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the token path must not reach the wrapped app")


def _inner_wsgi(environ: Any, start_response: Any) -> Any:
    raise AssertionError("the token path must not reach the wrapped app")


def _via_asgi(fake: FakeOpenAIRealtime, request: httpx.Request) -> httpx.Response:
    async def main() -> httpx.Response:
        async with fake.async_transport() as upstream:
            app = NavaiASGIMiddleware(
                _inner_asgi, OPTS, max_body_size=64, cors_origins=[ORIGIN], transport=upstream
            )
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport) as client:
                return await client.send(request)

    response: httpx.Response = anyio.run(main)
    return response


def _via_wsgi(fake: FakeOpenAIRealtime, request: httpx.Request) -> httpx.Response:
    with fake.sync_transport() as upstream:
        app = NavaiWSGIMiddleware(
            _inner_wsgi, OPTS, max_body_size=64, cors_origins=[ORIGIN], transport=upstream
        )
        with httpx.Client(transport=httpx.WSGITransport(app=app)) as client:
            return client.send(request)


@pytest.mark.parametrize("via", [_via_asgi, _via_wsgi], ids=["asgi", "wsgi"])
@pytest.mark.parametrize("origin", [ORIGIN, None], ids=["allowed-origin", "no-origin"])
@pytest.mark.parametrize(("status", "method", "headers", "body", "upstream"), SHELL_ERRORS)
def test_shells_send_cors_headers_on_error_answers(
    via: Any,
    origin: str | None,
    status: int,
    method: str,
    headers: dict[str, str],
    body: bytes,
    upstream: Any,
) -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY, base_url=OPTS.openai_base_url)
    if upstream is not None:
        upstream(fake)
    if origin is not None:
        headers = {**headers, "Origin": origin}
    request = httpx.Request(method, "http://testserver" + TOKEN, headers=headers, content=body)
    response = via(fake, request)
    assert response.status_code == status, response.text
    assert response.headers.get_list("access-control-allow-origin") == (
        [] if origin is None else [origin]
    )
    assert response.headers.get_list("vary") == ["Origin"]


# -- 2. the nesting pre-scan -----------------------------------------------------------

# Each body has more brackets than MAX_JSON_DEPTH, so the slow path decides.
NESTING = [
    pytest.param(
        b'{"a":[],"b":' + b"[" * 31 + b"]" * 31 + b"}", None, id="depth-32-beside-a-closed-sibling"
    ),
    pytest.param(
        b'{"a":[],"b":' + b"[" * 32 + b"]" * 32 + b"}",
        TOO_DEEP,
        id="depth-33-after-a-closed-sibling",
    ),
    pytest.param(b'{"a":[' + b",".join([b"[]"] * 40) + b"]}", None, id="forty-sibling-arrays"),
    pytest.param(
        b'{"a":[' + b",".join([b"[]", b"{}"] * 20) + b'],"b":{"c":{"d":{}}}}',
        None,
        id="siblings-of-both-kinds",
    ),
    pytest.param(b'{"a":"","b":"' + b"[" * 40 + b'"}', None, id="empty-string-then-brackets"),
    pytest.param(
        b'{"a":"\\\\","b":"' + b"{" * 40 + b'"}', None, id="escaped-backslash-then-brackets"
    ),
    pytest.param(b'{"a":"\\"[[[","b":"' + b"[" * 40 + b'"}', None, id="escaped-quote-in-a-string"),
    pytest.param(
        b'{"a":' + b"{" * 16 + b"[" * 16 + b"]" * 16 + b"}" * 16 + b"}",
        TOO_DEEP,
        id="33-mixed-brackets",
    ),
]


@pytest.mark.parametrize(("body", "refused"), NESTING)
def test_nesting_limit_on_the_slow_path(body: bytes, refused: str | None) -> None:
    assert body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH
    if refused is None:
        assert isinstance(parse_body(body), dict)
    else:
        with pytest.raises(RequestError) as caught:
            parse_body(body)
        assert (caught.value.status, caught.value.message) == (400, refused)


@pytest.mark.parametrize(("body", "refused"), NESTING)
def test_nesting_limit_through_the_endpoint(body: bytes, refused: str | None) -> None:
    answer, attempts = run(Endpoint(OPTS), body=body, upstream=[Outcome(MINTED)])
    if refused is None:
        assert answer.status == 200
        assert len(attempts) == 1
    else:
        assert (answer.status, payload(answer)) == (400, {"error": refused})
        assert attempts == []


class CountingStrings:
    """Stands in for ``_JSON_STRING`` and counts the characters its ``sub`` reads.

    The regex engine's own work cannot be observed, so the pass is replayed
    with one anchored match per string: skipped text costs its length, a match
    its length, and an attempt that fails at a quote is charged the rest of the
    text (a string that never closes is read to the end). A tokenizer that
    rescans from every quote shows up as quadratic work.
    """

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.work = 0
        self.calls = 0

    def sub(self, repl: str, text: str) -> str:
        assert repl == ""
        self.calls += 1
        kept: list[str] = []
        pos = 0
        while True:
            at = text.find('"', pos)
            self.work += (len(text) if at < 0 else at) - pos
            if at < 0:
                kept.append(text[pos:])
                return "".join(kept)
            match = self.pattern.match(text, at)
            if match is None:
                self.work += len(text) - at
                kept.append(text[pos : at + 1])
                pos = at + 1
            else:
                self.work += match.end() - at
                kept.append(text[pos:at])
                pos = match.end()


class CountingBrackets:
    """Stands in for ``_BRACKET``: ``findall`` costs the text's length, plus
    one for each bracket the caller's loop takes."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.work = 0
        self.calls = 0

    def findall(self, text: str) -> Iterator[str]:
        self.calls += 1
        self.work += len(text)
        for bracket in self.pattern.findall(text):
            self.work += 1
            yield bracket


SIZE = 64 * 1024

HOSTILE = [
    pytest.param("[" * SIZE, True, id="all-open-brackets"),
    pytest.param('"[' * (SIZE // 2), True, id="quote-bracket-alternating"),
    pytest.param('"' + '\\"[' * (SIZE // 3), False, id="escaped-quotes-in-one-open-string"),
    pytest.param("[" * 40 + '"' + '\\"' * (SIZE // 2), True, id="brackets-then-backslash-quotes"),
    pytest.param('"\\\\"[' * (SIZE // 5), True, id="escaped-backslash-strings"),
    pytest.param('"' + "[" * SIZE, False, id="one-open-string-of-brackets"),
    pytest.param('["' * (SIZE // 2), True, id="bracket-quote-alternating"),
]


def test_counting_strings_replays_the_real_pass() -> None:
    """The stand-in must remove exactly what the real pattern removes."""
    strings = CountingStrings(body_rules._JSON_STRING)
    samples = [param.values[0][:300] for param in HOSTILE]
    samples += [param.values[0].decode() for param in NESTING]
    samples += ['a"b\\"c"d"e', '""""', '"\\', "no quotes", ""]
    for text in samples:
        assert strings.sub("", text) == body_rules._JSON_STRING.sub("", text), text


@pytest.mark.parametrize(("text", "deep"), HOSTILE)
def test_nesting_check_does_linear_work(
    monkeypatch: pytest.MonkeyPatch, text: str, deep: bool
) -> None:
    strings = CountingStrings(body_rules._JSON_STRING)
    brackets = CountingBrackets(body_rules._BRACKET)
    monkeypatch.setattr(body_rules, "_JSON_STRING", strings)
    monkeypatch.setattr(body_rules, "_BRACKET", brackets)
    assert body_rules._too_deep(text) is deep
    assert (strings.calls, brackets.calls) == (1, 1)
    assert strings.work + brackets.work <= 3 * len(text)


def test_a_quadratic_tokenizer_would_be_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above has teeth: a string pattern that must see its closing
    quote rescans the text from every quote."""
    strings = CountingStrings(re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL))
    monkeypatch.setattr(body_rules, "_JSON_STRING", strings)
    text = '"' + '\\"[' * 2000
    body_rules._too_deep(text)
    assert strings.work > 100 * len(text)


# -- 3. the warning on a failed mint -------------------------------------------------------

UPSTREAM_FAILURES = [
    pytest.param(
        (Outcome(openai_error(401, f"Incorrect API key provided: {CANARY_KEY}.")),),
        "OpenAI client_secrets failed (401): Incorrect API key provided: [redacted].",
        id="502-upstream-error",
    ),
    pytest.param(
        (Outcome(openai_error(429, "Rate limit reached.")),),
        "OpenAI client_secrets failed (429): Rate limit reached.",
        id="429",
    ),
    pytest.param(
        (Outcome(None, timed_out=True),), "OpenAI client_secrets timed out.", id="504-timeout"
    ),
    pytest.param(
        (Outcome(None),) * 3, "OpenAI client_secrets could not be reached.", id="502-unreachable"
    ),
]


@pytest.mark.parametrize(("upstream", "message"), UPSTREAM_FAILURES)
def test_failed_mint_logs_one_warning(
    caplog: pytest.LogCaptureFixture, upstream: tuple[Outcome, ...], message: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="navai_mw")
    answer, _ = run(Endpoint(OPTS), body=b"{}", upstream=upstream)
    assert payload(answer) == {"error": message}
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(records) == 1
    (record,) = records
    assert (record.name, record.levelno) == ("navai_mw", logging.WARNING)
    assert record.getMessage().startswith("navai_mw: minting a client secret failed: ")
    assert message in record.getMessage()
    assert CANARY_KEY not in caplog.text


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param(None, b'{"model":', id="bad-json"),
        pytest.param(None, b'{"model":5}', id="wrong-type"),
        pytest.param({"content-type": "text/plain", "content-length": "2"}, b"{}", id="415"),
        pytest.param({"content-length": "999999"}, b"{}", id="413"),
    ],
)
def test_client_mistakes_log_no_warning(
    caplog: pytest.LogCaptureFixture, headers: dict[str, str] | None, body: bytes
) -> None:
    caplog.set_level(logging.DEBUG, logger="navai_mw")
    answer, attempts = run(Endpoint(OPTS), headers=headers, body=body)
    assert 400 <= answer.status < 500
    assert attempts == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_mint_logs_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="navai_mw")
    answer, _ = run(Endpoint(OPTS), body=b"{}", upstream=[Outcome(MINTED)])
    assert answer.status == 200
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- 4. header-value characters in API keys --------------------------------------------------

VISIBLE_ASCII = "".join(chr(c) for c in range(0x21, 0x7F))
UNPRINTABLE_KEYS = [
    pytest.param("sk-a\x7fb", id="del"),
    pytest.param("sk-a\x00b", id="nul"),
    pytest.param("sk-a\x1fb", id="unit-separator"),
    pytest.param("sk-a\tb", id="tab"),
    pytest.param("sk-a\nb", id="newline"),
    pytest.param("sk-a\r\nX-Injected: 1", id="header-injection"),
    pytest.param("sk-a b", id="space"),
    pytest.param("sk-caf\u00e9", id="latin-1"),
    pytest.param("sk-a\u0085b", id="next-line"),
    pytest.param("sk-\u65e5\u672c", id="cjk"),
    pytest.param("sk-\U0001f600", id="emoji"),
]


@pytest.mark.parametrize("key", UNPRINTABLE_KEYS)
def test_request_key_must_be_visible_ascii(key: str) -> None:
    body = json.dumps({"apiKey": key}).encode()
    answer, attempts = run(Endpoint(REQUEST_KEYS), body=body)
    assert answer.status == 400
    assert payload(answer) == {"error": "Invalid request field apiKey: expected printable ASCII."}
    assert attempts == []


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(VISIBLE_ASCII, id="every-visible-character"),
        pytest.param("!", id="lowest"),
        pytest.param("~", id="highest"),
        pytest.param(" \tsk-trimmed\n ", id="outer-whitespace-trimmed"),
    ],
)
def test_visible_ascii_request_key_is_sent(key: str) -> None:
    body = json.dumps({"apiKey": key}).encode()
    answer, attempts = run(Endpoint(REQUEST_KEYS), body=body, upstream=[Outcome(MINTED)])
    assert answer.status == 200
    assert payload(answer) == {
        "value": "ek_gap",
        "expires_at": 1900000000,
        "speech": {"provider": "openai"},
    }
    assert len(attempts) == 1
    assert dict(attempts[0].request.headers)["Authorization"] == f"Bearer {key.strip()}"


@pytest.mark.parametrize("key", UNPRINTABLE_KEYS)
def test_option_key_must_be_visible_ascii(key: str) -> None:
    with pytest.raises(OptionsError) as caught:
        NavaiVoiceBackendOptions(openai_api_key=key)
    assert caught.value.message == "openai_api_key must be printable ASCII without spaces."


def test_option_key_of_every_visible_character() -> None:
    assert NavaiVoiceBackendOptions(openai_api_key=VISIBLE_ASCII).openai_api_key == VISIBLE_ASCII


# -- 5. Content-Type parameters ------------------------------------------------------------

MEDIA_TYPES = [
    pytest.param("application/json", True, id="plain"),
    pytest.param("application/json; charset=utf8", True, id="charset-utf8"),
    pytest.param('application/json;charset="UTF-8"', True, id="quoted-charset-no-space"),
    pytest.param(
        "application/json; foo=bar; charset=utf-8; q=1", True, id="parameters-around-charset"
    ),
    pytest.param("application/json; foo=bar", True, id="other-parameter-only"),
    pytest.param("application/json;", True, id="empty-parameter"),
    pytest.param("application/vnd.x+json", True, id="vendor-plus-json"),
    pytest.param(" APPLICATION/VND.X+JSON ; CHARSET=UTF-8", True, id="vendor-any-case"),
    pytest.param("application/json; foo=bar; charset=latin-1", False, id="latin-1-after-other"),
    pytest.param("application/json; charset=utf-16", False, id="utf-16"),
    pytest.param("application/json; charset=XUTF-8X", False, id="utf-8-between-letters"),
    pytest.param("application/json; charset=utf-8; charset=ascii", False, id="second-charset"),
    pytest.param("application/json; charset=utf-8=x", False, id="charset-with-a-second-equals"),
    pytest.param("text/json", False, id="text-json"),
    pytest.param("text/x+json", False, id="text-plus-json"),
    pytest.param("application/jsonx", False, id="jsonx"),
    pytest.param("application/json+x", False, id="json-plus-x"),
    pytest.param("application/xjson", False, id="xjson"),
    pytest.param("json", False, id="no-type"),
    pytest.param("", False, id="empty"),
]


@pytest.mark.parametrize(("content_type", "ok"), MEDIA_TYPES)
def test_media_type(content_type: str, ok: bool) -> None:
    assert body_rules.json_type_ok(content_type) is ok


@pytest.mark.parametrize(("content_type", "ok"), MEDIA_TYPES)
def test_media_type_through_the_endpoint(content_type: str, ok: bool) -> None:
    headers = {"content-type": content_type, "content-length": "2"}
    answer, attempts = run(Endpoint(OPTS), headers=headers, body=b"{}", upstream=[Outcome(MINTED)])
    if ok:
        assert answer.status == 200
        assert len(attempts) == 1
    else:
        assert (answer.status, payload(answer)) == (415, {"error": NOT_JSON})
        assert attempts == []
    # Without a length the type is checked once the body is read.
    wanted = Endpoint(OPTS).begin("POST", {"content-type": content_type})
    assert not isinstance(wanted, Answer)
    assert wanted.content_type_ok is ok


# -- 6. smaller edges --------------------------------------------------------------------------

WIRE_FIELDS = ["model", "voice", "instructions", "language", "voiceAccent", "voiceTone", "apiKey"]


@pytest.mark.parametrize("options", [OPTS, REQUEST_KEYS], ids=["server-key", "request-keys"])
@pytest.mark.parametrize(
    "value", [5, 1.5, True, False, [], ["x"], {}, {"a": "b"}], ids=lambda v: json.dumps(v)
)
@pytest.mark.parametrize("field", WIRE_FIELDS)
def test_wrong_type_for_each_wire_field(
    field: str, value: Any, options: NavaiVoiceBackendOptions
) -> None:
    body = json.dumps({field: value, "apiKey": "sk-ok"} if field != "apiKey" else {field: value})
    answer, attempts = run(Endpoint(options), body=body.encode())
    assert answer.status == 400
    assert payload(answer) == {"error": f"Invalid request field {field}: expected a string."}
    assert attempts == []


@pytest.mark.parametrize(
    ("raw", "ttl"),
    [
        pytest.param("+600", 600, id="plus-sign"),
        pytest.param(" +10 ", 10, id="plus-sign-spaced"),
        pytest.param("0600", 600, id="leading-zero"),
    ],
)
def test_env_ttl_with_a_sign(raw: str, ttl: int) -> None:
    env = {"OPENAI_API_KEY": "k", "OPENAI_REALTIME_CLIENT_SECRET_TTL": raw}
    assert get_navai_voice_backend_options_from_env(env).client_secret_ttl_seconds == ttl


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            "+",
            "client_secret_ttl_seconds must be an integer. "
            "Received: '+' (from OPENAI_REALTIME_CLIENT_SECRET_TTL)",
            id="sign-alone",
        ),
        pytest.param(
            "-",
            "client_secret_ttl_seconds must be an integer. "
            "Received: '-' (from OPENAI_REALTIME_CLIENT_SECRET_TTL)",
            id="minus-alone",
        ),
        pytest.param(
            "++600",
            "client_secret_ttl_seconds must be an integer. "
            "Received: '++600' (from OPENAI_REALTIME_CLIENT_SECRET_TTL)",
            id="two-signs",
        ),
        pytest.param(
            "-600",
            "client_secret_ttl_seconds must be between 10 and 7200. Received: -600",
            id="negative",
        ),
    ],
)
def test_env_ttl_refused(raw: str, message: str) -> None:
    env = {"OPENAI_API_KEY": "k", "OPENAI_REALTIME_CLIENT_SECRET_TTL": raw}
    with pytest.raises(OptionsError) as caught:
        get_navai_voice_backend_options_from_env(env)
    assert caught.value.message == message


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://127.0.0.1:1/v1", id="port-1"),
        pytest.param("https://a.test:65535/v1", id="port-65535"),
        pytest.param("http://[::1]:8080/v1", id="ipv6"),
    ],
)
def test_base_url_ports_accepted(url: str) -> None:
    opts = NavaiVoiceBackendOptions(openai_api_key="k", openai_base_url=url)
    assert opts.openai_base_url == url


def test_base_url_port_past_the_range_refused() -> None:
    with pytest.raises(OptionsError) as caught:
        NavaiVoiceBackendOptions(openai_api_key="k", openai_base_url="http://a.test:65536/v1")
    assert caught.value.message == (
        "openai_base_url must be an http(s) URL with a host and no query or fragment."
    )


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param(posted(b"{}"), b"{}", id="declared"),
        pytest.param(posted(b" "), b" ", id="one-byte-declared"),
        pytest.param(JSON_TYPE, b"{}", id="streamed"),
    ],
)
def test_zero_body_limit_refuses_any_body(headers: dict[str, str], body: bytes) -> None:
    answer, attempts = run(Endpoint(OPTS, max_body_size=0), headers=headers, body=body)
    assert answer.status == 413
    assert payload(answer) == {"error": "Request body is larger than 0 bytes."}
    assert attempts == []


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(posted(b""), id="content-length-0"),
        pytest.param({}, id="no-headers"),
    ],
)
def test_zero_body_limit_still_mints_for_an_empty_body(headers: dict[str, str]) -> None:
    answer, attempts = run(
        Endpoint(OPTS, max_body_size=0), headers=headers, body=b"", upstream=[Outcome(MINTED)]
    )
    assert answer.status == 200
    assert len(attempts) == 1


@pytest.mark.parametrize(
    ("body", "key"),
    [
        pytest.param(b'{"model":"a","voice":"b","voice":"c"}', "voice", id="not-the-first-key"),
        pytest.param(b'{"a":1,"b":2,"c":3,"c":4}', "c", id="the-last-key"),
        pytest.param(b'{"a":1,"b":2,"a":3,"b":4}', "a", id="the-first-repeat-is-named"),
        pytest.param(
            b'{"' + b"k" * 100 + b'":1,"' + b"k" * 100 + b'":2}', "k" * 64, id="long-key-cut"
        ),
    ],
)
def test_duplicate_key_is_named(body: bytes, key: str) -> None:
    answer, attempts = run(Endpoint(OPTS), body=body)
    assert answer.status == 400
    assert payload(answer) == {"error": f"Request body has a duplicate key: {key!r}."}
    assert attempts == []


# -- 7. boundaries the first full mutation run left open -----------------------------------


def test_endpoint_at_the_root_path() -> None:
    endpoint = Endpoint(OPTS, path="/")
    assert endpoint.owns("/")
    assert not endpoint.owns("/x")


@pytest.mark.parametrize(
    ("status", "minted"),
    [
        pytest.param(199, False, id="199"),
        pytest.param(200, True, id="200"),
        pytest.param(299, True, id="299"),
        pytest.param(300, False, id="300"),
    ],
)
def test_only_2xx_mints(status: int, minted: bool) -> None:
    answer, attempts = run(
        Endpoint(OPTS), body=b"{}", upstream=[Outcome(attrs.evolve(MINTED, status=status))]
    )
    assert len(attempts) == 1
    if minted:
        assert answer.status == 200
    else:
        expected = f"OpenAI client_secrets failed ({status}): {MINTED.body.decode()}"
        assert (answer.status, payload(answer)) == (502, {"error": expected})


@pytest.mark.parametrize(
    ("length", "quoted"),
    [
        pytest.param(MAX_QUOTED_UPSTREAM_CHARS, "x" * MAX_QUOTED_UPSTREAM_CHARS, id="at-the-limit"),
        pytest.param(
            MAX_QUOTED_UPSTREAM_CHARS + 1,
            "x" * MAX_QUOTED_UPSTREAM_CHARS + "...",
            id="one-past-the-limit",
        ),
    ],
)
def test_quoted_upstream_text_is_cut_only_past_the_limit(length: int, quoted: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        parse_upstream_response(HttpResponse(status=401, body=b"x" * length))
    assert caught.value.message == f"OpenAI client_secrets failed (401): {quoted}"


@pytest.mark.parametrize(
    ("elapsed", "status"),
    [pytest.param(0.999, 200, id="just-in-time"), pytest.param(1.0, 504, id="at-the-budget")],
)
def test_an_answer_at_the_budget_is_too_late(elapsed: float, status: int) -> None:
    opts = attrs.evolve(OPTS, upstream_timeout_seconds=1.0)
    answer, _ = run(Endpoint(opts), body=b"{}", upstream=[Outcome(MINTED, elapsed=elapsed)])
    assert answer.status == status


def test_a_retry_with_no_time_left_is_not_made() -> None:
    # 1.0 s spent and a 0.5 s delay leave exactly nothing of a 1.5 s budget.
    opts = attrs.evolve(OPTS, upstream_timeout_seconds=1.5)
    failure = Outcome(HttpResponse(status=500, body=b"boom"), elapsed=1.0)
    answer, attempts = run(Endpoint(opts), body=b"{}", upstream=[failure])
    assert len(attempts) == 1
    assert payload(answer) == {"error": "OpenAI client_secrets failed (500): boom"}


def test_a_retry_with_half_a_second_left_is_made() -> None:
    opts = attrs.evolve(OPTS, upstream_timeout_seconds=2.0)
    failure = Outcome(HttpResponse(status=500, body=b"boom"), elapsed=1.0)
    answer, attempts = run(
        Endpoint(opts), body=b"{}", upstream=[failure, Outcome(MINTED, elapsed=1.9)]
    )
    assert answer.status == 200
    assert [(a.delay, a.timeout) for a in attempts] == [(0.0, 2.0), (0.5, 0.5)]
