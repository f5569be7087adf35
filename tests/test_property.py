"""Whatever a client sends, the token path answers from a fixed set of
statuses, never 500, and never with the server's key (CONTRACT.md §3).

Hypothesis draws the request (method, body, Content-Type, Content-Length
told true, understated, overstated, left out or garbage, the body's split
into ASGI messages) and the upstream's mood; each example goes through the
ASGI middleware and the WSGI middleware, called directly as a server would.
Where both shells are handed the same bytes, they must also answer alike.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from navai_mw import (
    AuthError,
    NavaiASGIMiddleware,
    NavaiVoiceBackendOptions,
    NavaiWSGIMiddleware,
    RequestInfo,
)
from navai_mw.testing import FakeOpenAIRealtime

from .conftest import CANARY_KEY, without_request_id

TOKEN = "/navai/realtime/client-secret"
ALLOWED = frozenset({200, 400, 401, 403, 405, 413, 415, 429, 502, 503, 504})
# A caller's credential: in no answer and no log line, whatever happens.
STATIC_TOKEN = "navai-static-token-0123456789"
# Small, so that bodies over it are cheap to draw.
LIMIT = 256

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

WIRE_FIELDS = ("model", "voice", "instructions", "language", "voiceAccent", "voiceTone", "apiKey")
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)

# -- what a client may send -------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(WIRE_FIELDS) | st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)
# Shaped like a real request: the wire fields, each of any JSON type.
request_objects = st.fixed_dictionaries(
    {},
    optional={
        name: st.text(max_size=30) | st.sampled_from(["", "  ", "\\ud800"]) | json_values
        for name in WIRE_FIELDS
    },
)


def _nest(depth: int, opener: str) -> bytes:
    if opener == "[":
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=300),
    request_objects.map(lambda obj: json.dumps(obj).encode()),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.text(max_size=300).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.builds(_nest, st.integers(1, 60), st.sampled_from("[{")),
    st.sampled_from(
        [
            b"\xef\xbb\xbf{}",
            b'{"model":"a","model":"b"}',
            b'{"model":NaN}',
            b'{"voiceAccent":5}',
            b"{" * 200,
            b'{"instructions":"' + b"x" * LIMIT + b'"}',
            json.dumps({"apiKey": CANARY_KEY}).encode(),
        ]
    ),
)
content_types = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=latin-1",
            "application/merge-patch+json",
            "APPLICATION/JSON;CHARSET=UTF8",
            "application/json;;;charset",
            "text/plain",
            "",
        ]
    ),
    st.text(PRINTABLE, max_size=40),
)
garbage_lengths = st.one_of(
    st.sampled_from(["-1", "abc", "1e3", " 12 ", "+5", "0x10", "9" * 25, "", "1,2"]),
    st.text(PRINTABLE, max_size=12),
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    # Half the requests are well-formed, so that the upstream's answers
    # (429, 502) are explored as well as the refusals.
    well_formed = draw(st.booleans())
    if well_formed:
        body = json.dumps(draw(request_objects.filter(_strings_only))).encode()
        content_type: str | None = "application/json"
        method = "POST"
        mode = draw(st.sampled_from(["true", "true", "missing"]))
    else:
        body = draw(bodies)
        content_type = draw(content_types)
        method = draw(st.just("POST") | st.sampled_from(["GET", "PUT", "OPTIONS", "DELETE"]))
        mode = draw(st.sampled_from(["true", "understated", "overstated", "missing", "garbage"]))
    if mode == "true":
        length: str | None = str(len(body))
    elif mode == "understated":
        length = str(draw(st.integers(0, max(len(body) - 1, 0))))
    elif mode == "overstated":
        length = str(len(body) + draw(st.integers(1, 2 * LIMIT)))
    elif mode == "garbage":
        length = draw(garbage_lengths)
    else:
        length = None
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    return {
        "method": method,
        "path": draw(st.sampled_from([TOKEN, TOKEN + "/"])),
        "body": body,
        "content_type": content_type,
        "length_mode": mode,
        "content_length": length,
        "chunks": [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)],
        "leave_early": draw(st.booleans()) and len(cuts) > 0,
        "input_terminated": draw(st.booleans()),
        "upstream": draw(
            st.sampled_from(["ok", "ok", "garbage", "fail-400", "fail-401", "rate-limit"])
        ),
        "retry_after": draw(st.text(PRINTABLE, max_size=12)),
        "caller": draw(st.sampled_from(["known", "known", "known", "none", "refused", "broken"])),
    }


def _strings_only(obj: dict[str, Any]) -> bool:
    return all(isinstance(value, str) for value in obj.values())


# -- driving the two shells the way servers do ------------------------------------------


def _script_upstream(fake: FakeOpenAIRealtime, request: dict[str, Any]) -> None:
    fake.reset()
    kind = request["upstream"]
    if kind == "garbage":
        fake.return_garbage()
    elif kind == "fail-400":
        fake.fail(400, message="Invalid value for 'session.model'.")
    elif kind == "fail-401":
        fake.fail(401, message=f"Incorrect API key provided: {CANARY_KEY}.")
    elif kind == "rate-limit":
        fake.rate_limit(retry_after=request["retry_after"])


async def _inner_asgi(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the token path must not reach the wrapped app")


def _inner_wsgi(environ: Any, start_response: Any) -> Any:
    raise AssertionError("the token path must not reach the wrapped app")


def authorize(info: RequestInfo) -> str | None:
    """The guard's hook: a known bearer passes, one is refused, one breaks it."""
    credential = info.headers.get("authorization", "").removeprefix("Bearer ")
    if credential == STATIC_TOKEN:
        return "alice"
    if credential == f"refused-{STATIC_TOKEN}":
        raise AuthError("Not on the list.", status=403)
    if credential == f"broken-{STATIC_TOKEN}":
        raise RuntimeError(f"lookup failed for {credential}")  # logged, with the token
    return None


