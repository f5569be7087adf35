"""The ``navai-mw`` command's parser and dispatch (the commands are
described in :mod:`navai_mw.cli`)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from typing import Final

from ..backend_functions.loading import load_navai_functions
from ..endpoint.route_table import DEFAULT_PATH
from .banner import _FAILED, PROG, _describe_functions, _fail
from .serve import DEFAULT_HOST, DEFAULT_PORT, _port, fake_upstream, run_server

__all__ = [
    "main",
]

logger = logging.getLogger("navai_mw")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has reported
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _run(args)
    except KeyboardInterrupt:  # Ctrl-C before the server took over the signals
        return 0


# -- arguments ------------------------------------------------------------------


def _workers(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"expected a number of workers 1..64, got {text!r}")
    return int(text)


def _path(text: str) -> str:
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"must start with '/', got {text!r}")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Mint OpenAI Realtime client secrets for voice front ends."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary in (
        ("serve", "serve the token endpoint, configured from the environment"),
        ("demo", "the same, against an embedded fake OpenAI: offline, fake tokens"),
    ):
        command = commands.add_parser(name, help=summary, description=summary)
        command.add_argument("--host", default=DEFAULT_HOST, help="default: %(default)s")
        command.add_argument(
            "--port", type=_port, help=f"0 picks a free port (default: $PORT, else {DEFAULT_PORT})"
        )
        command.add_argument(
            "--path", type=_path, default=DEFAULT_PATH, help="token path (default: %(default)s)"
        )
        command.add_argument(
            "--cors-origin",
            action="append",
            dest="cors_origins",
            metavar="ORIGIN",
            help="browser origin allowed to call from elsewhere ('*' for any); repeat it "
            "or separate with commas (default: $NAVAI_CORS_ORIGIN, else CORS off)",
        )
        if name == "serve":
            command.add_argument(
                "--page",
                action="store_true",
                help="also serve the voice page at / (the demo always does)",
            )
            command.add_argument(
                "--workers",
                type=_workers,
                default=1,
                help="uvicorn worker processes (default: %(default)s); with more than one, "
                "rate limits, call owners and time caps need a shared Redis",
            )
            command.add_argument(
                "--metrics-port",
                type=_port,
                default=None,
                help="serve Prometheus metrics at /metrics on this port (on --host; every "
                "worker's summed): needs the metrics extra",
            )
        if name == "demo":
            command.add_argument(
                "--speech",
                action="store_true",
                help="voice answers with an embedded fake ElevenLabs (the session then "
                "answers in text, as with NAVAI_TTS_PROVIDER=elevenlabs)",
            )
    summary = (
        "serve a fake OpenAI and a fake ElevenLabs on loopback, and print the "
        "OPENAI_BASE_URL and ELEVENLABS_BASE_URL to export for your own app"
    )
    fakes = commands.add_parser("fake-upstream", help=summary, description=summary)
    fakes.add_argument("--host", default=DEFAULT_HOST, help="default: %(default)s")
    fakes.add_argument(
        "--port",
        type=_port,
        default=0,
        help="the fake OpenAI's port (default: 0, a free one; the fake ElevenLabs "
        "always gets a free one)",
    )
    fakes.add_argument(
        "--api-key",
        metavar="KEY",
        help="the only key the fake OpenAI accepts, others get its 401 "
        "(default: any key, so OPENAI_API_KEY=sk-anything works)",
    )
    summary = "list the backend functions serve would load here, and what failed to load"
    listing = commands.add_parser("functions", help=summary, description=summary)
    listing.add_argument(
        "--base-dir",
        help="where to look (default: $NAVAI_FUNCTIONS_BASE_DIR, else the working directory)",
    )
    listing.add_argument(
        "--folders",
        help="comma-separated folders, globs or files (default: $NAVAI_FUNCTIONS_FOLDERS, "
        "else src/ai/functions-modules)",
    )
    listing.add_argument("--agents", help="agent folders (default: $NAVAI_AGENTS_FOLDERS)")
    listing.add_argument("--json", action="store_true", help="print JSON, as the route answers")
    return parser


# -- running ----------------------------------------------------------------------


UVICORN_MISSING: Final = (
    "uvicorn is not installed; install it with: pip install -e '.[server]' "
    "(in a clone of navai-mw) or pip install 'navai_mw-<version>-py3-none-any.whl[server]' "
    "(a built wheel)"
)


def _list_functions(args: argparse.Namespace) -> int:
    """``navai-mw functions``: status 1 when a module failed to load."""
    registry = load_navai_functions(
        base_dir=args.base_dir, functions_folders=args.folders, agents_folders=args.agents
    )
    if args.json:
        items = [
            {"name": item.name, "description": item.description, "source": item.source}
            for item in registry.ordered
        ]
        print(json.dumps({"items": items, "warnings": list(registry.warnings)}, indent=2))
    else:
        print(_describe_functions(registry))
    return 1 if any(warning.startswith(_FAILED) for warning in registry.warnings) else 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "functions":
        return _list_functions(args)
    try:
        import uvicorn  # noqa: F401 - the server extra, asked for before anything starts
    except ImportError:
        return _fail(UVICORN_MISSING)
    if args.command == "fake-upstream":
        return fake_upstream(args)
    return run_server(args)
