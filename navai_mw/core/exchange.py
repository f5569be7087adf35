"""One upstream exchange, sans-IO: attempts within a time budget (the retry
policy), and a failure answer read, quoted and redacted."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Generator
from typing import Final
from urllib.parse import unquote

from .effects import Attempt, Outcome
from .errors import UpstreamError
from .http import HttpRequest, HttpResponse

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

_REDACTED: Final = "[redacted]"

# Retry-After is passed on to the client only as what RFC 9110 allows: a
# number of seconds, or an HTTP date (IMF-fixdate).
_RETRY_AFTER: Final = re.compile(
    r"[0-9]{1,10}"
    r"|(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)

# JSON's escapes, undone in one pass from the left: an escaped backslash
# followed by "u0041" stays a backslash and "u0041", as a JSON parser reads it.
_JSON_ESCAPE: Final = re.compile(r'\\(["\\/bfnrt]|u[0-9a-fA-F]{4})')
_JSON_ESCAPED: Final = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}

# How many encodings deep an echo of the key is looked for: an upstream
# that escapes, then percent-encodes, then escapes again is three.
_DECODING_ROUNDS: Final = 4


def _json_unescaped(match: re.Match[str]) -> str:
    escape = match[1]
    return chr(int(escape[1:], 16)) if escape[0] == "u" else _JSON_ESCAPED[escape]


def _decoded(text: str) -> str:
    """``text`` with the encodings an echo of the key may arrive in undone
    once: JSON's escapes (``\\uXXXX``, ``\\/``, ``\\"``...), percent-encoding
    and HTML entities."""
    text = _JSON_ESCAPE.sub(_json_unescaped, text)
    return html.unescape(unquote(text))


def redact(text: str, secret: str | None) -> str:
    """``text`` without ``secret``, in any of the spellings an upstream may
    echo it in, each copy however it was encoded.

    The raw copies are replaced first; then the text is decoded, a layer of
    encodings at a time, and when a decoded layer still holds the key, that
    layer is quoted instead, with every copy in it replaced: a redacted
    message that reads a little differently beats a leaked key.
    """
    if not secret:
        return text
    redacted = current = text.replace(secret, _REDACTED)
    for _ in range(_DECODING_ROUNDS):
        decoded = _decoded(current)
        if decoded == current:
            break
        current = decoded
        if secret in current:
            current = current.replace(secret, _REDACTED)
            redacted = current
    return redacted


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


def is_retryable(status: int) -> bool:
    return status in _RETRYABLE_STATUSES or status >= 500


def retry_delay(retries_done: int, *, jitter: float) -> float:
    """Seconds to wait before retry number ``retries_done + 1``.

    ``jitter`` is a number in [0, 1) drawn by the caller.
    """
    delay = min(INITIAL_RETRY_DELAY * 2.0**retries_done, MAX_RETRY_DELAY)
    return delay * (1.0 - 0.25 * jitter)


def attempts(
    request: HttpRequest,
    *,
    budget: float,
    max_retries: int = MAX_RETRIES,
    what: str = "The upstream",
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
