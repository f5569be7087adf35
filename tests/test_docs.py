"""Every code sample in docs/ runs, so the documentation cannot go stale.

* ```python blocks run as scripts, with the environment pointing the
  middleware at the fake upstream served on loopback (``OPENAI_API_KEY``,
  ``OPENAI_BASE_URL``), as a deployment would point it at OpenAI;
* ```python blocks that define ``test_`` functions run under pytest;
* ```pycon blocks run as doctests, one session per page;
* blocks that only include a file (``--8<-- "examples/..."``) are checked to
  include an existing example; the examples have tests of their own.

A block may opt out with ``<!-- not-tested -->`` on the line above it, for a
fragment that cannot run alone; the count of those is kept small.
"""

from __future__ import annotations

import doctest
import io
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from navai_mw.testing import FakeOpenAIRealtime

from .conftest import CANARY_KEY

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
NOT_TESTED = "<!-- not-tested -->"
MAX_NOT_TESTED = 3
_OPEN = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)\s*$")
_INCLUDE = re.compile(r'^--8<-- "(?P<path>[^"]+)"$')


@attrs.frozen
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    not_tested: bool

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def _blocks(path: Path) -> Iterator[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = _OPEN.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, start = opening["indent"], index
        index += 1
        body: list[str] = []
        while lines[index].rstrip() != f"{indent}```":
            body.append(lines[index])
            index += 1
        above = lines[start - 1].strip() if start else ""
        yield Block(
            page=path.name,
            line=start + 1,
            lang=opening["lang"],
            code=textwrap.dedent("\n".join(body)) + "\n",
            not_tested=above == NOT_TESTED,
        )
        index += 1


ALL_BLOCKS = [block for page in sorted(DOCS.glob("*.md")) for block in _blocks(page)]


def _is_include(block: Block) -> bool:
    lines = block.code.strip().splitlines()
    return bool(lines) and all(_INCLUDE.match(line.strip()) for line in lines)


PYTHON = [b for b in ALL_BLOCKS if b.lang == "python" and not b.not_tested and not _is_include(b)]
SCRIPTS = [b for b in PYTHON if not re.search(r"^def test_", b.code, re.M)]
TEST_MODULES = [b for b in PYTHON if b not in SCRIPTS]
INCLUDES = [b for b in ALL_BLOCKS if _is_include(b)]
PYCON_PAGES = sorted({b.page for b in ALL_BLOCKS if b.lang == "pycon"})


@pytest.fixture
def deployed_env(monkeypatch: pytest.MonkeyPatch, served_fake: str) -> None:
    """The environment of a deployment whose OpenAI is the fake on loopback."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "NAVAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_API_KEY", CANARY_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", served_fake)


@pytest.mark.usefixtures("deployed_env")
@pytest.mark.parametrize("block", SCRIPTS, ids=lambda b: b.id)
def test_python_block_runs(
    block: Block, fake: FakeOpenAIRealtime, capsys: pytest.CaptureFixture[str]
) -> None:
    code = compile(block.code, f"docs/{block.id}", "exec")
    exec(code, {"__name__": "__docs__"})  # noqa: S102 -- our own documentation
    assert CANARY_KEY not in capsys.readouterr().out
    if "_from_env()" in block.code and "create_realtime_client_secret" in block.code:
        # A sample that mints with the deployment's settings reached "OpenAI".
        assert fake.requests


@pytest.mark.parametrize("block", TEST_MODULES, ids=lambda b: b.id)
def test_python_test_block_passes(block: Block, tmp_path: Path) -> None:
    module = tmp_path / "test_from_docs.py"
    module.write_text(block.code, encoding="utf-8")
    expected = len(re.findall(r"^def test_", block.code, re.M))
    pytest_command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"]
    result = subprocess.run(
        [*pytest_command, module.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{expected} passed" in result.stdout


@pytest.mark.parametrize("page", PYCON_PAGES)
def test_pycon_blocks_pass_as_doctests(page: str) -> None:
    blocks = [b for b in ALL_BLOCKS if b.page == page and b.lang == "pycon" and not b.not_tested]
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    globs: dict[str, object] = {"__name__": "__docs__"}
    for block in blocks:
        test = parser.get_doctest(block.code, globs, block.id, f"docs/{page}", block.line)
        assert test.examples, f"{block.id}: a pycon block without examples"
        output = io.StringIO()
        runner.run(test, out=output.write, clear_globs=False)
        assert runner.failures == 0, output.getvalue()
        globs = test.globs  # the page is one session: names carry over


@pytest.mark.parametrize("block", INCLUDES, ids=lambda b: b.id)
def test_included_file_is_an_example(block: Block) -> None:
    for line in block.code.strip().splitlines():
        match = _INCLUDE.match(line.strip())
        assert match is not None
        path = ROOT / match["path"]
        assert match["path"].startswith("examples/"), "include tested examples only"
        assert path.is_file(), f"{block.id}: {match['path']} does not exist"


def test_docs_have_runnable_samples() -> None:
    # Guards the extraction itself: a broken parser would test nothing.
    assert len(SCRIPTS) >= 10
    assert TEST_MODULES
    assert PYCON_PAGES
    assert len(INCLUDES) >= 8


def test_few_blocks_opt_out() -> None:
    skipped = [b.id for b in ALL_BLOCKS if b.not_tested]
    assert len(skipped) <= MAX_NOT_TESTED, skipped


def test_the_pages_agree_on_when_navai_answers_500() -> None:
    """The code answers 500 in two cases only, both a backend function's
    failure (tests/test_functions.py): it raises, or returns what JSON
    cannot carry. Every page that speaks of navai's 500s names both."""
    for page in ("index.md", "security.md", "http.md", "functions.md"):
        text = " ".join((DOCS / page).read_text(encoding="utf-8").split())
        assert not re.search(r"the one `?500", text, re.I), page
        claim = re.search(r"only (?:`?500`?s)[^.]*?(?:\.|$)(?:[^.]*\.){0,2}", text)
        assert claim is not None, page
        assert "raises" in claim[0], (page, claim[0])
        assert "JSON cannot carry" in claim[0], (page, claim[0])
