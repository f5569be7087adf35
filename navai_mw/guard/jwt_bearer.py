"""The JWT bearer authorizer: a provider's JWKS fetched as ``Attempt``s,
cached, and tokens verified against it (the rules are in
:mod:`navai_mw.auth`, which makes it public)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, NoReturn
from urllib.parse import urlsplit

from ..core.effects import Attempt, Outcome, Pause
from ..core.errors import AuthError, NavaiError, OptionsError, UpstreamError, log_safe
from ..core.exchange import attempts
from ..core.http import HttpRequest, RequestInfo, is_header_safe
from ..core.identity import Identity
from ..core.options import MAX_UPSTREAM_TIMEOUT_SECONDS
from ..core.values import finite, seconds
from .authorizers import AuthSteps, _bearer

if TYPE_CHECKING:
    from jwt import PyJWK

__all__ = [
    "JWTBearer",
    "jwt_bearer",
]

logger = logging.getLogger("navai_mw")

# -- shared --------------------------------------------------------------------------


# -- fixed tokens ----------------------------------------------------------------------


# -- JWTs against a JWKS ---------------------------------------------------------------

# The asymmetric JWS algorithms, with the key type (and curve) each needs.
# Nothing symmetric (HS*) and not "none": a verifier whose keys come from a
# public JWKS must never let a token make an HMAC key of one.
_KEY_TYPES: Final[Mapping[str, tuple[str, str | None]]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}
# A provider's JWKS holds a few keys of under 2 KiB each (Entra's, with x5c
# certificate chains, is about 10 KiB): 64 KiB is ample, and bounds what a
# wrong or hostile URL can make each worker read and parse.
MAX_JWKS_BYTES: Final = 64 * 1024
# The defaults of jwt_bearer() and JWTBearer (one place for both).
DEFAULT_ALGORITHMS: Final = ("RS256", "ES256")
DEFAULT_LEEWAY_SECONDS: Final = 30.0
DEFAULT_REFETCH_INTERVAL_SECONDS: Final = 60.0
DEFAULT_CACHE_SECONDS: Final = 600.0
DEFAULT_TIMEOUT_SECONDS: Final = 5.0
# A connection failure or a 5xx is tried once more, within ``timeout``.
MAX_JWKS_RETRIES: Final = 1
# After a failed fetch, requests that need one are answered 503 at once for
# this long (at most ``refetch_interval``), instead of each waiting on a
# provider that is down.
FAILED_FETCH_BACKOFF_SECONDS: Final = 5.0
# Provider tokens are one or two KiB; a longer "token" is not worth parsing.
MAX_TOKEN_CHARS: Final = 16 * 1024
# Verified tokens remembered per authorizer (about 100 bytes each): room for
# every active user of a busy worker, and a bound on what made-up tokens
# could make it hold (only verified ones are kept).
MAX_REMEMBERED_TOKENS: Final = 10_000

_UNAVAILABLE_MESSAGE: Final = "Authorization is unavailable; try again shortly."
# How often a request waiting on another's key fetch looks again.
WAIT_FOR_FETCH_SECONDS: Final = 0.02


class _Wait:
    """The keys are being fetched by another request: wait for them."""


_WAIT: Final = _Wait()

# kid -> algorithm -> key.
KeySet = Mapping[str, Mapping[str, "PyJWK"]]


def _import_jwt() -> None:
    try:
        import jwt
        from jwt.algorithms import has_crypto
    except ImportError:
        raise OptionsError("jwt_bearer needs PyJWT: pip install 'navai-mw[jwt]'") from None
    if not has_crypto or not hasattr(jwt, "PyJWK"):
        raise OptionsError("jwt_bearer needs PyJWT with cryptography: pip install 'navai-mw[jwt]'")


def _invalid(reason: str) -> AuthError:
    return AuthError(f"Invalid token: {reason}.", error="invalid_token")


def _is_time(value: object) -> bool:
    return finite(value) is not None


def _strings(value: str | Iterable[str], name: str) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)
    if not items or not all(isinstance(item, str) and item.strip() for item in items):
        raise OptionsError(f"jwt_bearer {name} must be a non-empty string, or several.")
    return tuple(item.strip() for item in items)


def _check_jwks_url(url: object) -> str:
    """An https URL, or http on a loopback host (a local provider): keys
    fetched in the clear would let anyone on the path mint identities. The
    URL is never echoed: it may carry a secret in its query."""
    invalid = OptionsError(
        "jwt_bearer jwks_url must be an https URL with a host, no credentials and no "
        "fragment (http only on a loopback host)."
    )
    if not isinstance(url, str) or not is_header_safe(url.strip()):
        raise invalid
    url = url.strip()
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        raise invalid from None
    host = parts.hostname or ""
    if not host or not port_ok or "@" in parts.netloc or "#" in url:
        raise invalid
    if parts.scheme == "https":
        return url
    if parts.scheme == "http":
        if host == "localhost":
            return url
        try:
            if ipaddress.ip_address(host).is_loopback:
                return url
        except ValueError:
            pass
    raise invalid


class JWTBearer:
    """Verifies ``Authorization: Bearer <JWT>`` against a provider's JWKS
    (see :func:`jwt_bearer`).

    Stateful: it keeps the fetched keys for every request and thread, under
    a lock that is never held across a yield. Keys are fetched on first use
    and kept ``cache_seconds``. A ``kid`` they do not hold (the provider
    rotated its keys) refetches them, at most once per ``refetch_interval``
    counted from the last fetch, so made-up key ids cannot make this process
    hammer the provider. While one request refreshes expired keys, the
    others keep using them.
    """

    def __init__(
        self,
        jwks_url: str,
        *,
        audience: str | Iterable[str],
        issuer: str | Iterable[str],
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        leeway: float = DEFAULT_LEEWAY_SECONDS,
        refetch_interval: float = DEFAULT_REFETCH_INTERVAL_SECONDS,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        _import_jwt()
        self._url = _check_jwks_url(jwks_url)
        parts = urlsplit(self._url)
        self._where = log_safe(f"{parts.hostname}{parts.path}")  # no query in a log line
        self._audience = _strings(audience, "audience")
        self._issuer = _strings(issuer, "issuer")
        if isinstance(algorithms, str):
            algorithms = (algorithms,)
        self._algorithms = tuple(dict.fromkeys(algorithms))
        refused = [alg for alg in self._algorithms if alg not in _KEY_TYPES]
        if refused or not self._algorithms:
            raise OptionsError(
                "jwt_bearer algorithms must be one or more of "
                f"{', '.join(_KEY_TYPES)} (none and HS* are never allowed). "
                f"Received: {log_safe(repr(refused or self._algorithms))[:200]}"
            )
        self._leeway = seconds(leeway, "jwt_bearer leeway", zero_ok=True)
        self._refetch_interval = seconds(
            refetch_interval, "jwt_bearer refetch_interval", zero_ok=True
        )
        self._cache_seconds = seconds(cache_seconds, "jwt_bearer cache_seconds")
        self._timeout = seconds(timeout, "jwt_bearer timeout", most=MAX_UPSTREAM_TIMEOUT_SECONDS)
        self._backoff = min(FAILED_FETCH_BACKOFF_SECONDS, self._refetch_interval)
        self._retry_after = str(max(1, math.ceil(self._backoff)))
        self._clock = clock
        self._monotonic = monotonic
        self._request = HttpRequest(
            method="GET",
            url=self._url,
            headers=(("Accept", "application/json"),),
            body=b"",
            max_response_bytes=MAX_JWKS_BYTES,
        )
        # The cache: every field below is read and written under the lock.
        self._lock = threading.Lock()
        self._keys: KeySet | None = None
        self._fetched_at = 0.0  # when the keys arrived (monotonic)
        self._last_fetch: float | None = None  # when the last fetch began
        self._failed_at: float | None = None  # when the last fetch failed
        self._refreshing_since: float | None = None  # a fetch under way
        # Tokens verified already, by SHA-256: subject, key id, and the span
        # of time (Unix) in which they are valid. A caller sends the same
        # token with each request; remembering it skips the parsing and the
        # signature check, most of a check's cost. Bounded, oldest out first.
        self._verified: dict[bytes, tuple[str, str, float, float]] = {}

    def __repr__(self) -> str:
        return (
            f"JWTBearer(jwks={self._where!r}, audience={self._audience!r}, "
            f"issuer={self._issuer!r}, algorithms={self._algorithms!r})"
        )

    def steps(self, info: RequestInfo) -> AuthSteps:
        token = _bearer(info.headers)
        if token is None:
            return None
        digest = hashlib.sha256(token.encode()).digest()
        subject = self._remembered(digest)
        if subject is not None:
            return subject
        alg, kid = self._header(token)
        found = self._cached(kid)
        while isinstance(found, _Wait):
            # Another request is fetching the keys this one needs: one fetch
            # for all of them, the others look again shortly.
            yield Pause(WAIT_FOR_FETCH_SECONDS)
            found = self._cached(kid)
        keys = found if found is not None else (yield from self._refresh())
        subject, valid_from, expires = self._verify(token, alg, kid, keys)
        with self._lock:
            if len(self._verified) >= MAX_REMEMBERED_TOKENS:
                del self._verified[next(iter(self._verified))]
            self._verified[digest] = (subject, kid, valid_from, expires)
        return subject

    def _remembered(self, digest: bytes) -> str | None:
        """The subject of a token verified before, while it is still valid
        and its key is still among fresh keys; else None (check it again)."""
        with self._lock:
            entry = self._verified.get(digest)
            if entry is None:
                return None
            subject, kid, valid_from, expires = entry
            keys = self._keys
            fresh = self._monotonic() - self._fetched_at < self._cache_seconds
            now, leeway = self._clock(), self._leeway
            usable = fresh and keys is not None and kid in keys
            if usable and valid_from - leeway <= now < expires + leeway:
                return subject
            del self._verified[digest]
            return None

    def _refresh(self) -> Generator[Attempt, Outcome, KeySet]:
        """Fetch the keys and record how it went: in one locked step, so that
        no request sees the refresh over before its keys are in place. An
        abandoned fetch (the generator closed) records nothing."""
        fetched: KeySet | None = None
        failed = False
        try:
            fetched = yield from self._fetch()
        except NavaiError:
            failed = True
            raise
        finally:
            with self._lock:
                now = self._monotonic()
                self._refreshing_since = None
                if fetched is not None:
                    self._keys, self._fetched_at, self._failed_at = fetched, now, None
                elif failed:
                    self._failed_at = now
        return fetched

    def _header(self, token: str) -> tuple[str, str]:
        import jwt

        if not token or len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise _invalid("malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise _invalid("algorithm not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _invalid("no key id")
        return alg, kid

    def _cached(self, kid: str) -> KeySet | _Wait | None:
        """The keys to verify with; :data:`_WAIT` while another request's
        fetch, in flight, is to bring them; or None to fetch them first (the
        fetch is then claimed, so that one request fetches for all). Raises
        the 503 while a failed fetch is recent."""
        with self._lock:
            now = self._monotonic()
            keys = self._keys
            if keys is not None and now - self._fetched_at < self._cache_seconds:
                if kid in keys:
                    return keys
                last = self._last_fetch
                if last is not None and now - last < self._refetch_interval:
                    return keys  # an unknown kid so soon after a fetch: no refetch
                fresh = True
            else:
                fresh = False
            in_flight = (
                self._refreshing_since is not None and now - self._refreshing_since < self._timeout
            )
            if in_flight:
                # Stale keys serve meanwhile; without any (a cold start), or
                # for a kid the fetch may bring, wait for it.
                return keys if keys is not None and not fresh else _WAIT
            if self._failed_at is not None and now - self._failed_at < self._backoff:
                raise UpstreamError(
                    _UNAVAILABLE_MESSAGE, status=503, headers=(("Retry-After", self._retry_after),)
                )
            self._last_fetch = self._refreshing_since = now
            return None

    def _fetch(self) -> Generator[Attempt, Outcome, KeySet]:
        """Fetch and read the JWKS; the retry policy is the core's."""
        try:
            response = yield from attempts(
                self._request, budget=self._timeout, max_retries=MAX_JWKS_RETRIES, what="it"
            )
        except UpstreamError as exc:  # "it timed out.", "it could not be reached."...
            self._unavailable(exc.message.rstrip("."))
        if response.status != 200:
            self._unavailable(f"it answered HTTP {response.status}")
        return self._parse(response.body)

    def _unavailable(self, reason: str) -> NoReturn:
        logger.warning(
            "navai_mw: the JWKS at %s could not be fetched: %s; answering 503",
            self._where,
            reason,
        )
        raise UpstreamError(
            _UNAVAILABLE_MESSAGE, status=503, headers=(("Retry-After", self._retry_after),)
        )

    def _parse(self, body: bytes) -> KeySet:
        from jwt import PyJWK, PyJWTError

        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            self._unavailable("its answer is not JSON")
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            self._unavailable('its answer is not a JWKS (no "keys" list)')
        keys: dict[str, dict[str, PyJWK]] = {}
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            kid = entry.get("kid")
            if not isinstance(kid, str) or not kid:
                continue
            for alg in self._algorithms:
                kty, crv = _KEY_TYPES[alg]
                if entry.get("kty") != kty or (crv is not None and entry.get("crv") != crv):
                    continue
                if entry.get("alg", alg) != alg:
                    continue
                try:
                    key = PyJWK(entry, algorithm=alg)
                except (PyJWTError, ValueError, TypeError, KeyError):
                    continue  # unusable for this algorithm: as if absent
                if key.Algorithm.check_key_length(key.key):
                    logger.warning(
                        "navai_mw: the JWKS at %s holds a key (kid %s) too short to trust; "
                        "it is ignored",
                        self._where,
                        log_safe(kid[:64]),
                    )
                    continue
                keys.setdefault(kid, {})[alg] = key
        if not keys:
            self._unavailable(f"it holds no usable key for {', '.join(self._algorithms)}")
        return keys

    def _verify(self, token: str, alg: str, kid: str, keys: KeySet) -> tuple[str, float, float]:
        """The token's subject and the span in which it is valid, or AuthError."""
        import jwt

        for_kid = keys.get(kid)
        if for_kid is None:
            raise _invalid("unknown signing key")
        key = for_kid.get(alg)
        if key is None:
            raise _invalid("algorithm does not match the signing key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                options={
                    # Times are checked below, against the injected clock;
                    # the subject too: it must be a non-empty string.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_sub": False,
                    "require": ["aud", "iss"],
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.InvalidSignatureError:
            raise _invalid("bad signature") from None
        except jwt.InvalidAlgorithmError:
            raise _invalid("algorithm not allowed") from None
        except jwt.InvalidAudienceError:
            raise _invalid("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise _invalid("wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:  # only aud and iss are required
            raise _invalid("wrong audience" if exc.claim == "aud" else "wrong issuer") from None
        except jwt.PyJWTError:
            raise _invalid("malformed") from None
        self._check_times(claims)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject.strip():
            raise _invalid("no subject")
        valid_from = max((claims[name] for name in ("nbf", "iat") if name in claims), default=0.0)
        # The subject as its issuer names it: another issuer's "ops" is
        # another caller.
        proved = Identity(subject, f"jwt:{claims['iss']}")
        return proved, float(valid_from), float(claims["exp"])

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        if "exp" not in claims:
            raise _invalid("no expiry")
        for name in ("exp", "nbf", "iat"):
            if name in claims and not _is_time(claims[name]):
                raise _invalid("malformed")
        now, leeway = self._clock(), self._leeway
        if claims["exp"] <= now - leeway:
            raise _invalid("expired")
        for name in ("nbf", "iat"):
            if name in claims and claims[name] > now + leeway:
                raise _invalid("not yet valid")


def jwt_bearer(
    jwks_url: str,
    *,
    audience: str | Iterable[str],
    issuer: str | Iterable[str],
    algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
    leeway: float = DEFAULT_LEEWAY_SECONDS,
    refetch_interval: float = DEFAULT_REFETCH_INTERVAL_SECONDS,
    cache_seconds: float = DEFAULT_CACHE_SECONDS,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> JWTBearer:
    """An authorizer for provider-issued JWTs, verified against the JWKS at
    ``jwks_url`` (https; http only on a loopback host). The identity is the
    ``sub`` claim.

    Args:
        audience: the ``aud`` the token must name (one, or several accepted).
        issuer: the ``iss`` the token must carry (one, or several accepted).
        algorithms: the accepted asymmetric algorithms (RS*, PS*, ES*, EdDSA).
        leeway: seconds of clock skew allowed on ``exp``, ``nbf`` and ``iat``.
        refetch_interval: a token with an unknown ``kid`` refetches the JWKS
            at most this often (seconds since the last fetch).
        cache_seconds: how long fetched keys are used before a refetch.
        timeout: bound on one fetch, its one retry included (seconds).
        clock: Unix time, for the token's times. monotonic: for the cache.

    A JWKS that cannot be fetched or read is a 503 with ``Retry-After`` (and
    a WARNING on the ``navai_mw`` logger), never a 401. Raises
    :class:`~navai_mw.OptionsError` for bad arguments, and when PyJWT (with
    cryptography) is not installed.
    """
    return JWTBearer(
        jwks_url,
        audience=audience,
        issuer=issuer,
        algorithms=algorithms,
        leeway=leeway,
        refetch_interval=refetch_interval,
        cache_seconds=cache_seconds,
        timeout=timeout,
        clock=clock,
        monotonic=monotonic,
    )


# -- combining -----------------------------------------------------------------------


# -- environment -------------------------------------------------------------------
