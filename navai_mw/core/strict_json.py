"""JSON values structured strictly by cattrs: a string only from a string, a
number only from a number (never a boolean), a list only from an array, an
object only from an object; and a problem told in a few words that name where
it is (``expected a string, got dict @ city``).

The session templates' converter and the backend functions' arguments
(:data:`argument_converter`) are both made of these hooks, so a hint means
the same thing wherever navai_mw checks one.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any, Final, Literal, NewType, Union, get_args, get_origin

import cattrs
from cattrs.cols import (
    is_any_set,
    is_mapping,
    is_sequence,
    list_structure_factory,
    mapping_structure_factory,
)
from cattrs.errors import ForbiddenExtraKeysError
from cattrs.strategies import configure_union_passthrough
from cattrs.v import format_exception

from .values import finite

__all__ = [
    "argument_converter",
    "describe_problems",
    "strict_lists",
    "strict_scalars",
    "type_name",
]


def _strict(kind: type, name: str) -> Any:
    def structure(value: object, _: object) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {name}, got a boolean")
        if kind is float:
            # An integer too large for a float, NaN and the infinities are
            # no number anyone meant (core/values.finite says which are).
            number = finite(value)
            if number is None:
                raise TypeError(f"expected {name}, got {_kind_of(value)}")
            return number
        if not isinstance(value, kind):
            raise TypeError(f"expected {name}, got {type(value).__name__}")
        return value

    return structure


def _kind_of(value: object) -> str:
    if isinstance(value, int):
        return "an integer too large for a number"
    if isinstance(value, float):
        return "a number that is not finite"
    return type(value).__name__


def _is_choice(value: object, choice: object) -> bool:
    """``value`` is the literal ``choice`` as the scalar hooks see it: True
    is not 1, 1.0 is not the integer 1, and an integer is a ``float``."""
    if isinstance(value, bool) or isinstance(choice, bool):
        return value is choice
    if isinstance(choice, int):
        return isinstance(value, int) and value == choice
    if isinstance(choice, float):
        return isinstance(value, (int, float)) and value == choice
    return type(value) is type(choice) and value == choice


def _is_literal(kind: Any) -> bool:
    return get_origin(kind) is Literal


def _strict_literal(kind: Any) -> Any:
    choices = get_args(kind)
    # An enum member is chosen by its value, as cattrs chooses it.
    values = [choice.value if isinstance(choice, Enum) else choice for choice in choices]
    allowed = f"[{', '.join(map(repr, values))}]"

    def structure(value: object, _: object) -> Any:
        for choice, wanted in zip(choices, values, strict=True):
            if _is_choice(value, wanted):
                return choice
        raise ValueError(f"{value!r} is not one of {allowed}")

    return structure


def strict_scalars(converter: cattrs.Converter) -> None:
    """``str``, ``int``, ``float``, ``bool`` and a ``Literal``'s values taken
    only from their own JSON type: cattrs would make ``"5"`` of 5, 1 of
    ``True``, and take ``True`` for ``Literal[1]``. An integer is a
    ``float``, as in Python's typing."""
    converter.register_structure_hook(str, _strict(str, "a string"))
    converter.register_structure_hook(int, _strict(int, "an integer"))
    converter.register_structure_hook(float, _strict(float, "a number"))
    converter.register_structure_hook(bool, _strict(bool, "true or false"))
    converter.register_structure_hook_factory(_is_literal, _strict_literal)


def strict_lists(converter: cattrs.Converter) -> None:
    """Lists only from JSON arrays: cattrs would make ``["a", "b"]`` of the
    string ``"ab"``, or a list of keys of an object."""

    def factory(kind: Any) -> Any:
        items = list_structure_factory(kind, converter)
        # A tuple hint (tuple[int, ...]) gets a tuple, as it asked.
        make_tuple = (get_origin(kind) or kind) is tuple

        def structure(value: object, target: Any) -> Any:
            if not isinstance(value, list):
                raise TypeError(f"expected a list, got {type(value).__name__}")
            made = items(value, target)
            return tuple(made) if make_tuple else made

        return structure

    converter.register_structure_hook_factory(is_sequence, factory)


def _fixed_tuple(kind: Any) -> bool:
    arguments = get_args(kind)
    return get_origin(kind) is tuple and bool(arguments) and arguments[-1] is not Ellipsis


def _strict_collections(converter: cattrs.Converter) -> None:
    """Sets and fixed tuples only from arrays, mappings only from objects."""

    def set_factory(kind: Any) -> Any:
        arguments = get_args(kind)
        item = arguments[0] if arguments else Any
        make = frozenset if (get_origin(kind) or kind) is frozenset else set

        def structure(value: object, _: object) -> Any:
            if not isinstance(value, list):
                raise TypeError(f"expected a list, got {type(value).__name__}")
            return make(converter.structure(element, item) for element in value)

        return structure

    def tuple_factory(kind: Any) -> Any:
        items = get_args(kind)

        def structure(value: object, _: object) -> Any:
            if not isinstance(value, list):
                raise TypeError(f"expected a list, got {type(value).__name__}")
            if len(value) != len(items):
                raise ValueError(f"expected a list of {len(items)}, got {len(value)}")
            return tuple(map(converter.structure, value, items))

        return structure

    def mapping_factory(kind: Any) -> Any:
        entries = mapping_structure_factory(kind, converter)

        def structure(value: object, target: Any) -> Any:
            if not isinstance(value, Mapping):
                raise TypeError(f"expected an object, got {type(value).__name__}")
            return entries(value, target)

        return structure

    converter.register_structure_hook_factory(is_any_set, set_factory)
    converter.register_structure_hook_factory(_fixed_tuple, tuple_factory)
    converter.register_structure_hook_factory(is_mapping, mapping_factory)


def _as_given(value: object, _: object) -> object:
    return value


def _make_argument_converter() -> cattrs.Converter:
    # A hint cattrs has no hook for (a plain class, datetime, object) checks
    # nothing: its value is passed as it came, as if the hint were not there.
    converter = cattrs.Converter(structure_fallback_factory=lambda _: _as_given)
    strict_lists(converter)
    _strict_collections(converter)
    strict_scalars(converter)
    # int | str and the like: the value kept when it is one of them.
    configure_union_passthrough(Union[str, int, float, bool, None], converter)  # noqa: UP007
    return converter


# A backend function's arguments: JSON values to what its hints name.
argument_converter: Final = _make_argument_converter()


def _describe(exc: BaseException, kind: type | None) -> str:
    if isinstance(exc, (ValueError, TypeError)):
        return str(exc)
    if isinstance(exc, ForbiddenExtraKeysError):
        # A key may be a number (a Python mapping's): cattrs' own wording
        # would fail to join it.
        return f"extra fields found ({', '.join(sorted(map(str, exc.extra_fields)))})"
    return format_exception(exc, kind)


def describe_problems(exc: BaseException, path: str) -> str:
    """What was wrong, at most five problems, each with where it was."""
    messages = cattrs.transform_error(exc, path=path, format_exception=_describe)
    return "; ".join(messages[:5])


def type_name(hint: object) -> str:
    """A hint as its reader wrote it: ``str``, ``list[int]``, ``Optional[str]``."""
    if isinstance(hint, NewType):  # its repr names its module too
        return hint.__name__
    if isinstance(hint, type) and not get_args(hint):
        return hint.__qualname__
    return repr(hint).replace("typing.", "").replace("collections.abc.", "")
