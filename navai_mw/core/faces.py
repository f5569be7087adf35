"""How a public module claims the names it exports.

Each top-level face (``navai_mw``, ``navai_mw.auth``...) calls
:func:`publish` on its ``__all__``, so that a class or function says where
users import it from, in tracebacks and ``repr`` (``navai_mw.OptionsError``,
not the private module that defines it), as httpx does.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, MutableMapping
from typing import Any

import attrs

__all__ = ["publish"]


_PRIVATE_LAYERS = (
    "core",
    "upstreams",
    "guard",
    "backend_functions",
    "endpoint",
    "config",
    "runtime",
)


def _private(module: str) -> bool:
    parts = module.split(".")
    return len(parts) > 2 and parts[0] == "navai_mw" and parts[1] in _PRIVATE_LAYERS


def publish(face: str, namespace: MutableMapping[str, Any], names: Iterable[str]) -> None:
    """Give every class and function among ``names`` the module ``face``.

    The package root claims all of its names; another face claims only
    those whose home is still a private layer or a module of its own
    package (the root, imported first, has claimed the rest). The string
    annotations of attrs classes are resolved first, against the module that
    defines them: cattrs reads them later, and the face's namespace does not
    hold every name they use."""
    for name in names:
        value = namespace[name]
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        inside = value.__module__.startswith(f"{face}.")
        if face != "navai_mw" and not (inside or _private(value.__module__)):
            continue
        if inspect.isclass(value) and attrs.has(value):
            attrs.resolve_types(value)
        value.__module__ = face
