"""Regression tests for the second adversarial review, on what an upstream
or the server's own Azure token provider does: each ran on both shells
under real servers (uvicorn and waitress) where it applies, and failed
before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from navai_mw import HttpRequest, NavaiVoiceBackendOptions, UpstreamError
from navai_mw.core.effects import Attempt, CallHook, CallOwned, HookResult
from navai_mw.core.exchange import redact
from navai_mw.endpoint.endpoint import Endpoint
from navai_mw.testing import FakeElevenLabs, FakeOpenAIRealtime
from navai_mw.transports import AiohttpTransport, HttpxAsyncTransport, HttpxSyncTransport
from navai_mw.upstreams.mint import mint_client_secret

from .conftest import CANARY_KEY, raw_server
from .shells import SHELLS, serve_shell

pytestmark = pytest.mark.anyio

PATH = "/navai/realtime/client-secret"
SPEECH = "/navai/speech/synthesize"
XI_KEY = "xi-canary-0123456789abcdefXI"


# -- 11: every spelling of the key, always ---------------------------------------------


def _percent(text: str) -> str:
    return "".join(f"%{ord(c):02X}" for c in text)


def _unicode(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def _spellings(key: str) -> list[str]:
    """The copies of ``key`` that must not survive redaction."""
    return [key, _percent(key), _unicode(key), key[3:], _percent(key[3:])]


@pytest.mark.parametrize("shell", SHELLS)
def test_raw_and_percent_encoded_copies_are_both_redacted_openai(
    shell: str, fake: FakeOpenAIRealtime, served_fake: str
) -> None:
    fake.fail(401, f"Incorrect API key {CANARY_KEY} (sent as key={_percent(CANARY_KEY)}).")
    opts = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=served_fake, upstream_timeout_seconds=5
    )
    with serve_shell(shell, opts) as base:
        answer = httpx.post(f"{base}{PATH}", json={})
    assert answer.status_code == 502
    assert answer.json() == {
        "error": "OpenAI client_secrets failed (401): "
        "Incorrect API key [redacted] (sent as key=[redacted])."
    }


@pytest.mark.parametrize("shell", SHELLS)
def test_raw_and_percent_encoded_copies_are_both_redacted_elevenlabs(shell: str) -> None:
    voice = FakeElevenLabs(api_key=XI_KEY)
    voice.fail(400, f"Key {XI_KEY} refused; see /keys?k={_percent(XI_KEY)}")
    with voice.serve() as xi:
        opts = NavaiVoiceBackendOptions(
            openai_api_key=CANARY_KEY,
            tts_provider="elevenlabs",
            elevenlabs_api_key=XI_KEY,
            elevenlabs_voice_id="voice-1",
            elevenlabs_base_url=xi,
            upstream_timeout_seconds=5,
        )
        with serve_shell(shell, opts) as base:
            answer = httpx.post(f"{base}{SPEECH}", json={"text": "Hello"})
    assert answer.status_code == 502
    assert answer.json() == {
        "error": "ElevenLabs synthesize failed (400): Key [redacted] refused; "
        "see /keys?k=[redacted]"
    }


SLASHED = 'sk-canary/0123"4567\\89abcdefCANARY'  # visible ASCII: a key may hold / " \


def _json_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("/", "\\/")


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        pytest.param(
            f"key {_json_escaped(SLASHED)} refused", "key [redacted] refused", id="json-escapes"
        ),
        pytest.param(
            f"{SLASHED} and {_json_escaped(SLASHED)}",
            "[redacted] and [redacted]",
            id="raw-and-json-escaped",
        ),
        pytest.param(
            f"{CANARY_KEY} / {_unicode(CANARY_KEY)} / {_percent(_percent(CANARY_KEY))}",
            "[redacted] / [redacted] / [redacted]",
            id="raw-unicode-and-twice-percent-encoded",
        ),
        pytest.param(
            "&#115;&#107;" + _percent(CANARY_KEY[2:]) + f" {CANARY_KEY}",
            "[redacted] [redacted]",
            id="half-html-half-percent",
        ),
        pytest.param(
            _json_escaped(_percent(CANARY_KEY)) + " 100% sure",
            "[redacted] 100% sure",
            id="nothing-else-decoded-when-percent-is-not-an-escape",
        ),
    ],
)
def test_every_decoded_spelling_is_redacted(text: str, quoted: str) -> None:
    secret = SLASHED if SLASHED in text or _json_escaped(SLASHED) in text else CANARY_KEY
    redacted = redact(text, secret)
    assert redacted == quoted
    for spelling in (*_spellings(secret), _json_escaped(secret)):
        assert spelling not in redacted


def test_a_key_that_looks_encoded_is_redacted_as_it_is() -> None:
    key = "sk-x%41y&amp;z\\u0041"
    assert redact(f"bad key {key}", key) == "bad key [redacted]"


def test_text_without_the_key_keeps_its_escapes() -> None:
    text = 'a%20b &amp; \\u0041 \\" \\/'
    assert redact(text, CANARY_KEY) == text


# -- 12: the Azure token provider within the upstream budget --------------------------------

AZURE = "http://127.0.0.1:9"  # never reached: the provider answers first, or the time is up


def azure(provider: Any, timeout: float = 2.0) -> NavaiVoiceBackendOptions:
    return NavaiVoiceBackendOptions(
        azure_endpoint=AZURE, azure_ad_token_provider=provider, upstream_timeout_seconds=timeout
    )


def test_the_provider_gets_the_budget_and_the_exchange_what_it_left() -> None:
    steps = mint_client_secret(azure(lambda: "tok"), {})
    asked = next(steps)
    assert isinstance(asked, CallHook)
    assert asked.timeout == 2.0
    attempt = steps.send(HookResult("tok", elapsed=1.5))
    assert isinstance(attempt, Attempt)
    assert attempt.timeout == 0.5
    assert dict(attempt.request.headers)["Authorization"] == "Bearer tok"


@pytest.mark.parametrize(
    "result",
    [
        pytest.param(HookResult(timed_out=True, elapsed=2.0), id="timed-out"),
        # A driver of its own that waited past the budget without a bound.
        pytest.param(HookResult("tok", elapsed=2.0), id="answered-too-late"),
    ],
)
def test_a_provider_past_the_budget_is_a_504(
    result: HookResult, caplog: pytest.LogCaptureFixture
) -> None:
    steps = mint_client_secret(azure(lambda: "tok"), {})
    next(steps)
    with pytest.raises(UpstreamError) as caught:
        steps.send(result)
    assert (caught.value.status, caught.value.message) == (
        504,
        "Azure OpenAI token provider timed out.",
    )
    assert [record.getMessage() for record in caplog.records] == [
        "navai_mw: the Azure token provider did not answer within 2 seconds"
    ]


@pytest.mark.parametrize(
    ("result", "message", "logged"),
    [
        pytest.param(
            HookResult(error=LookupError("the vault is sealed")),
            "Azure OpenAI token provider failed; no token to send.",
            "navai_mw: the Azure token provider raised LookupError",
            id="raised",
        ),
        pytest.param(
            HookResult(""),
            "Azure OpenAI token provider returned no usable token.",
            "navai_mw: the Azure token provider returned an empty string, not a token",
            id="empty",
        ),
        pytest.param(
            HookResult(42),
            "Azure OpenAI token provider returned no usable token.",
            "navai_mw: the Azure token provider returned int, not a token",
            id="not-text",
        ),
    ],
)
def test_a_provider_without_a_token_is_a_502_logged_by_what_it_did(
    result: HookResult, message: str, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    steps = mint_client_secret(azure(lambda: "tok"), {})
    asked = next(steps)
    assert isinstance(asked, CallHook)
    assert asked.args == ()  # a provider is called with nothing
    with pytest.raises(UpstreamError) as caught:
        steps.send(result)
    assert (caught.value.status, caught.value.message) == (502, message)
    assert [record.getMessage() for record in caplog.records] == [logged]
    # A provider that raised is logged with its traceback; the others have none.
    [record] = caplog.records
    assert (record.exc_info[1] if record.exc_info else None) is result.error


OFFER = b"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


def test_the_relay_and_its_hangup_get_what_the_provider_left() -> None:
    endpoint = Endpoint(azure(lambda: "tok"), relay=True)
    sdp = {"content-type": "application/sdp"}
    relay = endpoint.handle("POST", "/navai/realtime/calls", sdp, OFFER)
    assert next(relay).timeout == 2.0
    attempt = relay.send(HookResult("tok", elapsed=1.25))
    assert isinstance(attempt, Attempt)
    assert attempt.timeout == 0.75
    hangup = endpoint.handle("DELETE", "/navai/realtime/calls/rtc_123", {}, b"")
    assert isinstance(next(hangup), CallOwned)
    assert hangup.send(True).timeout == 2.0
    attempt = hangup.send(HookResult("tok", elapsed=0.5))
    assert isinstance(attempt, Attempt)
    assert attempt.timeout == 1.5


class HangingProviders:
    """Token providers that do not answer: a plain one blocks its thread
    until released (at the test's end), an async one awaits forever."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.calls = 0

    def plain(self) -> str:
        self.calls += 1
        self.released.wait(60)
        return "tok"

    async def awaiting(self) -> str:
        self.calls += 1
        await asyncio.sleep(3600)
        return "tok"


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("kind", ["plain", "awaiting"])
def test_a_hanging_provider_is_a_504_within_the_budget(shell: str, kind: str) -> None:
    providers = HangingProviders()
    try:
        opts = azure(getattr(providers, kind), timeout=0.5)
        with serve_shell(shell, opts) as base:
            # The client's timeout only stops a hang; the test is the answer.
            answer = httpx.post(f"{base}{PATH}", json={}, timeout=20)
            still_hanging = not providers.released.is_set()
    finally:
        providers.released.set()
    assert (answer.status_code, answer.json()) == (
        504,
        {"error": "Azure OpenAI token provider timed out."},
    )
    assert providers.calls == 1
    assert still_hanging  # answered while the provider had not returned


# -- suspected: a gzip bomb unpacked whole before the 1 MiB cap -----------------------------

LIMIT = 1024 * 1024


def _gzip(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


BOMB = _gzip(b"\0" * (256 * 1024 * 1024))  # 256 MiB unpacked, about 250 KiB sent


@pytest.fixture(scope="module")
def bomb_server() -> Iterator[str]:
    def answer(conn: socket.socket, stop: threading.Event) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
        with contextlib.suppress(OSError):
            conn.sendall(head % len(BOMB) + BOMB)

    with raw_server(answer) as url:
        yield url


def _bomb(url: str) -> HttpRequest:
    return HttpRequest(method="POST", url=url, headers=(), body=b"", max_response_bytes=LIMIT)


# Stopping early leaves httpx's and httpcore's inner async generators to the
# garbage collector, which trio reports (as in test_hardening.py); the
# connection itself is closed by the transport.
_HTTPX_INNER_GENERATORS = pytest.mark.filterwarnings(
    "ignore:Async generator 'http(x|core)[.]:ResourceWarning"
)

# What one answer may cost on top of the limit: the packed bytes in flight,
# a few buffers. Before the fix it was 50 MB (httpx async) to 200 MB (sync).
MOST_BYTES = 8 * 1024 * 1024


def test_the_sync_transport_unpacks_a_gzip_bomb_only_to_the_limit(bomb_server: str) -> None:
    with HttpxSyncTransport() as transport:
        transport.send(_bomb(bomb_server), timeout=30)  # the client and its pool made
        tracemalloc.start()
        try:
            response = transport.send(_bomb(bomb_server), timeout=30)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert len(response.body) == LIMIT + 1  # one byte past: the core refuses it
    assert peak < MOST_BYTES


@_HTTPX_INNER_GENERATORS
@pytest.mark.parametrize("make", [AiohttpTransport, HttpxAsyncTransport])
async def test_the_async_transports_unpack_a_gzip_bomb_only_to_the_limit(
    bomb_server: str, make: type[AiohttpTransport | HttpxAsyncTransport]
) -> None:
    async with make() as transport:
        await transport.send(_bomb(bomb_server), timeout=30)
        tracemalloc.start()
        try:
            response = await transport.send(_bomb(bomb_server), timeout=30)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert len(response.body) == LIMIT + 1
    assert peak < MOST_BYTES


@pytest.mark.parametrize("shell", SHELLS)
def test_a_gzip_bomb_is_the_oversized_502_on_both_shells(shell: str, bomb_server: str) -> None:
    opts = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=bomb_server, upstream_timeout_seconds=10
    )
    with serve_shell(shell, opts) as base:
        answer = httpx.post(f"{base}{PATH}", json={})
    assert (answer.status_code, answer.json()) == (
        502,
        {"error": f"OpenAI client_secrets answered with more than {LIMIT} bytes."},
    )


def _packed(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return _gzip(data)
    if coding == "deflate":
        return zlib.compress(data)
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw deflate, as some send
    return packer.compress(data) + packer.flush()


SECRET = b'{"value": "ek_packed", "expires_at": 1730000600}'


@contextlib.contextmanager
def packed_server(coding: str, header: str) -> Iterator[str]:
    body = _packed(coding, SECRET)

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n"
        with contextlib.suppress(OSError):
            conn.sendall(head % (header.encode(), len(body)) + body)

    with raw_server(answer) as url:
        yield url


PACKINGS = [
    pytest.param("gzip", "gzip", id="gzip"),
    pytest.param("deflate", "deflate", id="deflate-zlib"),
    pytest.param("raw", "deflate", id="deflate-raw"),
]


@pytest.mark.parametrize(("coding", "header"), PACKINGS)
def test_a_packed_answer_is_read_sync(coding: str, header: str) -> None:
    with packed_server(coding, header) as url, HttpxSyncTransport() as transport:
        response = transport.send(_bomb(url), timeout=10)
    assert response.body == SECRET


@pytest.mark.parametrize(("coding", "header"), PACKINGS)
@pytest.mark.parametrize("make", [AiohttpTransport, HttpxAsyncTransport])
async def test_a_packed_answer_is_read_async(
    coding: str, header: str, make: type[AiohttpTransport | HttpxAsyncTransport]
) -> None:
    with packed_server(coding, header) as url:
        async with make() as transport:
            response = await transport.send(_bomb(url), timeout=10)
    assert response.body == SECRET


def test_a_coding_not_asked_for_is_no_answer() -> None:
    with (
        packed_server("gzip", "br") as url,
        HttpxSyncTransport() as transport,
        pytest.raises(ConnectionError, match="a coding not asked for: 'br'"),
    ):
        transport.send(_bomb(url), timeout=10)


@pytest.mark.parametrize("shell", SHELLS)
def test_only_the_codings_undone_are_asked_for(
    shell: str, fake: FakeOpenAIRealtime, served_fake: str
) -> None:
    opts = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=served_fake, upstream_timeout_seconds=5
    )
    with serve_shell(shell, opts) as base:
        assert httpx.post(f"{base}{PATH}", json={}).status_code == 200
    assert fake.requests[0].headers["accept-encoding"] == "gzip, deflate"
