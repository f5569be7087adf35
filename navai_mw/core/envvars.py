"""How an environment variable's text is read, in one place.

Every navai variable goes through :func:`read`: unset, empty and blank are
the same (unset), and a value is trimmed. Then a variable is text, yes/no
words (``true/false/1/0/yes/no``, any case), a number, a number of seconds
or a comma-separated list; anything else is an :class:`OptionsError`
naming the variable, at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from .errors import OptionsError
from .values import finite

__all__ = ["Env", "read", "read_bool", "read_int", "read_list", "read_number", "read_seconds"]

Env = Mapping[str, str | None]

_INTEGER: Final = re.compile(r"[+-]?[0-9]+")
_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})


def read(env: Env, name: str) -> str | None:
    """The variable's text, trimmed; None when it is unset or blank."""
    value = env.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def read_bool(env: Env, name: str, default: bool) -> bool:
    """A yes/no variable: ``true/false/1/0/yes/no`` in any case; anything
    else is an error naming the variable."""
    raw = read(env, name)
    if raw is None:
        return default
    word = raw.lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise OptionsError(f"{name} must be one of true, false, 1, 0, yes, no. Received: {raw!r}")


def read_int(env: Env, name: str, *, option: str | None = None) -> int | None:
    """An integer, or None when unset; anything else is an error naming the
    variable (and the ``option`` it sets, when given)."""
    raw = read(env, name)
    if raw is None:
        return None
    if _INTEGER.fullmatch(raw) is None:
        if option is not None:
            raise OptionsError(f"{option} must be an integer. Received: {raw!r} (from {name})")
        raise OptionsError(f"{name} must be an integer. Received: {raw!r}")
    return int(raw)


def read_number(env: Env, name: str) -> float | None:
    """A finite number, or None when unset; anything else names the variable."""
    raw = read(env, name)
    if raw is None:
        return None
    try:
        value = finite(float(raw))
    except ValueError:
        value = None
    if value is None:
        raise OptionsError(f"{name} must be a number. Received: {raw!r}")
    return value


def read_seconds(env: Env, name: str, default: float) -> float:
    """A number of seconds; anything else is an error naming the variable
    (its range is checked where the value is used)."""
    raw = read(env, name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise OptionsError(f"{name} must be a number of seconds. Received: {raw!r}") from None


def read_list(env: Env, name: str) -> list[str] | None:
    """A comma-separated list, its items trimmed and the empty ones left
    out; None when the variable is unset."""
    raw = read(env, name)
    if raw is None:
        return None
    return [item.strip() for item in raw.split(",") if item.strip()]
