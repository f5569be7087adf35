"""Loading backend functions from module folders: the cases the
differential table against the reference cannot hold (Python packages,
import-time failures, links, virtual environments), the environment
variables, and the middleware loading them when it is built."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from navai_mw import NavaiVoiceBackendOptions, NavaiWSGIMiddleware, load_navai_functions
from navai_mw.functions import locale_sort_key

from .conftest import CANARY_KEY

FOLDER = "src/ai/functions-modules"


def write(root: Path, relative: str, source: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def names(root: Path) -> list[str]:
    return load_navai_functions(base_dir=root, env={}).names


def test_hyphenated_folders_and_dots_in_names_load(tmp_path: Path) -> None:
    write(tmp_path, f"{FOLDER}/my-tools/get-weather.py", "def getWeather(): return 1\n")
    write(tmp_path, f"{FOLDER}/weather.fn.py", "def forecast(): return 2\n")
    registry = load_navai_functions(base_dir=tmp_path, env={})
    assert registry.names == ["get_weather", "forecast"]
    assert registry.ordered[0].source == f"{FOLDER}/my-tools/get-weather.py#getWeather"
    assert registry.ordered[0].target() == 1
    assert registry.warnings == ()


def test_a_module_in_a_package_uses_relative_imports(tmp_path: Path) -> None:
    write(tmp_path, f"{FOLDER}/shop/__init__.py", "TAX = 0.2\n")
    write(tmp_path, f"{FOLDER}/shop/_prices.py", "PRICES = {'tea': 10}\n")
    write(
        tmp_path,
        f"{FOLDER}/shop/cart.py",
        """
        from . import TAX
        from ._prices import PRICES

        def price(item):
            return PRICES[item] * (1 + TAX)
        """,
    )
    registry = load_navai_functions(base_dir=tmp_path, env={})
    # __init__.py is the package, not a module of functions.
    assert registry.names == ["price"]
    assert registry.ordered[0].target("tea") == pytest.approx(12.0)
    assert registry.warnings == (
        f"[navai] Ignored {FOLDER}/shop/_prices.py: module has no callable exports.",
    )


def test_import_failures_become_warnings_and_the_rest_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, f"{FOLDER}/a_raises.py", "raise ValueError('no config')\n")
    write(tmp_path, f"{FOLDER}/b_exits.py", "raise SystemExit(3)\n")
    write(tmp_path, f"{FOLDER}/c_syntax.py", "def broken(:\n")
    write(tmp_path, f"{FOLDER}/d_missing.py", "import navai_no_such_module\n")
    write(
        tmp_path,
        f"{FOLDER}/e_slow.py",
        "import time\ntime.sleep(0.2)\n\ndef slow_but_loaded():\n    return 1\n",
    )
    started = time.monotonic()
    registry = load_navai_functions(base_dir=tmp_path, env={})
    assert time.monotonic() - started >= 0.2  # the slow module was waited for
    assert registry.names == ["slow_but_loaded"]
    # The kind of failure only: its text (maybe a password) goes to the log.
    assert registry.warnings == tuple(
        f"[navai] Failed to load {FOLDER}/{name}.py: {kind} (see the server log)"
        for name, kind in (
            ("a_raises", "ValueError"),
            ("b_exits", "SystemExit"),
            ("c_syntax", "SyntaxError"),
            ("d_missing", "ModuleNotFoundError"),
        )
    )
    assert "no config" in caplog.text
    assert "navai_no_such_module" in caplog.text


def test_links_are_followed_and_a_loop_ends(tmp_path: Path) -> None:
    outside = write(tmp_path, "shared/tools.py", "def shared_tool(): return 'shared'\n")
    folder = tmp_path / FOLDER
    write(tmp_path, f"{FOLDER}/local.py", "def local_tool(): return 'local'\n")
    (folder / "linked.py").symlink_to(outside)
    (folder / "linked-dir").symlink_to(outside.parent, target_is_directory=True)
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    registry = load_navai_functions(base_dir=tmp_path, env={})
    assert sorted(registry.names) == ["local_tool", "shared_tool", "shared_tool_2"]
    sources = {item.source for item in registry.ordered}
    assert f"{FOLDER}/linked-dir/tools.py#shared_tool" in sources
    assert f"{FOLDER}/linked.py#shared_tool" in sources


def test_links_cannot_make_the_walk_grow(tmp_path: Path) -> None:
    # Each folder links twice to the next: 2**15 paths, 15 real folders.
    folders = [tmp_path / FOLDER / "chain"]
    for index in range(1, 15):
        folders.append(tmp_path / "elsewhere" / f"f{index}")
    for index, folder in enumerate(folders):
        write(folder, f"m{index}.py", f"def step_{index}(): return {index}\n")
    for current, following in itertools.pairwise(folders):
        (current / "a").symlink_to(following, target_is_directory=True)
        (current / "b").symlink_to(following, target_is_directory=True)
    registry = load_navai_functions(base_dir=tmp_path, env={})
    assert sorted(registry.names) == sorted(f"step_{index}" for index in range(15))
    # Only src/ is walked: what lies elsewhere is reached through links only.
    assert all(item.source.startswith(f"{FOLDER}/chain/") for item in registry.ordered)


def test_typing_constructs_and_other_callables_are_not_functions(tmp_path: Path) -> None:
    write(
        tmp_path,
        f"{FOLDER}/types_only.py",
        """
        import functools
        from typing import Any, NewType, Optional

        JSON = dict[str, Any]
        UserId = NewType("UserId", int)
        Maybe = Optional[int]
        shout = functools.partial(print, "!")
        """,
    )
    registry = load_navai_functions(base_dir=tmp_path, env={})
    assert registry.names == []
    assert registry.warnings == (f"[navai] Ignored {FOLDER}/types_only.py: module has no exports.",)


def test_a_module_reached_by_two_patterns_loads_once(tmp_path: Path) -> None:
    write(tmp_path, f"{FOLDER}/tools/one.py", "def one(): return 1\n")
    folders = f"{FOLDER}, ai/functions-modules/tools/..., {FOLDER}/tools/one.py, src/**/one.py"
    registry = load_navai_functions(base_dir=tmp_path, functions_folders=folders, env={})
    assert registry.names == ["one"]
    assert registry.warnings == ()


def test_python_folders_that_are_never_modules_are_skipped(tmp_path: Path) -> None:
    write(tmp_path, f"{FOLDER}/real.py", "def real(): return 1\n")
    write(tmp_path, f"{FOLDER}/__pycache__/cached.py", "def cached(): return 1\n")
    write(tmp_path, f"{FOLDER}/lib/site-packages/pkg.py", "def installed(): return 1\n")
    write(tmp_path, f"{FOLDER}/env/pyvenv.cfg", "home = /usr/bin\n")
    write(tmp_path, f"{FOLDER}/env/lib/tool.py", "def in_a_venv(): return 1\n")
    write(tmp_path, f"{FOLDER}/.venv/lib/tool.py", "def dotted_venv(): return 1\n")
    write(tmp_path, f"{FOLDER}/__main__.py", "def main(): return 1\n")
    write(tmp_path, f"{FOLDER}/notes.txt", "def text(): return 1\n")
    assert names(tmp_path) == ["real"]


def test_exports_follow_all_and_skip_what_was_imported(tmp_path: Path) -> None:
    write(
        tmp_path,
        f"{FOLDER}/exports.py",
        """
        from __future__ import annotations

        import json
        from os.path import join
        from typing import Any

        __all__ = ["zeta", "alpha", "join"]

        def alpha(): return "a"
        def zeta(): return "z"
        def hidden(): return "h"
        """,
    )
    write(
        tmp_path,
        f"{FOLDER}/plain.py",
        """
        import json
        from os.path import join

        LIMIT = 5

        class Tool:
            def run(self): return "ran"
            def _helper(self): return None
            @property
            def size(self): return 1

        def _private(): return None
        """,
    )
    registry = load_navai_functions(base_dir=tmp_path, env={})
    # __all__ may name what was imported; its names are taken in name order.
    assert registry.names == ["alpha", "join", "zeta", "tool_run"]


def test_the_environment_chooses_where_to_look(tmp_path: Path) -> None:
    write(tmp_path, "app/src/tools/agents/sales/deal.py", "def close_deal(): return 1\n")
    write(tmp_path, "app/src/tools/agents/support/ticket.py", "def open_ticket(): return 1\n")
    write(tmp_path, "app/src/tools/top.py", "def top(): return 1\n")
    env = {
        "NAVAI_FUNCTIONS_BASE_DIR": str(tmp_path / "app"),
        "NAVAI_FUNCTIONS_FOLDERS": "tools/agents",
        "NAVAI_AGENTS_FOLDERS": "support",
    }
    assert load_navai_functions(env=env).names == ["open_ticket"]
    # Keywords win over the environment.
    registry = load_navai_functions(env=env, functions_folders="src/tools", agents_folders="sales")
    assert registry.names == []
    assert registry.warnings[0].startswith("[navai] NAVAI_FUNCTIONS_FOLDERS did not match")
    assert load_navai_functions(env={**env, "NAVAI_AGENTS_FOLDERS": ""}).names == [
        "close_deal",
        "open_ticket",
    ]


def test_the_middleware_loads_the_folders_when_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, f"{FOLDER}/clock.py", "def now():\n    '''The time.'''\n    return 12\n")
    write(tmp_path, f"{FOLDER}/broken.py", "raise RuntimeError('bad import')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NAVAI_FUNCTIONS_FOLDERS", raising=False)
    monkeypatch.delenv("NAVAI_FUNCTIONS_BASE_DIR", raising=False)
    app = NavaiWSGIMiddleware(
        lambda environ, start: [], NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY)
    )
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as client:
        listed = client.get("/navai/functions").json()
        ran = client.post("/navai/functions/execute", json={"function_name": "now"}).json()
    assert listed == {
        "items": [{"name": "now", "description": "The time.", "source": f"{FOLDER}/clock.py#now"}],
        "warnings": [
            f"[navai] Failed to load {FOLDER}/broken.py: RuntimeError (see the server log)"
        ],
    }
    assert ran["result"] == 12


def test_locale_order_puts_case_and_accents_last() -> None:
    words = ["HTTPHelpers", "apple", "éclair", "Eclair", "eclair", "a-b", "a_b", "10x", "9x"]
    assert sorted(words, key=locale_sort_key) == [
        "10x",
        "9x",
        "a_b",
        "a-b",
        "apple",
        "eclair",
        "Eclair",
        "éclair",
        "HTTPHelpers",
    ]
    assert os.sep not in "".join(words)


def test_locale_order_weighs_accents_letter_by_letter() -> None:
    """As ICU's root collation: the first accented letter decides, then its
    accents in order; a letter outside ASCII sorts by its code point."""
    expected = [
        "cote",
        "coté",
        "côte",
        "côté",
        "e",
        "é",
        "strasse",
        "straße",
        "Straße",
        "u\u0304\u0308",  # u, macron, diaeresis
        "u\u0308\u0301",  # u, diaeresis, acute
    ]
    assert sorted(expected, key=locale_sort_key) == expected
    assert sorted(reversed(expected), key=locale_sort_key) == expected


# -- where the folders are resolved, and what the log says ------------------------------

_SERVE = """
import logging, sys

