"""navai_mw's sans-IO core, for your own I/O.

Every exchange with an upstream is a generator that does no I/O: it yields
what it needs done and is sent back what came of it, until it returns its
result or raises a :class:`~navai_mw.NavaiError` carrying the status a
server should answer. Drive one with whatever I/O you have (a blocking
client, trio, a language bridge), and you keep navai_mw's retries, time
budget, redaction and reading of the answer::

    steps = mint_client_secret(opts, {"language": "Spanish"})
    start = time.monotonic()
    try:
        effect = next(steps)
        while True:  # every effect here is an Attempt (no hooks configured)
            time.sleep(effect.delay)
            if effect.first:
                start = time.monotonic()
            response = send(effect.request, timeout=effect.timeout)  # your I/O
            outcome = Outcome(response, elapsed=time.monotonic() - start, jitter=random.random())
            effect = steps.send(outcome)
    except StopIteration as done:
        secret = done.value

The effects:

* :class:`Attempt` -- send ``request`` after waiting ``delay`` seconds,
  giving up after ``timeout``; send back an :class:`Outcome`: the
  :class:`HttpResponse`, or ``None`` when no answer came (``timed_out=True``
  when time ran out), the seconds elapsed since the ``first`` attempt, and
  a random number in [0, 1) for the retry jitter;
* :class:`CallHook` -- only with a ``customize_session`` hook or an Azure
  token provider: call ``hook(*args)`` (awaiting it when it is async) and
  send back a :class:`HookResult` with its value or the exception it raised,
  and the seconds it took; with a ``timeout`` (a token provider's: the
  upstream budget), stop waiting past it and send back
  ``HookResult(timed_out=True)``.

The exchanges: :func:`mint_client_secret` (a Realtime client secret),
:func:`mint_transcription_secret` and :func:`synthesize` (ElevenLabs
speech). For one attempt without the loop, :func:`build_upstream_request`
and :func:`parse_upstream_response` (and their speech twins) are plain
functions. docs/transports.md drives them over the standard library and
under trio.
"""

from __future__ import annotations

from .core.effects import Attempt, CallHook, HookResult, Outcome
from .core.faces import publish
from .core.http import HttpRequest, HttpResponse
from .upstreams.elevenlabs import (
    SynthesizedSpeech,
    build_speech_request,
    parse_speech_response,
    synthesize,
)
from .upstreams.mint import SessionContext, mint_client_secret, mint_transcription_secret
from .upstreams.openai_secrets import (
    OpenAIRealtimeClientSecretResponse,
    build_upstream_request,
    parse_upstream_response,
)

__all__ = [
    "Attempt",
    "CallHook",
    "HookResult",
    "HttpRequest",
    "HttpResponse",
    "OpenAIRealtimeClientSecretResponse",
    "Outcome",
    "SessionContext",
    "SynthesizedSpeech",
    "build_speech_request",
    "build_upstream_request",
    "mint_client_secret",
    "mint_transcription_secret",
    "parse_speech_response",
    "parse_upstream_response",
    "synthesize",
]

publish(__name__, globals(), __all__)
