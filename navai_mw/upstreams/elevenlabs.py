"""Speech through ElevenLabs, sans-IO: the request to make, and the answer read.

``POST {elevenlabs_base_url}/v1/text-to-speech/{voice_id}`` with the text,
the ``xi-api-key`` header, ``output_format`` (``mp3_44100_128`` unless
told) and ``optimize_streaming_latency`` in the query; the audio comes back
base64-encoded with its MIME type, as ``@navai/voice-backend`` answers.
Failures map as OpenAI's do: 429 with its ``Retry-After``, 504 on time, 502
otherwise, quoting ElevenLabs' ``detail`` with the key redacted.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Generator, Mapping
from typing import Any, Final
from urllib.parse import quote, urlencode

import attrs

from ..core.client_requests import NOT_AN_OBJECT
from ..core.effects import Attempt, Outcome
from ..core.errors import RequestError
from ..core.exchange import attempts, upstream_failure
from ..core.http import Credential, HttpRequest, HttpResponse, compact_json
from ..core.options import DEFAULT_ELEVENLABS_OUTPUT_FORMAT, NavaiVoiceBackendOptions, VoiceSettings
from ..core.values import finite

__all__ = [
    "MAX_SPEECH_AUDIO_BYTES",
    "SynthesizedSpeech",
    "build_speech_request",
    "parse_speech_response",
    "synthesize",
]

# A minute of mp3 at 128 kbit/s is about 1 MB, of 44.1 kHz PCM about 5 MB:
# 32 MiB is well past any sentence a voice agent speaks, and bounds what an
# upstream can make the process hold.
MAX_SPEECH_AUDIO_BYTES: Final = 32 * 1024 * 1024
_WHAT: Final = "ElevenLabs synthesize"
NOT_ENABLED: Final = (
    'Speech synthesis is only available when NAVAI_TTS_PROVIDER is set to "elevenlabs".'
)
NO_CREDENTIALS: Final = "ElevenLabs API key and voice ID are required."
# encodeURIComponent leaves these as they are.
_URI_COMPONENT_SAFE: Final = "-_.!~*'()"


@attrs.frozen(kw_only=True)
class SynthesizedSpeech:
    """Audio made from text.

    Fields: provider (``"elevenlabs"``), mime_type, audio_base64; ``audio``
    is the decoded bytes.
    """

    provider: str
    mime_type: str
    audio_base64: str = attrs.field(repr=False)

    @property
    def audio(self) -> bytes:
        return base64.b64decode(self.audio_base64)

    def to_wire(self) -> dict[str, str]:
        """As the route answers it (``mimeType``, ``audioBase64``)."""
        return {
            "provider": self.provider,
            "mimeType": self.mime_type,
            "audioBase64": self.audio_base64,
        }


def mime_type(output_format: str, content_type: str | None = None) -> str:
    """The answer's Content-Type when it has one, else the format's type."""
    if content_type and content_type.strip():
        return content_type.strip()
    normalized = output_format.strip().lower()
    for prefix, kind in (
        ("mp3", "audio/mpeg"),
        ("pcm", "audio/pcm"),
        ("wav", "audio/wav"),
        ("ulaw", "audio/basic"),
    ):
        if normalized.startswith(prefix):
            return kind
    return "audio/mpeg"


def _text(req: Mapping[str, Any], name: str) -> str | None:
    value = req.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(f"Invalid request field {name}: expected a string.")
    return value.strip() or None


def _js_round(value: float) -> int:
    """``Math.round``: halves go up."""
    return math.floor(value + 0.5)


def build_speech_request(
    opts: NavaiVoiceBackendOptions, req: Mapping[str, Any] | None
) -> HttpRequest:
    """The ElevenLabs call for ``req`` (spelled as on the wire: ``text``,
    ``voiceId``, ``modelId``, ``outputFormat``, ``optimizeStreamingLatency``,
    ``voiceSettings``). Raises 404 when speech is not enabled, 400 for no
    text or no key or voice."""
    return _speech_call(opts, req)[0]


def _speech_call(
    opts: NavaiVoiceBackendOptions, req: Mapping[str, Any] | None
) -> tuple[HttpRequest, str]:
    """The ElevenLabs call, and the output format it asks for (the answer's
    reading needs it)."""
    if opts.tts_provider != "elevenlabs":
        raise RequestError(NOT_ENABLED, status=404)
    if req is None:
        req = {}
    if not isinstance(req, Mapping):
        raise RequestError(NOT_AN_OBJECT)
    text = _text(req, "text")
    if text is None:
        raise RequestError("text is required.")
    voice_id = _text(req, "voiceId") or opts.elevenlabs_voice_id
    api_key = opts.elevenlabs_api_key
    if api_key is None or voice_id is None:
        raise RequestError(NO_CREDENTIALS)
    model_id = _text(req, "modelId") or opts.elevenlabs_model_id
    output_format = (
        _text(req, "outputFormat")
        or opts.elevenlabs_output_format
        or DEFAULT_ELEVENLABS_OUTPUT_FORMAT
    )
    latency = finite(req.get("optimizeStreamingLatency"))
    if latency is None:
        latency = opts.elevenlabs_optimize_streaming_latency
    settings = VoiceSettings.sanitized(req.get("voiceSettings")) or VoiceSettings.sanitized(
        opts.elevenlabs_voice_settings
    )
    query = {"output_format": output_format}
    if latency is not None:
        query["optimize_streaming_latency"] = str(_js_round(latency))
    body: dict[str, Any] = {"text": text}
    if model_id is not None:
        body["model_id"] = model_id
    if settings is not None:
        body["voice_settings"] = settings.to_wire()
    credential = Credential.key_header("xi-api-key", api_key)
    request = HttpRequest(
        method="POST",
        url=(
            f"{opts.elevenlabs_base_url}/v1/text-to-speech/"
            f"{quote(voice_id, safe=_URI_COMPONENT_SAFE)}?{urlencode(query)}"
        ),
        headers=(
            credential.header,
            ("Content-Type", "application/json"),
            ("Accept", mime_type(output_format)),  # one of a few fixed types
        ),
        body=compact_json(body),
        max_response_bytes=MAX_SPEECH_AUDIO_BYTES,
        secret=credential.secret,
    )
    return request, output_format


def _detail(body: bytes) -> str:
    """ElevenLabs' own words: ``detail.message``, or ``detail`` when it is
    a string; else the body as text."""
    text = body.decode("utf-8", errors="replace")
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        return text.strip()
    if isinstance(payload, dict):
        detail = payload.get("detail")
        if isinstance(detail, dict) and isinstance(detail.get("message"), str):
            return str(detail["message"])
        if isinstance(detail, str):
            return detail
    return text.strip()


def parse_speech_response(
    response: HttpResponse, *, output_format: str, secret: str | None = None
) -> SynthesizedSpeech:
    """Read ElevenLabs' answer; ``secret`` (the key sent) is redacted from errors."""
    if not 200 <= response.status < 300:
        raise upstream_failure(_WHAT, response, _detail(response.body), secret)
    return SynthesizedSpeech(
        provider="elevenlabs",
        mime_type=mime_type(output_format, response.header("content-type")),
        audio_base64=base64.b64encode(response.body).decode("ascii"),
    )


def synthesize(
    opts: NavaiVoiceBackendOptions, req: Mapping[str, Any] | None
) -> Generator[Attempt, Outcome, SynthesizedSpeech]:
    """Speech for ``req`` (spelled as on the wire), whole: the request
    built, the shared retry policy within ``upstream_timeout_seconds``, then
    the answer read."""
    request, output_format = _speech_call(opts, req)
    response = yield from attempts(request, budget=opts.upstream_timeout_seconds, what=_WHAT)
    return parse_speech_response(response, output_format=output_format, secret=request.secret)
