"""Read and reset a caller's budgets from your own code (a support ticket, a
plan upgrade): docs/budgets.md.

Each function takes the app navai_mw serves (a middleware, or a view
handler), the caller's identity as your code knows it (the name: a JWT's
``sub``, a token's name, your own user id) and the ``scheme`` that proved
it (``"app"`` for an ``authorize`` hook of yours or a view's identity,
``"token"`` for ``bearer_tokens``, ``"jwt:{issuer}"`` for ``jwt_bearer``)::

    from navai_mw.budgets import reset_usage, usage

    usage(app, "alice")        # [{"limit": "10 minutes/day", "used": 3.5, ...}]
    reset_usage(app, "alice")  # a new start, now

``ausage`` and ``areset_usage`` are the same, awaited. Counts live where
the app counts them (``memory://``: in that app's process; Redis: shared).
"""

from __future__ import annotations

from typing import Any

from .core.budgets import BudgetLimit
from .core.effects import ReadBudget
from .core.errors import OptionsError
from .core.identity import APP_SCHEME, Identity, identity_key
from .endpoint.budget_steps import BudgetSettings, counts_payload
from .endpoint.endpoint import Endpoint
from .runtime.budget_keeper import BudgetKeeper

__all__ = ["areset_usage", "ausage", "reset_usage", "usage"]


def _parts(app: Any) -> tuple[Endpoint, BudgetSettings, BudgetKeeper]:
    handler = getattr(app, "handler", app)
    endpoint = getattr(handler, "endpoint", None)
    effects = getattr(handler, "effects", None)
    budgets = getattr(getattr(endpoint, "settings", None), "budgets", None)
    if not isinstance(endpoint, Endpoint) or effects is None or budgets is None:
        raise OptionsError(
            "usage() and reset_usage() take a navai_mw middleware or view handler with a budget."
        )
    return endpoint, budgets, effects.budgets


def _limits(budgets: BudgetSettings, identity: Identity) -> tuple[BudgetLimit, ...]:
    policy = budgets.policy
    if policy.hook is not None:
        return policy.hooked(policy.hook(identity, None)) or ()
    return policy.limits_for(identity) or ()


def usage(app: Any, identity: str, *, scheme: str = APP_SCHEME) -> list[dict[str, Any]]:
    """The caller's budgets in the current period, as ``GET /navai/usage``
    answers them (blocking)."""
    _, budgets, keeper = _parts(app)
    caller = Identity(identity, scheme)
    limits = _limits(budgets, caller)
    if not limits:
        return []
    counts = keeper.perform_sync(ReadBudget(_subject(caller), limits, budgets.clock))
    return _rows(counts)


async def ausage(app: Any, identity: str, *, scheme: str = APP_SCHEME) -> list[dict[str, Any]]:
    """:func:`usage`, awaited."""
    _, budgets, keeper = _parts(app)
    caller = Identity(identity, scheme)
    limits = _limits(budgets, caller)
    if not limits:
        return []
    counts = await keeper.perform(ReadBudget(_subject(caller), limits, budgets.clock))
    return _rows(counts)


def reset_usage(app: Any, identity: str, *, scheme: str = APP_SCHEME) -> None:
    """Forget what the caller used and reserved, in every period (blocking).
    Calls in progress go on; what they use from now on counts again."""
    _, _, keeper = _parts(app)
    keeper.reset_sync(_subject(Identity(identity, scheme)))


async def areset_usage(app: Any, identity: str, *, scheme: str = APP_SCHEME) -> None:
    """:func:`reset_usage`, awaited."""
    _, _, keeper = _parts(app)
    await keeper.reset(_subject(Identity(identity, scheme)))


def _subject(identity: Identity) -> str:
    key = identity_key(identity)
    assert key is not None
    return key


def _rows(counts: object) -> list[dict[str, Any]]:
    if not isinstance(counts, tuple):
        raise ConnectionError("the budget store could not be reached")
    rows: list[dict[str, Any]] = counts_payload(counts)["budgets"]
    return rows
