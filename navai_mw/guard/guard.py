"""The guard, sans-IO: who is calling, may they, and how often.

It runs before every navai route, after the answers that need no guard
(a preflight, 405, 413, 415), in this order:

1. the client address: the socket peer, or, when the peer is a trusted
   proxy, the rightmost untrusted hop of ``X-Forwarded-For``/``Forwarded``;
2. authorization: the user's ``authorize`` hook is yielded as
   :class:`CallHook` (the shell's driver calls it, in a worker thread under
   ASGI when it is sync); a built-in :class:`Authorizer` runs its own steps
   here, yielding only the HTTP attempts it needs (a JWKS fetch);
3. on a route that spends money (the ``mint`` and ``speech`` groups), with
   OpenAI's webhooks on: a caller whose safety identifier OpenAI blocked
   is refused (403, ``code: "suspended"``), asked as :class:`IsBlocked` of
   the identifier recomputed for this request (the blocked set holds
   identifiers, never identities);
4. the rate limit: yielded as :class:`HitLimit` for the shell's driver to
   count in its storage; the answer to what comes back (pass, 429, 503)
   and every header are decided here.

Promises: nothing here reads a clock or touches a socket or a store; a
refusal is a :class:`NavaiError` with its status and headers; an
``authorize`` hook refuses only with an :class:`AuthError`, and anything
else it raises (another :class:`NavaiError` too) is logged with its
traceback and answered 503 without its text; no credential reaches a log
line or a rate-limit key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from collections.abc import Callable, Generator, Mapping
from typing import Any, Final, cast

import attrs

from ..core.effects import CallHook, HitLimit, HookResult, IsBlocked, LimitResult
from ..core.errors import AuthError, NavaiError, RequestError, log_safe, refusal
from ..core.http import RequestInfo
from ..core.identity import APP_SCHEME, Identity, identity_key
from ..core.rate_limit_policy import RateLimitPolicy
from ..core.storage import shown_url
from .addresses import IPNetwork
from .authorizers import Authorizer

__all__ = [
    "SPENDING_GROUPS",
    "SUSPENDED",
    "Guard",
]

logger = logging.getLogger("navai_mw")

# The route groups whose every request may cost money: a suspended caller
# gets none of them. Ending a call, reading one's budget and running a
# backend function (the app's own code) stay open.
SPENDING_GROUPS: Final = frozenset({"mint", "speech"})
SUSPENDED: Final = (
    "Your access to voice features is suspended. Contact the service's support to learn more."
)


# -- effects: what the core asks the shells' drivers to do ---------------------------


# -- the built-in authorizers' protocol ----------------------------------------------


Hook = Callable[[RequestInfo], Any]


# -- rate limits -------------------------------------------------------------------------


def _limit_header(policy: RateLimitPolicy, result: LimitResult) -> tuple[str, int]:
    """The ``RateLimit`` header value, and the seconds until a slot frees in
    the tightest window (the one with the fewest requests left)."""
    if len(policy.items) == 1:  # the common case, without the search
        remaining, reset_at = result.windows[0]
        wait = _wait(policy.items[0], remaining, reset_at, result.now)
        return f'"{policy.group}";r={remaining};t={wait}', wait
    waits = [
        _wait(item, remaining, reset_at, result.now)
        for item, (remaining, reset_at) in zip(policy.items, result.windows, strict=True)
    ]
    tightest = min(range(len(waits)), key=lambda i: (result.windows[i][0], -waits[i]))
    remaining, wait = result.windows[tightest][0], waits[tightest]
    return f'"{policy.group}";r={remaining};t={wait}', wait


def _wait(item: Any, remaining: int, reset_at: float, now: float) -> int:
    """Whole seconds until the window frees a slot. A window that has been
    spent but reports its reset as now was just opened (the storage's
    estimate falls on the boundary): all of it is still ahead."""
    wait = math.ceil(reset_at - now)
    if wait <= 0 and remaining < item.amount:
        return int(item.get_expiry())
    return max(0, wait)


# -- client address -------------------------------------------------------------------


# -- the guard --------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Guard:
    """The guard's configuration; see the module docstring for the order.

    Fields:
        authorize: the user's hook, a built-in :class:`Authorizer`, or None.
        limits: the rate-limit policy of each route group that has one.
        storage_uri: where the counts live (``memory://``, ``redis://...``),
            when there are limits.
        fail_open: when the limiter's storage is down, let requests through
            (and log it) instead of answering 503.
        trusted_proxies: peers whose forwarding headers are believed.
        safety_secret: key of the HMAC that turns an identity into
            OpenAI's safety identifier (None: no identifier is sent).
    """

    authorize: Hook | Authorizer | None = None
    limits: Mapping[str, RateLimitPolicy] = attrs.field(factory=dict)
    storage_uri: str | None = None
    fail_open: bool = False
    # The configured storage, whether or not limits count in it: a shared
    # Redis also keeps the relayed calls' owners and deadlines.
    store_uri: str | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()
    safety_secret: bytes | None = attrs.field(default=None, repr=False)
    # Whether the identifiers OpenAI blocks are refused (OpenAI's webhooks
    # are on: they say which).
    blocklist: bool = False
    # Told apart once: a runtime protocol check costs microseconds a request.
    _builtin: bool = attrs.field(init=False, repr=False, eq=False)

    @_builtin.default
    def _is_builtin(self) -> bool:
        return isinstance(self.authorize, Authorizer)

    @property
    def active(self) -> bool:
        return self.authorize is not None or bool(self.limits)

    def safety_identifier(self, identity: str | None) -> str | None:
        """OpenAI-Safety-Identifier for ``identity``: a keyed hash of its key
        (scheme and name), stable across workers and machines, that never
        reveals the identity."""
        key = identity_key(identity)
        if key is None or self.safety_secret is None:
            return None
        digest = hmac.new(self.safety_secret, key.encode(), hashlib.sha256)
        return digest.hexdigest()

    def suspended(self, identifier: str | None) -> Generator[Any, Any, NavaiError | None]:
        """Why the caller behind the safety ``identifier`` may spend nothing
        now: a 403 (``code: "suspended"``) when OpenAI blocked them, a 503
        when the blocked set cannot be read (a pass, logged, when the
        guard fails open); None when they may."""
        if identifier is None or not self.blocklist:
            return None
        blocked = yield IsBlocked(identifier)
        if blocked is None:
            if self.fail_open:
                logger.warning(
                    "navai_mw: the blocked identifiers in %s cannot be read; "
                    "letting the request through",
                    shown_url(self.store_uri),
                )
                return None
            return NavaiError(
                "Access cannot be checked right now; try again shortly.",
                status=503,
                headers=(("Retry-After", "5"),),
            )
        if blocked:
            return RequestError(SUSPENDED, status=403, code="suspended")
        return None

    def check(
        self, info: RequestInfo, group: str, *, identity: str | None = None
    ) -> Generator[Any, Any, tuple[str | None, tuple[tuple[str, str], ...]]]:
        """Authorize, then count: returns the identity (None when nobody is
        asked) and the headers every answer of this request carries
        (``RateLimit``/``RateLimit-Policy``). An ``identity`` given (a view
        that authenticated the caller itself) is taken as it is, without
        asking ``authorize``. Raises :class:`NavaiError`."""
        if identity is None and self.authorize is not None:
            identity = yield from self._authorize(info)
        elif identity is not None and not isinstance(identity, Identity):
            identity = Identity(identity, APP_SCHEME)  # a view's own user
        if self.blocklist and group in SPENDING_GROUPS:
            refused = yield from self.suspended(self.safety_identifier(identity))
            if refused is not None:
                raise refused
        policy = self.limits.get(group)
        if policy is None:
            return identity, ()
        subject = (
            f"id:{identity_key(identity)}"
            if identity is not None
            else f"ip:{info.client or 'unknown'}"
        )
        result: LimitResult = yield HitLimit(policy, f"navai:{group}:{subject}")
        if result.unavailable:
            if self.fail_open:
                logger.warning(
                    "navai_mw: the rate-limit storage %s is unreachable; "
                    "letting the request through",
                    shown_url(self.storage_uri),
                )
                return identity, ()
            raise NavaiError(
                "Rate limiting is unavailable; try again shortly.",
                status=503,
                headers=(("Retry-After", "5"),),
            )
        header, wait = _limit_header(policy, result)
        headers = (("RateLimit-Policy", policy.policy_header), ("RateLimit", header))
        if not result.allowed:
            raise NavaiError(
                "Too many requests; try again later.",
                status=429,
                # At least a second, also when the window slid between the
                # refused hit and the stats read back.
                headers=(("Retry-After", str(max(1, wait))), *headers),
            )
        return identity, headers

    def _authorize(self, info: RequestInfo) -> Generator[Any, Any, str]:
        authorize = self.authorize
        if self._builtin:
            identity = yield from cast(Authorizer, authorize).steps(info)
        else:
            result: HookResult = yield CallHook(cast(Hook, authorize), (info,))
            if result.error is not None:
                # Only an AuthError is a refusal: any other error's text (a
                # database URL with its password) must not reach the client.
                refused = refusal(result.error, (AuthError,))
                if refused is not None:
                    raise refused
                logger.error(
                    "navai_mw: the authorize hook raised %s on %s %s",
                    type(result.error).__name__,
                    info.method,
                    log_safe(info.path),
                    exc_info=result.error,
                )
                raise NavaiError("Authorization is unavailable; try again shortly.", status=503)
            identity = _identity(result.value)
            if identity is not None:
                identity = Identity(identity, APP_SCHEME)
        if identity is None:
            raise AuthError("Authentication required.")
        return identity


def _identity(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return value
    logger.error(
        "navai_mw: the authorize hook returned %s; it must return a non-empty string or None",
        type(value).__name__,
    )
    raise NavaiError("Authorization is unavailable; try again shortly.", status=503)
