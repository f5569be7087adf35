"""A fake ElevenLabs text-to-speech."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from urllib.parse import unquote

import attrs

from .scripted import (
    RecordedRequest,
    _Behaviour,
    _detail_reply,
    _json_reply,
    _Reply,
    _ScriptedUpstream,
)

TEXT_TO_SPEECH_PATH = "/v1/text-to-speech/"

DEFAULT_OUTPUT_FORMAT = "mp3_44100_128"

# Output format prefix -> (content type, first bytes of the made-up audio).
# Any other format is answered as MP3, ElevenLabs' default.
_AUDIO_FORMATS: dict[str, tuple[str, bytes]] = {
    "mp3": ("audio/mpeg", b"ID3"),
    "pcm": ("audio/pcm", b""),
    "wav": ("audio/wav", b"RIFF"),
    "ulaw": ("audio/basic", b""),
}


def _audio_format(output_format: str) -> tuple[str, bytes]:
    return _AUDIO_FORMATS.get(output_format.partition("_")[0], _AUDIO_FORMATS["mp3"])


def _detail_status(status: int) -> str:
    """``service_unavailable`` for 503, and so on."""
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


class FakeElevenLabs(_ScriptedUpstream):
    """An ASGI app that speaks made-up audio like ElevenLabs' text-to-speech.

    It answers ``POST /v1/text-to-speech/{voice_id}`` (query
    ``output_format``, default ``mp3_44100_128``) with
    :meth:`audio_for` the body's ``text``, and everything else with a 404.
    ``api_key``, when given, is the only ``xi-api-key`` accepted (others,
    and none, get a 401); without it any key, or none, is accepted.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str = "http://fake-elevenlabs.invalid",
    ) -> None:
        super().__init__(base_url)
        self.api_key = api_key

    # -- telling it what to do ------------------------------------------------

    def fail(
        self,
        status: int = 500,
        message: str = "An internal server error occurred.",
        *,
        times: int | None = None,
    ) -> None:
        """Answer ``status`` with ElevenLabs' JSON error body,
        ``{"detail": {"status": ..., "message": message}}`` (every time, or
        ``times`` times)."""
        self._set(_Behaviour("fail", status=status, message=message), times)

    def rate_limit(self, retry_after: str = "20", *, times: int | None = None) -> None:
        """Answer 429 "Too many concurrent requests" with ``Retry-After``."""
        self._set(_Behaviour("rate_limit", retry_after=retry_after), times)

    # -- answering --------------------------------------------------------------

    def audio_for(
        self, text: str, voice_id: str, output_format: str = DEFAULT_OUTPUT_FORMAT
    ) -> bytes:
        """The audio this fake answers for ``text`` in ``voice_id``: a short
        header for the format (``ID3`` for MP3, ``RIFF`` for WAV, none for
        PCM and μ-law), then a SHA-256 of the three, repeated to 256 bytes.
        The same inputs always give the same bytes, different ones differ."""
        digest = hashlib.sha256(json.dumps([text, voice_id, output_format]).encode()).digest()
        return _audio_format(output_format)[1] + digest * 8

    def _answer(self, request: RecordedRequest, raw_path: str) -> _Reply:
        prefix, _, segment = raw_path.rpartition("/")
        if request.method != "POST" or f"{prefix}/" != TEXT_TO_SPEECH_PATH or not segment:
            return _detail_reply(404, "not_found", "Not found")
        behaviour = self._next()
        if behaviour.kind == "fail":
            status = behaviour.status
            return _detail_reply(status, _detail_status(status), behaviour.message)
        if behaviour.kind == "rate_limit":
            return _detail_reply(
                429,
                "too_many_concurrent_requests",
                "Too many concurrent requests",
                retry_after=behaviour.retry_after,
            )
        reply = self._speak(request, unquote(segment))
        return attrs.evolve(reply, delay=behaviour.seconds)

    def _speak(self, request: RecordedRequest, voice_id: str) -> _Reply:
        if self.api_key is not None and request.headers.get("xi-api-key") != self.api_key:
            return _detail_reply(401, "invalid_api_key", "Invalid API key")
        payload = request.json
        text = payload.get("text") if isinstance(payload, dict) else None
        if not isinstance(text, str) or not text:
            missing = {"loc": ["body", "text"], "msg": "field required"}
            return _json_reply(422, {"detail": [{**missing, "type": "value_error.missing"}]})
        output_format = request.query.get("output_format") or DEFAULT_OUTPUT_FORMAT
        content_type = _audio_format(output_format)[0]
        audio = self.audio_for(text, voice_id, output_format)
        return _Reply(0.0, 200, [("content-type", content_type)], audio)

    # -- ways to reach it ---------------------------------------------------------

    @contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve the fake with uvicorn on ``host``; yields its base URL
        (``http://127.0.0.1:PORT``, no ``/v1``: ElevenLabs' base URL is the
        host, and its clients append ``/v1/text-to-speech/...``)."""
        with self._serving(host, port, "") as url:
            yield url
