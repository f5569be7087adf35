"""Speech through ElevenLabs: the request built (sans-IO) field for field as
the reference builds it, the answer read, failures mapped as OpenAI's, the
route on both shells against the fake ElevenLabs, the Python functions, and
the options from the environment."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest

from navai_mw import (
    HttpResponse,
    NavaiASGIMiddleware,
    NavaiVoiceBackendOptions,
    NavaiWSGIMiddleware,
    OptionsError,
    RequestError,
    UpstreamError,
    VoiceSettings,
    get_navai_voice_backend_options_from_env,
    synthesize_speech,
    synthesize_speech_sync,
)
from navai_mw.core.effects import Outcome
from navai_mw.testing import FakeElevenLabs, FakeOpenAIRealtime, FakeUpstreams
from navai_mw.upstreams.elevenlabs import (
    MAX_SPEECH_AUDIO_BYTES,
    NO_CREDENTIALS,
    NOT_ENABLED,
    build_speech_request,
    mime_type,
    parse_speech_response,
    synthesize,
)
from navai_mw.upstreams.openai_secrets import build_upstream_request

from .conftest import CANARY_KEY

XI_KEY = "xi-canary-0123456789abcdefXI"
SPEECH = "/navai/speech/synthesize"


def options(**overrides: Any) -> NavaiVoiceBackendOptions:
    fields: dict[str, Any] = {
        "openai_api_key": CANARY_KEY,
        "tts_provider": "elevenlabs",
        "elevenlabs_api_key": XI_KEY,
        "elevenlabs_voice_id": "voice-1",
        "elevenlabs_base_url": "http://xi.test",
        **overrides,
    }
    return NavaiVoiceBackendOptions(**fields)


# -- the request ----------------------------------------------------------------------


def test_the_request_as_the_reference_builds_it() -> None:
    request = build_speech_request(options(), {"text": "  Hello there  "})
    assert request.method == "POST"
    assert request.url == "http://xi.test/v1/text-to-speech/voice-1?output_format=mp3_44100_128"
    assert dict(request.headers) == {
        "xi-api-key": XI_KEY,
        "Content-Type": "application/json",
        "Accept": "audio/mpeg",
    }
    assert json.loads(request.body) == {"text": "Hello there"}
    assert request.max_response_bytes == MAX_SPEECH_AUDIO_BYTES
    assert XI_KEY not in repr(request)


def test_the_request_takes_every_field_and_prefers_the_requests() -> None:
    opts = options(
        elevenlabs_model_id="model-opt",
        elevenlabs_output_format="pcm_16000",
        elevenlabs_optimize_streaming_latency=1,
        elevenlabs_voice_settings=VoiceSettings(stability=0.1, use_speaker_boost=False),
    )
    from_options = build_speech_request(opts, {"text": "hi"})
    query = parse_qs(urlsplit(from_options.url).query)
    assert query == {"output_format": ["pcm_16000"], "optimize_streaming_latency": ["1"]}
    assert dict(from_options.headers)["Accept"] == "audio/pcm"
    assert json.loads(from_options.body) == {
        "text": "hi",
        "model_id": "model-opt",
        "voice_settings": {"stability": 0.1, "use_speaker_boost": False},
    }
    request = build_speech_request(
        opts,
        {
            "text": "hi",
            "voiceId": "a voice/with?odd&chars",
            "modelId": "model-req",
            "outputFormat": "ulaw_8000",
            "optimizeStreamingLatency": 2.5,
            "voiceSettings": {
                "stability": 0.5,
                "similarityBoost": 0.75,
                "style": "loud",  # not a number: dropped, as the reference does
                "useSpeakerBoost": True,
            },
        },
    )
    parts = urlsplit(request.url)
    assert parts.path == "/v1/text-to-speech/a%20voice%2Fwith%3Fodd%26chars"
    # Math.round: halves go up.
    assert parse_qs(parts.query) == {
        "output_format": ["ulaw_8000"],
        "optimize_streaming_latency": ["3"],
    }
    assert dict(request.headers)["Accept"] == "audio/basic"
    assert json.loads(request.body) == {
        "text": "hi",
        "model_id": "model-req",
        "voice_settings": {"stability": 0.5, "similarity_boost": 0.75, "use_speaker_boost": True},
    }
    # Settings that sanitize to nothing fall back to the options'.
    fallback = build_speech_request(opts, {"text": "hi", "voiceSettings": {"style": "x"}})
    assert json.loads(fallback.body)["voice_settings"] == {
        "stability": 0.1,
        "use_speaker_boost": False,
    }
    styled = build_speech_request(opts, {"text": "hi", "voiceSettings": {"style": 0.25}})
    assert json.loads(styled.body)["voice_settings"] == {"style": 0.25}


def test_voice_settings_that_say_nothing_are_not_sent() -> None:
    unset = options(elevenlabs_voice_settings=VoiceSettings())
    assert json.loads(build_speech_request(unset, {"text": "hi"}).body) == {"text": "hi"}
    # A boost that is not a boolean is dropped, as the reference drops it.
    for boost in ("yes", 1, None):
        asked = {"text": "hi", "voiceSettings": {"style": 0.25, "useSpeakerBoost": boost}}
        sent = json.loads(build_speech_request(options(), asked).body)
        assert sent["voice_settings"] == {"style": 0.25}


@pytest.mark.parametrize(
    ("opts", "body", "status", "message"),
    [
        (options(tts_provider="openai"), {"text": "hi"}, 404, NOT_ENABLED),
        (options(), {}, 400, "text is required."),
        (options(), {"text": "   "}, 400, "text is required."),
        (options(elevenlabs_api_key=None), {"text": "hi"}, 400, NO_CREDENTIALS),
        (options(elevenlabs_voice_id=None), {"text": "hi"}, 400, NO_CREDENTIALS),
        (options(), {"text": 5}, 400, "Invalid request field text: expected a string."),
        (options(), {"text": "hi", "voiceId": []}, 400, "Invalid request field voiceId"),
    ],
)
def test_what_cannot_be_spoken_is_refused(
    opts: NavaiVoiceBackendOptions, body: dict[str, Any], status: int, message: str
) -> None:
    with pytest.raises(RequestError) as caught:
        build_speech_request(opts, body)
    assert caught.value.status == status
    assert caught.value.message.startswith(message)


def test_a_voice_id_from_the_request_is_enough() -> None:
    request = build_speech_request(options(elevenlabs_voice_id=None), {"text": "a", "voiceId": "v"})
    assert urlsplit(request.url).path == "/v1/text-to-speech/v"


@pytest.mark.parametrize(
    ("output_format", "content_type", "expected"),
    [
        ("mp3_22050_32", None, "audio/mpeg"),
        ("PCM_24000", None, "audio/pcm"),
        ("wav_44100", None, "audio/wav"),
        ("ulaw_8000", None, "audio/basic"),
        ("opus_48000_64", None, "audio/mpeg"),
        ("mp3_44100_128", "audio/mpeg; charset=binary", "audio/mpeg; charset=binary"),
        ("pcm_16000", "  ", "audio/pcm"),
    ],
)
def test_mime_types(output_format: str, content_type: str | None, expected: str) -> None:
    assert mime_type(output_format, content_type) == expected


# -- the answer -----------------------------------------------------------------------


def test_audio_comes_back_base64_with_its_type() -> None:
    speech = parse_speech_response(
        HttpResponse(status=200, headers=(("content-type", "audio/wav"),), body=b"RIFF\x00\x01"),
        output_format="mp3_44100_128",
    )
    assert speech.to_wire() == {
        "provider": "elevenlabs",
        "mimeType": "audio/wav",
        "audioBase64": base64.b64encode(b"RIFF\x00\x01").decode(),
    }
    assert speech.audio == b"RIFF\x00\x01"


@pytest.mark.parametrize(
    ("status", "body", "quoted"),
    [
        (401, {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}, "Invalid"),
        (400, {"detail": "voice not found"}, "voice not found"),
        (422, {"detail": [{"msg": "field required"}]}, '{"detail": [{"msg": "field required"}]}'),
        (500, "<html>oops</html>", "<html>oops</html>"),
        (500, b"broken \xff text", "broken \ufffd text"),  # not UTF-8: read as well as it can be
        (300, "elsewhere", "elsewhere"),  # only a 2xx is speech
    ],
)
def test_upstream_failures_quote_elevenlabs(status: int, body: Any, quoted: str) -> None:
    if isinstance(body, bytes):
        raw = body
    else:
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    with pytest.raises(UpstreamError) as caught:
        parse_speech_response(HttpResponse(status=status, body=raw), output_format="mp3")
    assert caught.value.status == 502
    assert caught.value.message.startswith(f"ElevenLabs synthesize failed ({status}): {quoted}")


def test_no_request_at_all_is_asked_for_its_text() -> None:
    with pytest.raises(RequestError) as caught:
        next(synthesize(options(), None))
    assert caught.value.message == "text is required."


def test_an_answer_without_a_type_is_typed_by_the_format_asked() -> None:
    steps = synthesize(options(), {"text": "Hola", "outputFormat": "pcm_16000"})
    next(steps)
    with pytest.raises(StopIteration) as done:
        steps.send(Outcome(HttpResponse(status=200, body=b"\x00\x01")))
    assert done.value.value.mime_type == "audio/pcm"


def test_the_key_is_redacted_and_429_passes_retry_after() -> None:
    body = json.dumps({"detail": {"message": f"key {XI_KEY} is over quota"}}).encode()
    response = HttpResponse(status=429, headers=(("retry-after", "12"),), body=body)
    with pytest.raises(UpstreamError) as caught:
        parse_speech_response(response, output_format="mp3", secret=XI_KEY)
    assert caught.value.status == 429
    assert caught.value.headers == (("Retry-After", "12"),)
    assert XI_KEY not in caught.value.message
    assert "[redacted]" in caught.value.message


# -- the route on both shells ----------------------------------------------------------


async def hello_asgi(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


def hello_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"app"]


@contextmanager
def both_shells(
    voice: FakeElevenLabs, **overrides: Any
) -> Iterator[list[tuple[str, Callable[..., httpx.Response]]]]:
    """A ``post(path, json=...)`` per shell; ElevenLabs reached in process."""
    import anyio.from_thread

    routes = {"speech_synthesize_path": overrides.pop("speech_synthesize_path", SPEECH)}
    upstream = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = options(
        openai_base_url=upstream.base_url,
        elevenlabs_base_url=voice.base_url,
        upstream_timeout_seconds=2,
        **overrides,
    )
    # One transport for both upstreams, as the middleware has.
    fakes = FakeUpstreams(openai=upstream, elevenlabs=voice)
    with anyio.from_thread.start_blocking_portal() as portal:
        transport = fakes.async_transport()
        asgi = NavaiASGIMiddleware(hello_asgi, opts, transport=transport, functions=[], **routes)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=asgi), base_url="http://api.test"
        )

        def asgi_post(path: str, **kw: Any) -> httpx.Response:
            return portal.call(lambda: client.post(path, **kw))

        wsgi = NavaiWSGIMiddleware(
            hello_wsgi, opts, transport=fakes.sync_transport(), functions=[], **routes
        )
        with httpx.Client(
            transport=httpx.WSGITransport(app=wsgi), base_url="http://api.test", timeout=30
        ) as sync_client:
            yield [("asgi", asgi_post), ("wsgi", sync_client.post)]
        portal.call(client.aclose)
        portal.call(transport.aclose)


def test_the_route_speaks_on_both_shells() -> None:
    voice = FakeElevenLabs(api_key=XI_KEY)
    with both_shells(voice) as shells:
        for shell, post in shells:
            response = post(SPEECH, json={"text": "hello", "outputFormat": "pcm_16000"})
            assert response.status_code == 200, (shell, response.text)
            assert response.headers["cache-control"] == "no-store"
            body = response.json()
            assert body["provider"] == "elevenlabs"
            assert body["mimeType"] == "audio/pcm"
            assert base64.b64decode(body["audioBase64"]) == voice.audio_for(
                "hello", "voice-1", "pcm_16000"
            )
            recorded = voice.requests[-1]
            assert recorded.headers["xi-api-key"] == XI_KEY
            assert recorded.json == {"text": "hello"}
            # The client secret answers who speaks, and asks for text only.
            secret = post("/navai/realtime/client-secret", json={}).json()
            assert secret["speech"] == {"provider": "elevenlabs"}


def test_upstream_trouble_maps_as_for_openai(caplog: pytest.LogCaptureFixture) -> None:
    voice = FakeElevenLabs(api_key=XI_KEY)
    with both_shells(voice) as shells:
        for _, post in shells:
            voice.rate_limit("7", times=1)
            limited = post(SPEECH, json={"text": "hi"})
            assert limited.status_code == 429
            assert limited.headers["retry-after"] == "7"
            assert limited.json()["error"].startswith("ElevenLabs synthesize failed (429): ")
            voice.fail(401, f"bad key {XI_KEY}", times=1)
            refused = post(SPEECH, json={"text": "hi"})
            assert refused.status_code == 502
            assert XI_KEY not in refused.text
            voice.stall(5, times=3)
            with caplog.at_level(logging.WARNING, logger="navai_mw"):
                late = post(SPEECH, json={"text": "hi"})
            assert late.status_code == 504
            assert late.json() == {"error": "ElevenLabs synthesize timed out."}
            voice.reset()
            assert "synthesizing speech failed" in caplog.text
    assert XI_KEY not in caplog.text


def test_speech_is_off_unless_elevenlabs_is_the_provider() -> None:
    voice = FakeElevenLabs(api_key=XI_KEY)
    with both_shells(voice, tts_provider="openai") as shells:
        for _, post in shells:
            response = post(SPEECH, json={"text": "hi"})
            assert response.status_code == 404
            assert response.json() == {"error": NOT_ENABLED}
    with both_shells(voice, speech_synthesize_path=None) as shells:
        for _, post in shells:
            assert post(SPEECH, json={"text": "hi"}).text == "app"
    assert voice.requests == []


def test_the_session_asks_for_text_when_elevenlabs_speaks() -> None:
    request = build_upstream_request(options(), {"voice": "ash"})
    session = json.loads(request.body)["session"]
    assert session["output_modalities"] == ["text"]
    assert "audio" not in session
    openai = build_upstream_request(options(tts_provider="openai"), {"voice": "ash"})
    assert json.loads(openai.body)["session"]["audio"] == {"output": {"voice": "ash"}}


# -- the Python functions -------------------------------------------------------------


def test_synthesize_speech_sync_and_async() -> None:
    voice = FakeElevenLabs(api_key=XI_KEY)
    opts = options(elevenlabs_base_url=voice.base_url)
    with voice.sync_transport() as transport:
        speech = synthesize_speech_sync(opts, {"text": "one"}, transport=transport)
    assert speech.audio == voice.audio_for("one", "voice-1")

    async def main() -> bytes:
        async with voice.async_transport() as transport:
            spoken = await synthesize_speech(opts, {"text": "two"}, transport=transport)
        return spoken.audio

    assert anyio.run(main) == voice.audio_for("two", "voice-1")
    with pytest.raises(RequestError, match="text is required"):
        synthesize_speech_sync(opts, {})


# -- options ------------------------------------------------------------------------------


def test_the_environment_as_the_reference_reads_it() -> None:
    opts = get_navai_voice_backend_options_from_env(
        {
            "OPENAI_API_KEY": CANARY_KEY,
            "NAVAI_TTS_PROVIDER": " ElevenLabs ",
            "ELEVENLABS_API_KEY": XI_KEY,
            "ELEVENLABS_BASE_URL": "https://xi.example/",
            "ELEVENLABS_VOICE_ID": "v",
            "ELEVENLABS_MODEL_ID": "m",
            "ELEVENLABS_OUTPUT_FORMAT": "pcm_16000",
            "ELEVENLABS_OPTIMIZE_STREAMING_LATENCY": "2",
            "ELEVENLABS_STABILITY": "0.3",
            "ELEVENLABS_SIMILARITY_BOOST": "0.6",
            "ELEVENLABS_STYLE": "0",
            "ELEVENLABS_USE_SPEAKER_BOOST": "no",
        }
    )
    assert opts.tts_provider == "elevenlabs"
    assert opts.elevenlabs_api_key == XI_KEY
    assert opts.elevenlabs_base_url == "https://xi.example"
    assert (opts.elevenlabs_voice_id, opts.elevenlabs_model_id) == ("v", "m")
    assert opts.elevenlabs_output_format == "pcm_16000"
    assert opts.elevenlabs_optimize_streaming_latency == 2.0
    assert opts.elevenlabs_voice_settings == VoiceSettings(
        stability=0.3, similarity_boost=0.6, style=0.0, use_speaker_boost=False
    )
    assert XI_KEY not in repr(opts)
    # Anything but "elevenlabs" is OpenAI, as in the reference.
    other = get_navai_voice_backend_options_from_env(
        {"OPENAI_API_KEY": CANARY_KEY, "NAVAI_TTS_PROVIDER": "polly"}
    )
    assert other.tts_provider == "openai"
    assert other.elevenlabs_voice_settings is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ELEVENLABS_STABILITY", "high"),
        ("ELEVENLABS_OPTIMIZE_STREAMING_LATENCY", "inf"),
        ("ELEVENLABS_USE_SPEAKER_BOOST", "maybe"),
    ],
)
def test_malformed_speech_variables_fail_at_start_up(name: str, value: str) -> None:
    with pytest.raises(OptionsError, match=name):
        get_navai_voice_backend_options_from_env({"OPENAI_API_KEY": CANARY_KEY, name: value})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tts_provider": "polly"}, "tts_provider must be"),
        ({"elevenlabs_api_key": "has space"}, "elevenlabs_api_key must be printable"),
        ({"elevenlabs_base_url": "ftp://x"}, "elevenlabs_base_url must be an http(s) URL"),
        ({"elevenlabs_base_url": "https://u:p@x"}, "sent to ElevenLabs"),
        ({"elevenlabs_optimize_streaming_latency": "1"}, "must be a number"),
        ({"elevenlabs_voice_settings": {"stability": 1}}, "must be a VoiceSettings"),
        (
            {"elevenlabs_voice_settings": VoiceSettings(stability=float("nan"))},
            "stability must be a finite number",
        ),
    ],
)
def test_bad_speech_options_fail_when_built(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionsError) as caught:
        options(**overrides)
    assert message in caught.value.message
    assert "u:p" not in caught.value.message


BOOST = "elevenlabs_voice_settings.use_speaker_boost must be True or False."


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"stability": 1}, "elevenlabs_voice_settings must be a VoiceSettings."),
        (VoiceSettings(use_speaker_boost="yes"), BOOST),  # type: ignore[arg-type]
        (VoiceSettings(use_speaker_boost=1), BOOST),  # type: ignore[arg-type]
    ],
    ids=["dict", "boost-word", "boost-number"],
)
def test_voice_settings_of_the_wrong_kind_are_refused_in_these_words(
    settings: Any, message: str
) -> None:
    with pytest.raises(OptionsError) as caught:
        options(elevenlabs_voice_settings=settings)
    assert caught.value.message == message


def test_a_missing_key_warns_at_start_up(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="navai_mw"):
        NavaiWSGIMiddleware(hello_wsgi, options(elevenlabs_api_key=None), functions=[])
    assert [record.getMessage() for record in caplog.records if record.name == "navai_mw"] == [
        "navai_mw: speech is voiced by ElevenLabs but no ElevenLabs API key is set "
        "(ELEVENLABS_API_KEY): the speech route will answer 400"
    ]
