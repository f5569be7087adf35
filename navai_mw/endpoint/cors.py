"""CORS: the allowed origins, the headers of an answer, the preflight.

Off unless origins are listed (then a request from an origin not listed is
refused with a 403, and every answer says ``Vary: Origin``). ``"*"`` allows
any origin; with credentials allowed, browsers refuse ``*``, so the
request's own origin is echoed instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from ..core.values import flag
from .answers import Answer

__all__ = ["PREFLIGHT_MAX_AGE", "Cors"]

# How long browsers may cache a preflight answer.
PREFLIGHT_MAX_AGE: Final = "600"
# Headers a page may read from a cross-origin answer.
_EXPOSED: Final = (
    "Access-Control-Expose-Headers",
    "Retry-After, RateLimit, RateLimit-Policy, Location, X-Request-ID",
)

Headers = tuple[tuple[str, str], ...]


def _normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


class Cors:
    """The CORS policy of the navai routes, configured once."""

    __slots__ = ("_any", "_credentials", "origins")

    def __init__(self, origins: Iterable[str] | str | None, *, credentials: bool) -> None:
        if isinstance(origins, str):  # "https://a.test, https://b.test", as in the env
            origins = origins.split(",")
        flag(credentials, "cors_allow_credentials")
        normalized = (
            None if origins is None else {_normalize_origin(o) for o in origins if o.strip()}
        )
        self.origins: frozenset[str] | None = None if normalized is None else frozenset(normalized)
        self._any = normalized is not None and "*" in normalized
        self._credentials = credentials

    @property
    def on(self) -> bool:
        return self.origins is not None

    def headers(self, request_headers: Mapping[str, str]) -> Headers | None:
        """CORS response headers for a request, or None when its origin is refused."""
        if self.origins is None:
            return ()
        origin = request_headers.get("origin")
        if origin is None:
            return (("Vary", "Origin"),)
        if self._any or _normalize_origin(origin) in self.origins:
            allowed = "*" if self._any and not self._credentials else origin
            cors: Headers = (("Access-Control-Allow-Origin", allowed), ("Vary", "Origin"), _EXPOSED)
            if self._credentials:
                cors += (("Access-Control-Allow-Credentials", "true"),)
            return cors
        # No exception for "same-origin" requests: the only sign of one is
        # the Host header, which a DNS-rebinding page controls. A page served
        # by this app lists its own origin like any other.
        return None

    def preflight(self, method: str, request_headers: Mapping[str, str], cors: Headers) -> Answer:
        """The answer to a preflight for a route taking ``method``."""
        allowed = [
            *(header for header in cors if header is not _EXPOSED),  # for answers only
            ("Access-Control-Allow-Methods", method),
            ("Access-Control-Max-Age", PREFLIGHT_MAX_AGE),
        ]
        requested = request_headers.get("access-control-request-headers")
        if requested:
            allowed.append(("Access-Control-Allow-Headers", requested))
        return Answer(204, allowed, b"")
