"""Value classes, and the one cattrs converter of the package.

Invariants, held by construction so that no other module re-checks them:

* option and request strings are never blank: a blank or whitespace-only
  string is stored as ``None`` ("absent"), as the contract asks;
* the backend API key, when present, is trimmed and header-safe;
* no ``repr`` of any class here shows an API key or a client secret.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs

from .envvars import Env, read
from .errors import OptionsError
from .http import is_header_safe
from .sessions import check_live_session, check_session, session_template
from .urls import _check_base_url, _clean_base_url, _clean_optional_url
from .values import check_text, clean_key, finite, flag, optional_text, outside, seconds

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_ELEVENLABS_BASE_URL",
    "DEFAULT_ELEVENLABS_OUTPUT_FORMAT",
    "DEFAULT_INSTRUCTIONS",
    "DEFAULT_MODEL",
    "DEFAULT_TRANSCRIPTION_MODEL",
    "DEFAULT_VOICE",
    "NavaiVoiceBackendOptions",
    "VoiceSettings",
]

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
# What a request gets when neither it nor the options name one.
DEFAULT_MODEL: Final = "gpt-realtime"
DEFAULT_VOICE: Final = "marin"
DEFAULT_INSTRUCTIONS: Final = "You are a helpful assistant."
DEFAULT_TRANSCRIPTION_MODEL: Final = "gpt-4o-transcribe"
# OpenAI accepts 10..7200 seconds for expires_after.seconds.
MIN_TTL_SECONDS: Final = 10
MAX_TTL_SECONDS: Final = 7200
# The whole upstream exchange, retries included. An hour is far past any
# useful wait for a token, and keeps every clock and thread wait in range.
MAX_UPSTREAM_TIMEOUT_SECONDS: Final = 3600.0


def _check_key(_: object, field: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and not is_header_safe(value):
        # Never echo the key: the message names the option only.
        raise OptionsError(f"{field.name} must be printable ASCII without spaces.")


def _check_ttl(_: object, __: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionsError(f"client_secret_ttl_seconds must be an integer. Received: {value!r}")
    if not MIN_TTL_SECONDS <= value <= MAX_TTL_SECONDS:
        raise OptionsError(
            f"client_secret_ttl_seconds must be between {MIN_TTL_SECONDS} and "
            f"{MAX_TTL_SECONDS}. Received: {value}"
        )


def _check_timeout(_: object, __: attrs.Attribute[Any], value: object) -> None:
    seconds(value, "upstream_timeout_seconds", most=MAX_UPSTREAM_TIMEOUT_SECONDS)


def _session(value: object) -> dict[str, Any] | None:
    """The ``session`` template as a JSON object (checked once the other
    options are known)."""
    return session_template(value, "session", "session fields")


def _live_session(value: object) -> dict[str, Any] | None:
    """The ``live_session`` template as a JSON object (checked likewise)."""
    return session_template(value, "live_session", "Live session fields")


def _check_bool(_: object, field: attrs.Attribute[Any], value: object) -> None:
    flag(value, field.name)


def _allow_list(value: str | Iterable[str] | None) -> Any:
    """``None`` (anything goes), or the allowed values as a tuple of trimmed
    strings; a string is read as a comma-separated list, as in the env."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple, set, frozenset)):
        return value  # for the validator to name
    items = [item.strip() if isinstance(item, str) else item for item in value]
    return tuple(dict.fromkeys(item for item in items if item != ""))


def _check_allow_list(_: object, field: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, tuple) or not all(isinstance(item, str) for item in value):
        raise OptionsError(f"{field.name} must be a list of strings, or None for any.")
    if not value:
        raise OptionsError(
            f"{field.name} is empty: it would refuse every request that names one. "
            "Use None to allow any, or list at least one."
        )


DEFAULT_ELEVENLABS_BASE_URL: Final = "https://api.elevenlabs.io"
DEFAULT_ELEVENLABS_OUTPUT_FORMAT: Final = "mp3_44100_128"
TTS_PROVIDERS: Final = ("openai", "elevenlabs")


