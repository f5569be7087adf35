"""The sans-IO core: every decision about the upstream exchange, and no I/O.

Options and a request go in, an :class:`HttpRequest` comes out; a status,
headers and body go in, a secret or a :class:`NavaiError` comes out. The
exchange itself, retries and time budget included, is a generator that
yields :class:`Attempt` and is sent :class:`Outcome`; a ten-line driver
(:mod:`navai_mw._client`) runs it over a sync or an async transport, so the
two never disagree.

Promises:

* nothing here reads a clock, draws a random number or touches a socket:
  elapsed time and jitter arrive inside each :class:`Outcome`;
* no message built here contains an API key: upstream text is redacted of
  the key that was sent before it is quoted;
* the request built for a well-formed input equals, field for field, the
  one ``@navai/voice-backend`` sends.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Generator, Mapping
from typing import Any, Final
from urllib.parse import unquote

import attrs

from ._errors import OptionsError, RequestError, UpstreamError
from ._models import (
    DEFAULT_INSTRUCTIONS,
    DEFAULT_MODEL,
    DEFAULT_TRANSCRIPTION_MODEL,
    DEFAULT_VOICE,
    WIRE_NAMES,
    CreateClientSecretRequest,
    CreateTranscriptionSecretRequest,
    HttpRequest,
    HttpResponse,
    NavaiVoiceBackendOptions,
    OpenAIRealtimeClientSecretResponse,
    converter,
    is_header_safe,
)
from ._session import merge_session

__all__ = [
    "Attempt",
    "Exchange",
    "Outcome",
    "attempts",
    "build_instructions",
    "build_upstream_request",
    "exchange",
    "parse_upstream_response",
    "retry_delay",
    "structure_request",
]


# openai-python's policy: two retries, 0.5 * 2**n seconds capped at 8 s, each
# shortened by up to a quarter at random so that clients spread out.
MAX_RETRIES: Final = 2
INITIAL_RETRY_DELAY: Final = 0.5
MAX_RETRY_DELAY: Final = 8.0
# Timeouts (408), lock conflicts (409) and server errors are worth another try;
# 429 is not: the client is told to come back instead of being kept waiting.
_RETRYABLE_STATUSES: Final = frozenset({408, 409})
# An upstream error body is quoted to the client; a proxy's HTML page is not.
MAX_QUOTED_UPSTREAM_CHARS: Final = 500
# A client secret answer is under 1 KiB, its session description a few KiB;
# 1 MiB leaves room for a verbose proxy page and bounds what an endless or
# hostile upstream can make the process hold.
MAX_CLIENT_SECRET_RESPONSE_BYTES: Final = 1024 * 1024
_REDACTED: Final = "[redacted]"
# One encoder for the package: json.dumps builds a new one per call when
# given any option.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"))
# Retry-After is passed on to the client only as what RFC 9110 allows: a
# number of seconds, or an HTTP date (IMF-fixdate).
_RETRY_AFTER: Final = re.compile(
    r"[0-9]{1,10}"
    r"|(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)
_UNICODE_ESCAPE: Final = re.compile(r"\\u([0-9a-fA-F]{4})")


NOT_AN_OBJECT: Final = "Request body must be a JSON object."


def structure_request(
    data: CreateClientSecretRequest | Mapping[str, Any] | None,
) -> CreateClientSecretRequest:
    """Turn a wire-spelled mapping (``voiceAccent``...) into a request.

    A field of the wrong JSON type is a 400 naming the field, in wire spelling.
    """
    if data is None:
        return CreateClientSecretRequest()
    if isinstance(data, CreateClientSecretRequest):
        return data
    if not isinstance(data, Mapping):  # a number, a list, a string from a view's json.loads
        raise RequestError(NOT_AN_OBJECT)
    try:
        return converter.structure(data, CreateClientSecretRequest)
    except TypeError:
        fields = sorted(
            wire
            for wire in WIRE_NAMES.values()
            if data.get(wire) is not None and not isinstance(data[wire], str)
        )
        raise RequestError(
            f"Invalid request field {', '.join(fields)}: expected a string."
        ) from None


def structure_transcription_request(
    data: CreateTranscriptionSecretRequest | Mapping[str, Any] | None,
) -> CreateTranscriptionSecretRequest:
    """A transcription-secret request from its wire spelling (``language``,
    ``prompt``, ``apiKey``); a field of the wrong type is a 400 naming it."""
    if data is None:
        return CreateTranscriptionSecretRequest()
    if isinstance(data, CreateTranscriptionSecretRequest):
        return data
    if not isinstance(data, Mapping):
        raise RequestError(NOT_AN_OBJECT)
    try:
        return converter.structure(data, CreateTranscriptionSecretRequest)
    except TypeError:
        fields = sorted(
            name
            for name in ("apiKey", "language", "prompt")
            if data.get(name) is not None and not isinstance(data[name], str)
        )
        raise RequestError(
            f"Invalid request field {', '.join(fields)}: expected a string."
        ) from None


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


# How much of a refused value a 403 quotes back.
_QUOTED_VALUE_CHARS: Final = 64


def check_policy(opts: NavaiVoiceBackendOptions, req: CreateClientSecretRequest) -> None:
    """Refuse (403) what the options do not let a client ask for; what the
    client leaves out falls back to the server's defaults, which passed the
    same policy when the options were built."""
    for field, value, allowed in (
        ("model", req.model, opts.allowed_models),
        ("voice", req.voice, opts.allowed_voices),
    ):
        if value is not None and allowed is not None and value not in allowed:
            raise RequestError(
                f"Request field {field} is not allowed: {value[:_QUOTED_VALUE_CHARS]!r}. "
                f"Allowed: {', '.join(allowed)}.",
                status=403,
            )
    if req.instructions is not None and not opts.allow_client_instructions:
        raise RequestError(
            "Request field instructions is not allowed: this server sets the instructions.",
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


def build_session(opts: NavaiVoiceBackendOptions, req: CreateClientSecretRequest) -> dict[str, Any]:
    """The realtime session for ``req``: navai's fields (a request's choice
    over the option's default over the built-in one) laid over the
    ``session`` template."""
    session: dict[str, Any] = {
        "type": "realtime",
        "model": req.model or opts.default_model or DEFAULT_MODEL,
        "instructions": build_instructions(
            req.instructions or opts.default_instructions or DEFAULT_INSTRUCTIONS,
            req.language or opts.default_language,
            req.voice_accent or opts.default_voice_accent,
            req.voice_tone or opts.default_voice_tone,
        ),
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


def request_credential(
    opts: NavaiVoiceBackendOptions, api_key: str | None
) -> tuple[str, str] | None:
    """The header that authenticates the upstream call; None when an Azure
    token provider must be asked for it first."""
    if opts.uses_azure:
        if opts.azure_api_key is None:
            return None
        return ("api-key", opts.azure_api_key)
    if api_key is None:
        raise RequestError("Missing API key. Configure openai_api_key or send apiKey in request.")
    return ("Authorization", f"Bearer {api_key}")


def upstream_request(
    opts: NavaiVoiceBackendOptions,
    session: Mapping[str, Any],
    *,
    credential: tuple[str, str],
    safety_identifier: str | None = None,
) -> HttpRequest:
    """The ``POST .../realtime/client_secrets`` call minting ``session``:
    OpenAI's URL, or Azure's when ``azure_endpoint`` is set."""
    url = (
        f"{opts.azure_endpoint}{AZURE_PATH}"
        if opts.uses_azure
        else f"{opts.openai_base_url}/realtime/client_secrets"
    )
    body = {
        "expires_after": {"anchor": "created_at", "seconds": opts.client_secret_ttl_seconds},
        "session": session,
    }
    return HttpRequest(
        method="POST",
        url=url,
        headers=(
            credential,
            ("Content-Type", "application/json"),
            *((("OpenAI-Safety-Identifier", safety_identifier),) if safety_identifier else ()),
        ),
        body=compact_json(body),
        max_response_bytes=MAX_CLIENT_SECRET_RESPONSE_BYTES,
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


def compact_json(value: object) -> bytes:
    """``value`` as compact JSON bytes; ASCII escapes keep lone surrogates
    from a client encodable."""
    return _ENCODER.encode(value).encode("ascii")


def _decoded(text: str) -> str:
    """``text`` with the encodings an echo of the key may arrive in undone:
    JSON's ``\\uXXXX`` escapes, percent-encoding and HTML entities."""
    text = _UNICODE_ESCAPE.sub(lambda match: chr(int(match[1], 16)), text)
    return html.unescape(unquote(text))


