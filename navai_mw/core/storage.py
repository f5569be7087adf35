"""What a storage URL names, read in one place: ``memory://`` (this process
only), or a Redis or Valkey server that every worker shares (``redis://``,
``rediss://``, ``valkey://``, ``valkeys://``; the ``limits`` library's
``async+`` prefix is the same storage)."""

from __future__ import annotations

from typing import Final

__all__ = [
    "REDIS_SCHEMES",
    "is_memory",
    "is_redis",
    "redis_client_url",
    "scheme",
    "shown_url",
]

REDIS_SCHEMES: Final = frozenset({"redis", "rediss", "valkey", "valkeys"})
# Valkey speaks Redis's protocol; redis-py's URLs spell it as Redis.
_CLIENT_SCHEMES: Final = {"valkey": "redis", "valkeys": "rediss"}


def scheme(uri: str) -> str:
    """The storage's kind: ``memory``, ``redis``, ``valkey``..."""
    return uri.split("://", 1)[0].removeprefix("async+").lower()


def is_memory(uri: str) -> bool:
    return scheme(uri) == "memory"


def is_redis(uri: str | None) -> bool:
    """Whether ``uri`` names a Redis (or Valkey) server the workers share."""
    return uri is not None and scheme(uri) in REDIS_SCHEMES


def redis_client_url(uri: str | None) -> str | None:
    """``uri`` as a Redis client takes it, when it names a shared Redis or
    Valkey server; else None (``memory://``, or another kind of storage)."""
    if uri is None or not is_redis(uri):
        return None
    kind, _, rest = uri.removeprefix("async+").partition("://")
    return f"{_CLIENT_SCHEMES.get(kind.lower(), kind.lower())}://{rest}"


def shown_url(uri: str | None) -> str:
    """``uri`` fit for a log line or a banner: its scheme, host, port and
    path, never its credentials (``user:password@``) nor its query
    (``?password=``)."""
    if not uri:
        return "none"
    kind, separator, rest = uri.partition("://")
    if not separator:
        return "(not a URL)"  # it could be anything, a bare password too
    # Up to the last "@": a password holding an unescaped "@", "/" or "?"
    # still ends before it.
    rest = rest.rpartition("@")[2]
    for end in "?#":
        rest = rest.partition(end)[0]
    return f"{kind}://{rest}"
