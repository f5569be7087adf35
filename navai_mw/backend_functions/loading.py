"""Finding and importing backend function modules: where the reference
looks (``NAVAI_FUNCTIONS_FOLDERS``...), what a module exports, and the
registry made of them. File-system work, done once when the middleware is
configured; public through :mod:`navai_mw.functions`."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import os
import re
import sys
import sysconfig
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from types import ModuleType
from typing import Any, Final

import attrs

from ..core.envvars import read
from .registry import (
    FunctionRegistry,
    NavaiFunction,
    _Names,
    locale_sort_key,
    read_signature,
)

__all__ = [
    "DEFAULT_FUNCTIONS_FOLDER",
    "load_navai_functions",
]

logger = logging.getLogger("navai_mw")

DEFAULT_FUNCTIONS_FOLDER: Final = "src/ai/functions-modules"
# Files that are never function modules: a package's own files.
_NOT_MODULES: Final = frozenset({"__init__.py", "__main__.py"})
# Folders the walk never enters (the reference skips node_modules, dist and
# dot-folders; a Python project adds its caches and installed packages).
_SKIPPED_FOLDERS: Final = frozenset({"node_modules", "dist", "__pycache__", "site-packages"})


# -- naming ---------------------------------------------------------------------------


# -- ordering as JavaScript's localeCompare -------------------------------------------


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


def _pattern(token: str) -> str:
    """A folder token as the reference reads it: a path below ``src/``."""
    raw = _normalize_path(token)
    if not raw:
        return ""
    return raw if raw.startswith("src/") else f"src/{raw}"


def _matcher(token: str, agents: list[str]) -> Callable[[str], bool]:
    normalized = _pattern(token)
    if not normalized:
        return lambda _: False
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


def _script_folder() -> str | None:
    """The folder of the script the process was started with
    (``python app.py``), or None: a module run with ``-m``, an interpreter
    without a script, a command installed with Python or in a virtual
    environment."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or getattr(main, "__spec__", None) is not None:
        return None
    folder = os.path.dirname(os.path.abspath(path))
    # A server's own command (uvicorn, gunicorn, pytest) is a script of the
    # environment it is installed in, not the app's.
    return None if folder in _scripts_folders() else folder


def _scripts_folders() -> set[str]:
    """Where commands are installed: each environment's ``bin`` (or
    ``Scripts``), and the user's."""
    prefixes = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    folders = {os.path.join(prefix, name) for prefix in prefixes for name in ("bin", "Scripts")}
    folders.add(sysconfig.get_path("scripts"))
    with suppress(KeyError):
        folders.add(sysconfig.get_path("scripts", f"{os.name}_user"))
    return {os.path.abspath(folder) for folder in folders}


def _bases(
    base_dir: str | os.PathLike[str] | None, env: Mapping[str, str | None]
) -> list[tuple[str, str]]:
    """The base folders to resolve the folders against, in order, each with
    where it came from: the one given, else NAVAI_FUNCTIONS_BASE_DIR, else
    the working directory (the reference's), then the started script's."""
    if base_dir is not None:
        return [(os.path.abspath(base_dir), "base_dir=")]
    configured = read(env, "NAVAI_FUNCTIONS_BASE_DIR")
    if configured:
        return [(os.path.abspath(configured), "NAVAI_FUNCTIONS_BASE_DIR")]
    bases = [(os.getcwd(), "the working directory")]
    script = _script_folder()
    if script is not None and script != bases[0][0]:
        bases.append((script, "the started script's folder"))
    return bases


@attrs.frozen
class FunctionSearch:
    """Where function modules were looked for, and what was found.

    Fields:
        modules: (path relative to ``base``, absolute path), in load order.
        base: the base folder the modules were found below (the first one
            searched when none was).
        base_origin: where ``base`` came from (``NAVAI_FUNCTIONS_BASE_DIR``,
            ``the working directory``...).
        searched: every absolute folder, glob or file looked in.
        warnings: what the search found wrong.
    """

    modules: tuple[tuple[str, str], ...]
    base: str
    base_origin: str
    searched: tuple[str, ...]
    warnings: tuple[str, ...]


def _searched(bases: list[tuple[str, str]], tokens: list[str]) -> str:
    def below(base: str) -> str:
        return ", ".join(os.path.join(base, _pattern(token)) for token in tokens)

    return "; then ".join(f"{below(base)} (base folder: {origin})" for base, origin in bases)


