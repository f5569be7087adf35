"""Single-value rules every layer shares: a blank string is absent, keys are
trimmed, what counts as a finite number."""

from __future__ import annotations

import math
from typing import Any

import attrs

from .errors import OptionsError


def _absent_if_blank(value: str | None) -> str | None:
    if not isinstance(value, str):
        return value  # None, or a wrong type for the validator to name
    return None if not value or value.isspace() else value


def _clean_key(value: str | None) -> str | None:
    if not isinstance(value, str):
        return value
    return value.strip() or None


def _check_text(_: object, field: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, str):
        # A deployment mistake (a number from a config file...), named.
        raise OptionsError(f"{field.name} must be a string. Received: {type(value).__name__}")


def _optional_text() -> Any:
    return attrs.field(default=None, converter=_absent_if_blank, validator=_check_text)


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)
