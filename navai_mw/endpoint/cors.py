"""CORS: the allowed origins, the headers of an answer, the preflight."""

from __future__ import annotations

from typing import Final

# How long browsers may cache a preflight answer.
PREFLIGHT_MAX_AGE: Final = "600"


# Headers a page may read from a cross-origin answer.
_EXPOSED: Final = (
    "Access-Control-Expose-Headers",
    "Retry-After, RateLimit, RateLimit-Policy, Location",
)


def _normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()
