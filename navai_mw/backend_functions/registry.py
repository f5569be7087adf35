"""Backend functions as values: each function, the registry of them, the
context a call may receive, and the reference's naming and ordering."""

from __future__ import annotations

import inspect
import re
import unicodedata
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs

from ..core.http import RequestInfo
from ..core.identity import identity_key


class NavaiFunctionError(Exception):
    """Raise it from a backend function to tell the caller what went wrong:
    the answer is ``200 {"ok": false, "error": message, "details": message}``,
    which the published front end shows (any other exception is logged and
    answered 500 without its text)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@attrs.frozen(kw_only=True)
class FunctionContext:
    """What a backend function may know of the call: it is passed to a
    function that declares a parameter named ``context`` (or annotated
    :class:`FunctionContext`).

    Fields:
        function: the function's name (as listed).
        identity: who the guard's ``authorize`` said the caller is (the
            name it proved: a bearer token's name, a JWT's ``sub``, what a
            hook returned), or None.
        client: the client's address, or None.
        headers: the request's headers, lower-case names, read-only.
        request: the whole request view (with the ASGI ``scope`` or the
            WSGI ``environ``).

    Two authorities may prove the same name (a token named ``ops``, a JWT
    whose ``sub`` is ``ops``): :attr:`identity_key` tells them apart.
    """

    function: str
    identity: str | None
    client: str | None
    headers: Mapping[str, str]
    request: RequestInfo = attrs.field(repr=False)

    @property
    def identity_key(self) -> str | None:
        """The identity with the scheme that proved it: ``token:ops``,
        ``jwt:{issuer}:alice``, ``app:bob`` (navai_mw's rate limits and
        calls' owners go by this)."""
        return identity_key(self.identity)


@attrs.frozen(kw_only=True)
class NavaiFunction:
    """One callable backend function.

    Fields:
        name: what the front end calls it (snake_case, unique).
        description: shown to the model.
        source: where it came from (``path#export`` or ``path#Class.method``).
        target: the function, or the class whose method this is.
        method: the method's name when ``target`` is a class, else None.
        signature: its parameters, hints resolved (None when unknown).
        constructor: the class's, for a method that needs an instance.
    """

    name: str
    description: str
    source: str
    target: Any = attrs.field(repr=False)
    method: str | None = None
    signature: inspect.Signature | None = attrs.field(default=None, repr=False, eq=False)
    constructor: inspect.Signature | None = attrs.field(default=None, repr=False, eq=False)

    @property
    def is_async(self) -> bool:
        """Whether calling it gives a coroutine to await."""
        function = (
            self.target if self.method is None else inspect.getattr_static(self.target, self.method)
        )
        if isinstance(function, (staticmethod, classmethod)):
            function = function.__func__
        return inspect.iscoroutinefunction(function)


@attrs.frozen
class FunctionRegistry:
    """Loaded backend functions, in the order listed, and what went wrong
    while loading them."""

    ordered: tuple[NavaiFunction, ...] = ()
    warnings: tuple[str, ...] = ()
    by_name: Mapping[str, NavaiFunction] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(
            self, "by_name", MappingProxyType({item.name: item for item in self.ordered})
        )

    def get(self, name: str) -> NavaiFunction | None:
        """The function called ``name``, matched trimmed and lower-cased."""
        return self.by_name.get(name.strip().lower())

    @property
    def names(self) -> list[str]:
        return [item.name for item in self.ordered]


def read_signature(
    function: Any, *, drop_first: bool = False
) -> tuple[inspect.Signature | None, str | None]:
    """The parameters of ``function`` (without the first, for a method read
    off its class), with their type hints resolved; and, when some hint could
    not be resolved (a name imported only for type checkers), the kind of
    error, the hints then left as written."""
    problem = None
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None, None  # a builtin without a signature: nothing to check
    try:
        signature = inspect.signature(function, eval_str=True)
    except Exception as exc:
        # Whatever evaluating the app's own hint text raised.
        problem = type(exc).__name__
    if drop_first:
        parameters = list(signature.parameters.values())[1:]
        signature = signature.replace(parameters=parameters)
    return signature, problem


def normalize_name(value: str) -> str:
    """``getWeather`` -> ``get_weather``, as the reference spells names."""
    value = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", value)
    value = re.sub(r"[^a-zA-Z0-9]+", "_", value)
    return value.strip("_").lower()


class _Names:
    """Hands out unique names: a taken one gets ``_2``, ``_3``... and a warning."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def take(self, raw: str, warnings: list[str]) -> str:
        candidate = normalize_name(raw) or "fn"
        name = candidate
        index = 2
        while name in self.used:
            name = f"{candidate}_{index}"
            index += 1
        self.used.add(name)
        if name != normalize_name(raw):
            warnings.append(f'[navai] Renamed duplicated function "{raw}" to "{name}".')
        return name


# ICU's root collation puts these before digits, and digits before letters,
# in this order; everything else sorts by code point after the letters.
_PUNCTUATION: Final = "\t\n\x0b\x0c\r _-,;:!?.'\"()[]{}@*/\\&#%`^+<=>|~$"

_PRIMARY: Final = {char: index for index, char in enumerate(_PUNCTUATION)}


def locale_sort_key(text: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """A sort key that orders strings as ``a.localeCompare(b)`` does under
    ICU's root collation: letters before case (``apple`` < ``HTTPHelpers``),
    accents next, then lower case before upper case."""
    primary: list[int] = []
    secondary: list[int] = []
    tertiary: list[int] = []
    for char in unicodedata.normalize("NFD", text):
        if unicodedata.combining(char):
            if secondary:
                secondary[-1] = secondary[-1] * 1024 + ord(char)
            continue
        lower = char.lower()
        if char in _PRIMARY:
            weight = _PRIMARY[char]
        elif char.isdigit() and char.isascii():
            weight = 100 + int(char)
        else:
            weight = 200 + ord(lower)
        primary.append(weight)
        secondary.append(0)
        tertiary.append(0 if char == lower else 1)
    return tuple(primary), tuple(secondary), tuple(tertiary)
