"""The guard, sans-IO: who is calling, may they, and how often.

It runs before every navai route, after the answers that need no guard
(a preflight, 405, 413, 415), in this order:

1. the client address: the socket peer, or, when the peer is a trusted
   proxy, the rightmost untrusted hop of ``X-Forwarded-For``/``Forwarded``;
2. authorization: the user's ``authorize`` hook is yielded as
   :class:`CallHook` (the shell's driver calls it, in a worker thread under
   ASGI when it is sync); a built-in :class:`Authorizer` runs its own steps
   here, yielding only the HTTP attempts it needs (a JWKS fetch);
3. the rate limit: yielded as :class:`HitLimit` for the shell's driver to
   count in its storage; the answer to what comes back (pass, 429, 503)
   and every header are decided here.

Promises: nothing here reads a clock or touches a socket or a store; a
refusal is a :class:`NavaiError` with its status and headers; a hook that
fails unexpectedly is logged with its traceback and answered 503 without
its text; no credential reaches a log line or a rate-limit key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
from collections.abc import Callable, Generator, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final, NamedTuple, Protocol, cast, runtime_checkable

import attrs

from ._core import Attempt, Outcome
from ._errors import AuthError, NavaiError, OptionsError, log_safe

__all__ = [
    "Authorizer",
    "CallHook",
    "Guard",
    "HitLimit",
    "HookResult",
    "LimitResult",
    "RateLimitPolicy",
    "RequestInfo",
    "client_address",
    "parse_trusted_proxies",
]

logger = logging.getLogger("navai_mw")

# Route groups, each with its own count (CONTRACT.md §6).
GROUPS: Final = ("mint", "functions", "speech")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _read_only(headers: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(headers))


@attrs.frozen(kw_only=True)
class RequestInfo:
    """What an ``authorize`` hook sees of a request.

    Fields:
        method: the HTTP method (``"POST"``).
        route: the navai route's name (``"client_secret"``).
        path: the path below the mount point.
        headers: request headers, lower-case names, read-only.
        client: the client's address (after trusted proxies), or None.
        scope: the ASGI scope (ASGI only), for ``scope["user"]``,
            ``scope["session"]`` and other framework state.
        environ: the WSGI environ (WSGI only), for a Django or Flask session.
    """

    method: str
    route: str
    path: str
    headers: Mapping[str, str] = attrs.field(converter=_read_only)
    client: str | None = None
    scope: Mapping[str, Any] | None = attrs.field(default=None, repr=False)
    environ: Mapping[str, Any] | None = attrs.field(default=None, repr=False)


# -- effects: what the core asks the shells' drivers to do ---------------------------


@attrs.frozen
class CallHook:
    """Call ``hook(*args)`` (awaited when it is async); send back a
    :class:`HookResult`. The ``authorize`` hook gets the request view; a
    ``customize_session`` hook the session context; an Azure token provider
    nothing."""

    hook: Callable[..., Any]
    args: tuple[Any, ...] = ()


@attrs.frozen
class HookResult:
    """What a hook call gave: its return value, or the exception it raised."""

    value: object = None
    error: BaseException | None = None


class HitLimit(NamedTuple):
    """Count one request of ``key`` against ``policy`` in the limiter's
    storage; send back a :class:`LimitResult`. (A named tuple, as that
    result: one of each per request.)"""

    policy: RateLimitPolicy
    key: str


class LimitResult(NamedTuple):
    """What the storage said (a named tuple: one is made per request, and a
    tuple is the cheapest immutable record to make).

    Fields:
        allowed: False when one of the windows is full (nothing more counted).
        windows: for each item of the policy, in order, the requests left
            and the Unix time at which the window next frees a slot.
        now: the Unix time the driver read.
        unavailable: True when the storage could not be reached.
    """

    allowed: bool = True
    windows: tuple[tuple[int, float], ...] = ()
    now: float = 0.0
    unavailable: bool = False


# -- the built-in authorizers' protocol ----------------------------------------------


AuthSteps = Generator[Attempt, Outcome, "str | None"]


@runtime_checkable
class Authorizer(Protocol):
    """A built-in authorizer (``navai_mw.auth``): sans-IO, it yields the HTTP
    attempts it needs (a JWKS fetch) and returns the identity, or None for
    no credentials; it raises :class:`AuthError` for bad ones, and
    :class:`UpstreamError` (503) when its provider cannot be reached."""

    def steps(self, info: RequestInfo) -> AuthSteps: ...


Hook = Callable[[RequestInfo], Any]


# -- rate limits -------------------------------------------------------------------------


@attrs.frozen
class RateLimitPolicy:
    """The limit of one route group, in the ``limits`` notation
    (``"10/minute;200/day"``): ``items`` are its parsed windows."""

    group: str
    text: str
    items: tuple[Any, ...] = attrs.field(eq=False, repr=False)
    # ``RateLimit-Policy``: one item per window (IETF draft syntax). The
    # same on every answer: spelled once.
    policy_header: str = attrs.field(init=False, eq=False, repr=False)

    @policy_header.default
    def _spell_policy_header(self) -> str:
        return ", ".join(
            f'"{self.group}";q={item.amount};w={item.get_expiry()}' for item in self.items
        )

    @classmethod
    def parse(cls, group: str, text: str) -> RateLimitPolicy:
        from limits import parse_many

        try:
            items = tuple(parse_many(text))
        except ValueError:
            raise OptionsError(
                f"rate_limit for {group!r} is not in the limits notation "
                f'("10/minute;200/day"). Received: {text!r}'
            ) from None
        return cls(group, text, items)


def parse_rate_limits(value: str | Mapping[str, str] | None) -> dict[str, RateLimitPolicy]:
    """``rate_limit=`` as given: one string for every group, or a mapping
    from group to string."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = dict.fromkeys(GROUPS, value)
    if not isinstance(value, Mapping):
        raise OptionsError("rate_limit must be a string or a mapping from route group to string.")
    unknown = sorted(set(value) - set(GROUPS))
    if unknown:
        raise OptionsError(
            f"rate_limit names unknown route groups: {', '.join(map(str, unknown))}. "
            f"Groups: {', '.join(GROUPS)}."
        )
    return {group: RateLimitPolicy.parse(group, text) for group, text in value.items() if text}


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