import httpx

from navai_mw import NavaiVoiceBackendOptions, NavaiWSGIMiddleware

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
app = NavaiWSGIMiddleware(lambda e, s: [], NavaiVoiceBackendOptions(openai_api_key="sk-x"))
with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as client:
    listed = client.get("/navai/functions").json()
print("NAMES", [item["name"] for item in listed["items"]])
"""


def _started(script: Path, cwd: Path, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NAVAI_", "OPENAI_"))}
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_an_app_started_from_another_folder_finds_its_functions(tmp_path: Path) -> None:
    app = tmp_path / "app"
    write(app, f"{FOLDER}/clock.py", "def now(): return 12\n")
    script = write(app, "serve.py", _SERVE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = _started(script, elsewhere)
    assert "NAMES ['now']" in out
    # The log says how many were loaded, from where, and why there.
    assert (
        f"INFO navai_mw: 1 backend function loaded from 1 module below {app} "
        f"(the started script's folder); searched {elsewhere / FOLDER}, {app / FOLDER}\n"
    ) in out


def test_the_base_dir_variable_wins_and_a_miss_says_where_it_looked(tmp_path: Path) -> None:
    app = tmp_path / "app"
    write(app, f"{FOLDER}/clock.py", "def now(): return 12\n")
    script = write(app, "serve.py", _SERVE)
    empty = tmp_path / "empty"
    empty.mkdir()
    # Relative to the working directory, and nothing else is searched.
    out = _started(script, tmp_path, NAVAI_FUNCTIONS_BASE_DIR="empty")
    assert "NAMES []" in out
    assert (
        f"WARNING navai_mw: No function module found. Searched {empty / FOLDER} "
        "(base folder: NAVAI_FUNCTIONS_BASE_DIR). Set NAVAI_FUNCTIONS_BASE_DIR to the folder "
        "that holds src/, or NAVAI_FUNCTIONS_FOLDERS.\n"
    ) in out
    out = _started(script, empty, NAVAI_FUNCTIONS_BASE_DIR="../app")
    assert "NAMES ['now']" in out
    assert "(NAVAI_FUNCTIONS_BASE_DIR)" in out


def test_the_warnings_name_every_folder_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="navai_mw"):
        registry = load_navai_functions(env={"NAVAI_FUNCTIONS_FOLDERS": "tools,src/x/*.py"})
    searched = (
        f"{tmp_path / 'src/tools'}, {tmp_path / 'src/x/*.py'} (base folder: the working directory)"
    )
    assert registry.warnings[0] == (
        '[navai] NAVAI_FUNCTIONS_FOLDERS did not match any module: "tools,src/x/*.py". '
        f'Falling back to "{FOLDER}". Searched {searched}.'
    )
    assert registry.warnings[1].startswith(
        f"[navai] No function module found. Searched {tmp_path / FOLDER} "
    )
    assert [r.getMessage() for r in caplog.records] == [
        f"navai_mw: {warning.removeprefix('[navai] ')}" for warning in registry.warnings
    ]
    # The working directory's folders come first: the reference's base.
    write(tmp_path, f"{FOLDER}/here.py", "def here(): return 1\n")
    with caplog.at_level(logging.INFO, logger="navai_mw"):
        caplog.clear()
        assert load_navai_functions(env={}).names == ["here"]
    assert caplog.records[-1].levelno == logging.INFO
    assert f"below {tmp_path} (the working directory)" in caplog.records[-1].getMessage()


def test_a_servers_own_command_is_not_the_apps_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``uvicorn app:app`` runs the environment's bin/uvicorn as __main__:
    that folder is never searched; ``python app.py``'s folder is."""
    import types

    from navai_mw.backend_functions.loading import _script_folder

    main = types.ModuleType("__main__")
    main.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", main)
    for command in (
        Path(sys.prefix) / "bin" / "uvicorn",
        Path(sys.base_prefix) / "bin" / "gunicorn",
    ):
        main.__file__ = str(command)
        assert _script_folder() is None
    main.__file__ = str(tmp_path / "app.py")
    assert _script_folder() == str(tmp_path)
