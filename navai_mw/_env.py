"""Environment variables -> :class:`NavaiVoiceBackendOptions`.

The seed's nine variables, ``OPENAI_BASE_URL``, and the request policy
(``NAVAI_ALLOWED_MODELS``, ``NAVAI_ALLOWED_VOICES``,
``NAVAI_ALLOW_CLIENT_INSTRUCTIONS``). A variable set to a blank
string counts as unset (the reference would send ``"model": ""``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Final

from ._errors import OptionsError
from ._models import DEFAULT_BASE_URL, NavaiVoiceBackendOptions

__all__ = ["get_cors_origins_from_env", "get_navai_voice_backend_options_from_env"]

_INTEGER: Final = re.compile(r"[+-]?[0-9]+")


def _read(env: Mapping[str, str | None], name: str) -> str | None:
    value = env.get(name)
    if value is None or not value.strip():
        return None
    return value


def _ttl(raw: str | None) -> int:
    if raw is None:
        return 600
    if _INTEGER.fullmatch(raw.strip()) is None:
        raise OptionsError(
            "client_secret_ttl_seconds must be an integer. "
            f"Received: {raw!r} (from OPENAI_REALTIME_CLIENT_SECRET_TTL)"
        )
    return int(raw.strip())


_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})


def read_bool(env: Mapping[str, str | None], name: str, default: bool) -> bool:
    """A yes/no variable: ``true/false/1/0/yes/no`` in any case; anything
    else is an error naming the variable."""
    raw = _read(env, name)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise OptionsError(f"{name} must be one of true, false, 1, 0, yes, no. Received: {raw!r}")


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
    api_key = _read(env, "OPENAI_API_KEY")
    allow = (_read(env, "NAVAI_ALLOW_FRONTEND_API_KEY") or "").strip().lower() == "true"
    return NavaiVoiceBackendOptions(
        openai_api_key=api_key,
        allow_api_key_from_request=allow or api_key is None,
        client_secret_ttl_seconds=_ttl(_read(env, "OPENAI_REALTIME_CLIENT_SECRET_TTL")),
        openai_base_url=_read(env, "OPENAI_BASE_URL") or DEFAULT_BASE_URL,
        default_model=_read(env, "OPENAI_REALTIME_MODEL"),
        default_voice=_read(env, "OPENAI_REALTIME_VOICE"),
        default_instructions=_read(env, "OPENAI_REALTIME_INSTRUCTIONS"),
        default_language=_read(env, "OPENAI_REALTIME_LANGUAGE"),
        default_voice_accent=_read(env, "OPENAI_REALTIME_VOICE_ACCENT"),
        default_voice_tone=_read(env, "OPENAI_REALTIME_VOICE_TONE"),
        allowed_models=_read(env, "NAVAI_ALLOWED_MODELS"),
        allowed_voices=_read(env, "NAVAI_ALLOWED_VOICES"),
        allow_client_instructions=read_bool(env, "NAVAI_ALLOW_CLIENT_INSTRUCTIONS", True),
    )


def get_cors_origins_from_env(env: Mapping[str, str | None] | None = None) -> list[str] | None:
    """Allowed CORS origins from ``NAVAI_CORS_ORIGIN`` (comma-separated,
    ``*`` for any); None when unset, which turns CORS handling off."""
    if env is None:
        env = os.environ
    raw = _read(env, "NAVAI_CORS_ORIGIN")
    if raw is None:
        return None
    return [origin.strip() for origin in raw.split(",") if origin.strip()]
