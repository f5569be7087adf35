"""A backend function's call as an effect, and its answer, sans-IO.

The execute route yields :class:`CallFunction`; the shell's performer runs
it (a worker of the bounded pool for a sync function, the event loop for an
async one) within its timeout and sends back a :class:`FunctionOutcome`;
:func:`function_reply` turns that into the answer.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from ..core.client_requests import converter
from ..core.effects import FunctionOutcome
from ..core.errors import NavaiError, RequestError
from .loading import _signature
from .registry import FunctionContext, NavaiFunction, NavaiFunctionError

__all__ = [
    "function_reply",
]

logger = logging.getLogger("navai_mw")

# Results are JSON: no NaN or Infinity, which JSON cannot carry.
_RESULT_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
FAILED: Final = "Backend function failed."


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


# The payload keys that are conventions, not a function's arguments.
_CONVENTIONS: Final = frozenset({"args", "arguments", "value", "constructorArgs", "methodArgs"})


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _context_parameter(signature: inspect.Signature | None) -> inspect.Parameter | None:
    if signature is None:
        return None
    for parameter in signature.parameters.values():
        annotation = parameter.annotation
        if (
            parameter.name == "context"
            or annotation is FunctionContext
            or (isinstance(annotation, str) and annotation.rsplit(".", 1)[-1] == "FunctionContext")
        ):
            return parameter
    return None


def _takes_keywords(signature: inspect.Signature | None, keys: set[str], skip: str | None) -> bool:
    """Whether every key can be passed as a keyword argument."""
    if signature is None:
        return False
    named = set()
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return skip not in keys
        if parameter.name != skip and parameter.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        ):
            named.add(parameter.name)
    return keys <= named


def _takes_positional(signature: inspect.Signature | None, skip: str | None) -> bool:
    """Whether the function takes a positional argument (besides the context)."""
    if signature is None:
        return True  # unknown: pass it, as the reference would
    return any(
        parameter.name != skip
        and parameter.kind
        in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.VAR_POSITIONAL,
        )
        for parameter in signature.parameters.values()
    )


def plan_arguments(
    function: NavaiFunction, payload: Mapping[str, Any], context: FunctionContext
) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments for a call, by the reference's
    payload conventions: ``args`` (or ``arguments``), else ``value``, else
    the payload as keyword arguments when every key names a parameter,
    else the whole payload as one argument; for a class method,
    ``methodArgs`` first. The context goes to a parameter that asks for it.
    Raises a 400 when they do not fit the function's parameters."""
    signature = function.signature
    wants_context = _context_parameter(signature)
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    method_args = _list(payload.get("methodArgs")) if function.method else []
    direct = payload.get("args")
    direct = _list(payload.get("arguments") if direct is None else direct)
    if method_args:
        args = method_args
    elif direct:
        args = direct
    elif "value" in payload:
        args = [payload["value"]]
    elif payload:
        skip = wants_context.name if wants_context else None
        keys = set(payload) - _CONVENTIONS
        if keys and _takes_keywords(signature, keys, skip):
            kwargs = {key: payload[key] for key in keys}
        elif _takes_positional(signature, skip):
            args = [payload]
        # Else the function takes no argument for it: JavaScript would
        # ignore the extra one, and so does this.
    if wants_context is not None:
        if wants_context.kind is inspect.Parameter.POSITIONAL_ONLY:
            args.append(context)
        else:
            kwargs[wants_context.name] = context
    if signature is not None:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise RequestError(f"The payload does not fit {function.name}: {exc}.") from None
    return args, kwargs


def bind_call(
    function: NavaiFunction, payload: Mapping[str, Any], context: FunctionContext
) -> Callable[[], Any]:
    """A call with no arguments that runs ``function`` for ``payload``
    (for a class method: makes the instance from ``constructorArgs``, then
    calls the method); raises a 400 at once when the payload does not fit."""
    args, kwargs = plan_arguments(function, payload, context)
    if function.method is None:
        target = function.target
        return lambda: target(*args, **kwargs)
    cls, method = function.target, function.method
    if isinstance(inspect.getattr_static(cls, method), (staticmethod, classmethod)):
        bound = getattr(cls, method)  # needs no instance
        return lambda: bound(*args, **kwargs)
    constructor_args = _list(payload.get("constructorArgs"))
    constructor = _signature(cls)
    if constructor is not None:
        try:
            constructor.bind(*constructor_args)
        except TypeError as exc:
            raise RequestError(f"constructorArgs do not fit {cls.__name__}: {exc}.") from None

    def call_method() -> Any:
        return getattr(cls(*constructor_args), method)(*args, **kwargs)

    return call_method
