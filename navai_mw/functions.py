"""Backend functions: Python callables the voice agent may call through
``POST /navai/functions/execute``.

They are found where ``@navai/voice-backend`` looks for its modules, and
named, described and ordered as it does::

    from navai_mw.functions import load_navai_functions

    registry = load_navai_functions()  # NAVAI_FUNCTIONS_FOLDERS, or src/ai/functions-modules
    for function in registry.ordered:
        print(function.name, function.source)
    print(registry.warnings)

or given in code (functions, classes and modules, in the order given)::

    registry = load_navai_functions([get_weather, Cart, my_tools_module])

What a module exports: its public top-level functions and classes defined
in it (``__all__`` when it has one), taken in name order as an ES module's
exports are; a class gives one function per public method of its own. A
function's description is its docstring's first line, else the
reference's ``Call exported function x.``.

Differences from the reference, on purpose: ``.py`` files are loaded, never
``__init__.py`` or ``__main__.py``; the walk also skips ``__pycache__``,
``site-packages`` and virtual environments (a folder holding
``pyvenv.cfg``); symbolic links are followed (each real folder once, so
the walk ends); only ``src/`` is walked, since every pattern is forced there; a
module inside a package (a folder with ``__init__.py``) is imported as part
of it, so its relative imports work.
"""

from __future__ import annotations

from .backend_functions.loading import (
    DEFAULT_FUNCTIONS_FOLDER,
    FunctionSource,
    load_navai_functions,
)
from .backend_functions.registry import (
    FunctionContext,
    FunctionRegistry,
    NavaiFunction,
    NavaiFunctionError,
)
from .backend_functions.registry import locale_sort_key as locale_sort_key
from .core.faces import publish

__all__ = [
    "DEFAULT_FUNCTIONS_FOLDER",
    "FunctionContext",
    "FunctionRegistry",
    "FunctionSource",
    "NavaiFunction",
    "NavaiFunctionError",
    "load_navai_functions",
]

publish(__name__, globals(), __all__)
