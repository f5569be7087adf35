"""A backend function's call as an effect, and its answer, sans-IO.

The execute route yields :class:`CallFunction`; the shell's performer runs
it (a worker of the bounded pool for a sync function, the event loop for an
async one) within its timeout and sends back a :class:`FunctionOutcome`;
:func:`function_reply` turns that into the answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Final

import attrs

from ._errors import NavaiError
from ._models import converter
from .functions import NavaiFunction, NavaiFunctionError

__all__ = ["CallFunction", "FunctionOutcome", "function_reply"]

logger = logging.getLogger("navai_mw")

# Results are JSON: no NaN or Infinity, which JSON cannot carry.
_RESULT_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
FAILED: Final = "Backend function failed."


@attrs.frozen
class CallFunction:
    """Run ``run()`` (await it when ``is_async``), for at most ``timeout``
    seconds; send back a :class:`FunctionOutcome`."""

    run: Callable[[], Any] = attrs.field(repr=False)
    is_async: bool
    timeout: float


@attrs.frozen
class FunctionOutcome:
    """How a call ended: its value, the exception it raised, out of time, or
    not started because every worker was busy."""

    value: object = None
    error: BaseException | None = None
    timed_out: bool = False
    busy: bool = False


def _encodable(value: object) -> object:
    """``value`` as JSON data (attrs classes and dataclasses through the
    package's converter); raises TypeError or ValueError when JSON cannot
    carry it."""
    data = converter.unstructure(value)
    _RESULT_ENCODER.encode(data)
    return data


def function_reply(
    function: NavaiFunction, outcome: FunctionOutcome, timeout: float
) -> tuple[int, object]:
    """The status and payload for a call's outcome. Raises the 503 and 504."""
    if outcome.busy:
        raise NavaiError(
            "Every backend function worker is busy; try again shortly.",
            status=503,
            headers=(("Retry-After", "1"),),
        )
    if outcome.timed_out:
        raise NavaiError(
            f"Backend function {function.name} did not finish within {timeout:g} seconds.",
            status=504,
        )
    error = outcome.error
    if isinstance(error, NavaiFunctionError):
        message = str(error.message)
        return 200, {"ok": False, "error": message, "details": message}
    if error is not None:
        # The app's own code failed: its text may hold anything, so it goes
        # to the log only.
        logger.error(
            "navai_mw: backend function %s raised %s",
            function.name,
            type(error).__name__,
            exc_info=error,
        )
        return 500, {"ok": False, "error": FAILED}
    try:
        result = _encodable(outcome.value)
    except (TypeError, ValueError, RecursionError):
        logger.error(
            "navai_mw: backend function %s returned a %s, which JSON cannot carry",
            function.name,
            type(outcome.value).__name__,
        )
        return 500, {
            "ok": False,
            "error": f"Backend function {function.name} returned a value JSON cannot carry.",
        }
    return 200, {
        "ok": True,
        "function_name": function.name,
        "source": function.source,
        "result": result,
    }
