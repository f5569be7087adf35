"""How an environment variable's text is read, in one place: blank is unset,
yes/no words, numbers, seconds."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

from .errors import OptionsError

_INTEGER: Final = re.compile(r"[+-]?[0-9]+")


def _read(env: Mapping[str, str | None], name: str) -> str | None:
    value = env.get(name)
    if value is None or not value.strip():
        return None
    return value


_TRUE: Final = frozenset({"true", "1", "yes"})


_FALSE: Final = frozenset({"false", "0", "no"})


def read_bool(env: Mapping[str, str | None], name: str, default: bool) -> bool:
    """A yes/no variable: ``true/false/1/0/yes/no`` in any case; anything
    else is an error naming the variable."""
    raw = _read(env, name)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise OptionsError(f"{name} must be one of true, false, 1, 0, yes, no. Received: {raw!r}")


def read_seconds(env: Mapping[str, str | None], name: str, default: float) -> float:
    """A number of seconds; anything else is an error naming the variable
    (its range is checked where the value is used)."""
    raw = _read(env, name)
    if raw is None:
        return default
    try:
        return float(raw.strip())
    except ValueError:
        raise OptionsError(f"{name} must be a number of seconds. Received: {raw!r}") from None


def _number(env: Mapping[str, str | None], name: str) -> float | None:
    """A finite number, or None when unset; anything else names the variable."""
    raw = _read(env, name)
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise OptionsError(f"{name} must be a number. Received: {raw!r}")
    return value
