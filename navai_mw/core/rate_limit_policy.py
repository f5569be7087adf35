"""A route group's rate limit, in the ``limits`` notation, parsed once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

from .errors import OptionsError

# Route groups, each with its own count (CONTRACT.md §6).
GROUPS: Final = ("mint", "functions", "speech", "usage")


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
