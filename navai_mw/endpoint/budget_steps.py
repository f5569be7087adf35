"""Budgets in the routes' steps: which limits a caller has, a call's
admission (its reservation, or the 429 that says the budget is spent), a
minted secret's charge, and the caller's own view (``GET /navai/usage``).

What is decided here is the HTTP side of it; the counting itself is one
atomic step of the store (:class:`~navai_mw.core.effects.AdmitCall`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Generator
from typing import Any

import attrs

from ..core.budgets import BudgetLimit, BudgetPolicy
from ..core.effects import (
    Admission,
    AdmitCall,
    BudgetCount,
    CallHook,
    HookResult,
    ReadBudget,
    Reservation,
    SettleCall,
)
from ..core.errors import NavaiError, OptionsError, RequestError, log_safe
from ..core.identity import identity_key
from ..core.values import flag, seconds
from .route import Call

__all__ = [
    "BudgetSettings",
    "admit_call",
    "budget_limits",
    "budget_settings",
    "charge_secret",
    "counts_payload",
    "release",
]

logger = logging.getLogger("navai_mw")

_UNAVAILABLE = "Budgets cannot be checked right now; try again shortly."


@attrs.frozen(kw_only=True)
class BudgetSettings:
    """The budgets' configuration: the policy, failing open or closed when
    the store is down, the seconds a minted secret costs (None: the secret
    routes are refused), and the clock the store reads (UNIX seconds)."""

    policy: BudgetPolicy
    fail_open: bool = False
    secret_seconds: float | None = None
    clock: Callable[[], float] = attrs.field(repr=False)


def subject_of(call: Call) -> str:
    """Whose budget: the caller's identity key, else their address (as the
    rate limits count them)."""
    return identity_key(call.identity) or f"ip:{call.info.client or 'unknown'}"


def budget_settings(
    budget: object,
    *,
    fail_open: object,
    secret_seconds: object,
    clock: Callable[[], float] | None,
    relay: bool,
) -> BudgetSettings | None:
    """The budgets' settings from the keywords (None: no budget). A budget
    meters relayed calls: it needs the relay."""
    if budget is None:
        return None
    if not relay:
        raise OptionsError(
            "budget meters the calls navai_mw relays: switch the relay on "
            "(relay=True, NAVAI_RELAY=true)."
        )
    if clock is None:
        raise OptionsError("budget needs a clock (UNIX seconds) to count its periods.")
    return BudgetSettings(
        policy=BudgetPolicy.from_source(budget),  # type: ignore[arg-type]
        fail_open=flag(fail_open, "budget_fail_open"),
        secret_seconds=None
        if secret_seconds is None
        else seconds(secret_seconds, "budget_secret_seconds", most=3600.0, most_text="an hour"),
        clock=clock,
    )


def budget_limits(
    budgets: BudgetSettings, call: Call
) -> Generator[Any, Any, tuple[BudgetLimit, ...] | None]:
    """The caller's limits (None: no budget for them)."""
    policy = budgets.policy
    if policy.hook is None:
        return policy.limits_for(call.identity)
    result: HookResult = yield CallHook(policy.hook, (call.identity, call.info))
    try:
        if result.error is not None:
            raise result.error
        return policy.hooked(result.value)
    except Exception as exc:
        logger.error(
            "navai_mw: the budget hook failed on %s: %s",
            log_safe(call.info.path),
            type(exc).__name__,
        )
        raise NavaiError(_UNAVAILABLE, status=503, headers=(("Retry-After", "5"),)) from None


