"""What docs/testing.md says about FastAPI's ``TestClient`` under ``-W error``,
checked with httpx2 installed and without it.

tests/test_docs.py runs the page's samples with whatever is installed; here
httpx2 is hidden from a subprocess (``sys.modules["httpx2"] = None``), so
that the advice for an httpx-only install is tested on every machine.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .test_docs import ALL_BLOCKS, TEST_MODULES

PAGE = Path(__file__).resolve().parent.parent / "docs" / "testing.md"
# Starlette's test client, then pytest, in a process where httpx2 cannot be imported.
_WITHOUT_HTTPX2 = "import sys; sys.modules['httpx2'] = None; "
_PYTEST = "import pytest; raise SystemExit(pytest.main(sys.argv[1:]))"
_IMPORT_AT_THE_TOP = """\
from fastapi import FastAPI
from fastapi.testclient import TestClient


def test_the_client_runs() -> None:
    with TestClient(FastAPI()) as client:
        assert client.get("/nope").status_code == 404
"""


def _run(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _pytest_without_httpx2(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(_WITHOUT_HTTPX2 + _PYTEST, "-q", "-p", "no:cacheprovider", *args, cwd=cwd)


def test_the_quoted_warning_is_what_starlette_says_without_httpx2(tmp_path: Path) -> None:
    [quoted] = [
        b.code.strip()
        for b in ALL_BLOCKS
        if b.page == PAGE.name and b.lang == "text" and "DeprecationWarning" in b.code
    ]
    warned = _run(_WITHOUT_HTTPX2 + "import fastapi.testclient", cwd=tmp_path)
    assert warned.returncode == 0
    assert quoted in warned.stderr

    failed = subprocess.run(
        [sys.executable, "-W", "error", "-c", _WITHOUT_HTTPX2 + "import fastapi.testclient"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1] == f"starlette.exceptions.{quoted}"


@pytest.mark.skipif(importlib.util.find_spec("httpx2") is None, reason="httpx2 not installed")
def test_with_httpx2_the_import_is_silent(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import fastapi.testclient"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_the_app_factory_sample_passes_without_httpx2(tmp_path: Path) -> None:
    [block] = [b for b in TEST_MODULES if b.page == PAGE.name and "def create_app" in b.code]
    (tmp_path / "test_sample.py").write_text(block.code, encoding="utf-8")
    result = _pytest_without_httpx2(tmp_path, "-W", "error", "test_sample.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_the_filterwarnings_line_lets_the_import_pass(tmp_path: Path) -> None:
    toml = next(b.code for b in ALL_BLOCKS if b.page == PAGE.name and b.lang == "toml")
    (tmp_path / "pyproject.toml").write_text(toml, encoding="utf-8")
    (tmp_path / "test_sample.py").write_text(_IMPORT_AT_THE_TOP, encoding="utf-8")
    assert _pytest_without_httpx2(tmp_path, "test_sample.py").returncode == 0

    # The command line outranks the file: -W error alone undoes it...
    refused = _pytest_without_httpx2(tmp_path, "-W", "error", "test_sample.py")
    assert refused.returncode == 2  # interrupted: an error during collection
    assert "StarletteDeprecationWarning" in refused.stdout
    # ...and the same filter after it, as the page says, restores it.
    [ignore] = re.findall(r'"(ignore:[^"]+)"', toml)
    restored = _pytest_without_httpx2(tmp_path, "-W", "error", "-W", ignore, "test_sample.py")
    assert restored.returncode == 0, restored.stdout