def search_function_modules(
    *,
    base_dir: str | os.PathLike[str] | None = None,
    functions_folders: str | None = None,
    agents_folders: str | None = None,
    env: Mapping[str, str | None] | None = None,
) -> FunctionSearch:
    """The modules to load, where they were looked for, and the warnings."""
    env = os.environ if env is None else env
    configured = (functions_folders or "").strip() or read(env, "NAVAI_FUNCTIONS_FOLDERS")
    folders = configured or DEFAULT_FUNCTIONS_FOLDER
    agents = _csv_segments((agents_folders or "").strip() or read(env, "NAVAI_AGENTS_FOLDERS"))
    tokens = [token.strip() for token in folders.split(",") if token.strip()]
    bases = _bases(base_dir, env)
    scans = [(base, origin, _scan(base)) for base, origin in bases]

    def first_match(tried: list[str]) -> tuple[str, str, list[tuple[str, str]]] | None:
        matchers = [_matcher(token, agents) for token in tried]
        for base, origin, modules in scans:
            matched = [module for module in modules if any(match(module[0]) for match in matchers)]
            if matched:
                return base, origin, matched
        return None

    found = first_match(tokens or [DEFAULT_FUNCTIONS_FOLDER])
    warnings: list[str] = []
    searched = [os.path.join(base, _pattern(token)) for base, _ in bases for token in tokens]
    if found is None and tokens:
        fallback = [DEFAULT_FUNCTIONS_FOLDER]
        if configured and tokens != fallback:
            warnings.append(
                f'[navai] NAVAI_FUNCTIONS_FOLDERS did not match any module: "{folders}". '
                f'Falling back to "{DEFAULT_FUNCTIONS_FOLDER}". '
                f"Searched {_searched(bases, tokens)}."
            )
            found = first_match(fallback)
            searched += [os.path.join(base, DEFAULT_FUNCTIONS_FOLDER) for base, _ in bases]
            if found is None:
                warnings.append(
                    f"[navai] No function module found. Searched {_searched(bases, fallback)}. "
                    "Set NAVAI_FUNCTIONS_BASE_DIR to the folder that holds src/."
                )
        else:
            warnings.append(
                f"[navai] No function module found. Searched {_searched(bases, tokens)}. "
                "Set NAVAI_FUNCTIONS_BASE_DIR to the folder that holds src/, "
                "or NAVAI_FUNCTIONS_FOLDERS."
            )
    base, origin, matched = found if found is not None else (*bases[0], [])
    matched.sort(key=lambda module: locale_sort_key(module[0]))
    return FunctionSearch(
        modules=tuple(matched),
        base=base,
        base_origin=origin,
        searched=tuple(searched),
        warnings=tuple(warnings),
    )


def find_function_modules(
    *,
    base_dir: str | os.PathLike[str] | None = None,
    functions_folders: str | None = None,
    agents_folders: str | None = None,
    env: Mapping[str, str | None] | None = None,
) -> tuple[list[tuple[str, str]], list[str]]:
    """The modules to load, as (relative path, absolute path) in load order,
    and the warnings of the search."""
    search = search_function_modules(
        base_dir=base_dir,
        functions_folders=functions_folders,
        agents_folders=agents_folders,
        env=env,
    )
    return list(search.modules), list(search.warnings)


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


def _read(
    function: Any, source: str, warnings: list[str], *, drop_first: bool = False
) -> inspect.Signature | None:
    signature, problem = read_signature(function, drop_first=drop_first)
    if problem is not None:
        warnings.append(
            f"[navai] Type hints of {source} could not be resolved ({problem}); "
            "its arguments are not checked against them."
        )
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
    constructor = None
    for method in methods:
        raw = f"{cls.__name__}_{method}"
        attribute = vars(cls)[method]
        source = f"{origin}#{export}.{method}"
        needs_instance = inspect.isfunction(attribute)
        if needs_instance and constructor is None:
            constructor = _read(cls, f"{origin}#{export}", warnings)
        found.append(
            NavaiFunction(
                name=names.take(raw, warnings),
                description=_summary(getattr(cls, method))
                or f"Call class method {cls.__name__}.{method}().",
                source=source,
                target=cls,
                method=method,
                signature=_read(getattr(cls, method), source, warnings, drop_first=needs_instance),
                constructor=constructor if needs_instance else None,
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
                signature=_read(value, f"{origin}#{export}", warnings),
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
    search = search_function_modules(
        base_dir=base_dir,
        functions_folders=functions_folders,
        agents_folders=agents_folders,
        env=env,
    )
    for relative, absolute in search.modules:
        try:
            module = import_by_path(absolute)
        except (Exception, SystemExit) as exc:
            logger.warning("navai_mw: failed to load %s", relative, exc_info=True)
            warnings.append(f"[navai] Failed to load {relative}: {_failure(exc)}")
            continue
        ordered.extend(_from_module(relative, module, names, warnings))
    if search.modules:
        logger.info(
            "navai_mw: %d backend function%s loaded from %d module%s below %s (%s); searched %s",
            len(ordered),
            "" if len(ordered) == 1 else "s",
            len(search.modules),
            "" if len(search.modules) == 1 else "s",
            search.base,
            search.base_origin,
            ", ".join(search.searched),
        )
    for warning in search.warnings:
        # A miss is not silent: the server's log says where it looked.
        logger.warning("navai_mw: %s", warning.removeprefix("[navai] "))
    return FunctionRegistry(tuple(ordered), (*search.warnings, *warnings))


# -- calling one ----------------------------------------------------------------------
