"""The one exception family of navai_mw.

Every error carries the HTTP status the middleware answers with, so the
shells never choose a status themselves. Messages are safe to show a client:
they never hold an API key (upstream text is redacted before it gets here).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "AuthError",
    "NavaiError",
    "OptionsError",
    "RequestError",
    "UpstreamError",
    "log_safe",
]

# Characters that end or rewrite a log line on a terminal or in a file: C0
# and C1 controls, DEL, and Unicode's own line and paragraph separators.
_UNPRINTABLE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def log_safe(text: str) -> str:
    """``text`` fit for one log line: control characters escaped (``\\n``,
    ``\\x1b``), so that what a client or an upstream wrote cannot forge a
    record or drive a terminal."""
    return _UNPRINTABLE.sub(lambda match: repr(match[0])[1:-1], text)


class NavaiError(Exception):
    """Base class. ``status`` is the HTTP status the middleware answers with.

    ``headers`` are extra response headers that belong with the error
    (``Retry-After`` on a 429, ``Allow`` on a 405).
    """

    status: int = 500

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers = headers

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status})"


class OptionsError(NavaiError, ValueError):
    """The backend options are unusable: a deployment mistake, not a client's.

    Raised when options are built, when the functions are called and when the
    middleware is built, so it never reaches a client at run time.
    """

    status = 500


class RequestError(NavaiError):
    """The client's request cannot be served (400, 403, 405, 413, 415)."""

    status = 400


class UpstreamError(NavaiError):
    """OpenAI could not be reached, failed, or answered something unreadable.

    502 by default; 429 when OpenAI rate-limits (``Retry-After`` passed on);
    504 when the exchange ran out of time.
    """

    status = 502


class AuthError(NavaiError):
    """The caller may not use a navai route: 401 (no or bad credentials; the
    answer carries ``WWW-Authenticate: Bearer``) or 403 (a known caller who
    is refused). Raise it from an ``authorize`` hook."""

    status = 401

    def __init__(self, message: str, *, status: int = 401) -> None:
        if status not in (401, 403):
            raise ValueError(f"AuthError status must be 401 or 403. Received: {status!r}")
        challenge = (("WWW-Authenticate", "Bearer"),) if status == 401 else ()
        super().__init__(message, status=status, headers=challenge)