def _credential(caller: str) -> str | None:
    return {"known": STATIC_TOKEN, "none": None}.get(caller, f"{caller}-{STATIC_TOKEN}")


def _headers(request: dict[str, Any]) -> list[tuple[str, str]]:
    headers = [("host", "testserver")]
    credential = _credential(request["caller"])
    if credential is not None:
        headers.append(("authorization", f"Bearer {credential}"))
    if request["content_type"] is not None:
        headers.append(("content-type", request["content_type"]))
    if request["content_length"] is not None:
        headers.append(("content-length", request["content_length"]))
    return headers


def call_asgi(
    fake: FakeOpenAIRealtime, opts: NavaiVoiceBackendOptions, request: dict[str, Any]
) -> tuple[int, list[tuple[str, str]], bytes] | None:
    """The answer, or None when the client left before one was due."""
    chunks = request["chunks"]
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    if request["leave_early"]:
        messages = [*messages[:-1], {"type": "http.disconnect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request["method"],
        "scheme": "http",
        "path": request["path"],
        "raw_path": request["path"].encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in _headers(request)],
    }

    async def main() -> None:
        async with fake.async_transport() as upstream:
            app = NavaiASGIMiddleware(
                _inner_asgi, opts, transport=upstream, max_body_size=LIMIT, authorize=authorize
            )
            await app(scope, receive, send)

    anyio.run(main)
    if not sent:
        return None
    start, body = sent
    assert start["type"] == "http.response.start"
    assert body["type"] == "http.response.body"
    assert not body.get("more_body", False)
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start["headers"]]
    assert all(name == name.lower() for name, _ in headers)  # as ASGI requires
    return start["status"], headers, body["body"]


def call_wsgi(app: NavaiWSGIMiddleware, request: dict[str, Any]) -> tuple[int, Any, bytes]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": request["path"],
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "testserver",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(request["body"]),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if request["input_terminated"]:
        environ["wsgi.input_terminated"] = True
    if request["content_type"] is not None:
        environ["CONTENT_TYPE"] = request["content_type"]
    if request["content_length"] is not None:
        environ["CONTENT_LENGTH"] = request["content_length"]
    credential = _credential(request["caller"])
    if credential is not None:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {credential}"
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        assert exc_info is None
        started.append((status, headers))
        return lambda data: None

    body = b"".join(app(environ, start_response))
    ((status, headers),) = started
    assert isinstance(status, str)
    assert isinstance(headers, list)
    code, _, reason = status.partition(" ")
    assert reason
    return int(code), headers, body


# -- the promises -------------------------------------------------------------------------


def check_answer(status: int, headers: list[tuple[str, str]], body: bytes) -> Any:
    assert status in ALLOWED, (status, body)
    assert CANARY_KEY.encode() not in body
    assert STATIC_TOKEN.encode() not in body
    for name, value in headers:
        assert CANARY_KEY not in name + value
        assert STATIC_TOKEN not in name + value
    names = {name.lower(): value for name, value in headers}
    assert names["content-type"] == "application/json"
    assert names["content-length"] == str(len(body))
    payload = json.loads(body)
    if status == 200:
        assert set(payload) == {"value", "expires_at", "speech"}
        assert payload["speech"] == {"provider": "openai"}
        assert payload["value"].startswith("ek_fake_")
    else:
        assert set(payload) == {"error"}
        assert isinstance(payload["error"], str)
    return payload


