"""The built-in authorizers' protocol, fixed bearer tokens, and ``any_of``
(public through :mod:`navai_mw.auth`)."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Generator, Iterable, Mapping
from typing import Any, Final, Protocol, runtime_checkable

from ..core.effects import Attempt, Outcome
from ..core.errors import AuthError, NavaiError, OptionsError, log_safe
from ..core.http import RequestInfo
from ..core.identity import Identity

# What a built-in authorizer's steps yield: the Attempts of a fetch, and a
# Pause while another request's fetch is in flight.
AuthSteps = Generator[Any, Any, "str | None"]


@runtime_checkable
class Authorizer(Protocol):
    """A built-in authorizer (``navai_mw.auth``): sans-IO, it yields the HTTP
    attempts it needs (a JWKS fetch) and returns the identity, or None for
    no credentials; it raises :class:`AuthError` for bad ones, and
    :class:`UpstreamError` (503) when its provider cannot be reached."""

    def steps(self, info: RequestInfo) -> AuthSteps: ...


def _bearer(headers: Mapping[str, str]) -> str | None:
    """The credentials of an ``Authorization: Bearer`` header: None when
    there is no such header (or another scheme), "" when they are empty."""
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, credentials = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip()


def _no_attempts() -> Generator[Attempt, Outcome, None]:
    """Yields nothing: makes a check that needs no I/O a step function."""
    yield from ()


_TOKEN_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# The scheme of the identities bearer tokens prove (core/identity.py).
_BEARER_SCHEME: Final = "token"

# Visible ASCII: a token travels in a header.
_VISIBLE_ASCII: Final = re.compile(r"[\x21-\x7e]+")

# 16 random visible characters hold about 100 bits; shorter is a password
# someone typed.
MIN_TOKEN_CHARS: Final = 16


def _token_entries(tokens: object) -> list[tuple[object, object]]:
    """``tokens`` as (name, token) pairs, from any of the accepted forms."""
    if isinstance(tokens, str):
        tokens = [entry for entry in tokens.split(",") if entry.strip()]
    if isinstance(tokens, Mapping):
        return list(tokens.items())
    if isinstance(tokens, (bytes, bytearray)) or not isinstance(tokens, Iterable):
        raise OptionsError(
            "bearer_tokens takes a mapping of name to token, 'name:token' strings, "
            "or one 'name:token,name:token' string."
        )
    entries: list[tuple[object, object]] = []
    for position, entry in enumerate(tokens, start=1):
        if not isinstance(entry, str) or ":" not in entry:
            # The entry itself is never quoted: it may be a bare token.
            raise OptionsError(f"bearer_tokens entry {position} is not of the form 'name:token'.")
        name, _, token = entry.partition(":")
        entries.append((name.strip(), token.strip()))
    return entries


def _token_digests(tokens: object) -> tuple[tuple[str, bytes], ...]:
    entries = _token_entries(tokens)
    if not entries:
        raise OptionsError("bearer_tokens needs at least one name:token.")
    names: set[str] = set()
    digests: dict[bytes, str] = {}
    for name, token in entries:
        if not isinstance(name, str) or _TOKEN_NAME.fullmatch(name) is None:
            shown = repr(name)[:80] if isinstance(name, str) else type(name).__name__
            raise OptionsError(
                "bearer_tokens names must be 1 to 64 of A-Z a-z 0-9 _ . - "
                f"Received: {log_safe(shown)}"
            )
        if name in names:
            raise OptionsError(f"bearer_tokens names must be unique: {name!r} appears twice.")
        names.add(name)
        if not isinstance(token, str) or not token:
            raise OptionsError(f"bearer_tokens token {name!r} is empty or not a string.")
        if _VISIBLE_ASCII.fullmatch(token) is None:
            raise OptionsError(
                f"bearer_tokens token {name!r} must be visible ASCII, without spaces."
            )
        if len(token) < MIN_TOKEN_CHARS:
            raise OptionsError(
                f"bearer_tokens token {name!r} is shorter than {MIN_TOKEN_CHARS} characters."
            )
        digest = hashlib.sha256(token.encode("ascii")).digest()
        if digest in digests:
            raise OptionsError(
                f"bearer_tokens tokens must be unique: {digests[digest]!r} and {name!r} "
                "share one, so their callers could not be told apart."
            )
        digests[digest] = name
    return tuple((name, digest) for digest, name in digests.items())


class BearerTokens:
    """Fixed bearer tokens, each with a name that is the caller's identity
    (see :func:`bearer_tokens`).

    Only SHA-256 digests of the tokens are kept. A presented token's digest
    is compared with every one of them with :func:`hmac.compare_digest`,
    without stopping at a match: equal lengths, and no early exit, so the
    timing of an answer tells nothing about how near a guess was.
    """

    __slots__ = ("_digests",)

    def __init__(self, tokens: Mapping[str, str] | Iterable[str] | str) -> None:
        self._digests = _token_digests(tokens)

    @property
    def names(self) -> tuple[str, ...]:
        """The configured names: the identities this authorizer returns."""
        return tuple(name for name, _ in self._digests)

    def __repr__(self) -> str:
        return f"BearerTokens(names={self.names!r})"

    def steps(self, info: RequestInfo) -> AuthSteps:
        yield from _no_attempts()
        presented = _bearer(info.headers)
        if presented is None:
            return None
        # surrogatepass: whatever a server decoded the header into, it encodes.
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        identity: str | None = None
        for name, expected in self._digests:
            if hmac.compare_digest(digest, expected) and identity is None:
                identity = name
        if identity is None:
            raise AuthError("Invalid bearer token.", error="invalid_token")
        return Identity(identity, _BEARER_SCHEME)


def bearer_tokens(tokens: Mapping[str, str] | Iterable[str] | str) -> BearerTokens:
    """An authorizer for fixed bearer tokens.

    ``tokens``: a mapping of name to token, an iterable of ``"name:token"``
    strings, or one ``"name:token,name:token"`` string (``NAVAI_AUTH_TOKENS``).
    Names are 1 to 64 of ``A-Z a-z 0-9 _ . -`` and unique; tokens are visible
    ASCII, at least :data:`MIN_TOKEN_CHARS` long, and unique. The identity
    is the name. Raises :class:`~navai_mw.OptionsError`, whose message never
    holds a token.
    """
    return BearerTokens(tokens)


class AnyOf:
    """Several authorizers, tried in order; the first identity wins (see
    :func:`any_of`)."""

    __slots__ = ("authorizers",)

    def __init__(self, *authorizers: Authorizer) -> None:
        if not authorizers:
            raise OptionsError("any_of needs at least one authorizer.")
        for authorizer in authorizers:
            if not isinstance(authorizer, Authorizer):
                raise OptionsError(
                    "any_of takes authorizers such as those of navai_mw.auth (objects with "
                    f"steps()). Received: {type(authorizer).__name__}"
                )
        self.authorizers: tuple[Authorizer, ...] = authorizers

    def __repr__(self) -> str:
        return f"AnyOf{self.authorizers!r}"

    def steps(self, info: RequestInfo) -> AuthSteps:
        refused: AuthError | None = None
        unavailable: NavaiError | None = None
        for authorizer in self.authorizers:
            try:
                identity = yield from authorizer.steps(info)
            except AuthError as exc:
                refused = refused or exc
                continue
            except NavaiError as exc:
                unavailable = unavailable or exc
                continue
            if identity is not None:
                return identity
        if unavailable is not None:
            raise unavailable
        if refused is not None:
            raise refused
        return None


def any_of(*authorizers: Authorizer) -> AnyOf:
    """An authorizer that accepts what any of ``authorizers`` accepts, tried
    in order (put the cheap ones first: a fixed token needs no network).

    When none accepts: None if none saw credentials; else the first
    :class:`~navai_mw.AuthError`, unless one could not decide because its
    provider was unreachable: then its 503, since the credentials may well
    be good. A provider that is down never hides a credential another one
    accepts.
    """
    return AnyOf(*authorizers)
