"""Minting a client secret, whole: the session built, the server's
``customize_session`` hook, the Azure token, the upstream exchange.

One generator serves the client-secret and transcription-secret routes and
the public client functions. What it cannot do itself it yields: the hook
and an Azure token provider as :class:`~navai_mw.core.effects.CallHook`, the
upstream call as :class:`~navai_mw.core.effects.Attempt`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Generator, Mapping
from typing import Any, Final, Literal

import attrs

from ..core.client_requests import (
    CreateClientSecretRequest,
    structure_request,
    structure_transcription_request,
)
from ..core.effects import CallHook, HookResult
from ..core.errors import (
    AuthError,
    NavaiError,
    OptionsError,
    RequestError,
    UpstreamError,
    log_safe,
    refusal,
)
from ..core.http import Credential, RequestInfo, is_header_safe
from ..core.options import NavaiVoiceBackendOptions
from ..core.sessions import check_final_session
from ..core.values import outside
from .openai_secrets import (
    OpenAIRealtimeClientSecretResponse,
    build_session,
    build_transcription_session,
    check_policy,
    client_secrets_name,
    exchange,
    request_credential,
    resolve_api_key,
    upstream_request,
)

__all__ = [
    "Mint",
    "SessionContext",
    "checked_session",
    "credential_for",
    "customized",
    "mint_client_secret",
    "mint_transcription_secret",
]

logger = logging.getLogger("navai_mw")

SessionHook = Callable[["SessionContext"], Any]
_NOT_PREPARED: Final = "The session could not be prepared; try again shortly."


@attrs.frozen(kw_only=True)
class SessionContext:
    """What a ``customize_session`` hook gets.

    Fields:
        kind: ``"realtime"`` or ``"transcription"``.
        session: the session navai built (request fields, options, the
            ``session`` template merged); a copy the hook may change and
            return.
        identity: who the guard's ``authorize`` said the caller is, or None.
        request: the request view (None when called from the client
            functions rather than a route).
    """

    kind: Literal["realtime", "transcription"]
    session: dict[str, Any]
    identity: str | None = None
    request: RequestInfo | None = None


Mint = Generator[Any, Any, OpenAIRealtimeClientSecretResponse]


def mint_client_secret(
    opts: NavaiVoiceBackendOptions,
    body: CreateClientSecretRequest | Mapping[str, Any] | None,
    *,
    customize: SessionHook | None = None,
    identity: str | None = None,
    request: RequestInfo | None = None,
    safety_identifier: str | None = None,
) -> Mint:
    """A realtime client secret for ``body`` (the front end's request)."""
    req = structure_request(body)
    check_policy(opts, req)
    api_key = resolve_api_key(opts, req)
    session = build_session(opts, req)
    return (
        yield from _mint(
            opts,
            session,
            api_key=api_key,
            kind="realtime",
            customize=customize,
            identity=identity,
            request=request,
            safety_identifier=safety_identifier,
        )
    )


def mint_transcription_secret(
    opts: NavaiVoiceBackendOptions,
    body: Mapping[str, Any] | None,
    *,
    customize: SessionHook | None = None,
    identity: str | None = None,
    request: RequestInfo | None = None,
    safety_identifier: str | None = None,
) -> Mint:
    """A transcription client secret for ``body`` (``language``, ``prompt``)."""
    req = structure_transcription_request(body)
    api_key = resolve_api_key(opts, req)
    return (
        yield from _mint(
            opts,
            build_transcription_session(opts, req),
            api_key=api_key,
            kind="transcription",
            customize=customize,
            identity=identity,
            request=request,
            safety_identifier=safety_identifier,
        )
    )


def _mint(
    opts: NavaiVoiceBackendOptions,
    session: dict[str, Any],
    *,
    api_key: str | None,
    kind: Literal["realtime", "transcription"],
    customize: SessionHook | None,
    identity: str | None,
    request: RequestInfo | None,
    safety_identifier: str | None,
) -> Mint:
    session = yield from customized(
        opts, session, kind=kind, customize=customize, identity=identity, request=request
    )
    credential, budget = yield from credential_for(opts, api_key)
    upstream = upstream_request(
        opts, session, credential=credential, safety_identifier=safety_identifier
    )
    return (
        yield from exchange(
            upstream,
            budget=budget,
            provider=opts.tts_provider,
            what=client_secrets_name(opts),
        )
    )


def customized(
    opts: NavaiVoiceBackendOptions,
    session: dict[str, Any],
    *,
    kind: Literal["realtime", "transcription"],
    customize: SessionHook | None,
    identity: str | None,
    request: RequestInfo | None,
) -> Generator[Any, Any, dict[str, Any]]:
    """``session`` after the ``customize_session`` hook, when there is one."""
    if customize is None:
        return session
    context = SessionContext(
        kind=kind, session=copy.deepcopy(session), identity=identity, request=request
    )
    result: HookResult = yield CallHook(customize, (context,))
    return _customized(opts, kind, result)


def credential_for(
    opts: NavaiVoiceBackendOptions, api_key: str | None
) -> Generator[Any, Any, tuple[Credential, float]]:
    """What authenticates an upstream call, and the seconds left of
    ``upstream_timeout_seconds`` for its exchange: all of them, unless an
    Azure token provider was asked (it has the whole budget at most, and
    the exchange what it left)."""
    budget = opts.upstream_timeout_seconds
    credential = request_credential(opts, api_key)
    if credential is None:
        token, budget = yield from _azure_token(opts, budget)
        credential = Credential.bearer(token)
    return credential, budget


def _customized(opts: NavaiVoiceBackendOptions, kind: str, result: HookResult) -> dict[str, Any]:
    """The hook's session, held to the schema and the request policy; the
    server's own code failed (503, logged) when it is not fit to send."""
    if result.error is not None:
        refused = refusal(result.error, (RequestError, AuthError))
        if refused is not None:
            raise refused  # the hook refuses this caller, on purpose
        logger.error(
            "navai_mw: the customize_session hook raised %s",
            type(result.error).__name__,
            exc_info=result.error,
        )
        raise NavaiError(_NOT_PREPARED, status=503)
    try:
        return checked_session(opts, kind, result.value)
    except OptionsError as exc:
        logger.error(
            "navai_mw: the customize_session hook's session is refused: %s", log_safe(exc.message)
        )
        raise NavaiError(_NOT_PREPARED, status=503) from None


def checked_session(opts: NavaiVoiceBackendOptions, kind: str, session: object) -> dict[str, Any]:
    """A whole session from the app's code (a hook's), held to OpenAI's
    schema and the request policy: an :class:`OptionsError` saying what
    is wrong with it."""
    if not isinstance(session, Mapping):
        raise OptionsError(f"it returned {type(session).__name__}, not a session object")
    session = dict(session)
    if session.get("type") != kind:
        raise OptionsError(f"it changed the session's type to {session.get('type')!r}")
    check_final_session(session, unknown_ok=opts.allow_unknown_session_fields)
    _check_policy(opts, session)
    return session


def _check_policy(opts: NavaiVoiceBackendOptions, session: Mapping[str, Any]) -> None:
    model = session.get("model")
    audio = session.get("audio")
    output = audio.get("output") if isinstance(audio, Mapping) else None
    voice = output.get("voice") if isinstance(output, Mapping) else None
    for name, value, allowed in (
        ("model", model, opts.allowed_models),
        ("voice", voice, opts.allowed_voices),
    ):
        if outside(value, allowed):
            raise OptionsError(f"{name} {value!r} is not in allowed_{name}s")


def _azure_token(
    opts: NavaiVoiceBackendOptions, budget: float
) -> Generator[Any, Any, tuple[str, float]]:
    """A Microsoft Entra ID token from the provider (asked every time: its
    refresh is its own business), within ``budget`` seconds, and the seconds
    it left; a failure is a 502 naming Azure, running out of time a 504."""
    provider = opts.azure_ad_token_provider
    assert provider is not None
    result: HookResult = yield CallHook(provider, (), timeout=budget)
    if result.timed_out or result.elapsed >= budget:
        logger.error("navai_mw: the Azure token provider did not answer within %g seconds", budget)
        raise UpstreamError("Azure OpenAI token provider timed out.", status=504)
    if result.error is not None:
        logger.error(
            "navai_mw: the Azure token provider raised %s",
            type(result.error).__name__,
            exc_info=result.error,
        )
        raise UpstreamError("Azure OpenAI token provider failed; no token to send.")
    token = result.value
    if not isinstance(token, str) or not is_header_safe(token.strip()):
        logger.error(
            "navai_mw: the Azure token provider returned %s, not a token",
            "an empty string" if token == "" else type(token).__name__,
        )
        raise UpstreamError("Azure OpenAI token provider returned no usable token.")
    return token.strip(), budget - result.elapsed
