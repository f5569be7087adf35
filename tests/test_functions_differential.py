"""Our function loader against the reference's, on the same module trees.

``tests/js`` pins ``@navai/voice-backend`` 0.1.3 (``scripts/test`` runs
``npm ci`` there); ``tests/js/load_functions.mjs`` runs its
``resolveNavaiBackendRuntimeConfig`` and ``loadNavaiFunctions`` under Node.
Each case describes a tree of modules once (``tests/function_layouts.py``),
writes it as ES modules for Node and as Python modules for
``navai_mw.functions.load_navai_functions``, and compares what the two
loaders found: names and their order, descriptions, sources and warnings,
with ``.js`` read as ``.py``. A "Failed to load <path>:" warning is compared up
to the colon, since the error messages are each language's own.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .function_layouts import Class, Layout, Module, write_both
from .test_frontend_client import node_with

JS = Path(__file__).parent / "js"
PINNED = "0.1.3"
FN = "src/ai/functions-modules"


def _node() -> str:
    return node_with("voice-backend", PINNED)


@dataclass(frozen=True)
class Case:
    layout: Layout
    functions_folders: str | None = None
    agents_folders: str | None = None
    # Whether both loaders rightly find nothing and say nothing.
    empty: bool = False


@dataclass(frozen=True)
class Observed:
    """What a loader found: (name, description, source) triples and warnings."""

    items: list[tuple[str, str, str]]
    warnings: list[str]

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.items]


_JS_EXTENSION = re.compile(r"\.js\b")
_FAILED = "[navai] Failed to load "


def as_python(text: str) -> str:
    """A JavaScript module path (or a text holding some) spelled for Python."""
    return _JS_EXTENSION.sub(".py", text)


def comparable_warning(warning: str) -> str:
    """A warning without the part that is each language's own: the error
    message after "Failed to load <path>:", and the folders ours says it
    searched."""
    if warning.startswith(_FAILED):
        colon = warning.find(": ", len(_FAILED))
        if colon != -1:
            return warning[: colon + 1]
    return warning.split(" Searched ", 1)[0]


# Where nothing matched the default folder, the reference says it "falls
# back" to that same folder; ours says what it searched instead.
_SELF_FALLBACK = (
    f'[navai] NAVAI_FUNCTIONS_FOLDERS did not match any module: "{FN}". Falling back to "{FN}".'
)
_NOTHING_FOUND = "[navai] No function module found."


def comparable_warnings(warnings: list[str], *, ours: bool) -> list[str]:
    dropped = _NOTHING_FOUND if ours else _SELF_FALLBACK
    return [comparable_warning(warning) for warning in warnings if not warning.startswith(dropped)]


def run_reference(base_dir: Path, case: Case) -> Observed:
    """The reference loader under Node on the ``.js`` tree at ``base_dir``."""
    options: dict[str, str] = {}
    if case.functions_folders is not None:
        options["functionsFolders"] = case.functions_folders
    if case.agents_folders is not None:
        options["agentsFolders"] = case.agents_folders
    done = subprocess.run(
        [_node(), "load_functions.mjs", str(base_dir), json.dumps(options)],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return Observed(
        items=[(item["name"], item["description"], item["source"]) for item in result["items"]],
        warnings=list(result["warnings"]),
    )


def run_ours(base_dir: Path, case: Case) -> Observed:
    """``navai_mw.functions.load_navai_functions`` on the ``.py`` tree at
    ``base_dir``, given the same options with ``.js`` file tokens as ``.py``."""
    from navai_mw.functions import load_navai_functions

    folders = None if case.functions_folders is None else as_python(case.functions_folders)
    registry = load_navai_functions(
        base_dir=base_dir,
        functions_folders=folders,
        agents_folders=case.agents_folders,
        env={},
    )
    return Observed(
        items=[(item.name, item.description, item.source) for item in registry.ordered],
        warnings=list(registry.warnings),
    )


def one(path: str, *functions: str, **more: Any) -> Module:
    return Module(path, functions=functions, **more)


CASES = [
    pytest.param(
        Case(
            Layout(
                (
                    one(f"{FN}/weather", "getWeather", "add_item", "HTTPHelpers"),
                    one(f"{FN}/nested/deeper/tool", "deepTool"),
                    one("src/other/outside", "outside"),
                    one("src/ai/functions-modules-extra/near", "nearMiss"),
                ),
                extra=(
                    (f"{FN}/README.md", "# not a module\n"),
                    (f"{FN}/notes.txt", "not a module\n"),
                    (f"{FN}/types.d.ts", "export declare function x(): void;\n"),
                ),
            )
        ),
        id="default-folder-recursive-others-ignored",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one(
                        f"{FN}/names",
                        "getWeather",
                        "add_item",
                        "HTTPHelpers",
                        "parseJSONBody",
                        "getURLForID",
                        "v2Endpoint",
                        "already_snake",
                        "Mixed_Case__Name",
                        "trailing_",
                        "x",
                        "ABC",
                        "aB1cD2",
                    ),
                )
            ),
            functions_folders=FN,
        ),
        id="camel-case-to-snake-and-export-order",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one(f"{FN}/alpha", "getWeather"),
                    one(f"{FN}/beta", "get_weather"),
                )
            )
        ),
        id="duplicate-in-two-files-renamed-2",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one(f"{FN}/one", "lookup"),
                    one(f"{FN}/three", "lookup"),
                    one(f"{FN}/two", "lookup"),
                )
            )
        ),
        id="duplicate-in-three-files-renamed-2-and-3",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one(f"{FN}/a", "lookup_2"),
                    one(f"{FN}/b", "lookup"),
                    one(f"{FN}/c", "lookup", "Cart_add"),
                    Module(f"{FN}/d", classes=(Class("Cart", ("add",)),)),
                )
            )
        ),
        id="duplicate-skips-a-taken-suffix-and-meets-class-methods",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    Module(
                        f"{FN}/shop",
                        functions=("checkout",),
                        classes=(
                            Class("Cart", ("remove", "add", "getTotal"), constructor=True),
                            Class("Inventory", ("count",)),
                        ),
                    ),
                )
            )
        ),
        id="classes-with-methods-in-definition-order",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    Module(f"{FN}/empty", classes=(Class("Empty"),)),
                    Module(
                        f"{FN}/mixed",
                        functions=("ping",),
                        classes=(Class("OnlyConstructor", constructor=True),),
                    ),
                )
            )
        ),
        id="class-without-methods",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    Module(
                        f"{FN}/family",
                        hidden_classes=(Class("Base", ("inherited",)),),
                        classes=(
                            Class("Sub", ("extra",), constructor=True, base="Base"),
                            Class("Parent", ("ping",)),
                            Class("Child", ("pong",), base="Parent"),
                            Class("Bare", base="Parent"),
                        ),
                    ),
                )
            )
        ),
        id="class-inheritance-own-methods-only",
    ),
    pytest.param(
        Case(Layout((Module(f"{FN}/nothing"), one(f"{FN}/something", "something")))),
        id="module-without-exports",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    Module(f"{FN}/limits", constants=("LIMIT", "MAX_ITEMS")),
                    Module(f"{FN}/mixed", functions=("useLimit",), constants=("LIMIT",)),
                )
            )
        ),
        id="module-without-callable-exports",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one(f"{FN}/a_first", "first"),
                    one(f"{FN}/broken", "neverSeen", fails="boom"),
                    one(f"{FN}/later", "later"),
                )
            )
        ),
        id="module-fails-to-load",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    Module(
                        f"{FN}/helpers",
                        functions=("visible",),
                        hidden_functions=("helper",),
                        hidden_classes=(Class("Secret", ("reveal",)),),
                        constants=("LIMIT",),
                        imports_helper=True,
                    ),
                    one(f"{FN}/imports", "usesJoin", imports_helper=True),
                )
            )
        ),
        id="hidden-and-imported-helpers-are-not-exports",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one(f"{FN}/kept", "kept"),
                    one(f"{FN}/node_modules/pkg/index", "fromNodeModules"),
                    one(f"{FN}/dist/built", "fromDist"),
                    one(f"{FN}/.hidden/secret", "fromDotFolder"),
                    one(f"{FN}/.dotfile", "fromDotFile"),
                    one(f"{FN}/sub/.cache/deep/x", "fromDeepDotFolder"),
                    one(f"{FN}/sub/dist/y", "fromDeepDist"),
                    one(f"{FN}/sub/node_modules/z", "fromDeepNodeModules"),
                    one(f"{FN}/sub/ok", "subOk"),
                    one(f"{FN}/dist", "fileNamedDist"),
                    one(f"{FN}/node_modules_x/ok", "folderNamedLikeNodeModules"),
                    one(f"{FN}/distribution/ok", "folderStartingWithDist"),
                    one(f"{FN}/not.hidden/ok", "folderWithInnerDot"),
                )
            )
        ),
        id="excluded-node-modules-dist-and-dot-folders",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one("src/node_modules/lib/x", "underSrcNodeModules"),
                    one("src/dist/y", "underSrcDist"),
                    one("src/.config/z", "underSrcDotFolder"),
                    one("src/visible", "visible"),
                )
            ),
            functions_folders="src/...",
        ),
        id="excluded-folders-right-under-src",
    ),
    pytest.param(
        Case(
            Layout(
                tuple(
                    one(f"{FN}/{stem}", function)
                    for stem, function in [
                        ("apple", "fromApple"),
                        ("HTTPHelpers", "fromHttpHelpers"),
                        ("banana", "fromBanana"),
                        ("a", "fromA"),
                        ("a-b", "fromADashB"),
                        ("a_b", "fromAUnderscoreB"),
                        ("a.b", "fromADotB"),
                        ("a/inner", "fromAFolder"),
                        ("ab", "fromAb"),
                        ("Zeta", "fromZeta"),
                        ("zeta2", "fromZeta2"),
                        ("10x", "from10x"),
                        ("9x", "from9x"),
                        ("_under", "fromUnder"),
                        ("eclair", "fromEclair"),
                        ("\u00e9clair", "fromEclairAccent"),
                        ("ezra", "fromEzra"),
                        ("Banana2", "fromBanana2"),
                    ]
                )
            )
        ),
        id="module-order-is-locale-compare",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one("src/ai/agents/sales/tools/quote", "quote"),
                    one("src/ai/agents/support/tools/ticket", "ticket"),
                    one("src/ai/agents/support/tools/deep/nested", "nestedTool"),
                    one("src/ai/agents/support/other", "notATool"),
                    one("src/ai/tools/direct", "directTool"),
                )
            ),
            functions_folders="src/ai/**/tools/*",
        ),
        id="glob-double-star-and-star",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one("src/ai/top", "top"),
                    one("src/ai/one/first", "first"),
                    one("src/ai/one/two/second", "second"),
                    one("src/other/elsewhere", "elsewhere"),
                )
            ),
            functions_folders="ai/**/*.js",
        ),
        id="glob-with-file-extension-without-src",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one("src/ai/top", "top"),
                    one("src/ai/one/two/deep", "deep"),
                    one("src/aix/sibling", "sibling"),
                    one("src/other/elsewhere", "elsewhere"),
                )
            ),
            functions_folders="src/ai/...",
        ),
        id="dots-token-recursive",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one("src/tools/a", "toolA"),
                    one("src/tools/b/c", "toolC"),
                    one("src/ai/not", "notMe"),
                )
            ),
            functions_folders="tools/...",
        ),
        id="dots-token-without-src",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one(f"{FN}/weather", "getWeather"),
                    one(f"{FN}/other", "other"),
                )
            ),
            functions_folders=f"{FN}/weather.js",
        ),
        id="single-file-token",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one(f"{FN}/weather", "getWeather"),
                    one(f"{FN}/other", "other"),
                )
            ),
            functions_folders="./ai/functions-modules/weather.js",
        ),
        id="single-file-token-without-src",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one("src/tools/a", "toolA"),
                    one("src/tools/b/c/d", "toolD"),
                    one("src/toolsmith/e", "notMe"),
                )
            ),
            functions_folders="src/tools",
        ),
        id="folder-token-recursive-not-a-prefix",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one("src/tools/a", "toolA"),
                    one("src/tools/b/c", "toolC"),
                    one("src/other/x", "notMe"),
                )
            ),
            functions_folders="/tools/",
        ),
        id="folder-token-without-src-slashes-trimmed",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one(f"{FN}/base", "base"),
                    one("src/tools/a", "toolA"),
                    one("src/tools/deep/b", "toolB"),
                    one("src/extra/one", "extraOne"),
                    one("src/extra/two", "extraTwo"),
                    one("src/ai/agents/sales/tools/quote", "quote"),
                )
            ),
            functions_folders=(
                f" {FN} ,tools/..., src/extra/one.js,, src/ai/**/tools/*, src/tools/a.js "
            ),
        ),
        id="multiple-tokens-overlapping",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one(f"{FN}/fallback", "fromFallback"),
                    one("src/elsewhere/x", "notMe"),
                )
            ),
            functions_folders="src/nowhere, nowhere/...",
        ),
        id="tokens-match-nothing-fall-back-to-default",
    ),
    pytest.param(
        Case(
            Layout((one(f"{FN}/fallback", "fromFallback"),)),
            functions_folders="src/missing.js",
        ),
        id="single-file-token-matches-nothing",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one(f"{FN}/kept", "kept"),
                    one(f"{FN}/dist/built", "fromDist"),
                )
            ),
            functions_folders=f"{FN}/dist/*",
        ),
        id="glob-into-excluded-folder-falls-back",
    ),
    pytest.param(
        Case(Layout((one("src/elsewhere/x", "notMe"),)), functions_folders="src/nowhere"),
        id="fallback-finds-nothing-either",
    ),
    pytest.param(
        Case(
            Layout((one(f"{FN}/base", "base"), one("src/tools/a", "toolA"))),
            functions_folders=" , ,",
        ),
        id="only-commas-means-default-without-warning",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one("src/ai/agents/shared", "shared"),
                    one("src/ai/agents/support/help", "help"),
                    one("src/ai/agents/support/deep/more", "more"),
                    one("src/ai/agents/sales/quote", "quote"),
                    one("src/ai/agents/billing/invoice", "invoice"),
                    one("src/ai/agents/supportive/x", "notAnAgent"),
                )
            ),
            functions_folders="src/ai/agents",
            agents_folders=" support , /sales/ ,, ",
        ),
        id="agents-folders-filter-first-segment",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one("src/ai/agents/shared", "shared"),
                    one("src/ai/agents/support/help", "help"),
                    one("src/ai/agents/billing/tools/invoice", "invoice"),
                    one("src/single/file", "singleFile"),
                )
            ),
            functions_folders="src/ai/agents/..., src/ai/**/tools/*, src/single/file.js",
            agents_folders="support",
        ),
        id="agents-folders-ignored-by-dots-globs-and-files",
    ),
    pytest.param(
        Case(
            Layout(
                (
                    one(f"{FN}/direct", "direct"),
                    one(f"{FN}/support/help", "help"),
                    one(f"{FN}/billing/invoice", "invoice"),
                )
            ),
            functions_folders="src/ai/agents",
            agents_folders="support",
        ),
        id="agents-folders-apply-to-the-fallback",
    ),
    pytest.param(
        Case(
            Layout((one(f"{FN}/support/help", "help"),)),
            agents_folders="su/pport",
        ),
        id="agents-folder-slashes-removed",
    ),
    pytest.param(
        Case(
            Layout(
                tuple(
                    one(f"{FN}/{stem}", f"from_{stem}")
                    for stem in ("json", "os", "typing", "test", "functions", "conftest")
                )
            )
        ),
        id="module-files-named-like-stdlib",
    ),
    pytest.param(Case(Layout(())), id="empty-tree-default-folder-falls-back-to-itself"),
    pytest.param(Case(Layout(()), functions_folders=",", empty=True), id="empty-tree-only-commas"),
]


@pytest.mark.parametrize("case", CASES)
def test_loader_matches_reference(case: Case, tmp_path: Path) -> None:
    js_root, py_root = tmp_path / "js", tmp_path / "py"
    write_both(case.layout, js_root, py_root)
    reference = run_reference(js_root, case)
    if not case.empty:
        assert reference.items or reference.warnings, "the case exercises nothing"
    ours = run_ours(py_root, case)

    assert ours.names == reference.names
    assert ours.items == [
        (name, description, as_python(source)) for name, description, source in reference.items
    ]
    assert comparable_warnings(ours.warnings, ours=True) == comparable_warnings(
        [as_python(w) for w in reference.warnings], ours=False
    )


def test_reference_harness(tmp_path: Path) -> None:
    """The Node side on a tiny tree gives what the reference's source says."""
    layout = Layout(
        (
            one(f"{FN}/b", "getWeather"),
            Module(f"{FN}/a", classes=(Class("Cart", ("remove", "add")),)),
            one(f"{FN}/c", "get_weather", fails="boom"),
            one(f"{FN}/d", "get_weather"),
            one(f"{FN}/dist/e", "skipped"),
            Module(f"{FN}/f", constants=("LIMIT",)),
        )
    )
    write_both(layout, tmp_path / "js", tmp_path / "py")
    reference = run_reference(tmp_path / "js", Case(layout))
    assert reference.items == [
        ("cart_remove", "Call class method Cart.remove().", f"{FN}/a.js#Cart.remove"),
        ("cart_add", "Call class method Cart.add().", f"{FN}/a.js#Cart.add"),
        ("get_weather", "Call exported function getWeather.", f"{FN}/b.js#getWeather"),
        ("get_weather_2", "Call exported function get_weather.", f"{FN}/d.js#get_weather"),
    ]
    assert reference.warnings == [
        f"[navai] Failed to load {FN}/c.js: boom",
        '[navai] Renamed duplicated function "get_weather" to "get_weather_2".',
        f"[navai] Ignored {FN}/f.js: module has no callable exports.",
    ]


def test_reference_orders_modules_by_locale_compare(tmp_path: Path) -> None:
    """ICU's order, not code-unit order: case and accents count last,
    punctuation before digits before letters."""
    stems = ["zeta2", "Zeta", "banana", "HTTPHelpers", "apple", "a_b", "a-b", "a.b", "10x", "9x"]
    layout = Layout(tuple(one(f"{FN}/{stem}", f"f{index}") for index, stem in enumerate(stems)))
    write_both(layout, tmp_path / "js", tmp_path / "py")
    reference = run_reference(tmp_path / "js", Case(layout))
    order = [source.split("/")[-1].split(".js#")[0] for _, _, source in reference.items]
    assert order == [
        "10x",
        "9x",
        "a_b",
        "a-b",
        "a.b",
        "apple",
        "banana",
        "HTTPHelpers",
        "Zeta",
        "zeta2",
    ]
