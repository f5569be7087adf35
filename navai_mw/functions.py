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

import hashlib
import importlib
import importlib.util
import inspect
import logging
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, Final

import attrs

from ._errors import RequestError
from ._guard import RequestInfo

__all__ = [
    "DEFAULT_FUNCTIONS_FOLDER",
    "FunctionContext",
    "FunctionRegistry",
    "NavaiFunction",
    "NavaiFunctionError",
    "load_navai_functions",
]

logger = logging.getLogger("navai_mw")

DEFAULT_FUNCTIONS_FOLDER: Final = "src/ai/functions-modules"
# Files that are never function modules: a package's own files.
_NOT_MODULES: Final = frozenset({"__init__.py", "__main__.py"})
# Folders the walk never enters (the reference skips node_modules, dist and
# dot-folders; a Python project adds its caches and installed packages).
_SKIPPED_FOLDERS: Final = frozenset({"node_modules", "dist", "__pycache__", "site-packages"})
# The payload keys that are conventions, not a function's arguments.
_CONVENTIONS: Final = frozenset({"args", "arguments", "value", "constructorArgs", "methodArgs"})


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
        identity: who the guard's ``authorize`` said the caller is, or None.
        client: the client's address, or None.
        headers: the request's headers, lower-case names, read-only.
        request: the whole request view (with the ASGI ``scope`` or the
            WSGI ``environ``).
    """

    function: str
    identity: str | None
    client: str | None
    headers: Mapping[str, str]
    request: RequestInfo = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class NavaiFunction:
    """One callable backend function.

    Fields:
        name: what the front end calls it (snake_case, unique).
        description: shown to the model.
        source: where it came from (``path#export`` or ``path#Class.method``).
        target: the function, or the class whose method this is.
        method: the method's name when ``target`` is a class, else None.
    """

    name: str
    description: str
    source: str
    target: Any = attrs.field(repr=False)
    method: str | None = None
    signature: inspect.Signature | None = attrs.field(default=None, repr=False, eq=False)

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


# -- naming ---------------------------------------------------------------------------


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


# -- ordering as JavaScript's localeCompare -------------------------------------------

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


# -- where modules are found ----------------------------------------------------------


def _normalize_path(value: str) -> str:
    value = value.strip().replace("\\", "/")
    value = re.sub(r"^/+", "", value)
    value = re.sub(r"^(\./)+", "", value)
    return re.sub(r"^(\.\./)+", "", value)


def _glob(pattern: str) -> re.Pattern[str]:
    # The reference's translation, quirks kept: "?" is not escaped.
    escaped = re.sub(r"([.+^${}()|\[\]\\])", r"\\\1", pattern)
    escaped = escaped.replace("**", "\0").replace("*", "[^/]*").replace("\0", ".*")
    return re.compile(f"^{escaped}$")


def _matcher(token: str, agents: list[str]) -> Callable[[str], bool]:
    raw = _normalize_path(token)
    if not raw:
        return lambda _: False
    normalized = raw if raw.startswith("src/") else f"src/{raw}"
    if normalized.endswith("/..."):
        base = normalized[:-4].rstrip("/")
        return lambda path: path.startswith(f"{base}/")
    if "*" in normalized:
        pattern = _glob(normalized)
        return lambda path: pattern.match(path) is not None
    if normalized.endswith(".py"):
        return lambda path: path == normalized
    base = normalized.rstrip("/")
    if agents:

        def in_agent_folder(path: str) -> bool:
            if not path.startswith(f"{base}/"):
                return False
            return path[len(base) + 1 :].split("/", 1)[0] in agents

        return in_agent_folder
    return lambda path: path == base or path.startswith(f"{base}/")


def _csv_segments(value: str | None) -> list[str]:
    segments = (_normalize_path(item).replace("/", "") for item in (value or "").split(","))
    return [segment for segment in segments if segment]


def _is_virtualenv(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "pyvenv.cfg"))


def _scan(base_dir: str) -> list[tuple[str, str]]:
    """Every ``.py`` file below ``base_dir/src`` (every pattern is forced
    under ``src/``, so nothing else can match): (path relative to
    ``base_dir`` with ``/``, absolute path).

    Links are followed, each real folder walked once (the first path to it
    in name order wins), so that links cannot make the walk loop or grow.
    """
    found: list[tuple[str, str]] = []
    walked: set[str] = set()

    def walk(folder: str, relative: str) -> None:
        real = os.path.realpath(folder)
        if real in walked:
            return
        walked.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue  # the reference skips dot-folders and dot-files
            path = f"{relative}{entry.name}"
            try:
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
            except OSError:
                continue
            if is_dir:
                if entry.name not in _SKIPPED_FOLDERS and not _is_virtualenv(entry.path):
                    walk(entry.path, f"{path}/")
            elif is_file and entry.name.lower().endswith(".py") and entry.name not in _NOT_MODULES:
                found.append((path, entry.path))

    source = os.path.join(base_dir, "src")
    if os.path.isdir(source):
        walk(source, "src/")
    return found


def _env_value(env: Mapping[str, str | None], name: str) -> str | None:
    value = env.get(name)
    return value.strip() if isinstance(value, str) and value.strip() else None


def find_function_modules(
    *,
    base_dir: str | os.PathLike[str] | None = None,
    functions_folders: str | None = None,
    agents_folders: str | None = None,
    env: Mapping[str, str | None] | None = None,
) -> tuple[list[tuple[str, str]], list[str]]:
    """The modules to load, as (relative path, absolute path) in load order,
    and the warnings of the search."""
    env = os.environ if env is None else env
    if base_dir is None:
        configured_dir = _env_value(env, "NAVAI_FUNCTIONS_BASE_DIR")
        base_dir = os.path.abspath(configured_dir) if configured_dir else os.getcwd()
    folders = (
        (functions_folders or "").strip()
        or _env_value(env, "NAVAI_FUNCTIONS_FOLDERS")
        or DEFAULT_FUNCTIONS_FOLDER
    )
    agents = _csv_segments(
        (agents_folders or "").strip() or _env_value(env, "NAVAI_AGENTS_FOLDERS")
    )
    modules = _scan(os.fspath(base_dir))
    tokens = [token.strip() for token in folders.split(",") if token.strip()]
    matchers = [_matcher(token, agents) for token in tokens or [DEFAULT_FUNCTIONS_FOLDER]]
    matched = [module for module in modules if any(match(module[0]) for match in matchers)]
    warnings: list[str] = []
    if not matched and tokens:
        warnings.append(
            f'[navai] NAVAI_FUNCTIONS_FOLDERS did not match any module: "{folders}". '
            f'Falling back to "{DEFAULT_FUNCTIONS_FOLDER}".'
        )
        fallback = _matcher(DEFAULT_FUNCTIONS_FOLDER, agents)
        matched = [module for module in modules if fallback(module[0])]
    matched.sort(key=lambda module: locale_sort_key(module[0]))
    return matched, warnings


# -- importing a module by its path ---------------------------------------------------


def _package_root(path: Path) -> Path | None:
    """The outermost folder of the package chain holding ``path``, if any."""
    root = None
    folder = path.parent
    while (folder / "__init__.py").is_file():
        root = folder
        if folder.parent == folder:
            break
        folder = folder.parent
    return root


def _synthetic_name(path: Path) -> str:
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem) or "module"
    return f"_navai_functions_{digest}_{stem}"


def import_by_path(absolute: str) -> ModuleType:
    """Import the ``.py`` file at ``absolute`` (a folder may have any name).

    Inside a package, the package is imported first under a private name, so
    that the module's relative imports resolve.
    """
    path = Path(absolute).resolve()
    root = _package_root(path)
    if root is None:
        name = _synthetic_name(path)
        if name in sys.modules:
            return sys.modules[name]
        return _exec_module(name, path, None)
    package = _synthetic_name(root)
    if package not in sys.modules:
        _exec_module(package, root / "__init__.py", [str(root)])
    dotted = ".".join(path.relative_to(root).with_suffix("").parts)
    return importlib.import_module(f"{package}.{dotted}")


def _exec_module(name: str, path: Path, search: list[str] | None) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=search)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path.name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


# -- what a module gives --------------------------------------------------------------


def _defined_in(value: object, module: ModuleType) -> bool:
    return getattr(value, "__module__", None) == module.__name__


def _exports(module: ModuleType) -> list[tuple[str, object]]:
    names = getattr(module, "__all__", None)
    if isinstance(names, (list, tuple)) and all(isinstance(name, str) for name in names):
        chosen = [(name, getattr(module, name)) for name in names if hasattr(module, name)]
    else:
        chosen = [
            (name, value)
            for name, value in vars(module).items()
            if not name.startswith("_")
            and not isinstance(value, ModuleType)
            and type(value).__name__ != "_Feature"  # from __future__ import ...
            and (
                _defined_in(value, module)
                if inspect.isclass(value) or inspect.isroutine(value)
                # A value is an export without a function; another callable
                # (a typing construct, an alias, a partial) is not one.
                else not callable(value)
            )
        ]
    # An ES module's namespace lists its exports in code-unit order.
    return sorted(chosen, key=lambda item: item[0])


def _summary(value: object) -> str | None:
    doc = inspect.getdoc(value)
    if not doc:
        return None
    return doc.strip().splitlines()[0].strip() or None


def _method_names(cls: type) -> list[str]:
    return [
        name
        for name, value in vars(cls).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or isinstance(value, (staticmethod, classmethod)))
    ]


def _signature(function: Any, *, drop_first: bool = False) -> inspect.Signature | None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    if drop_first:
        parameters = list(signature.parameters.values())[1:]
        signature = signature.replace(parameters=parameters)
    return signature


def _from_class(
    origin: str, export: str, cls: type, names: _Names, warnings: list[str]
) -> list[NavaiFunction]:
    methods = _method_names(cls)
    if not methods:
        warnings.append(
            f"[navai] Ignored {origin}#{export}: class has no callable instance methods."
        )
        return []
    found = []
    for method in methods:
        raw = f"{cls.__name__}_{method}"
        attribute = vars(cls)[method]
        found.append(
            NavaiFunction(
                name=names.take(raw, warnings),
                description=_summary(getattr(cls, method))
                or f"Call class method {cls.__name__}.{method}().",
                source=f"{origin}#{export}.{method}",
                target=cls,
                method=method,
                signature=_signature(
                    getattr(cls, method), drop_first=inspect.isfunction(attribute)
                ),
            )
        )
    return found


def _from_value(
    origin: str, export: str, value: object, names: _Names, warnings: list[str]
) -> list[NavaiFunction]:
    if inspect.isclass(value):
        return _from_class(origin, export, value, names, warnings)
    if inspect.isroutine(value):
        return [
            NavaiFunction(
                name=names.take(export, warnings),
                description=_summary(value) or f"Call exported function {export}.",
                source=f"{origin}#{export}",
                target=value,
                signature=_signature(value),
            )
        ]
    return []


def _from_module(
    origin: str, module: ModuleType, names: _Names, warnings: list[str]
) -> list[NavaiFunction]:
    exports = _exports(module)
    if not exports:
        warnings.append(f"[navai] Ignored {origin}: module has no exports.")
        return []
    found: list[NavaiFunction] = []
    for export, value in exports:
        found.extend(_from_value(origin, export, value, names, warnings))
    if not found:
        warnings.append(f"[navai] Ignored {origin}: module has no callable exports.")
    return found


def _failure(exc: BaseException) -> str:
    # Only the kind: the message may hold anything (a password in a
    # connection string), and the list is served to browsers. The message
    # and the traceback go to the log.
    return f"{type(exc).__name__} (see the server log)"


FunctionSource = Callable[..., Any] | type | ModuleType


def load_navai_functions(
    functions: Iterable[FunctionSource] | None = None,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    functions_folders: str | None = None,
    agents_folders: str | None = None,
    env: Mapping[str, str | None] | None = None,
) -> FunctionRegistry:
    """Load backend functions.

    With ``functions``, exactly those (functions, classes, modules), in that
    order. Without, from the module folders as the reference finds them:
    ``functions_folders`` (else ``NAVAI_FUNCTIONS_FOLDERS``, else
    ``src/ai/functions-modules``), below ``base_dir`` (else
    ``NAVAI_FUNCTIONS_BASE_DIR``, else the working directory), filtered by
    ``agents_folders`` (else ``NAVAI_AGENTS_FOLDERS``). A module that fails
    to import becomes a warning.
    """
    names = _Names()
    warnings: list[str] = []
    ordered: list[NavaiFunction] = []
    if functions is not None:
        for item in functions:
            if isinstance(item, ModuleType):
                ordered.extend(_from_module(item.__name__, item, names, warnings))
                continue
            export = getattr(item, "__name__", None)
            if not isinstance(export, str) or not callable(item):
                raise TypeError(
                    f"functions must hold functions, classes or modules. Received: {item!r}"
                )
            origin = getattr(item, "__module__", None) or "functions"
            ordered.extend(_from_value(origin, export, item, names, warnings))
        return FunctionRegistry(tuple(ordered), tuple(warnings))
    modules, search_warnings = find_function_modules(
        base_dir=base_dir,
        functions_folders=functions_folders,
        agents_folders=agents_folders,
        env=env,
    )
    for relative, absolute in modules:
        try:
            module = import_by_path(absolute)
        except (Exception, SystemExit) as exc:
            logger.warning("navai_mw: failed to load %s", relative, exc_info=True)
            warnings.append(f"[navai] Failed to load {relative}: {_failure(exc)}")
            continue
        ordered.extend(_from_module(relative, module, names, warnings))
    return FunctionRegistry(tuple(ordered), (*search_warnings, *warnings))


# -- calling one ----------------------------------------------------------------------


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
