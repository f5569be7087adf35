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
from typing import Any, Final, get_args

from ..core.client_requests import converter
from ..core.effects import FunctionOutcome
from ..core.errors import NavaiError, RequestError
from ..core.strict_json import argument_converter, describe_problems, type_name
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


_POSITIONAL: Final = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _is_context(parameter: inspect.Parameter) -> bool:
    annotation = parameter.annotation
    return (
        parameter.name == "context"
        or annotation is FunctionContext
        or FunctionContext in get_args(annotation)  # Optional[FunctionContext]
        # A hint left as text (it could not be resolved), read by its name.
        or (isinstance(annotation, str) and annotation.rsplit(".", 1)[-1] == "FunctionContext")
    )


def injected_parameters(signature: inspect.Signature | None) -> frozenset[str]:
    """The parameters navai_mw fills itself (the context), never the payload."""
    if signature is None:
        return frozenset()
    return frozenset(
        parameter.name
        for parameter in signature.parameters.values()
        if parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and _is_context(parameter)
    )


def _takes_keywords(
    signature: inspect.Signature | None, keys: set[str], skip: frozenset[str]
) -> bool:
    """Whether every key can be passed as a keyword argument."""
    if signature is None:
        return False
    named = set()
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return not keys & skip
        if parameter.name not in skip and parameter.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        ):
            named.add(parameter.name)
    return keys <= named


def _takes_positional(signature: inspect.Signature | None, skip: frozenset[str]) -> bool:
    """Whether the function takes a positional argument (besides the context)."""
    if signature is None:
        return True  # unknown: pass it, as the reference would
    return any(
        parameter.name not in skip
        and parameter.kind in (*_POSITIONAL, inspect.Parameter.VAR_POSITIONAL)
        for parameter in signature.parameters.values()
    )


def _arrange(
    signature: inspect.Signature,
    injected: frozenset[str],
    context: FunctionContext,
    values: list[Any],
    keywords: dict[str, Any],
) -> tuple[list[Any], dict[str, Any]]:
    """The payload's positional values given to the parameters that are not
    injected, in order, wherever the injected ones stand: the context goes
    in its own place, positionally while payload values follow it (or when
    it can only be positional), else by keyword."""
    args: list[Any] = []
    kwargs = dict(keywords)
    pending = list(values)
    positional = [p for p in signature.parameters.values() if p.kind in _POSITIONAL]
    # A positional-only context after parameters the payload left out needs
    # them filled (by their defaults) to stand in its place.
    last_fixed = max(
        (
            index
            for index, parameter in enumerate(positional)
            if parameter.name in injected and parameter.kind is inspect.Parameter.POSITIONAL_ONLY
        ),
        default=-1,
    )
    for index, parameter in enumerate(positional):
        if parameter.name in injected:
            if pending or index <= last_fixed:
                args.append(context)
            else:
                kwargs[parameter.name] = context
        elif pending:
            args.append(pending.pop(0))
        elif index < last_fixed:
            if parameter.default is inspect.Parameter.empty:
                break  # missing: the signature's check says so
            args.append(parameter.default)
    args.extend(pending)  # to *args, or one too many for the check
    for parameter in signature.parameters.values():
        if parameter.name in injected and parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            kwargs[parameter.name] = context
    return args, kwargs


def _structured(function: str, parameter: inspect.Parameter, value: Any) -> Any:
    """``value`` as the parameter's hint names it; a 400 naming the
    parameter and the type when it is not one."""
    hint = parameter.annotation
    try:
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return tuple(argument_converter.structure(item, hint) for item in value)
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return {key: argument_converter.structure(item, hint) for key, item in value.items()}
        return argument_converter.structure(value, hint)
    except Exception as exc:
        # Any failure of a hook (cattrs' own, an enum's, a class's
        # validator) is the payload's mistake: the function is not called.
        raise RequestError(
            f"The payload does not fit {function}: {parameter.name} must be "
            f"{type_name(hint)} ({describe_problems(exc, parameter.name)})."
        ) from None


def _bound(
    name: str,
    signature: inspect.Signature,
    args: list[Any],
    kwargs: dict[str, Any],
    injected: frozenset[str],
    *,
    what: str,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments checked against the parameters (a 400 when they do not
    fit), each with a type hint converted to it."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise RequestError(f"{what} {name}: {exc}.") from None
    for key, value in bound.arguments.items():
        parameter = signature.parameters[key]
        hint = parameter.annotation
        # No hint, or one left as text: the reference's behaviour, as given.
        if key in injected or hint is inspect.Parameter.empty or isinstance(hint, str):
            continue
        bound.arguments[key] = _structured(name, parameter, value)
    return bound.args, bound.kwargs


def plan_arguments(
    function: NavaiFunction, payload: Mapping[str, Any], context: FunctionContext
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positional and keyword arguments for a call, by the reference's
    payload conventions: ``args`` (or ``arguments``), else ``value``, else
    the payload as keyword arguments when every key names a parameter,
    else the whole payload as one argument; for a class method,
    ``methodArgs`` first. The context goes to every parameter that asks for
    it, wherever it stands. Raises a 400 when they do not fit the function's
    parameters or its type hints."""
    signature = function.signature
    injected = injected_parameters(signature)
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
        keys = set(payload) - _CONVENTIONS
        if keys and _takes_keywords(signature, keys, injected):
            kwargs = {key: payload[key] for key in keys}
        elif _takes_positional(signature, injected):
            args = [payload]
        # Else the function takes no argument for it: JavaScript would
        # ignore the extra one, and so does this.
    if signature is None:
        return tuple(args), kwargs
    args, kwargs = _arrange(signature, injected, context, args, kwargs)
    return _bound(function.name, signature, args, kwargs, injected, what="The payload does not fit")


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
    constructor_args: tuple[Any, ...] = tuple(_list(payload.get("constructorArgs")))
    constructor_kwargs: dict[str, Any] = {}
    if function.constructor is not None:
        constructor_args, constructor_kwargs = _bound(
            cls.__name__,
            function.constructor,
            list(constructor_args),
            {},
            frozenset(),
            what="constructorArgs do not fit",
        )

    def call_method() -> Any:
        return getattr(cls(*constructor_args, **constructor_kwargs), method)(*args, **kwargs)

    return call_method
