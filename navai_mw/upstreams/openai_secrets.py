"""OpenAI's ``POST /realtime/client_secrets``, sans-IO: the session built
from the options and the request, the policy applied, the request to make,
and the answer read.

Options and a request go in, an :class:`HttpRequest` comes out; a status,
headers and body go in, a secret or a :class:`NavaiError` comes out. The
exchange, retries and time budget included, is a generator that yields
:class:`Attempt` and is sent :class:`Outcome`; a short driver
(:mod:`navai_mw.runtime.drivers`) runs it over a sync or an async
transport, so the two never disagree.

Promises:

* nothing here reads a clock, draws a random number or touches a socket:
  elapsed time and jitter arrive inside each :class:`Outcome`;
* no message built here contains an API key: upstream text is redacted of
  the credential the request carries before it is quoted;
* the request built for a well-formed input equals, field for field, the
  one ``@navai/voice-backend`` sends.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Generator, Mapping
from typing import Any, Final

import attrs

from ..core.client_requests import (
    CreateClientSecretRequest,
    CreateTranscriptionSecretRequest,
    structure_request,
)
from ..core.effects import Attempt, Outcome
from ..core.errors import OptionsError, RequestError, UpstreamError
from ..core.exchange import attempts, upstream_failure, upstream_message
from ..core.http import Credential, HttpRequest, HttpResponse, compact_json, is_header_safe
from ..core.options import (
    DEFAULT_INSTRUCTIONS,
    DEFAULT_MODEL,
    DEFAULT_TRANSCRIPTION_MODEL,
    DEFAULT_VOICE,
    NavaiVoiceBackendOptions,
)
from ..core.sessions import merge_session
from ..core.values import outside

__all__ = [
    "Exchange",
    "build_instructions",
    "build_upstream_request",
    "exchange",
    "parse_upstream_response",
]

# A client secret answer is under 1 KiB, its session description a few KiB;
# 1 MiB leaves room for a verbose proxy page and bounds what an endless or
# hostile upstream can make the process hold.
MAX_CLIENT_SECRET_RESPONSE_BYTES: Final = 1024 * 1024
CLIENT_SECRETS: Final = "OpenAI client_secrets"
AZURE_CLIENT_SECRETS: Final = "Azure OpenAI client_secrets"


def build_instructions(
    base: str, language: str | None, voice_accent: str | None, voice_tone: str | None
) -> str:
    lines = [base.strip()]
    if language:
        lines.append(f"Always reply in {language.strip()}.")
    if voice_accent:
        lines.append(f"Use a {voice_accent.strip()} accent while speaking.")
    if voice_tone:
        lines.append(f"Use a {voice_tone.strip()} tone while speaking.")
    return "\n".join(lines)


@attrs.frozen(kw_only=True)
class OpenAIRealtimeClientSecretResponse:
    """A minted client secret.

    Fields:
        value: the ephemeral secret (``ek_...``); hidden from ``repr``.
        expires_at: Unix time, in seconds, when it stops working.
        session: the session OpenAI created, as OpenAI described it.
        speech: who voices the session, ``{"provider": "openai"}`` or
            ``{"provider": "elevenlabs"}``, as the reference answers.
    """

    value: str = attrs.field(repr=False)
    expires_at: int
    session: dict[str, Any] | None = None
    speech: dict[str, str] = attrs.field(factory=lambda: {"provider": "openai"})


# How much of a refused value a 403 quotes back.
_QUOTED_VALUE_CHARS: Final = 64

# When the server sets the instructions, the fields that add a line to them
# may only name a language, an accent or a tone: a short phrase on one line,
# which can end no sentence and open no other (no "." or ":", no quotes, no
# brackets, no line break or other control character).
MAX_PHRASE_CHARS: Final = 40
_PHRASE_PUNCTUATION: Final = frozenset(" -',()/")
_PHRASE_FIELDS: Final = (
    ("language", "language"),
    ("voiceAccent", "voice_accent"),
    ("voiceTone", "voice_tone"),
)


def is_phrase(value: str) -> bool:
    """Whether ``value`` (trimmed) is a short phrase: at most
    :data:`MAX_PHRASE_CHARS` letters (of any script, with their marks),
    digits, spaces and ``- ' , ( ) /``."""
    value = value.strip()
    return len(value) <= MAX_PHRASE_CHARS and all(
        char in _PHRASE_PUNCTUATION or unicodedata.category(char)[0] in "LMN" for char in value
    )