def check_logs(caplog: pytest.LogCaptureFixture) -> None:
    # The hook's own exception text is the user's code speaking; it is in the
    # traceback (exc_info), never in a record's message.
    assert CANARY_KEY not in caplog.text
    for record in caplog.records:
        assert CANARY_KEY not in record.getMessage()
        assert STATIC_TOKEN not in record.getMessage()


@pytest.fixture
def quick_opts(opts: NavaiVoiceBackendOptions) -> NavaiVoiceBackendOptions:
    return attrs.evolve(opts, upstream_timeout_seconds=2)


@PROPERTY_SETTINGS
@given(request=requests())
def test_asgi_answers_within_the_contract(
    fake: FakeOpenAIRealtime,
    quick_opts: NavaiVoiceBackendOptions,
    caplog: pytest.LogCaptureFixture,
    request: dict[str, Any],
) -> None:
    caplog.set_level(logging.DEBUG)
    _script_upstream(fake, request)
    answer = call_asgi(fake, quick_opts, request)
    if answer is None:
        # Only a client that left may go unanswered, and then nothing is minted.
        assert request["leave_early"]
        assert fake.requests == []
    else:
        check_answer(*answer)
    check_logs(caplog)


@PROPERTY_SETTINGS
@given(request=requests())
def test_wsgi_answers_within_the_contract(
    fake: FakeOpenAIRealtime,
    quick_opts: NavaiVoiceBackendOptions,
    caplog: pytest.LogCaptureFixture,
    request: dict[str, Any],
) -> None:
    caplog.set_level(logging.DEBUG)
    _script_upstream(fake, request)
    with fake.sync_transport() as upstream:
        app = NavaiWSGIMiddleware(
            _inner_wsgi, quick_opts, transport=upstream, max_body_size=LIMIT, authorize=authorize
        )
        check_answer(*call_wsgi(app, request))
    check_logs(caplog)


@PROPERTY_SETTINGS
@given(request=requests())
def test_shells_agree_when_handed_the_same_bytes(
    fake: FakeOpenAIRealtime, quick_opts: NavaiVoiceBackendOptions, request: dict[str, Any]
) -> None:
    # A WSGI app reads by Content-Length (or to the end, when the server
    # says the input is terminated); an ASGI app gets every message. They are
    # handed different bytes when the length understates the body, or is
    # missing while the input is not terminated: such requests get a true
    # length here. The client stays to the end.
    length = request["content_length"]
    unknown_length = length is None or not length.strip()  # a blank one counts as missing
    if request["length_mode"] == "understated" or (
        unknown_length and not request["input_terminated"]
    ):
        request = {**request, "content_length": str(len(request["body"]))}
    request = {**request, "leave_early": False}

    _script_upstream(fake, request)
    asgi_answer = call_asgi(fake, quick_opts, request)
    _script_upstream(fake, request)
    with fake.sync_transport() as upstream:
        app = NavaiWSGIMiddleware(
            _inner_wsgi, quick_opts, transport=upstream, max_body_size=LIMIT, authorize=authorize
        )
        wsgi_answer = call_wsgi(app, request)

    assert asgi_answer is not None
    asgi_status, asgi_headers, asgi_body = asgi_answer
    wsgi_status, wsgi_headers, wsgi_body = wsgi_answer
    assert asgi_status == wsgi_status
    asgi_payload = check_answer(*asgi_answer)
    wsgi_payload = check_answer(*wsgi_answer)
    if asgi_status == 200:
        assert asgi_payload.keys() == wsgi_payload.keys()
    else:
        assert asgi_body == wsgi_body
        # The same headers in the same order; ASGI spells the names in lower case.
        # Each carries its own request id: the same header, another value.
        assert without_request_id(asgi_headers) == without_request_id(
            [(name.lower(), value) for name, value in wsgi_headers]
        )


def test_strategies_reach_every_kind_of_answer() -> None:
    """Guard against a strategy that quietly stopped exploring: the drawn
    requests must hit success and the main refusals."""
    seen: set[int] = set()
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=fake.base_url, upstream_timeout_seconds=2
    )

    @settings(PROPERTY_SETTINGS, max_examples=400)  # more kinds of answer than the others need
    @given(request=requests())
    def collect(request: dict[str, Any]) -> None:
        _script_upstream(fake, request)
        with fake.sync_transport() as upstream:
            app = NavaiWSGIMiddleware(
                _inner_wsgi, opts, transport=upstream, max_body_size=LIMIT, authorize=authorize
            )
            seen.add(call_wsgi(app, request)[0])

    collect()
    assert {200, 400, 401, 403, 405, 413, 415, 429, 502, 503} <= seen