def redact(text: str, secret: str | None) -> str:
    """``text`` without ``secret``, however the upstream encoded it.

    When only an encoded copy is found, the decoded text is quoted instead:
    a redacted message that reads a little differently beats a leaked key.
    """
    if not secret:
        return text
    if secret not in text:
        decoded = _decoded(text)
        if secret in decoded:
            text = decoded
    return text.replace(secret, _REDACTED)


def upstream_message(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace")
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):  # a proxy's page, or absurd nesting
        return text.strip()
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return text.strip()


def upstream_failure(
    what: str, response: HttpResponse, message: str, secret: str | None
) -> UpstreamError:
    """The error for an upstream's failure answer: its own ``message``
    quoted (the key redacted, at most a few hundred characters); 429 keeps
    its ``Retry-After``, everything else is a 502."""
    message = redact(message, secret)
    if len(message) > MAX_QUOTED_UPSTREAM_CHARS:
        message = message[:MAX_QUOTED_UPSTREAM_CHARS] + "..."
    text = f"{what} failed ({response.status}): {message}"
    if response.status == 429:
        return UpstreamError(text, status=429, headers=retry_after_headers(response))
    return UpstreamError(text)


def retry_after_headers(response: HttpResponse) -> tuple[tuple[str, str], ...]:
    """The upstream's ``Retry-After``, to pass on verbatim: only when it says
    what the header may say (and so can carry nothing else)."""
    retry_after = (response.header("retry-after") or "").strip()
    return (("Retry-After", retry_after),) if _RETRY_AFTER.fullmatch(retry_after) else ()