@attrs.frozen(kw_only=True)
class VoiceSettings:
    """ElevenLabs voice settings; each one left None is not sent.

    Fields: stability, similarity_boost, style (numbers), use_speaker_boost.
    """

    stability: float | None = None
    similarity_boost: float | None = None
    style: float | None = None
    use_speaker_boost: bool | None = None

    @classmethod
    def sanitized(cls, value: object) -> VoiceSettings | None:
        """From the wire spelling (``similarityBoost``...), keeping only
        finite numbers and booleans, as the reference does; None when
        nothing is left."""
        if isinstance(value, VoiceSettings):
            return value if value.to_wire() else None
        if not isinstance(value, dict):
            return None
        boost = value.get("useSpeakerBoost")
        settings = cls(
            stability=finite(value.get("stability")),
            similarity_boost=finite(value.get("similarityBoost")),
            style=finite(value.get("style")),
            use_speaker_boost=boost if isinstance(boost, bool) else None,
        )
        return settings if settings.to_wire() else None

    def to_wire(self) -> dict[str, float | bool]:
        """As ElevenLabs spells them, without the unset ones."""
        pairs = (
            ("stability", self.stability),
            ("similarity_boost", self.similarity_boost),
            ("style", self.style),
            ("use_speaker_boost", self.use_speaker_boost),
        )
        return {name: value for name, value in pairs if value is not None}


