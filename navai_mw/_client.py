"""Drivers that run the core's exchange over a transport, and the two
public functions built on them.

The drivers only move data between :func:`navai_mw._core.exchange` and a
transport; clock, sleep and randomness are parameters so that tests run the
retry policy in no real time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any, Final, TypeVar

import anyio

from ._core import Attempt, Outcome
from ._effects import AsyncEffects, SyncEffects
from ._mint import SessionHook, mint_client_secret, mint_transcription_secret
from ._models import (
    CreateClientSecretRequest,
    HttpResponse,
    NavaiVoiceBackendOptions,
    OpenAIRealtimeClientSecretResponse,
)
from ._speech import SynthesizedSpeech, build_speech_request, speech_exchange
from .transports import (
    AsyncTransport,
    BoundedTransport,
    HttpxAsyncTransport,
    HttpxSyncTransport,
    SyncTransport,
    attempt_deadline,
)

__all__ = [
    "create_realtime_client_secret",
    "create_realtime_client_secret_sync",
    "create_transcription_client_secret",
    "create_transcription_client_secret_sync",
    "drive_async",
    "drive_sync",
    "synthesize_speech",
    "synthesize_speech_sync",
]

T = TypeVar("T")
R = TypeVar("R")
Steps = Generator[Any, Any, T]


def drive_sync(
    steps: Steps[T],
    transport: SyncTransport,
    *,
    perform: Callable[[Any], Any] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    jitter: Callable[[], float] = random.random,
) -> T:
    """Run ``steps`` to completion; return its result.

    Upstream attempts go to ``transport``; every other effect (a user's
    hook, a rate-limit hit) to ``perform``, whose return value is sent back.
    """
    start = clock()
    try:
        effect = next(steps)
        while True:
            if not isinstance(effect, Attempt):
                effect = steps.send(_performed(perform, effect))
                continue
            if effect.first:
                start = clock()
            if effect.delay:
                sleep(effect.delay)
            response: HttpResponse | None = None
            timed_out = False
            try:
                response = transport.send(effect.request, timeout=effect.timeout)
            except TimeoutError:
                timed_out = True
            except OSError:
                pass  # no answer: the core decides whether to try again
            elapsed = clock() - start
            effect = steps.send(Outcome(response, timed_out, elapsed, jitter()))
    except StopIteration as done:
        result: T = done.value
        return result


async def drive_async(
    steps: Steps[T],
    transport: AsyncTransport,
    *,
    perform: Callable[[Any], Awaitable[Any]] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[Any]] = anyio.sleep,
    jitter: Callable[[], float] = random.random,
) -> T:
    """Run ``steps`` to completion; return its result (as :func:`drive_sync`)."""
    start = clock()
    try:
        effect = next(steps)
        while True:
            if not isinstance(effect, Attempt):
                effect = steps.send(await _performed(perform, effect))
                continue
            if effect.first:
                start = clock()
            if effect.delay:
                await sleep(effect.delay)
            response: HttpResponse | None = None
            timed_out = False
            try:
                if isinstance(transport, BoundedTransport):
                    response = await transport.send(effect.request, timeout=effect.timeout)
                else:
                    # A transport's own timeouts may be per read; this bounds
                    # the whole attempt, so a trickling upstream cannot stretch it.
                    async with attempt_deadline(effect.timeout):
                        response = await transport.send(effect.request, timeout=effect.timeout)
            except TimeoutError:
                timed_out = True
            except OSError:
                pass  # no answer: the core decides whether to try again
            elapsed = clock() - start
            effect = steps.send(Outcome(response, timed_out, elapsed, jitter()))
    except StopIteration as done:
        result: T = done.value
        return result


def _performed(perform: Callable[[Any], R] | None, effect: object) -> R:
    if perform is None:  # a programming error: the shell wired no performer
        raise TypeError(f"no performer for the effect {type(effect).__name__}")
    return perform(effect)


# The sync function's default: one pooled client for the whole process, made
# on first use (and made again in a forked child). The async function has no
# shared default: an async client belongs to one event loop, and a caller's
# loops come and go.
_DEFAULT_SYNC: Final = HttpxSyncTransport()


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
    steps = speech_exchange(build_speech_request(opts, req), budget=opts.upstream_timeout_seconds)
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
    steps = speech_exchange(build_speech_request(opts, req), budget=opts.upstream_timeout_seconds)
    return await _drive_async(steps, transport)
