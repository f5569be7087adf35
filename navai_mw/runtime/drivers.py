"""Drivers that run the core's exchange over a transport, and the two
public functions built on them.

The drivers only move data between the sans-IO exchanges and a
transport; clock, sleep and randomness are parameters so that tests run the
retry policy in no real time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Final, TypeVar

import anyio

from ..core.effects import Attempt, Outcome, Pause
from ..core.http import HttpResponse
from .aio import attempt_deadline
from .async_transports import BoundedTransport
from .observe import Observer, _Attempt
from .transports import AsyncTransport, SyncTransport

__all__ = [
    "drive_async",
    "drive_sync",
]

T = TypeVar("T")
R = TypeVar("R")
Steps = Generator[Any, Any, T]


# Retries' jitter, from a generator of its own: the random module's shared
# state is the app's (and its tests').
_JITTER: Final = random.Random()  # noqa: S311 - a jitter, not a secret


def drive_sync(
    steps: Steps[T],
    transport: SyncTransport,
    *,
    perform: Callable[[Any], Any] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    jitter: Callable[[], float] = _JITTER.random,
    observer: Observer | None = None,
) -> T:
    """Run ``steps`` to completion; return its result.

    Upstream attempts go to ``transport``; a :class:`Pause` is slept here
    (time is the driver's, as a retry's delay is); every other effect (a
    user's hook, a rate-limit hit) goes to ``perform``, whose return value is
    sent back. ``observer``, when given, sees every attempt.
    """
    start = clock()
    try:
        effect = next(steps)
        while True:
            if not isinstance(effect, Attempt):
                if isinstance(effect, Pause):  # time is the driver's, as a retry's delay
                    sleep(effect.seconds)
                    effect = steps.send(None)
                else:
                    effect = steps.send(_performed(perform, effect))
                continue
            if effect.first:
                start = clock()
            if effect.delay:
                sleep(effect.delay)
            response: HttpResponse | None = None
            timed_out = False
            with _watched(observer, effect) as seen:
                try:
                    response = seen.response = transport.send(
                        effect.request, timeout=effect.timeout
                    )
                except TimeoutError:
                    timed_out = seen.timed_out = True
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
    jitter: Callable[[], float] = _JITTER.random,
    observer: Observer | None = None,
) -> T:
    """Run ``steps`` to completion; return its result (as :func:`drive_sync`)."""
    start = clock()
    try:
        effect = next(steps)
        while True:
            if not isinstance(effect, Attempt):
                if isinstance(effect, Pause):  # time is the driver's, as a retry's delay
                    await sleep(effect.seconds)
                    effect = steps.send(None)
                else:
                    effect = steps.send(await _performed(perform, effect))
                continue
            if effect.first:
                start = clock()
            if effect.delay:
                await sleep(effect.delay)
            response: HttpResponse | None = None
            timed_out = False
            with _watched(observer, effect) as seen:
                try:
                    if isinstance(transport, BoundedTransport):
                        response = await transport.send(effect.request, timeout=effect.timeout)
                    else:
                        # A transport's own timeouts may be per read; this bounds
                        # the whole attempt, so a trickling upstream cannot stretch it.
                        async with attempt_deadline(effect.timeout):
                            response = await transport.send(effect.request, timeout=effect.timeout)
                    seen.response = response
                except TimeoutError:
                    timed_out = seen.timed_out = True
                except OSError:
                    pass  # no answer: the core decides whether to try again
            elapsed = clock() - start
            effect = steps.send(Outcome(response, timed_out, elapsed, jitter()))
    except StopIteration as done:
        result: T = done.value
        return result


def _watched(observer: Observer | None, effect: Attempt) -> _Attempt:
    # An attempt nobody watches (no observer) records nothing.
    return _Attempt() if observer is None else observer.attempt(effect.request)


def _performed(perform: Callable[[Any], R] | None, effect: object) -> R:
    if perform is None:  # a programming error: the shell wired no performer
        raise TypeError(f"no performer for the effect {type(effect).__name__}")
    return perform(effect)
