"""The public client functions (``create_realtime_client_secret`` and its
twins): one sans-IO exchange each, run by a driver over a transport."""

from __future__ import annotations

import atexit
from collections.abc import Mapping
from typing import Any, Final

from ..core.client_requests import CreateClientSecretRequest
from ..core.options import NavaiVoiceBackendOptions
from ..upstreams.elevenlabs import SynthesizedSpeech, synthesize
from ..upstreams.mint import SessionHook, mint_client_secret, mint_transcription_secret
from ..upstreams.openai_secrets import OpenAIRealtimeClientSecretResponse
from .async_transports import HttpxAsyncTransport
from .drivers import Steps, T, drive_async, drive_sync
from .performers import AsyncEffects, SyncEffects
from .sync_transport import HttpxSyncTransport
from .transports import AsyncTransport, SyncTransport

# The sync function's default: one pooled client for the whole process, made
# on first use (and made again in a forked child), and closed at exit (else
# its sockets are left to the interpreter's teardown, which warns about each).
# The async function has no shared default: an async client belongs to one
# event loop, and a caller's loops come and go.
_DEFAULT_SYNC: Final = HttpxSyncTransport()
atexit.register(_DEFAULT_SYNC.close)

Request = CreateClientSecretRequest | Mapping[str, Any] | None

# The client functions' performers: an Azure token provider and a
# customize_session hook are their only effects.
_SYNC_EFFECTS: Final = SyncEffects(None)

_ASYNC_EFFECTS: Final = AsyncEffects(None)


def create_realtime_client_secret_sync(
    opts: NavaiVoiceBackendOptions,
    req: Request = None,
    *,
    transport: SyncTransport | None = None,
    customize_session: SessionHook | None = None,
) -> OpenAIRealtimeClientSecretResponse:
    """Mint an ephemeral client secret (blocking).

    ``req`` is a :class:`CreateClientSecretRequest` or a mapping spelled as on
    the wire (``voiceAccent``...). ``customize_session`` changes the session
    before it is sent, as the middleware's hook does. Raises
    :class:`NavaiError` with the status a server should answer.
    """
    steps = mint_client_secret(opts, req, customize=customize_session)
    return drive_sync(
        steps, transport if transport is not None else _DEFAULT_SYNC, perform=_SYNC_EFFECTS
    )


async def create_realtime_client_secret(
    opts: NavaiVoiceBackendOptions,
    req: Request = None,
    *,
    transport: AsyncTransport | None = None,
    customize_session: SessionHook | None = None,
) -> OpenAIRealtimeClientSecretResponse:
    """Mint an ephemeral client secret.

    Without ``transport``, a short-lived pooled client is used for this call;
    servers should hold an :class:`AiohttpTransport` (the middleware does).
    """
    steps = mint_client_secret(opts, req, customize=customize_session)
    return await _drive_async(steps, transport)


def create_transcription_client_secret_sync(
    opts: NavaiVoiceBackendOptions,
    req: Mapping[str, Any] | None = None,
    *,
    transport: SyncTransport | None = None,
    customize_session: SessionHook | None = None,
) -> OpenAIRealtimeClientSecretResponse:
    """Mint a client secret for a transcription session (blocking); ``req``
    may name ``language`` and ``prompt``."""
    steps = mint_transcription_secret(opts, req, customize=customize_session)
    return drive_sync(
        steps, transport if transport is not None else _DEFAULT_SYNC, perform=_SYNC_EFFECTS
    )


async def create_transcription_client_secret(
    opts: NavaiVoiceBackendOptions,
    req: Mapping[str, Any] | None = None,
    *,
    transport: AsyncTransport | None = None,
    customize_session: SessionHook | None = None,
) -> OpenAIRealtimeClientSecretResponse:
    """Mint a client secret for a transcription session."""
    steps = mint_transcription_secret(opts, req, customize=customize_session)
    return await _drive_async(steps, transport)


async def _drive_async(steps: Steps[T], transport: AsyncTransport | None) -> T:
    if transport is not None:
        return await drive_async(steps, transport, perform=_ASYNC_EFFECTS)
    # One call, one short-lived client: httpx's (which respx can mock in tests).
    async with HttpxAsyncTransport() as own:
        return await drive_async(steps, own, perform=_ASYNC_EFFECTS)


SpeechRequest = Mapping[str, Any] | None


def synthesize_speech_sync(
    opts: NavaiVoiceBackendOptions,
    req: SpeechRequest,
    *,
    transport: SyncTransport | None = None,
) -> SynthesizedSpeech:
    """Turn ``req["text"]`` into audio with ElevenLabs (blocking).

    ``req`` is spelled as on the wire (``text``, ``voiceId``, ``modelId``,
    ``outputFormat``, ``optimizeStreamingLatency``, ``voiceSettings``).
    Raises :class:`NavaiError` with the status a server should answer.
    """
    steps = synthesize(opts, req)
    return drive_sync(steps, transport if transport is not None else _DEFAULT_SYNC)


async def synthesize_speech(
    opts: NavaiVoiceBackendOptions,
    req: SpeechRequest,
    *,
    transport: AsyncTransport | None = None,
) -> SynthesizedSpeech:
    """Turn ``req["text"]`` into audio with ElevenLabs (as
    :func:`synthesize_speech_sync`; without ``transport``, a short-lived
    client serves this call)."""
    steps = synthesize(opts, req)
    return await _drive_async(steps, transport)
