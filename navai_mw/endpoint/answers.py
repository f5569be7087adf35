"""The answers every route gives: JSON with the fixed headers, an error, a
raw body (an SDP answer, a 204)."""

from __future__ import annotations

import http
from collections.abc import Iterable
from typing import Final

import attrs

from ..core.errors import NavaiError, RequestError
from ..core.http import compact_json
from .route import Reply, Route


def _reason(status: int) -> str:
    return f"{status} {http.HTTPStatus(status).phrase}"


_REASONS: Final = {
    status: _reason(status)
    for status in (200, 201, 204, 400, 401, 403, 404, 405, 413, 415, 429, 500, 502, 503, 504)
}


@attrs.frozen
class Answer:
    """What to send back: status, headers (str pairs) and body bytes."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status_line(self) -> str:
        """The WSGI spelling of the status (``"200 OK"``)."""
        return _REASONS[self.status]


def _json(status: int, payload: object, headers: Iterable[tuple[str, str]]) -> Answer:
    body = compact_json(payload)
    return Answer(
        status,
        [*_JSON_HEADERS, ("Content-Length", str(len(body))), *headers],
        body,
    )


_JSON_HEADERS: Final = (
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
)


def _error(exc: NavaiError, headers: Iterable[tuple[str, str]] = ()) -> Answer:
    return _json(exc.status, {"error": exc.message}, [*exc.headers, *headers])


def _too_large(limit: int, cors: Iterable[tuple[str, str]]) -> Answer:
    message = f"Request body is larger than {limit} bytes."
    return _error(RequestError(message, status=413), cors)


def _unsupported(route: Route, cors: Iterable[tuple[str, str]]) -> Answer:
    kind = "application/sdp" if route.body == "sdp" else "application/json (UTF-8)"
    return _error(RequestError(f"Content-Type must be {kind}.", status=415), cors)


def _raw(reply: Reply, headers: Iterable[tuple[str, str]]) -> Answer:
    """A non-JSON answer (an SDP answer, or a 204 with no body)."""
    body = reply.raw or b""
    kind = () if reply.status == 204 else (("Content-Type", reply.content_type),)
    return Answer(
        reply.status,
        [
            *kind,
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            *reply.headers,
            *headers,
        ],
        body,
    )