def parse_trusted_proxies(value: str | Iterable[str] | None) -> tuple[IPNetwork, ...]:
    """Addresses and CIDR networks, as a list or a comma-separated string."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    networks = []
    for entry in value:
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise OptionsError(
                f"trusted_proxies must hold IP addresses or CIDR networks. Received: {entry!r}"
            ) from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # Forwarded: "[2001:db8::1]:4711"
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # "192.0.2.1:4711"
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def _forwarded_hops(headers: Mapping[str, str]) -> list[str] | None:
    """The hops the proxies added, leftmost first: ``X-Forwarded-For`` when
    present (what nginx, load balancers, uvicorn and Werkzeug's ProxyFix
    use), else the ``for=`` values of ``Forwarded``. Never a mix, and the one
    the proxy sets wins: a proxy that appends to ``X-Forwarded-For`` passes
    a client's own ``Forwarded`` through, which must not pick the key."""
    xff = headers.get("x-forwarded-for")
    if xff:
        return xff.split(",")
    forwarded = headers.get("forwarded")
    if not forwarded:
        return None
    hops = []
    for element in forwarded.split(","):
        for pair in element.split(";"):
            name, _, value = pair.partition("=")
            if name.strip().lower() == "for":
                hops.append(value)
    return hops


def client_address(
    peer: str | None, headers: Mapping[str, str], trusted: tuple[IPNetwork, ...]
) -> str | None:
    """The client's address: the peer, unless the peer is a trusted proxy;
    then the rightmost hop that is not itself trusted (a garbled hop ends
    the walk: nothing left of it can be believed)."""
    if peer is None or not trusted:
        return peer
    current = _address(peer)
    if current is None or not any(current in net for net in trusted):
        return peer
    hops = _forwarded_hops(headers)
    if not hops:
        return peer
    for raw in reversed(hops):
        hop = _address(raw)
        if hop is None:
            return str(current)
        current = hop
        if not any(hop in net for net in trusted):
            return str(hop)
    return str(current)  # every hop trusted: the leftmost is the client


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
    # Told apart once: a runtime protocol check costs microseconds a request.
    _builtin: bool = attrs.field(init=False, repr=False, eq=False)

    @_builtin.default
    def _is_builtin(self) -> bool:
        return isinstance(self.authorize, Authorizer)

    @property
    def active(self) -> bool:
        return self.authorize is not None or bool(self.limits)

    def safety_identifier(self, identity: str | None) -> str | None:
        """OpenAI-Safety-Identifier for ``identity``: a keyed hash, stable
        across workers and machines, that never reveals the identity."""
        if identity is None or self.safety_secret is None:
            return None
        digest = hmac.new(self.safety_secret, identity.encode(), hashlib.sha256)
        return digest.hexdigest()

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
        policy = self.limits.get(group)
        if policy is None:
            return identity, ()
        subject = f"id:{identity}" if identity is not None else f"ip:{info.client or 'unknown'}"
        result: LimitResult = yield HitLimit(policy, f"navai:{group}:{subject}")
        if result.unavailable:
            if self.fail_open:
                logger.warning(
                    "navai_mw: the rate-limit storage is unreachable; letting the request through"
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
                if isinstance(result.error, NavaiError):
                    raise result.error
                logger.error(
                    "navai_mw: the authorize hook raised %s on %s %s",
                    type(result.error).__name__,
                    info.method,
                    log_safe(info.path),
                    exc_info=result.error,
                )
                raise NavaiError("Authorization is unavailable; try again shortly.", status=503)
            identity = _identity(result.value)
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