def check_policy(opts: NavaiVoiceBackendOptions, req: CreateClientSecretRequest) -> None:
    """Refuse (403) what the options do not let a client ask for; what the
    client leaves out falls back to the server's defaults, which passed the
    same policy when the options were built. With
    ``allow_client_instructions=False`` the client sends no instructions,
    and ``language``, ``voiceAccent`` and ``voiceTone``, whose text goes
    into them, must each be a short phrase (:func:`is_phrase`)."""
    for field, value, allowed in (
        ("model", req.model, opts.allowed_models),
        ("voice", req.voice, opts.allowed_voices),
    ):
        if outside(value, allowed):
            raise RequestError(
                f"Request field {field} is not allowed: {str(value)[:_QUOTED_VALUE_CHARS]!r}. "
                f"Allowed: {', '.join(allowed or ())}.",
                status=403,
            )
    if opts.allow_client_instructions:
        return
    if req.instructions is not None:
        raise RequestError(
            "Request field instructions is not allowed: this server sets the instructions.",
            status=403,
        )
    for wire, name in _PHRASE_FIELDS:
        value = getattr(req, name)
        if value is not None and not is_phrase(value):
            raise RequestError(
                f"Request field {wire} is not allowed: this server sets the instructions, so "
                f"{wire} may only be a name of at most {MAX_PHRASE_CHARS} letters, digits, "
                "spaces and - ' , ( ) /.",
                status=403,
            )


def resolve_api_key(
    opts: NavaiVoiceBackendOptions,
    req: CreateClientSecretRequest | CreateTranscriptionSecretRequest,
) -> str | None:
    # The server's key always wins. Options without one always allow request
    # keys (checked when the options are built), so a missing request key is
    # the only way left to fail. A request's key never goes to Azure.
    if opts.uses_azure:
        return None
    if opts.openai_api_key is not None:
        return opts.openai_api_key
    if req.api_key is None:
        raise RequestError("Missing API key. Configure openai_api_key or send apiKey in request.")
    if not is_header_safe(req.api_key):
        raise RequestError("Invalid request field apiKey: expected printable ASCII.")
    return req.api_key


def session_instructions(opts: NavaiVoiceBackendOptions, req: CreateClientSecretRequest) -> str:
    """The instructions a session gets: a request's choices over the
    options' defaults over the built-in ones (Realtime and Live alike)."""
    return build_instructions(
        req.instructions or opts.default_instructions or DEFAULT_INSTRUCTIONS,
        req.language or opts.default_language,
        req.voice_accent or opts.default_voice_accent,
        req.voice_tone or opts.default_voice_tone,
    )


def build_session(opts: NavaiVoiceBackendOptions, req: CreateClientSecretRequest) -> dict[str, Any]:
    """The realtime session for ``req``: navai's fields (a request's choice
    over the option's default over the built-in one) laid over the
    ``session`` template."""
    session: dict[str, Any] = {
        "type": "realtime",
        "model": req.model or opts.default_model or DEFAULT_MODEL,
        "instructions": session_instructions(opts, req),
    }
    if opts.tts_provider == "elevenlabs":
        # ElevenLabs voices the answers: the session only writes them.
        session["output_modalities"] = ["text"]
    else:
        session["audio"] = {"output": {"voice": req.voice or opts.default_voice or DEFAULT_VOICE}}
    return merge_session(opts.session, session)


def build_transcription_session(
    opts: NavaiVoiceBackendOptions, req: CreateTranscriptionSecretRequest
) -> dict[str, Any]:
    """The transcription session for ``req``: the model, language and prompt
    (a request's over the options'), with the template's input audio
    settings (format, turn detection, noise reduction) and ``include``."""
    template = opts.session or {}
    template_input = template.get("audio", {}).get("input", {})
    from_template = template_input.get("transcription", {})
    transcription = {
        **from_template,
        "model": opts.transcription_model
        or from_template.get("model")
        or DEFAULT_TRANSCRIPTION_MODEL,
    }
    language = req.language or opts.transcription_language
    prompt = req.prompt or opts.transcription_prompt
    if language is not None:
        transcription["language"] = language
    if prompt is not None:
        transcription["prompt"] = prompt
    audio_input = {
        key: template_input[key]
        for key in ("format", "turn_detection", "noise_reduction")
        if key in template_input
    }
    session: dict[str, Any] = {
        "type": "transcription",
        "audio": {"input": {**audio_input, "transcription": transcription}},
    }
    if "include" in template:
        session["include"] = template["include"]
    return session


