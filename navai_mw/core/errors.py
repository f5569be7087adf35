"""The one exception family of navai_mw.

Every error carries the HTTP status the middleware answers with, so the
shells never choose a status themselves. Messages are safe to show a client:
they never hold an API key (upstream text is redacted before it gets here).
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

from .http import is_answer_header

__all__ = [
    "REFUSAL_STATUSES",
    "AuthError",
    "NavaiError",
    "OptionsError",
    "RequestError",
    "UpstreamError",
    "log_safe",
    "refusal",
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
    (``Retry-After`` on a 429, ``Allow`` on a 405). ``code``, when set, is
    answered beside the message, for a client to tell one refusal from
    another (``"budget_exhausted"``).
    """

    status: int = 500

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers = headers
        self.code = code

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


# RFC 6750 §3.1: the error codes of a Bearer challenge.
BEARER_ERRORS: Final = frozenset({"invalid_request", "invalid_token", "insufficient_scope"})
# RFC 6750 §3: an error_description holds visible ASCII and space, without
# '"' or '\\' (so it needs no escaping inside its quotes).
_NOT_IN_DESCRIPTION: Final = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def bearer_challenge(error: str | None, description: str) -> str:
    """The ``WWW-Authenticate`` value: plain ``Bearer`` when no credentials
    came (RFC 6750 §3.1: no error then), else with the error and its
    description."""
    if error is None:
        return "Bearer"
    shown = _NOT_IN_DESCRIPTION.sub("", description)
    return f'Bearer error="{error}", error_description="{shown}"'


class AuthError(NavaiError):
    """The caller may not use a navai route: 401 (no or bad credentials; the
    answer carries ``WWW-Authenticate: Bearer``) or 403 (a known caller who
    is refused). Raise it from an ``authorize`` hook.

    ``error`` is RFC 6750's code for credentials that came and were refused:
    ``"invalid_token"`` (a token that is bad, expired or unknown),
    ``"invalid_request"`` or ``"insufficient_scope"`` (with 403). With it,
    the challenge names it, and the message is its ``error_description``:
    ``Bearer error="invalid_token", error_description="Invalid token:
    expired."``. Without it, a 401's challenge is plain ``Bearer``, as for a
    request that brought no credentials."""

    status = 401

    def __init__(self, message: str, *, status: int = 401, error: str | None = None) -> None:
        if status not in (401, 403):
            raise ValueError(f"AuthError status must be 401 or 403. Received: {status!r}")
        if error is not None and error not in BEARER_ERRORS:
            raise ValueError(
                f"AuthError error must be one of {', '.join(sorted(BEARER_ERRORS))}. "
                f"Received: {error!r}"
            )
        self.error = error
        challenge = (
            (("WWW-Authenticate", bearer_challenge(error, message)),)
            if status == 401 or error is not None
            else ()
        )
        super().__init__(message, status=status, headers=challenge)


# The statuses a hook may refuse a caller with, on purpose: HTTP's client
# errors (each has the phrase the WSGI shell spells it with). An error of a
# hook's that names another status is the hook failing, not a refusal.
REFUSAL_STATUSES: Final = frozenset(
    status.value for status in HTTPStatus if 400 <= status.value < 500
)


def refusal(error: BaseException, kinds: tuple[type[NavaiError], ...]) -> NavaiError | None:
    """``error`` when a hook raised it to refuse the caller on purpose: one
    of ``kinds``, with a status of :data:`REFUSAL_STATUSES` and headers a
    server can send; None when the hook failed instead (the caller then gets
    a 503 without its text, which may hold anything)."""
    if not isinstance(error, kinds) or error.status not in REFUSAL_STATUSES:
        return None
    if not all(is_answer_header(name, value) for name, value in error.headers):
        return None
    return error
