"""FakeElevenLabs answers like ElevenLabs' text-to-speech, in-process (sync and
async transports) and on loopback, and misbehaves when told to."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest

import navai_mw.testing
from navai_mw import HttpRequest, HttpResponse
from navai_mw.testing import FakeElevenLabs, FakeOpenAIRealtime
from navai_mw.transports import HttpxSyncTransport

XI_KEY = "xi-test-key-0123456789"
VOICE = "21m00Tcm4TlvDq8ikWAM"

Send = Callable[[HttpRequest], HttpResponse]

NOT_FOUND = {"detail": {"status": "not_found", "message": "Not found"}}
INVALID_KEY = {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}
MISSING_TEXT = {
    "detail": [{"loc": ["body", "text"], "msg": "field required", "type": "value_error.missing"}]
}


def tts(
    base_url: str,
    voice_id: str = VOICE,
    *,
    text: str = "Hello there",
    query: str = "",
    key: str | None = XI_KEY,
    body: bytes | None = None,
    method: str = "POST",
    path: str | None = None,
) -> HttpRequest:
    """A text-to-speech request, as an ElevenLabs client would send it."""
    url = base_url + (path if path is not None else f"/v1/text-to-speech/{voice_id}")
    headers = [("content-type", "application/json"), ("accept", "audio/mpeg")]
    if key is not None:
        headers.append(("xi-api-key", key))
    return HttpRequest(
        method=method,
        url=f"{url}?{query}" if query else url,
        headers=tuple(headers),
        body=json.dumps({"text": text}).encode() if body is None else body,
    )


def as_json(response: HttpResponse) -> Any:
    assert response.header("content-type") == "application/json"
    return json.loads(response.body)


@pytest.fixture
def eleven() -> FakeElevenLabs:
    return FakeElevenLabs(api_key=XI_KEY)


@pytest.fixture(params=["sync", "async"])
def send(request: pytest.FixtureRequest, eleven: FakeElevenLabs) -> Iterator[Send]:
    """Sends a request to ``eleven`` in-process, through its sync transport or
    its async one (run on a fresh event loop per request)."""
    if request.param == "sync":
        with eleven.sync_transport() as transport:
            yield lambda req: transport.send(req, timeout=5)
        return

    def via_async(req: HttpRequest) -> HttpResponse:
        async def go() -> HttpResponse:
            async with eleven.async_transport() as transport:
                return await transport.send(req, timeout=5)

        return anyio.run(go)

    yield via_async


# -- speaking ---------------------------------------------------------------------


def test_speaks_the_audio_for_the_text(eleven: FakeElevenLabs, send: Send) -> None:
    response = send(tts(eleven.base_url, text="Hello there"))
    assert response.status == 200
    assert response.header("content-type") == "audio/mpeg"
    assert response.body == eleven.audio_for("Hello there", VOICE, "mp3_44100_128")
    assert response.body == eleven.audio_for("Hello there", VOICE)  # the default format
    assert response.body.startswith(b"ID3")


@pytest.mark.parametrize(
    ("output_format", "content_type", "head"),
    [
        ("mp3_44100_128", "audio/mpeg", b"ID3"),
        ("mp3_22050_32", "audio/mpeg", b"ID3"),
        ("pcm_16000", "audio/pcm", b""),
        ("pcm_44100", "audio/pcm", b""),
        ("wav_44100", "audio/wav", b"RIFF"),
        ("ulaw_8000", "audio/basic", b""),
        ("opus_48000_64", "audio/mpeg", b"ID3"),
    ],
)
def test_content_type_and_audio_follow_the_output_format(
    eleven: FakeElevenLabs, send: Send, output_format: str, content_type: str, head: bytes
) -> None:
    response = send(tts(eleven.base_url, text="Hi", query=f"output_format={output_format}"))
    assert response.status == 200
    assert response.header("content-type") == content_type
    assert response.body == eleven.audio_for("Hi", VOICE, output_format)
    assert response.body.startswith(head)
    is_default = output_format == "mp3_44100_128"
    assert (response.body == eleven.audio_for("Hi", VOICE)) == is_default


def test_audio_for_is_deterministic_and_tells_inputs_apart() -> None:
    a, b = FakeElevenLabs(), FakeElevenLabs(api_key="other")
    base = a.audio_for("Hello", "voice-1", "mp3_44100_128")
    assert base == b.audio_for("Hello", "voice-1", "mp3_44100_128")  # across fakes too
    assert base[:3] == b"ID3"
    assert 100 <= len(base) <= 1000
    variants = {
        a.audio_for("Hello!", "voice-1", "mp3_44100_128"),
        a.audio_for("Hello", "voice-2", "mp3_44100_128"),
        a.audio_for("Hello", "voice-1", "mp3_22050_32"),
        # The inputs are not simply concatenated.
        a.audio_for("Hello", "voice-1mp3", "_44100_128"),
        a.audio_for("Hellovoice-1", "", "mp3_44100_128"),
    }
    assert base not in variants
    assert len(variants) == 5
    assert a.audio_for("Hello", "voice-1", "wav_44100").startswith(b"RIFF")


def test_records_method_path_headers_query_and_json(eleven: FakeElevenLabs, send: Send) -> None:
    body = {
        "text": "Bonjour",
        "model_id": "eleven_multilingual_v2",
        "voice_settings": {"stability": 0.5, "similarity_boost": 0.75},
    }
    raw = json.dumps(body).encode()
    query = "output_format=pcm_16000&optimize_streaming_latency=3"
    response = send(tts(eleven.base_url, body=raw, query=query))
    assert response.status == 200
    assert response.body == eleven.audio_for("Bonjour", VOICE, "pcm_16000")
    [recorded] = eleven.requests
    assert recorded.method == "POST"
    assert recorded.path == f"/v1/text-to-speech/{VOICE}"
    assert recorded.headers["xi-api-key"] == XI_KEY
    assert recorded.headers["content-type"] == "application/json"
    assert recorded.query == {"output_format": "pcm_16000", "optimize_streaming_latency": "3"}
    assert recorded.body == raw
    assert recorded.json == body
    assert XI_KEY not in repr(recorded)  # headers stay out of the repr


def test_voice_id_is_the_url_decoded_last_segment(eleven: FakeElevenLabs, send: Send) -> None:
    response = send(tts(eleven.base_url, "my%20voice%2Fone", text="Hi"))
    assert response.status == 200
    assert response.body == eleven.audio_for("Hi", "my voice/one")
    assert eleven.requests[0].path == "/v1/text-to-speech/my voice/one"


def test_without_api_key_any_key_or_none_is_accepted() -> None:
    open_fake = FakeElevenLabs()
    with open_fake.sync_transport() as transport:
        for key in ("anything", None):
            response = transport.send(tts(open_fake.base_url, key=key, text="Hi"), timeout=5)
            assert response.status == 200
            assert response.body == open_fake.audio_for("Hi", VOICE)
    assert [r.headers.get("xi-api-key") for r in open_fake.requests] == ["anything", None]


# -- refusing ---------------------------------------------------------------------


@pytest.mark.parametrize("key", ["xi-wrong", "", None])
def test_wrong_or_missing_key_is_401(eleven: FakeElevenLabs, send: Send, key: str | None) -> None:
    response = send(tts(eleven.base_url, key=key))
    assert response.status == 401
    assert as_json(response) == INVALID_KEY
    assert len(eleven.requests) == 1


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"\xff\xfe",
        b'["text"]',
        b"{}",
        b'{"model_id": "eleven_multilingual_v2"}',
        b'{"text": ""}',
        b'{"text": null}',
        b'{"text": 42}',
        b'{"text": ["Hello"]}',
    ],
)
def test_body_without_text_is_422(eleven: FakeElevenLabs, send: Send, body: bytes) -> None:
    response = send(tts(eleven.base_url, body=body))
    assert response.status == 422
    assert as_json(response) == MISSING_TEXT
    assert eleven.requests[0].body == body


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/text-to-speech"),
        ("POST", "/v1/text-to-speech/"),
        ("POST", f"/v1/text-to-speech/{VOICE}/stream"),
        ("POST", f"/v1/text-to-speech/{VOICE}/"),
        ("POST", f"/text-to-speech/{VOICE}"),
        ("POST", f"/v2/text-to-speech/{VOICE}"),
        ("POST", "/v1/voices"),
        ("POST", "/v1/realtime/client_secrets"),
        ("GET", f"/v1/text-to-speech/{VOICE}"),
    ],
)
def test_anything_else_is_404(eleven: FakeElevenLabs, send: Send, method: str, path: str) -> None:
    response = send(tts(eleven.base_url, method=method, path=path))
    assert response.status == 404
    assert as_json(response) == NOT_FOUND
    assert (eleven.requests[0].method, eleven.requests[0].path) == (method, path)


def test_404_does_not_use_up_scripted_behaviour(eleven: FakeElevenLabs, send: Send) -> None:
    eleven.fail(503, "Busy", times=1)
    assert send(tts(eleven.base_url, path="/v1/voices")).status == 404
    assert send(tts(eleven.base_url)).status == 503
    assert send(tts(eleven.base_url)).status == 200


# -- misbehaving on request -----------------------------------------------------------


def test_fail_answers_elevenlabs_error_shape(eleven: FakeElevenLabs, send: Send) -> None:
    eleven.fail(503, "Service is busy")
    for _ in range(2):  # every time, until told otherwise
        response = send(tts(eleven.base_url))
        assert response.status == 503
        assert as_json(response) == {
            "detail": {"status": "service_unavailable", "message": "Service is busy"}
        }
    assert len(eleven.requests) == 2


def test_fail_defaults_to_500(eleven: FakeElevenLabs, send: Send) -> None:
    eleven.fail()
    response = send(tts(eleven.base_url))
    assert response.status == 500
    detail = as_json(response)["detail"]
    assert detail["status"] == "internal_server_error"
    assert isinstance(detail["message"], str)
    assert detail["message"]


def test_fail_with_an_unnamed_status(eleven: FakeElevenLabs, send: Send) -> None:
    eleven.fail(599, "Odd")
    response = send(tts(eleven.base_url))
    assert response.status == 599
    assert as_json(response) == {"detail": {"status": "error", "message": "Odd"}}


def test_fail_comes_before_key_and_body_checks(eleven: FakeElevenLabs, send: Send) -> None:
    eleven.fail(502, "Bad gateway", times=1)
    response = send(tts(eleven.base_url, key="xi-wrong", body=b"{}"))
    assert response.status == 502


def test_rate_limit_is_429_with_retry_after(eleven: FakeElevenLabs, send: Send) -> None:
    eleven.rate_limit(retry_after="7")
    response = send(tts(eleven.base_url))
    assert response.status == 429
    assert response.header("retry-after") == "7"
    assert as_json(response) == {
        "detail": {
            "status": "too_many_concurrent_requests",
            "message": "Too many concurrent requests",
        }
    }


def test_rate_limit_default_retry_after(eleven: FakeElevenLabs, send: Send) -> None:
    eleven.rate_limit(times=1)
    response = send(tts(eleven.base_url))
    assert (response.status, response.header("retry-after")) == (429, "20")


def test_stall_then_answers_normally(eleven: FakeElevenLabs, send: Send) -> None:
    eleven.stall(0.01)
    response = send(tts(eleven.base_url, text="Later"))
    assert response.status == 200
    assert response.body == eleven.audio_for("Later", VOICE)


def test_times_queue_then_the_default(eleven: FakeElevenLabs, send: Send) -> None:
    eleven.fail(503, "Busy", times=2)
    eleven.rate_limit("3", times=1)
    eleven.stall(0.01, times=1)
    eleven.fail(500, "Down")  # the default once the queue is empty
    statuses = [send(tts(eleven.base_url)).status for _ in range(6)]
    assert statuses == [503, 503, 429, 200, 500, 500]


def test_times_without_a_default_returns_to_normal(eleven: FakeElevenLabs, send: Send) -> None:
    eleven.rate_limit(times=1)
    eleven.fail(500, times=0)  # nothing queued
    statuses = [send(tts(eleven.base_url)).status for _ in range(3)]
    assert statuses == [429, 200, 200]


def test_reset_forgets_behaviour_and_requests(eleven: FakeElevenLabs, send: Send) -> None:
    eleven.fail(500)
    eleven.rate_limit(times=3)
    assert send(tts(eleven.base_url)).status == 429
    eleven.reset()
    assert eleven.requests == []
    response = send(tts(eleven.base_url, text="Again"))
    assert response.status == 200
    assert response.body == eleven.audio_for("Again", VOICE)
    assert len(eleven.requests) == 1
    assert eleven.api_key == XI_KEY  # configuration is not behaviour


# -- async, natively ------------------------------------------------------------------


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.mark.anyio
async def test_async_transport_speaks(eleven: FakeElevenLabs) -> None:
    async with eleven.async_transport() as transport:
        first = await transport.send(tts(eleven.base_url, text="One"), timeout=5)
        second = await transport.send(
            tts(eleven.base_url, text="Two", query="output_format=ulaw_8000"), timeout=5
        )
    assert first.body == eleven.audio_for("One", VOICE)
    assert (second.header("content-type"), second.body) == (
        "audio/basic",
        eleven.audio_for("Two", VOICE, "ulaw_8000"),
    )
    assert [r.json["text"] for r in eleven.requests] == ["One", "Two"]


@pytest.mark.anyio
async def test_async_stall_outlasts_a_client_timeout(eleven: FakeElevenLabs) -> None:
    eleven.stall(30, times=1)
    async with eleven.async_transport() as transport:
        # The in-process ASGI transport has no clock of its own: the caller's
        # deadline is what ends the wait.
        with pytest.raises(TimeoutError), anyio.fail_after(0.05):
            await transport.send(tts(eleven.base_url), timeout=0.05)
        assert len(eleven.requests) == 1
        response = await transport.send(tts(eleven.base_url), timeout=5)
    assert response.status == 200


# -- on loopback ------------------------------------------------------------------------


def test_served_with_httpx(eleven: FakeElevenLabs) -> None:
    with eleven.serve() as base_url:
        assert base_url == eleven.base_url
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url)
        with httpx.Client(base_url=base_url, timeout=5) as client:
            ok = client.post(
                f"/v1/text-to-speech/{VOICE}",
                params={"output_format": "wav_44100", "optimize_streaming_latency": "2"},
                headers={"xi-api-key": XI_KEY},
                json={"text": "Served", "model_id": "eleven_turbo_v2_5"},
            )
            refused = client.post(
                f"/v1/text-to-speech/{VOICE}",
                headers={"xi-api-key": "xi-wrong"},
                json={"text": "Served"},
            )
            missing = client.post(
                f"/v1/text-to-speech/{VOICE}", headers={"xi-api-key": XI_KEY}, json={}
            )
            elsewhere = client.get("/v1/models", headers={"xi-api-key": XI_KEY})
            eleven.rate_limit("9", times=1)
            limited = client.post(
                f"/v1/text-to-speech/{VOICE}", headers={"xi-api-key": XI_KEY}, json={"text": "x"}
            )
    assert eleven.base_url == "http://fake-elevenlabs.invalid"  # restored
    assert ok.status_code == 200
    assert ok.headers["content-type"] == "audio/wav"
    assert ok.content == eleven.audio_for("Served", VOICE, "wav_44100")
    assert (refused.status_code, refused.json()) == (401, INVALID_KEY)
    assert (missing.status_code, missing.json()) == (422, MISSING_TEXT)
    assert (elsewhere.status_code, elsewhere.json()) == (404, NOT_FOUND)
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "9")
    first = eleven.requests[0]
    assert first.path == f"/v1/text-to-speech/{VOICE}"
    assert first.query == {"output_format": "wav_44100", "optimize_streaming_latency": "2"}
    assert first.json == {"text": "Served", "model_id": "eleven_turbo_v2_5"}
    assert first.headers["xi-api-key"] == XI_KEY
    assert len(eleven.requests) == 5


def test_served_stall_times_out_httpx_and_the_sync_transport(eleven: FakeElevenLabs) -> None:
    eleven.stall(0.5, times=2)
    with eleven.serve() as base_url:
        with httpx.Client(timeout=0.05) as client, pytest.raises(httpx.TimeoutException):
            client.post(
                f"{base_url}/v1/text-to-speech/{VOICE}",
                headers={"xi-api-key": XI_KEY},
                json={"text": "Slow"},
            )
        with HttpxSyncTransport() as transport, pytest.raises(TimeoutError):
            transport.send(tts(base_url), timeout=0.05)
        assert len(eleven.requests) == 2


# -- the module --------------------------------------------------------------------------


def test_module_docstring_examples_run() -> None:
    doc = navai_mw.testing.__doc__
    assert doc is not None
    examples = re.findall(r"::\n\n((?:    .*\n|\n)+)", doc)
    assert len(examples) == 2
    assert "FakeElevenLabs(" in examples[1]
    for example in examples:
        exec(compile(textwrap.dedent(example), "navai_mw.testing", "exec"), {})  # noqa: S102


def test_exported() -> None:
    assert "FakeElevenLabs" in navai_mw.testing.__all__
    assert "FakeOpenAIRealtime" in navai_mw.testing.__all__


def test_openai_fake_records_the_query_too() -> None:
    openai = FakeOpenAIRealtime()
    with openai.sync_transport() as transport:
        request = HttpRequest(
            method="POST",
            url=f"{openai.base_url}/realtime/client_secrets?debug=1",
            headers=(("authorization", "Bearer sk-test"),),
            body=b'{"session": {"type": "realtime"}}',
        )
        assert transport.send(request, timeout=5).status == 200
    assert openai.requests[0].query == {"debug": "1"}
    assert openai.requests[0].path == "/v1/realtime/client_secrets"