def _provider(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _check_provider(_: object, __: attrs.Attribute[Any], value: object) -> None:
    if value not in TTS_PROVIDERS:
        raise OptionsError(f"tts_provider must be 'openai' or 'elevenlabs'. Received: {value!r}")


def _check_latency(_: object, __: attrs.Attribute[Any], value: object) -> None:
    if value is not None and finite(value) is None:
        raise OptionsError(
            f"elevenlabs_optimize_streaming_latency must be a number. Received: {value!r}"
        )


def _check_voice_settings(_: object, __: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, VoiceSettings):
        raise OptionsError("elevenlabs_voice_settings must be a VoiceSettings.")
    for name in ("stability", "similarity_boost", "style"):
        number = getattr(value, name)
        if number is not None and finite(number) is None:
            raise OptionsError(f"elevenlabs_voice_settings.{name} must be a finite number.")
    if value.use_speaker_boost is not None and not isinstance(value.use_speaker_boost, bool):
        raise OptionsError("elevenlabs_voice_settings.use_speaker_boost must be True or False.")


@attrs.frozen(kw_only=True)
class NavaiVoiceBackendOptions:
    """How the backend mints client secrets.

    Fields:
        openai_api_key: the server's key; it always wins over a request's key.
        default_model, default_voice, default_instructions, default_language,
        default_voice_accent, default_voice_tone: used when a request leaves
            the field out (built-in model ``gpt-realtime``, voice ``marin``,
            instructions ``You are a helpful assistant.``).
        client_secret_ttl_seconds: lifetime of a minted secret, 10..7200.
        allow_api_key_from_request: let clients send ``apiKey`` when the
            server has none.
        openai_base_url: where ``/realtime/client_secrets`` lives.
        upstream_timeout_seconds: bound on the whole upstream exchange,
            retries included.
        allowed_models, allowed_voices: what a request may name (None: any,
            as the reference); a request outside them is a 403.
        allow_client_instructions: whether a request may send its own
            ``instructions`` (True, as the reference).
        tts_provider: ``"openai"`` (the session speaks) or ``"elevenlabs"``
            (the session answers in text and the speech route voices it).
        elevenlabs_api_key, elevenlabs_base_url, elevenlabs_voice_id,
        elevenlabs_model_id, elevenlabs_output_format (``mp3_44100_128``),
        elevenlabs_optimize_streaming_latency, elevenlabs_voice_settings:
            the speech route's defaults; a request may name its own voice,
            model, format, latency and settings.
        session: Realtime session fields sent with every secret (tools,
            turn detection, transcription...), a dict or a JSON string,
            checked against OpenAI's session schema here; navai's own fields
            (type, model, instructions, output voice) are not allowed in it.
        allow_unknown_session_fields: let ``session`` carry fields the
            schema does not know (newer than this version).
        live_model (``gpt-live-1``), live_session: the GPT-Live relay's
            model, and a template for the rest of its session (delegation,
            input history...).
        transcription_model (``gpt-4o-transcribe``), transcription_language,
        transcription_prompt: the transcription-secret route's defaults.
        azure_endpoint: Azure OpenAI's endpoint; setting it selects Azure,
            with exactly one of azure_api_key (sent as ``api-key``) and
            azure_ad_token_provider (a callable, sync or async, returning a
            Microsoft Entra ID token; called for every request).

    Invalid options raise :class:`OptionsError` here, at construction.
    """

    openai_api_key: str | None = attrs.field(
        default=None,
        converter=clean_key,
        validator=[check_text, _check_key],
        repr=False,
    )
    default_model: str | None = optional_text()
    default_voice: str | None = optional_text()
    default_instructions: str | None = optional_text()
    default_language: str | None = optional_text()
    default_voice_accent: str | None = optional_text()
    default_voice_tone: str | None = optional_text()
    client_secret_ttl_seconds: int = attrs.field(default=600, validator=_check_ttl)
    allow_api_key_from_request: bool = attrs.field(default=False, validator=_check_bool)
    openai_base_url: str = attrs.field(
        default=DEFAULT_BASE_URL, converter=_clean_base_url, validator=_check_base_url
    )
    upstream_timeout_seconds: float = attrs.field(default=30.0, validator=_check_timeout)
    # Declared in full, so that type checkers see what the converter accepts.
    allowed_models: tuple[str, ...] | None = attrs.field(
        default=None, converter=_allow_list, validator=_check_allow_list
    )
    allowed_voices: tuple[str, ...] | None = attrs.field(
        default=None, converter=_allow_list, validator=_check_allow_list
    )
    allow_client_instructions: bool = attrs.field(default=True, validator=_check_bool)
    tts_provider: str = attrs.field(
        default="openai", converter=_provider, validator=_check_provider
    )
    elevenlabs_api_key: str | None = attrs.field(
        default=None,
        converter=clean_key,
        validator=[check_text, _check_key],
        repr=False,
    )
    elevenlabs_base_url: str = attrs.field(
        default=DEFAULT_ELEVENLABS_BASE_URL, converter=_clean_base_url, validator=_check_base_url
    )
    elevenlabs_voice_id: str | None = optional_text()
    elevenlabs_model_id: str | None = optional_text()
    elevenlabs_output_format: str | None = optional_text()
    elevenlabs_optimize_streaming_latency: float | None = attrs.field(
        default=None, validator=_check_latency
    )
    elevenlabs_voice_settings: VoiceSettings | None = attrs.field(
        default=None, validator=_check_voice_settings
    )
    # Declared as what it holds once checked; a JSON string is accepted too.
    session: dict[str, Any] | None = attrs.field(default=None, converter=_session, eq=False)
    allow_unknown_session_fields: bool = attrs.field(default=False, validator=_check_bool)
    live_model: str | None = optional_text()
    live_session: dict[str, Any] | None = attrs.field(
        default=None, converter=_live_session, eq=False
    )
    transcription_model: str | None = optional_text()
    transcription_language: str | None = optional_text()
    transcription_prompt: str | None = optional_text()
    azure_endpoint: str | None = attrs.field(
        default=None,
        converter=_clean_optional_url,
        validator=attrs.validators.optional(_check_base_url),
    )
    azure_api_key: str | None = attrs.field(
        default=None,
        converter=clean_key,
        validator=[check_text, _check_key],
        repr=False,
    )
    azure_ad_token_provider: Callable[[], Any] | None = attrs.field(
        default=None, repr=False, eq=False
    )

    @property
    def uses_azure(self) -> bool:
        return self.azure_endpoint is not None

    @property
    def api_base_url(self) -> str:
        """Where the OpenAI API lives for these options: ``openai_base_url``,
        or Azure's v1 API under ``azure_endpoint``."""
        if self.azure_endpoint is not None:
            return f"{self.azure_endpoint}/openai/v1"
        return self.openai_base_url

    def __attrs_post_init__(self) -> None:
        object.__setattr__(
            self,
            "session",
            check_session(
                self.session,
                unknown_ok=self.allow_unknown_session_fields,
                elevenlabs=self.tts_provider == "elevenlabs",
            ),
        )
        object.__setattr__(self, "live_session", check_live_session(self.live_session))
        if self.azure_endpoint is not None:
            self._check_azure()
        elif self.azure_api_key is not None or self.azure_ad_token_provider is not None:
            raise OptionsError(
                "azure_api_key and azure_ad_token_provider need azure_endpoint "
                "(https://<resource>.openai.azure.com)."
            )
        elif self.openai_api_key is None and not self.allow_api_key_from_request:
            raise OptionsError("Missing openai_api_key in NavaiVoiceBackendOptions.")
        self._check_policy_defaults()

    def _check_azure(self) -> None:
        has_key = self.azure_api_key is not None
        has_provider = self.azure_ad_token_provider is not None
        if has_key == has_provider:
            raise OptionsError(
                "Azure OpenAI needs exactly one of azure_api_key and azure_ad_token_provider."
            )
        if has_provider and not callable(self.azure_ad_token_provider):
            raise OptionsError("azure_ad_token_provider must be a callable returning a token.")
        if self.openai_api_key is not None:
            raise OptionsError(
                "openai_api_key is set beside azure_endpoint: Azure OpenAI uses azure_api_key "
                "or azure_ad_token_provider. Remove one of them."
            )

    def _check_policy_defaults(self) -> None:
        # The server's own choices must pass its own policy.
        for name, chosen, allowed in (
            ("model", self.default_model or DEFAULT_MODEL, self.allowed_models),
            ("voice", self.default_voice or DEFAULT_VOICE, self.allowed_voices),
        ):
            if outside(chosen, allowed):
                raise OptionsError(
                    f"default_{name} {chosen!r} is not in allowed_{name}s "
                    f"({', '.join(allowed or ())}): set default_{name} to one of them."
                )


# Upstream connections at most, per transport. OpenAI takes 0.3-0.8 s to
# mint: with N connections a process mints at most N / latency secrets a
# second, so 100 capped a launch-day burst at ~300/s while the page loads
# queued here. Idle ones are all kept: closing them between bursts only to
# reopen them costs a TLS handshake each.
DEFAULT_MAX_CONNECTIONS: Final = 1000
MAX_CONNECTIONS_ENV: Final = "NAVAI_MAX_UPSTREAM_CONNECTIONS"


# Sidebands one process holds at once unless told otherwise
# (``max_sidebands``): an idle one costs a few tens of KiB (docs/calls.md).
DEFAULT_MAX_SIDEBANDS: Final = 10_000


def max_upstream_connections(value: int | None, *, env: Env) -> int:
    """How many upstream connections a transport may hold: ``value``, else
    ``NAVAI_MAX_UPSTREAM_CONNECTIONS`` from ``env``, else 1000; a bad value
    is an :class:`OptionsError` naming where it came from."""
    source: str = "max_upstream_connections"
    given: object = value
    if value is None:
        raw = read(env, MAX_CONNECTIONS_ENV)
        if raw is None:
            return DEFAULT_MAX_CONNECTIONS
        source, given = MAX_CONNECTIONS_ENV, int(raw) if raw.isdigit() else raw
    if isinstance(given, bool) or not isinstance(given, int) or not 1 <= given <= 100_000:
        raise OptionsError(f"{source} must be an integer from 1 to 100000. Received: {given!r}")
    return given
