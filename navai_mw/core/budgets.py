"""Budgets, sans-IO: what a caller may spend per UTC day or month, in
minutes of call time, tokens, or US dollars (docs/budgets.md).

A policy is text: ``"10 minutes/day"``, ``"200000 tokens/day"``,
``"5 USD/month"``, several joined by ``;``. :class:`BudgetPolicy` says which
limits apply to a caller: one policy for all, a mapping from identity (its
name, or its key such as ``token:ops``) to policy with ``"*"`` for anyone
else, or a function ``(identity, info) -> str | None`` (plan tiers).

Periods are UTC calendar days and months: a day's budget is whole again at
00:00 UTC, a month's on the 1st. A call is charged to the period it
started in. The store keeps, per caller, limit and period, what was used
and what calls in progress have reserved; the admission that reserves is
one atomic step in the store (``runtime/budget_store.py``).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

import attrs

from .errors import OptionsError
from .identity import identity_key

__all__ = [
    "UNITS",
    "BudgetLimit",
    "BudgetPolicy",
    "parse_budget",
    "period_bounds",
]

Unit = Literal["minutes", "tokens", "USD"]
Period = Literal["day", "month"]
UNITS: Final[tuple[Unit, ...]] = ("minutes", "tokens", "USD")
_UNIT_NAMES: Final[Mapping[str, Unit]] = {
    "minute": "minutes",
    "minutes": "minutes",
    "min": "minutes",
    "token": "tokens",
    "tokens": "tokens",
    "usd": "USD",
    "dollar": "USD",
    "dollars": "USD",
}
_PERIODS: Final[Mapping[str, Period]] = {"day": "day", "month": "month"}
_LIMIT: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*/\s*([A-Za-z]+)\s*")
# A policy's text is short; anything longer is a mistake, not a policy.
MAX_POLICY_CHARS: Final = 200


@attrs.frozen
class BudgetLimit:
    """One limit: ``amount`` of ``unit`` per ``period``."""

    amount: float
    unit: Unit
    period: Period

    @property
    def text(self) -> str:
        """As written in a policy: ``10 minutes/day``."""
        return f"{self.amount:g} {self.unit}/{self.period}"

    @property
    def name(self) -> str:
        """Which of a caller's counts it is: ``minutes/day``."""
        return f"{self.unit}/{self.period}"

    @property
    def quantity(self) -> float:
        """The limit in the store's unit: seconds for minutes."""
        return self.amount * 60 if self.unit == "minutes" else self.amount


def parse_budget(text: str, *, source: str = "budget") -> tuple[BudgetLimit, ...]:
    """The limits of a policy's text (``"10 minutes/day; 5 USD/month"``);
    an :class:`OptionsError` naming ``source`` for anything else."""
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_POLICY_CHARS:
        raise OptionsError(
            f'{source} must be a policy such as "10 minutes/day; 5 USD/month". '
            f"Received: {text!r:.80}"
        )
    limits: list[BudgetLimit] = []
    for part in text.split(";"):
        if not part.strip():
            continue
        match = _LIMIT.fullmatch(part)
        unit = _UNIT_NAMES.get(match[2].lower()) if match else None
        period = _PERIODS.get(match[3].lower()) if match else None
        if match is None or unit is None or period is None:
            raise OptionsError(
                f"{source}: {part.strip()!r:.60} is not a limit: write an amount, a unit "
                "(minutes, tokens, USD) and a period (day, month), as in 10 minutes/day."
            )
        amount = float(match[1])
        if amount <= 0 or (unit == "tokens" and not amount.is_integer()):
            raise OptionsError(f"{source}: {part.strip()!r:.60} must be a positive amount.")
        limit = BudgetLimit(amount, unit, period)
        if any(other.name == limit.name for other in limits):
            raise OptionsError(f"{source}: {limit.name} is limited twice.")
        limits.append(limit)
    if not limits:
        raise OptionsError(f"{source} names no limit.")
    return tuple(limits)


PolicyHook = Callable[[str | None, Any], "str | None"]
PolicySource = str | Mapping[str, str | None] | PolicyHook


@attrs.frozen
class BudgetPolicy:
    """Which limits apply to whom (see the module docstring). ``hook`` is a
    function the guard's caller is given to; a mapping's and a string's
    limits are parsed once, here."""

    default: tuple[BudgetLimit, ...] | None = None
    by_identity: Mapping[str, tuple[BudgetLimit, ...] | None] = attrs.field(factory=dict)
    hook: PolicyHook | None = attrs.field(default=None, repr=False)

    @classmethod
    def from_source(cls, source: PolicySource) -> BudgetPolicy:
        if isinstance(source, str):
            return cls(default=parse_budget(source))
        if isinstance(source, Mapping):
            parsed: dict[str, tuple[BudgetLimit, ...] | None] = {}
            for who, text in source.items():
                if not isinstance(who, str) or not who:
                    raise OptionsError("budget's mapping keys are identities (or '*').")
                parsed[who] = (
                    None if text is None else parse_budget(text, source=f"budget[{who!r}]")
                )
            return cls(default=parsed.pop("*", None), by_identity=parsed)
        if callable(source):
            return cls(hook=source)
        raise OptionsError(
            "budget must be a policy string, a mapping from identity to policy, "
            "or a function (identity, info) -> policy."
        )

    def limits_for(self, identity: str | None) -> tuple[BudgetLimit, ...] | None:
        """A string's or a mapping's limits for ``identity`` (its key, then
        its name, then ``*``); a hook's are asked for by the caller."""
        key = identity_key(identity)
        for who in (key, identity):
            if who is not None and who in self.by_identity:
                return self.by_identity[who]
        return self.default

    def hooked(self, text: object) -> tuple[BudgetLimit, ...] | None:
        """The limits of what a hook returned (None: no budget)."""
        if text is None:
            return None
        if not isinstance(text, str):
            raise TypeError(f"a budget hook returned {type(text).__name__}, not a policy string")
        return _parsed(text)


_PARSED: dict[str, tuple[BudgetLimit, ...]] = {}


def _parsed(text: str) -> tuple[BudgetLimit, ...]:
    """A hook's policy, parsed once per text (a few tiers, asked often)."""
    limits = _PARSED.get(text)
    if limits is None:
        limits = parse_budget(text, source="the budget hook's policy")
        if len(_PARSED) < 256:
            _PARSED[text] = limits
    return limits


def period_bounds(period: Period, now: float) -> tuple[float, float]:
    """The UTC calendar day or month holding ``now`` (UNIX seconds): its
    start and its end (the next one's start)."""
    moment = datetime.datetime.fromtimestamp(now, tz=datetime.timezone.utc)
    if period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + datetime.timedelta(days=1)
    else:
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + datetime.timedelta(days=32)).replace(day=1)
    return start.timestamp(), end.timestamp()
