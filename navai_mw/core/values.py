"""Single-value rules every layer shares, each written once: a blank string
is absent, keys are trimmed, what counts as a finite number, a number of
seconds within a range, a value inside an allow-list."""

from __future__ import annotations

import math
from typing import Any

import attrs

from .errors import OptionsError

__all__ = [
    "absent_if_blank",
    "check_text",
    "clean_key",
    "finite",
    "flag",
    "optional_text",
    "outside",
    "seconds",
]


def absent_if_blank(value: str | None) -> str | None:
    """None for an empty or whitespace-only string; anything else as it is."""
    if not isinstance(value, str):
        return value  # None, or a wrong type for the validator to name
    return None if not value or value.isspace() else value


def clean_key(value: str | None) -> str | None:
    """A key trimmed; None when nothing is left."""
    if not isinstance(value, str):
        return value
    return value.strip() or None


def check_text(_: object, field: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, str):
        # A deployment mistake (a number from a config file...), named.
        raise OptionsError(f"{field.name} must be a string. Received: {type(value).__name__}")


def optional_text() -> Any:
    """An attrs field for optional text: a blank string is stored as None."""
    return attrs.field(default=None, converter=absent_if_blank, validator=check_text)


def finite(value: object) -> float | None:
    """``value`` as a float when it is a finite JSON number, else None.

    Not a boolean; and not an integer too large for a float (a client's
    400-digit number is not a number anyone meant)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def seconds(
    value: object,
    name: str,
    *,
    most: float = math.inf,
    most_text: str | None = None,
    zero_ok: bool = False,
) -> float:
    """A number of seconds above 0 (or 0 itself, when ``zero_ok``) and at most
    ``most``, as a float; anything else is an :class:`OptionsError` naming
    ``name`` and what it may be (``most_text`` spells ``most`` in it)."""
    number = finite(value)
    if number is None or number < 0 or (number == 0 and not zero_ok) or number > most:
        bound = "0 or more" if zero_ok else "above 0"
        limit = f" and at most {most_text or f'{most:g}'}" if math.isfinite(most) else ""
        raise OptionsError(
            f"{name} must be a number of seconds {bound}{limit}. Received: {value!r}"
        )
    return number


def outside(value: str | None, allowed: tuple[str, ...] | None) -> bool:
    """Whether ``value`` is named and not among ``allowed`` (None: anything
    goes). The one allow-list rule: a request (403), a hook's session (503)
    and the options' own defaults (an options error) all ask it."""
    return value is not None and allowed is not None and value not in allowed


def flag(value: object, name: str) -> bool:
    """``value`` when it is True or False; an :class:`OptionsError` naming
    ``name`` otherwise (``"yes"`` from a config file is not a bool)."""
    if not isinstance(value, bool):
        raise OptionsError(f"{name} must be True or False. Received: {value!r}")
    return value
