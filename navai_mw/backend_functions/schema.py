"""Backend functions as the model sees them: Realtime ``function`` tools,
each with a JSON Schema of its parameters made by pydantic from the Python
signature and its type hints (the ``sideband`` extra).

A parameter with a hint gets that hint's schema; one without accepts any
JSON value; a parameter with a default is optional. The context navai_mw
injects (``FunctionContext``) and ``*args``/``**kwargs`` are not offered to
the model. A method offers its method's parameters (``constructorArgs``
stay the browser route's). A function without a readable signature takes
one object of any shape.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from ..core.errors import OptionsError
from .calling import injected_parameters
from .registry import NavaiFunction

__all__ = ["function_tools"]

_ANY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}


def _pydantic() -> Any:
    try:
        import pydantic
    except ImportError:
        raise OptionsError(
            "server_functions needs pydantic to describe the functions to the model: "
            "pip install 'navai-mw[sideband]'"
        ) from None
    return pydantic


def parameters_schema(function: NavaiFunction) -> dict[str, Any]:
    """The JSON Schema of ``function``'s parameters, as a tool's ``parameters``."""
    signature = function.signature
    if signature is None:
        return dict(_ANY_OBJECT)
    pydantic = _pydantic()
    skipped = injected_parameters(signature)
    fields: dict[str, Any] = {}
    for parameter in signature.parameters.values():
        if parameter.name in skipped or parameter.kind in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ):
            continue
        hint = Any if parameter.annotation is inspect.Parameter.empty else parameter.annotation
        default = ... if parameter.default is inspect.Parameter.empty else parameter.default
        fields[parameter.name] = (hint, default)
    try:
        model = pydantic.create_model(f"{function.name}_parameters", **fields)
        schema: dict[str, Any] = model.model_json_schema()
    except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError, TypeError) as exc:
        raise OptionsError(
            f"backend function {function.name} has a parameter whose type hint JSON Schema "
            f"cannot describe ({type(exc).__name__}); give it a JSON type or no hint."
        ) from None
    schema.pop("title", None)
    for field in schema.get("properties", {}).values():
        field.pop("title", None)
    return schema


def function_tools(functions: Iterable[NavaiFunction]) -> list[dict[str, Any]]:
    """The Realtime ``function`` tools of ``functions``, in order."""
    return [
        {
            "type": "function",
            "name": function.name,
            "description": function.description,
            "parameters": parameters_schema(function),
        }
        for function in functions
    ]