def admit_call(
    budgets: BudgetSettings | None, call: Call, *, cap: float | None
) -> Generator[Any, Any, Reservation | None]:
    """Admit a call against the caller's budgets: its reservation (None
    when it has no budget, or the store is down and budgets fail open);
    a 429 when a budget is spent, a 503 when the store cannot say."""
    if budgets is None:
        return None
    limits = yield from budget_limits(budgets, call)
    if not limits:
        return None
    admission: Admission = yield AdmitCall(subject_of(call), limits, cap, budgets.clock)
    if admission.unavailable:
        if budgets.fail_open:
            logger.warning("navai_mw: the budget store is unreachable; the call starts unbudgeted")
            return None
        raise NavaiError(_UNAVAILABLE, status=503, headers=(("Retry-After", "5"),))
    if admission.reservation is None:
        raise _spent(admission)
    return admission.reservation


def release(reservation: Reservation | None) -> Generator[Any, Any, None]:
    """A call that did not start gives its reservation back whole."""
    if reservation is not None:
        yield SettleCall(reservation, 0.0)


def charge_secret(budgets: BudgetSettings | None, call: Call) -> Generator[Any, Any, None]:
    """A client secret under a budget: refused (403: a call the browser then
    makes with OpenAI directly is one navai_mw cannot meter), unless
    ``budget_secret_seconds`` says what each one costs, charged now."""
    if budgets is None:
        return
    if budgets.secret_seconds is None:
        raise RequestError(
            "Client secrets are off under a budget: calls made with one cannot be metered. "
            "Start calls through the relay (POST /navai/realtime/calls), or set "
            "budget_secret_seconds to charge each secret.",
            status=403,
        )
    reservation = yield from admit_call(budgets, call, cap=budgets.secret_seconds)
    if reservation is not None:
        yield SettleCall(reservation, reservation.granted or 0.0)


def counts_payload(counts: tuple[BudgetCount, ...]) -> dict[str, Any]:
    """``GET /navai/usage``'s answer: each limit, in its own unit."""
    rows = []
    for count in counts:
        scale = 60.0 if count.limit.unit == "minutes" else 1.0
        rows.append(
            {
                "limit": count.limit.text,
                "unit": count.limit.unit,
                "used": _shown((count.used + count.elapsed) / scale),
                "reserved": _shown(count.reserved / scale),
                "remaining": _shown(max(0.0, count.remaining) / scale),
                "resets_at": count.resets_at,
            }
        )
    return {"budgets": rows}


def _shown(value: float) -> float:
    return round(value, 4)


def read_counts(
    budgets: BudgetSettings, call: Call
) -> Generator[Any, Any, tuple[BudgetCount, ...]]:
    """The caller's counts now (none without a budget); a 503 when the
    store cannot say."""
    limits = yield from budget_limits(budgets, call)
    if not limits:
        return ()
    counts = yield ReadBudget(subject_of(call), limits, budgets.clock)
    if counts is None:
        raise NavaiError(_UNAVAILABLE, status=503, headers=(("Retry-After", "5"),))
    return tuple(counts)


def _spent(admission: Admission) -> NavaiError:
    """The 429 of a spent budget: ``Retry-After`` to the next period, or to
    the earliest end of a call in progress when only reservations hold the
    budget; ``RateLimit`` headers for it."""
    limit = admission.refused_by
    count = next((c for c in admission.counts if c.limit == limit), None)
    now = admission.now
    retry_at = count.resets_at if count is not None else now + 60
    if count is not None and count.used < count.limit.quantity and count.frees_at is not None:
        retry_at = min(retry_at, count.frees_at)
    wait = max(1, math.ceil(retry_at - now))
    name = limit.text if limit is not None else "budget"
    headers: tuple[tuple[str, str], ...] = (("Retry-After", str(wait)),)
    if count is not None:
        window = max(1, math.ceil(count.resets_at - now))
        headers += (
            ("RateLimit-Policy", f'"budget";q={_whole(count.limit.quantity)};w={window}'),
            ("RateLimit", f'"budget";r={_whole(max(0.0, count.remaining))};t={wait}'),
        )
    return RequestError(
        f"Your budget of {name} is spent; it is whole again at the next period.",
        status=429,
        headers=headers,
        code="budget_exhausted",
    )


def _whole(value: float) -> int:
    return max(0, math.floor(value))