def parse_upstream_response(
    response: HttpResponse, *, secret: str | None = None, what: str = "OpenAI client_secrets"
) -> OpenAIRealtimeClientSecretResponse:
    """Read OpenAI's answer; ``secret`` (the key sent) is redacted from errors;
    ``what`` names the upstream in them."""
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
    )


def is_retryable(status: int) -> bool:
    return status in _RETRYABLE_STATUSES or status >= 500


def retry_delay(retries_done: int, *, jitter: float) -> float:
    """Seconds to wait before retry number ``retries_done + 1``.

    ``jitter`` is a number in [0, 1) drawn by the caller.
    """
    delay = min(INITIAL_RETRY_DELAY * 2.0**retries_done, MAX_RETRY_DELAY)
    return delay * (1.0 - 0.25 * jitter)


@attrs.frozen(kw_only=True)
class Attempt:
    """Send ``request`` after waiting ``delay`` seconds; give up after ``timeout``.

    ``first`` marks the first attempt of an exchange: the driver measures
    ``Outcome.elapsed`` from there.
    """

    request: HttpRequest
    delay: float
    timeout: float
    first: bool = False


@attrs.frozen
class Outcome:
    """What an :class:`Attempt` gave.

    Fields:
        response: the upstream response, or None when none arrived.
        timed_out: True when the attempt ran out of time.
        elapsed: seconds since the exchange began, measured by the driver.
        jitter: a fresh random number in [0, 1), drawn by the driver.
    """

    response: HttpResponse | None
    timed_out: bool = False
    elapsed: float = 0.0
    jitter: float = 0.0


Exchange = Generator[Attempt, Outcome, OpenAIRealtimeClientSecretResponse]

_CLIENT_SECRETS: Final = "OpenAI client_secrets"
_AZURE_CLIENT_SECRETS: Final = "Azure OpenAI client_secrets"
AZURE_PATH: Final = "/openai/v1/realtime/client_secrets"


def attempts(
    request: HttpRequest,
    *,
    budget: float,
    max_retries: int = MAX_RETRIES,
    what: str = _CLIENT_SECRETS,
) -> Generator[Attempt, Outcome, HttpResponse]:
    """Send ``request`` until an answer worth reading comes: the retry
    policy and the time budget, shared by every upstream call.

    Connection failures, 408, 409 and 5xx are retried up to ``max_retries``
    times, never past ``budget`` seconds in all. Raises :class:`UpstreamError`:
    504 when the time runs out, 502 when nothing answered or the answer is
    longer than ``request.max_response_bytes``; ``what`` names the upstream
    in the message.
    """
    outcome = yield Attempt(request=request, delay=0.0, timeout=budget, first=True)
    retries = 0
    while True:
        if outcome.timed_out or outcome.elapsed >= budget:
            raise UpstreamError(f"{what} timed out.", status=504)
        response = outcome.response
        if response is not None and len(response.body) > request.max_response_bytes:
            raise UpstreamError(
                f"{what} answered with more than {request.max_response_bytes} bytes."
            )
        retryable = response is None or is_retryable(response.status)
        if retryable and retries < max_retries:
            delay = retry_delay(retries, jitter=outcome.jitter)
            remaining = budget - outcome.elapsed - delay
            if remaining > 0:
                retries += 1
                outcome = yield Attempt(request=request, delay=delay, timeout=remaining)
                continue
        if response is None:
            raise UpstreamError(f"{what} could not be reached.")
        return response


def exchange(request: HttpRequest, *, budget: float, provider: str = "openai") -> Exchange:
    """Mint one client secret upstream: :func:`attempts`, then the answer
    read; ``provider`` (who voices the session) goes into its ``speech``."""
    what = _AZURE_CLIENT_SECRETS if AZURE_PATH in request.url else _CLIENT_SECRETS
    response = yield from attempts(request, budget=budget, what=what)
    secret = parse_upstream_response(response, secret=secret_of(request), what=what)
    return attrs.evolve(secret, speech={"provider": provider})


def secret_of(request: HttpRequest) -> str | None:
    """The credential of a request built here (a bearer token or an Azure
    ``api-key``), for redaction."""
    headers = dict(request.headers)
    if "api-key" in headers:
        return headers["api-key"]
    return headers.get("Authorization", "").removeprefix("Bearer ") or None