def request_credential(opts: NavaiVoiceBackendOptions, api_key: str | None) -> Credential | None:
    """What authenticates the upstream call; None when an Azure token
    provider must be asked for it first."""
    if opts.uses_azure:
        if opts.azure_api_key is None:
            return None
        return Credential.key_header("api-key", opts.azure_api_key)
    if api_key is None:
        raise RequestError("Missing API key. Configure openai_api_key or send apiKey in request.")
    return Credential.bearer(api_key)


def client_secrets_name(opts: NavaiVoiceBackendOptions) -> str:
    """What messages call the client_secrets upstream of these options."""
    return AZURE_CLIENT_SECRETS if opts.uses_azure else CLIENT_SECRETS


def upstream_request(
    opts: NavaiVoiceBackendOptions,
    session: Mapping[str, Any],
    *,
    credential: Credential,
    safety_identifier: str | None = None,
) -> HttpRequest:
    """The ``POST {api base}/realtime/client_secrets`` call minting
    ``session`` (OpenAI's, or Azure's when ``azure_endpoint`` is set)."""
    body = {
        "expires_after": {"anchor": "created_at", "seconds": opts.client_secret_ttl_seconds},
        "session": session,
    }
    return HttpRequest(
        method="POST",
        url=f"{opts.api_base_url}/realtime/client_secrets",
        headers=(
            credential.header,
            ("Content-Type", "application/json"),
            *((("OpenAI-Safety-Identifier", safety_identifier),) if safety_identifier else ()),
        ),
        body=compact_json(body),
        max_response_bytes=MAX_CLIENT_SECRET_RESPONSE_BYTES,
        secret=credential.secret,
    )


def build_upstream_request(
    opts: NavaiVoiceBackendOptions,
    req: CreateClientSecretRequest | Mapping[str, Any] | None = None,
    *,
    safety_identifier: str | None = None,
) -> HttpRequest:
    """The ``POST /realtime/client_secrets`` call for this request.

    ``safety_identifier`` (a hash of the caller's identity) is sent as
    ``OpenAI-Safety-Identifier``, so that OpenAI can single out one abusive
    user instead of the whole account. With an Azure token provider there is
    no request to build before the provider is asked (the client functions
    and the middlewares do that).
    """
    req = structure_request(req)
    check_policy(opts, req)
    credential = request_credential(opts, resolve_api_key(opts, req))
    if credential is None:
        raise OptionsError(
            "azure_ad_token_provider is asked for a token on every request: mint with "
            "create_realtime_client_secret or the middleware."
        )
    return upstream_request(
        opts, build_session(opts, req), credential=credential, safety_identifier=safety_identifier
    )


def parse_upstream_response(
    response: HttpResponse,
    *,
    secret: str | None = None,
    what: str = CLIENT_SECRETS,
    speech: str = "openai",
) -> OpenAIRealtimeClientSecretResponse:
    """Read OpenAI's answer; ``secret`` (the key sent) is redacted from errors;
    ``what`` names the upstream in them; ``speech`` is who voices the session."""
    if not 200 <= response.status < 300:
        raise upstream_failure(what, response, upstream_message(response.body), secret)
    try:
        payload = json.loads(response.body)
    except (ValueError, RecursionError):
        payload = None
    if not isinstance(payload, dict):
        raise UpstreamError(f"{what} returned a body that is not a JSON object.")
    value = payload.get("value")
    expires_at = payload.get("expires_at")
    session = payload.get("session")
    if not isinstance(value, str) or not value:
        raise UpstreamError(f"{what} returned no client secret value.")
    if isinstance(expires_at, bool) or not isinstance(expires_at, int):
        raise UpstreamError(f"{what} returned no integer expires_at.")
    return OpenAIRealtimeClientSecretResponse(
        value=value,
        expires_at=expires_at,
        session=session if isinstance(session, dict) else None,
        speech={"provider": speech},
    )


Exchange = Generator[Attempt, Outcome, OpenAIRealtimeClientSecretResponse]


def exchange(
    request: HttpRequest,
    *,
    budget: float,
    provider: str = "openai",
    what: str = CLIENT_SECRETS,
) -> Exchange:
    """Mint one client secret upstream: :func:`attempts`, then the answer
    read (``request.secret`` redacted from any failure it quotes);
    ``provider`` (who voices the session) goes into its ``speech``, and
    ``what`` names the upstream in messages."""
    response = yield from attempts(request, budget=budget, what=what)
    return parse_upstream_response(response, secret=request.secret, what=what, speech=provider)
