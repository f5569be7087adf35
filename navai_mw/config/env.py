"""Environment variables -> :class:`NavaiVoiceBackendOptions`.

The reference's variables, ``OPENAI_BASE_URL``, the request policy
(``NAVAI_ALLOWED_MODELS``, ``NAVAI_ALLOWED_VOICES``,
``NAVAI_ALLOW_CLIENT_INSTRUCTIONS``), and speech (``NAVAI_TTS_PROVIDER``,
``ELEVENLABS_*``, as the reference reads them). A variable set to a blank
string counts as unset (the reference would send ``"model": ""``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any, Final

from ..core.envvars import (
    Env,
    read,
    read_bool,
    read_int,
    read_list,
    read_number,
)
from ..core.errors import OptionsError
from ..core.options import (
    DEFAULT_BASE_URL,
    DEFAULT_ELEVENLABS_BASE_URL,
    NavaiVoiceBackendOptions,
    VoiceSettings,
)
from ..core.rate_limit_policy import parse_rate_limits
from ..guard.addresses import parse_trusted_proxies
from ..guard.authorizers import Authorizer, any_of, bearer_tokens
from ..guard.guard import Guard
from ..guard.jwt_bearer import jwt_bearer

__all__ = [
    "get_cors_origins_from_env",
    "get_navai_voice_backend_options_from_env",
    "guard_from_env",
]

logger = logging.getLogger("navai_mw")
AZURE_WINS_WARNING: Final = (
    "AZURE_OPENAI_ENDPOINT and OPENAI_API_KEY are both set: minting with Azure OpenAI; "
    "OPENAI_API_KEY is ignored"
)


def _ttl(env: Env) -> int:
    ttl = read_int(env, "OPENAI_REALTIME_CLIENT_SECRET_TTL", option="client_secret_ttl_seconds")
    return 600 if ttl is None else ttl


def get_navai_voice_backend_options_from_env(
    env: Mapping[str, str | None] | None = None,
) -> NavaiVoiceBackendOptions:
    """Options from ``env`` (default ``os.environ``).

    Key policy, as in the reference: with ``OPENAI_API_KEY`` set, clients may
    send their own key only when ``NAVAI_ALLOW_FRONTEND_API_KEY`` is ``true``
    (any case); without it, they may.
    """
    if env is None:
        env = os.environ
    api_key = read(env, "OPENAI_API_KEY")
    azure_endpoint = read(env, "AZURE_OPENAI_ENDPOINT")
    if azure_endpoint is not None and api_key is not None:
        # Many machines export both: Azure was asked for explicitly.
        logger.warning(AZURE_WINS_WARNING)
        api_key = None
    allow = (read(env, "NAVAI_ALLOW_FRONTEND_API_KEY") or "").strip().lower() == "true"
    return NavaiVoiceBackendOptions(
        openai_api_key=api_key,
        allow_api_key_from_request=azure_endpoint is None and (allow or api_key is None),
        azure_endpoint=azure_endpoint,
        azure_api_key=read(env, "AZURE_OPENAI_API_KEY"),
        session=read(env, "OPENAI_REALTIME_SESSION"),
        live_model=read(env, "OPENAI_LIVE_MODEL"),
        transcription_model=read(env, "OPENAI_TRANSCRIPTION_MODEL"),
        transcription_language=read(env, "OPENAI_TRANSCRIPTION_LANGUAGE"),
        transcription_prompt=read(env, "OPENAI_TRANSCRIPTION_PROMPT"),
        client_secret_ttl_seconds=_ttl(env),
        openai_base_url=read(env, "OPENAI_BASE_URL") or DEFAULT_BASE_URL,
        default_model=read(env, "OPENAI_REALTIME_MODEL"),
        default_voice=read(env, "OPENAI_REALTIME_VOICE"),
        default_instructions=read(env, "OPENAI_REALTIME_INSTRUCTIONS"),
        default_language=read(env, "OPENAI_REALTIME_LANGUAGE"),
        default_voice_accent=read(env, "OPENAI_REALTIME_VOICE_ACCENT"),
        default_voice_tone=read(env, "OPENAI_REALTIME_VOICE_TONE"),
        allowed_models=read(env, "NAVAI_ALLOWED_MODELS"),
        allowed_voices=read(env, "NAVAI_ALLOWED_VOICES"),
        allow_client_instructions=read_bool(env, "NAVAI_ALLOW_CLIENT_INSTRUCTIONS", True),
        # As the reference: anything but "elevenlabs" means OpenAI voices it.
        tts_provider=(
            "elevenlabs"
            if (read(env, "NAVAI_TTS_PROVIDER") or "").strip().lower() == "elevenlabs"
            else "openai"
        ),
        elevenlabs_api_key=read(env, "ELEVENLABS_API_KEY"),
        elevenlabs_base_url=read(env, "ELEVENLABS_BASE_URL") or DEFAULT_ELEVENLABS_BASE_URL,
        elevenlabs_voice_id=read(env, "ELEVENLABS_VOICE_ID"),
        elevenlabs_model_id=read(env, "ELEVENLABS_MODEL_ID"),
        elevenlabs_output_format=read(env, "ELEVENLABS_OUTPUT_FORMAT"),
        elevenlabs_optimize_streaming_latency=read_number(
            env, "ELEVENLABS_OPTIMIZE_STREAMING_LATENCY"
        ),
        elevenlabs_voice_settings=VoiceSettings.sanitized(
            {
                "stability": read_number(env, "ELEVENLABS_STABILITY"),
                "similarityBoost": read_number(env, "ELEVENLABS_SIMILARITY_BOOST"),
                "style": read_number(env, "ELEVENLABS_STYLE"),
                "useSpeakerBoost": (
                    None
                    if read(env, "ELEVENLABS_USE_SPEAKER_BOOST") is None
                    else read_bool(env, "ELEVENLABS_USE_SPEAKER_BOOST", False)
                ),
            }
        ),
    )


def get_cors_origins_from_env(env: Mapping[str, str | None] | None = None) -> list[str] | None:
    """Allowed CORS origins from ``NAVAI_CORS_ORIGIN`` (comma-separated,
    ``*`` for any); None when unset, which turns CORS handling off."""
    if env is None:
        env = os.environ
    return read_list(env, "NAVAI_CORS_ORIGIN")


def guard_from_env(
    env: Mapping[str, str | None] | None = None,
    *,
    api_key: str | None,
    authorize: Any = None,
    rate_limit: str | Mapping[str, str] | None = None,
    rate_limit_storage: str | None = None,
    rate_limit_fail_open: bool | None = None,
    trusted_proxies: str | Iterable[str] | None = None,
    safety_id_secret: str | None = None,
) -> Guard:
    """The guard: each keyword given wins; each one left None is read from
    its variable, whether or not the options came from code (a deployer's
    ``NAVAI_RATE_LIMIT`` is never silently ignored)."""
    if env is None:
        env = os.environ
    if authorize is None and (read(env, "NAVAI_AUTH_TOKENS") or read(env, "NAVAI_AUTH_JWKS_URL")):
        authorize = authorizer_from_env(env)
    if rate_limit is None:
        rate_limit = read(env, "NAVAI_RATE_LIMIT")
    limits = parse_rate_limits(rate_limit)
    if rate_limit_storage is None:
        rate_limit_storage = read(env, "NAVAI_RATE_LIMIT_STORAGE") or "memory://"
    if rate_limit_fail_open is None:
        rate_limit_fail_open = read_bool(env, "NAVAI_RATE_LIMIT_FAIL_OPEN", False)
    if trusted_proxies is None:
        trusted_proxies = read(env, "NAVAI_TRUSTED_PROXIES")
    if safety_id_secret is None:
        safety_id_secret = read(env, "NAVAI_SAFETY_ID_SECRET")
    # Derived from the server's key by default, so that every worker and
    # every machine turns one identity into the same identifier.
    secret = (
        safety_id_secret.encode()
        if safety_id_secret is not None
        else None
        if api_key is None
        else hashlib.sha256(b"navai_mw safety identifier\0" + api_key.encode()).digest()
    )
    return Guard(
        authorize=authorize,
        limits=limits,
        storage_uri=rate_limit_storage.strip() if limits else None,
        store_uri=rate_limit_storage.strip(),
        fail_open=rate_limit_fail_open,
        trusted_proxies=parse_trusted_proxies(trusted_proxies),
        safety_secret=secret,
    )


def _items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def authorizer_from_env(env: Mapping[str, str | None] | None = None) -> Authorizer | None:
    """The authorizer the environment asks for (``env``, default ``os.environ``):

    * ``NAVAI_AUTH_TOKENS`` (``name:token,name:token``): :func:`bearer_tokens`;
    * ``NAVAI_AUTH_JWKS_URL`` with ``NAVAI_AUTH_AUDIENCE`` and
      ``NAVAI_AUTH_ISSUER`` (each may list several, comma-separated):
      :func:`jwt_bearer`;
    * both: :func:`any_of` the two, fixed tokens first; neither: None.

    A blank variable counts as unset. A half-configured JWT setup is an
    :class:`~navai_mw.OptionsError` naming the missing variable, never a
    silently open endpoint.
    """
    if env is None:
        env = os.environ
    authorizers: list[Authorizer] = []
    tokens = read(env, "NAVAI_AUTH_TOKENS")
    if tokens is not None:
        try:
            authorizers.append(bearer_tokens(tokens))
        except OptionsError as exc:
            raise OptionsError(f"NAVAI_AUTH_TOKENS: {exc.message}") from None
    url = read(env, "NAVAI_AUTH_JWKS_URL")
    audience = read(env, "NAVAI_AUTH_AUDIENCE")
    issuer = read(env, "NAVAI_AUTH_ISSUER")
    if url is None:
        given = "NAVAI_AUTH_AUDIENCE" if audience is not None else "NAVAI_AUTH_ISSUER"
        if audience is not None or issuer is not None:
            raise OptionsError(
                f"{given} is set but NAVAI_AUTH_JWKS_URL is not: JWT bearer auth needs "
                "the provider's JWKS URL."
            )
    else:
        if audience is None or issuer is None:
            missing = "NAVAI_AUTH_AUDIENCE" if audience is None else "NAVAI_AUTH_ISSUER"
            raise OptionsError(
                f"NAVAI_AUTH_JWKS_URL is set but {missing} is not: JWT bearer auth needs "
                "both NAVAI_AUTH_AUDIENCE and NAVAI_AUTH_ISSUER."
            )
        authorizers.append(jwt_bearer(url, audience=_items(audience), issuer=_items(issuer)))
    if not authorizers:
        return None
    if len(authorizers) == 1:
        return authorizers[0]
    return any_of(*authorizers)
