"""The answers every route gives: JSON with the fixed headers, an error, a
raw body (an SDP answer, a 204)."""

from __future__ import annotations

import http
from collections.abc import Iterable
from typing import Final

import attrs

from ..core.errors import REFUSAL_STATUSES, NavaiError, RequestError
from ..core.http import compact_json

__all__ = [
    "ANSWERED_STATUSES",
    "Answer",
    "error_answer",
    "json_answer",
    "raw_answer",
    "too_large",
    "unsupported",
]

# Every status a navai route answers with (docs/http.md), and the client
# errors a hook may refuse a caller with: nothing else leaves the endpoint,
# so the WSGI shell can spell each one.
ANSWERED_STATUSES: Final = (
    frozenset({200, 201, 204, 400, 401, 403, 404, 405, 413, 415, 429, 500, 502, 503, 504})
    | REFUSAL_STATUSES
)
_REASONS: Final = {
    status: f"{status} {http.HTTPStatus(status).phrase}" for status in ANSWERED_STATUSES
}

_JSON_HEADERS: Final = (
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
)


@attrs.frozen
class Answer:
    """What to send back: status, headers (str pairs) and body bytes; and,
    for the operator's metrics and traces (never sent), the route that
    answered, its rate-limit group, what the guard decided and, for an
    OpenAI webhook, its event type and what became of it."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    route: str = ""
    group: str = ""
    guard: str = ""
    webhook: tuple[str, str] | None = None

    @property
    def status_line(self) -> str:
        """The WSGI spelling of the status (``"200 OK"``)."""
        return _REASONS[self.status]


def json_answer(status: int, payload: object, headers: Iterable[tuple[str, str]]) -> Answer:
    body = compact_json(payload)
    return Answer(
        status,
        [*_JSON_HEADERS, ("Content-Length", str(len(body))), *headers],
        body,
    )


def error_answer(exc: NavaiError, headers: Iterable[tuple[str, str]] = ()) -> Answer:
    """``{"error": message}`` (and its ``code``, when it has one) with the
    error's status and headers."""
    payload = (
        {"error": exc.message} if exc.code is None else {"error": exc.message, "code": exc.code}
    )
    return json_answer(exc.status, payload, [*exc.headers, *headers])


def too_large(limit: int, headers: Iterable[tuple[str, str]]) -> Answer:
    message = f"Request body is larger than {limit} bytes."
    return error_answer(RequestError(message, status=413), headers)


def unsupported(body_kind: str, headers: Iterable[tuple[str, str]]) -> Answer:
    kind = "application/sdp" if body_kind == "sdp" else "application/json (UTF-8)"
    return error_answer(RequestError(f"Content-Type must be {kind}.", status=415), headers)


def raw_answer(
    status: int, body: bytes, content_type: str | None, headers: Iterable[tuple[str, str]]
) -> Answer:
    """A non-JSON answer: an SDP answer, or a 204 with no body (``content_type`` None)."""
    kind = () if content_type is None else (("Content-Type", content_type),)
    return Answer(
        status,
        [
            *kind,
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            *headers,
        ],
        body,
    )
