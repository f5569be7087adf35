"""What a route is, and what its handler gets and gives."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import attrs

from ..core.http import RequestInfo


@attrs.frozen
class Call:
    """One request as a route's handler sees it, past every check."""

    body: dict[str, Any]
    info: RequestInfo
    identity: str | None
    raw: bytes = b""
    query: str = ""
    mount: str = ""


@attrs.frozen
class Reply:
    """What a route's handler answers: a status and a JSON payload, or
    ``raw`` bytes of ``content_type`` (an SDP answer); ``headers`` extra."""

    status: int
    payload: object
    raw: bytes | None = None
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Call], Generator[Any, Any, Reply]]


@attrs.frozen
class Route:
    """One navai route: its name (what ``authorize`` sees as
    ``RequestInfo.route``), path, method, rate-limit group and handler."""

    name: str
    path: str
    method: str
    group: str
    handle: Handler = attrs.field(repr=False)
    # What the body is: "json" (the default), "sdp" (an offer) or "none".
    body: str = "json"
    # A route for the path's children ({path}/{id}), not the path itself.
    dynamic: bool = False
    allow: tuple[str, str] = attrs.field(init=False, repr=False)
    allow_cors: tuple[str, str] = attrs.field(init=False, repr=False)

    @allow.default
    def _allow(self) -> tuple[str, str]:
        return ("Allow", self.method)

    @allow_cors.default
    def _allow_cors(self) -> tuple[str, str]:
        return ("Allow", f"{self.method}, OPTIONS")
