"""The ``navai-mw`` command: a standalone NAVAI backend, an offline demo, the
fake upstreams on their own, and a look at the backend functions a folder
holds.

::

    navai-mw serve          # real client secrets; options from the environment
    navai-mw serve --page   # the same, plus the voice page at /
    navai-mw demo           # the whole flow offline, against an embedded fake OpenAI
    navai-mw fake-upstream  # a fake OpenAI and ElevenLabs on loopback, for your own app
    navai-mw functions      # what serve would load from here, and what failed

``serve`` and ``demo`` run uvicorn (the ``server`` extra) with every navai
route (the client secret at ``--path``, the WebRTC relay, the backend
functions, speech) and ``GET /health``, and print where they listen, the
configuration in effect, the functions loaded and a ``curl`` line that mints
a token. The demo serves its own example functions and, with ``--speech``, a
fake ElevenLabs; it ignores every credential in the environment.

The demo (and ``serve --page``) also serves the voice page at ``/``: plain
HTML and JavaScript (``navai_mw/page/``, read with :func:`page_file`) that
sends the microphone over WebRTC through the relay and shows the call's
events. The demo's fake OpenAI answers both client secrets
(:class:`~navai_mw.testing.FakeOpenAIRealtime`) and WebRTC calls
(:class:`~navai_mw.testing.FakeRealtimeWebRTC`, which needs aiortc, the
``webrtc`` extra; without it the demo still mints, and says so).

``fake-upstream`` serves :mod:`navai_mw.testing`'s fakes, nothing else, and
prints two shell lines to paste where your own app (a recipe in
``examples/``, say) will run, so that it mints and speaks offline::

    export OPENAI_BASE_URL=http://127.0.0.1:PORT/v1
    export ELEVENLABS_BASE_URL=http://127.0.0.1:PORT2

The fake OpenAI accepts any API key (``OPENAI_API_KEY=sk-anything``), or
only the one given with ``--api-key``; the fake ElevenLabs accepts any.

Promises:

* the API key is never printed, whatever the configuration;
* a configuration mistake (environment or flags), a port already in use or a
  missing uvicorn is one line on stderr and exit status 2, never a traceback;
* Ctrl-C and SIGTERM shut the server down gracefully (the middleware closes
  its upstream client) and exit with status 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from importlib import resources
from types import FrameType
from typing import Final
from urllib.parse import urlsplit

import attrs

from . import _demo_functions
from ._calls import redis_uri
from ._endpoint import DEFAULT_PATH, Endpoint
from ._env import (
    AZURE_WINS_WARNING,
    get_cors_origins_from_env,
    get_navai_voice_backend_options_from_env,
)
from ._errors import NavaiError
from ._guard import Guard
from ._models import DEFAULT_INSTRUCTIONS, DEFAULT_MODEL, DEFAULT_VOICE, NavaiVoiceBackendOptions
from .asgi import ASGIApp, Message, NavaiASGIMiddleware, Receive, Scope, Send
from .functions import FunctionRegistry, load_navai_functions
from .testing import (
    CLIENT_SECRETS_PATH,
    FakeElevenLabs,
    FakeOpenAIRealtime,
    FakeRealtimeWebRTC,
    serve_asgi,
)

__all__ = ["PAGE_HEADERS", "main", "page_file"]

logger = logging.getLogger("navai_mw")

PROG: Final = "navai-mw"
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 3000
HEALTH_PATH: Final = "/health"
# The demo's fake upstream accepts this key and no other. It is not a secret
# (it opens nothing), but it is still never printed, like any key.
DEMO_API_KEY: Final = "sk-navai-demo-made-up-key"
DEMO_ELEVENLABS_KEY: Final = "xi-navai-demo-made-up-key"
DEMO_VOICE_ID: Final = "demo-voice"
# What the demo drops from the environment: every credential and every
# upstream's address, so that offline means offline (the session's model,
# voice and instructions still apply).
_DEMO_DROPPED_PREFIXES: Final = ("AZURE_",)
_DEMO_DROPPED: Final = frozenset(
    {
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ELEVENLABS_API_KEY",
        "ELEVENLABS_BASE_URL",
        "NAVAI_TTS_PROVIDER",
    }
)
# Instructions can run to paragraphs; the banner shows their start.
_SHOWN_CHARS: Final = 60
_PORT: Final = re.compile(r"[0-9]{1,5}")


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


def _port(text: str) -> int:
    if _PORT.fullmatch(text.strip()) is None or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}")
    return int(text)


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
        "--base-dir", help="where to look (default: $NAVAI_FUNCTIONS_BASE_DIR, else here)"
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


WEBRTC_MISSING: Final = (
    "aiortc is missing, so the voice page's calls get no answer from the fake (client "
    "secrets still work): pip install -e '.[demo]'"
)
UVICORN_MISSING: Final = (
    "uvicorn is not installed; install it with: pip install -e '.[server]' "
    "(in a clone of navai-mw) or pip install 'navai_mw-<version>-py3-none-any.whl[server]' "
    "(a built wheel)"
)


def _fail(message: str) -> int:
    print(f"{PROG}: error: {' '.join(message.splitlines())}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "functions":
        return _list_functions(args)
    try:
        import uvicorn
    except ImportError:
        return _fail(UVICORN_MISSING)
    if args.command == "fake-upstream":
        return _fake_upstream(args)
    demo = args.command == "demo"
    env = dict(os.environ)
    if demo:
        # No real key may leave for a fake, nor be used at all.
        env = {
            name: value
            for name, value in env.items()
            if not name.startswith(_DEMO_DROPPED_PREFIXES) and name not in _DEMO_DROPPED
        }
        env["OPENAI_API_KEY"] = DEMO_API_KEY
        if args.speech:
            env.update(
                NAVAI_TTS_PROVIDER="elevenlabs",
                ELEVENLABS_API_KEY=DEMO_ELEVENLABS_KEY,
                ELEVENLABS_VOICE_ID=DEMO_VOICE_ID,
            )
    try:
        port = args.port if args.port is not None else _port_from_env(env)
        opts = get_navai_voice_backend_options_from_env(env)
        cors = (
            _split_origins(args.cors_origins)
            if args.cors_origins is not None
            else get_cors_origins_from_env(env)
        )
    except (NavaiError, ValueError) as exc:
        return _fail(str(exc))
    # Bound here rather than by uvicorn, so that a busy port is a clear error
    # before anything starts, and port 0 resolves before the banner is printed.
    try:
        listener = _listen(args.host, port)
    except OSError as exc:
        return _fail(f"cannot listen on {args.host}:{port}: {exc.strerror or exc}")

    page = demo or args.page
    with ExitStack() as stack:
        stack.callback(listener.close)
        webrtc = True
        if demo:
            secrets, calls = _demo_fakes()
            webrtc = calls is not None
            upstream = _demo_upstream(secrets, calls)
            # An asyncio loop, which aiortc needs; its lifespan closes the
            # fake's peer connections at the end.
            url = stack.enter_context(serve_asgi(upstream, loop="asyncio", lifespan="on"))
            opts = attrs.evolve(opts, openai_base_url=f"{url}/v1")
            if args.speech:
                voice = FakeElevenLabs(api_key=DEMO_ELEVENLABS_KEY)
                opts = attrs.evolve(opts, elevenlabs_base_url=stack.enter_context(voice.serve()))
            # Both uvicorns log through the same loggers: keep the fake's
            # shutdown, which comes after the token server's, out of sight.
            stack.callback(logging.getLogger("uvicorn.error").setLevel, logging.WARNING)
        try:
            app = NavaiASGIMiddleware(
                _own_routes(args.path, page=page),
                opts,
                path=args.path,
                cors_origins=cors,
                functions=[_demo_functions] if demo else None,
            )
        except (NavaiError, ValueError) as exc:
            return _fail(str(exc))
        host, bound_port = listener.getsockname()[:2]
        endpoint = app.endpoint
        print(
            _banner(
                host,
                bound_port,
                args.path,
                opts,
                cors,
                endpoint.guard,
                endpoint.functions,
                demo=demo,
                page=page,
                webrtc=webrtc,
                routes={route.name: route.path for route in endpoint.routes},
            ),
            flush=True,
        )
        if _unguarded(opts, app.endpoint.guard, demo=demo):
            logger.warning("navai-mw: %s", UNGUARDED_WARNING)
        workers = getattr(args, "workers", 1)
        if workers > 1:
            for warning in per_process_state(endpoint):
                logger.warning("navai-mw: %s workers: %s", workers, warning)
            return _run_workers(args, listener, host, bound_port, cors, page, workers)
        # uvicorn would rewrite the client address from X-Forwarded-For for
        # loopback peers; NAVAI_TRUSTED_PROXIES decides that here instead.
        config = uvicorn.Config(app, host=host, port=bound_port, lifespan="on", proxy_headers=False)
        server = uvicorn.Server(config)
        # uvicorn shuts down gracefully on Ctrl-C or SIGTERM, then re-raises
        # the signal: the KeyboardInterrupt that comes out is the end, not an error.
        with _sigterm_interrupts(), suppress(KeyboardInterrupt):
            server.run(sockets=[listener])
    return 0 if server.started else 1


_WORKER_SPEC: Final = "NAVAI_CLI_WORKER"


def per_process_state(endpoint: Endpoint) -> list[str]:
    """What would be wrong with several worker processes and no shared
    Redis: each worker would count, own and cap on its own."""
    shared = redis_uri(endpoint.guard.store_uri) is not None
    warnings = []
    if endpoint.guard.limits and not shared:
        warnings.append(
            "rate limits count per process on memory:// (each worker allows the full "
            "limit); set NAVAI_RATE_LIMIT_STORAGE=redis://..."
        )
    relays = {route.name for route in endpoint.routes} & {"calls", "live"}
    if relays and not shared:
        warnings.append(
            "relayed calls' owners and time caps live in one process (a DELETE reaching "
            "another worker is a 404); set NAVAI_RATE_LIMIT_STORAGE=redis://..."
        )
    return warnings


def _run_workers(
    args: argparse.Namespace,
    listener: socket.socket,
    host: str,
    port: int,
    cors: Sequence[str] | None,
    page: bool,
    workers: int,
) -> int:
    """uvicorn's worker processes, each building the same app (options from
    the same environment, the flags passed along)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    os.environ[_WORKER_SPEC] = json.dumps({"path": args.path, "cors": cors, "page": page})
    config = uvicorn.Config(
        "navai_mw.cli:worker_app",
        factory=True,
        host=host,
        port=port,
        lifespan="on",
        proxy_headers=False,
        workers=workers,
    )
    # The supervisor answers Ctrl-C and SIGTERM itself: it stops every
    # worker gracefully, then returns.
    Multiprocess(config, sockets=[listener]).run()
    return 0


def worker_app() -> NavaiASGIMiddleware:
    """One worker's app, for ``navai-mw serve --workers N`` (uvicorn calls it
    in each worker process)."""
    spec = json.loads(os.environ[_WORKER_SPEC])
    return NavaiASGIMiddleware(
        _own_routes(spec["path"], page=spec["page"]),
        get_navai_voice_backend_options_from_env(),
        path=spec["path"],
        cors_origins=spec["cors"],
    )


def _fake_upstream(args: argparse.Namespace) -> int:
    """``navai-mw fake-upstream``: the fakes, until Ctrl-C or SIGTERM."""
    try:  # a busy port or a bad host, told apart before any server thread starts
        _listen(args.host, args.port).close()
    except OSError as exc:
        return _fail(f"cannot listen on {args.host}:{args.port}: {_reason(exc)}")
    openai = FakeOpenAIRealtime(api_key=args.api_key)
    elevenlabs = FakeElevenLabs()
    with ExitStack() as stack:
        # SIGTERM ends it as Ctrl-C does, from here on: also while starting.
        # The fakes serve from threads, so Ctrl-C is ours to catch: also
        # when it was started with SIGINT ignored.
        stack.enter_context(_sigterm_interrupts(signal.SIGINT))
        try:
            openai_url = stack.enter_context(openai.serve(args.host, args.port))
        except (OSError, RuntimeError) as exc:
            return _fail(f"cannot listen on {args.host}:{args.port}: {_reason(exc)}")
        try:
            elevenlabs_url = stack.enter_context(elevenlabs.serve(args.host, 0))
        except (OSError, RuntimeError) as exc:
            return _fail(f"cannot listen on {args.host}:0: {_reason(exc)}")
        keys = (
            "the fake OpenAI accepts only the key given with --api-key"
            if args.api_key is not None
            else "any API key works (OPENAI_API_KEY=sk-anything)"
        )
        print(
            f"export OPENAI_BASE_URL={shlex.quote(_local_url(openai_url))}\n"
            f"export ELEVENLABS_BASE_URL={shlex.quote(_local_url(elevenlabs_url))}\n"
            f"# {PROG} fake-upstream: a fake OpenAI and a fake ElevenLabs, offline; export "
            f"the lines above where your app runs; {keys}. Ctrl-C stops them.",
            flush=True,
        )
        with suppress(KeyboardInterrupt):
            while True:  # uvicorn serves from threads; here only the signals matter
                time.sleep(3600)
    return 0


def _demo_fakes() -> tuple[FakeOpenAIRealtime, FakeRealtimeWebRTC | None]:
    """The demo's fakes; no WebRTC one without aiortc (the ``webrtc`` extra)."""
    secrets = FakeOpenAIRealtime(api_key=DEMO_API_KEY)
    try:
        # Any key: the relay sends the demo's, a browser never reaches it.
        return secrets, FakeRealtimeWebRTC()
    except ImportError:
        return secrets, None


def _demo_upstream(secrets: FakeOpenAIRealtime, webrtc: FakeRealtimeWebRTC | None) -> ASGIApp:
    """The demo's fake OpenAI, one ASGI app: client secrets from ``secrets``,
    the rest (WebRTC calls, GPT-Live sessions, hangups) from ``webrtc``. Serve
    it on an asyncio loop (aiortc needs one), with its lifespan."""
    if webrtc is None:
        return secrets

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/") == CLIENT_SECRETS_PATH:
            await secrets(scope, receive, send)
        else:  # the lifespan too: at shutdown it closes every peer connection
            await webrtc(scope, receive, send)

    return app


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def _local_url(url: str) -> str:
    """``url`` with an address a client on this machine can reach (for 0.0.0.0)."""
    parts = urlsplit(url)
    return _origin(parts.hostname or "", parts.port or 0, local=True) + parts.path


def _port_from_env(env: Mapping[str, str]) -> int:
    raw = env.get("PORT", "").strip()
    if not raw:
        return DEFAULT_PORT
    try:
        return _port(raw)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"PORT: {exc}") from None


def _split_origins(values: Sequence[str]) -> list[str]:
    return [origin.strip() for value in values for origin in value.split(",") if origin.strip()]


def _listen(host: str, port: int) -> socket.socket:
    # socket.create_server, but with errors that read well on one line.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        if os.name == "posix":  # elsewhere SO_REUSEADDR would share a busy port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_interrupts(*others: signal.Signals) -> Iterator[None]:
    # uvicorn catches SIGTERM, shuts down gracefully, then raises the signal
    # again for whatever handler was there before. Make that handler a
    # KeyboardInterrupt, which the caller ends quietly, so that `kill` and
    # container stops exit with status 0 instead of death by signal. The
    # ``others`` interrupt too, whatever their inherited handling (a script's
    # background job starts with SIGINT ignored).
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (main() run in a test thread)
        return
    taken = (signal.SIGTERM, *others)
    previous = {signum: signal.signal(signum, _interrupt) for signum in taken}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


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


_FAILED: Final = "[navai] Failed to load "


def _describe_functions(registry: FunctionRegistry) -> str:
    count = len(registry.ordered)
    lines = [f"{count} backend function{'' if count == 1 else 's'}"]
    lines += [
        f"  {item.name:<24} {_short(item.description)}  ({item.source})"
        for item in registry.ordered
    ]
    if registry.warnings:
        lines += ["", "warnings:", *(f"  {warning}" for warning in registry.warnings)]
    return "\n".join(lines)


def _functions_banner(base: str, registry: FunctionRegistry) -> str:
    return "\n".join(
        [
            f"Backend functions (GET {base}/navai/functions, POST {base}/navai/functions/execute):",
            *(f"  {line}" for line in _describe_functions(registry).splitlines()),
            "",
        ]
    )


# -- the voice page ------------------------------------------------------------------

# Where each of the page's files is served, its name in navai_mw/page/ and its type.
_PAGE_FILES: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/voice.js": ("voice.js", "text/javascript; charset=utf-8"),
}
# The page loads its own script and calls this origin only: nothing else.
PAGE_HEADERS: Final = (
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
        "connect-src 'self'; media-src 'self' blob: mediastream:; img-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-cache"),
)


def page_file(path: str) -> tuple[str, bytes] | None:
    """The voice page's file served at ``path``: its content type and
    bytes, for ``/`` (the page) and ``/voice.js`` (its script); None for
    any other path. Serve these two from your own app (same origin as the
    navai routes) to offer the page there; they are the package's files in
    ``navai_mw/page/``. Send :data:`PAGE_HEADERS` with them if you can."""
    entry = _PAGE_FILES.get(path)
    if entry is None:
        return None
    name, content_type = entry
    return content_type, resources.files(__package__).joinpath("page").joinpath(name).read_bytes()


# -- the server's own routes ---------------------------------------------------------


def _own_routes(token_path: str, *, page: bool = False) -> ASGIApp:
    """``GET /health``, the voice page when ``page``, and JSON errors for
    everything else the middleware passes on."""
    files: dict[str, tuple[str, bytes]] = {}
    for path in _PAGE_FILES if page else ():
        file = page_file(path)
        if file is not None:
            files[path] = file

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1000})
        elif scope["path"] in files:
            await _page(scope, send, files[scope["path"]])
        elif scope["path"] != HEALTH_PATH:
            await _json(send, 404, {"error": f"Not found. Mint tokens with POST {token_path}."})
        elif scope["method"] != "GET":
            await _json(send, 405, {"error": "Method not allowed. Use GET."}, allow="GET")
        else:
            await _json(send, 200, {"ok": True})

    return app


async def _page(scope: Scope, send: Send, file: tuple[str, bytes]) -> None:
    if scope["method"] not in ("GET", "HEAD"):
        await _json(send, 405, {"error": "Method not allowed. Use GET."}, allow="GET, HEAD")
        return
    content_type, body = file
    headers = [
        ("content-type", content_type),
        ("content-length", str(len(body))),
        *PAGE_HEADERS,
    ]
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(name.encode(), value.encode()) for name, value in headers],
        }
    )
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


async def _lifespan(receive: Receive, send: Send) -> None:
    # Nothing to set up; answering at all lets the middleware close its
    # upstream client when the server shuts down.
    while True:
        message: Message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _json(send: Send, status: int, payload: object, **headers: str) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"cache-control", b"no-store"),
                *((name.encode(), value.encode()) for name, value in headers.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- what is printed ------------------------------------------------------------------


def _origin(host: str, port: int, *, local: bool) -> str:
    # `local` gives an address a client on this machine can use, also when
    # the server listens on every interface.
    if local and host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif local and host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _key_policy(opts: NavaiVoiceBackendOptions, *, demo: bool) -> str:
    if opts.uses_azure:
        how = "api-key" if opts.azure_api_key is not None else "an Entra ID token provider"
        return f"Azure OpenAI with {how}; keys from requests: never sent to Azure"
    if demo:
        return "a made-up demo key, accepted only by the fake; keys from requests: ignored"
    if opts.openai_api_key is not None:
        return "server key set; keys from requests: ignored (the server key always wins)"
    return "no server key; keys from requests: required (each request sends apiKey)"


def _with_default(value: str | None, default: str) -> str:
    return value if value is not None else f"{default} (built-in default)"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _session_policy(opts: NavaiVoiceBackendOptions) -> str:
    if not opts.session:
        return "navai's fields only (set OPENAI_REALTIME_SESSION for tools, VAD...)"
    return "template with " + ", ".join(sorted(opts.session))


def _speech_policy(base: str, opts: NavaiVoiceBackendOptions, *, demo: bool) -> str:
    if opts.tts_provider != "elevenlabs":
        return "OpenAI voices the session (set NAVAI_TTS_PROVIDER=elevenlabs for ElevenLabs)"
    where = "a fake ElevenLabs on loopback" if demo else opts.elevenlabs_base_url
    return f"ElevenLabs ({where}): POST {base}/navai/speech/synthesize"


def _cors_policy(origins: Sequence[str] | None) -> str:
    if origins is None:
        return "off (no CORS headers: same-origin pages and non-browser clients only)"
    if "*" in origins:
        return "any origin (*)"
    return ", ".join(origins) if origins else "none (cross-origin requests refused)"


UNGUARDED_WARNING: Final = (
    "a real OpenAI key is served with no authorization and no rate limit: anyone who "
    "can reach this port mints secrets and starts calls on your account. Set "
    "NAVAI_AUTH_TOKENS or NAVAI_AUTH_JWKS_URL, and NAVAI_RATE_LIMIT."
)


def _unguarded(opts: NavaiVoiceBackendOptions, guard: Guard, *, demo: bool) -> bool:
    has_credential = opts.openai_api_key is not None or opts.uses_azure
    return not demo and has_credential and not guard.active


def _auth_policy(guard: Guard) -> str:
    if guard.authorize is None:
        return "none (anyone who reaches the endpoint may mint)"
    return type(guard.authorize).__name__


def _limit_policy(guard: Guard) -> str:
    if not guard.limits:
        return "none"
    limits = "; ".join(f"{group} {policy.text}" for group, policy in guard.limits.items())
    parts = urlsplit(guard.storage_uri or "")
    storage = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"  # no password
    fail = "open" if guard.fail_open else "closed"
    return f"{limits} (storage {storage}, fails {fail})"


def _curl_command(url: str, *, needs_api_key: bool) -> str:
    """A shell line that mints a token at ``url``."""
    body = '{"apiKey": "YOUR_OPENAI_API_KEY"}' if needs_api_key else "{}"
    return shlex.join(
        ["curl", "-sS", "-X", "POST", url, "-H", "Content-Type: application/json", "-d", body]
    )


def _banner(
    host: str,
    port: int,
    token_path: str,
    opts: NavaiVoiceBackendOptions,
    cors: Sequence[str] | None,
    guard: Guard,
    functions: FunctionRegistry,
    *,
    demo: bool,
    page: bool = False,
    webrtc: bool = True,
    routes: Mapping[str, str] | None = None,
) -> str:
    base = _origin(host, port, local=True)
    routes = routes or {}
    # The relays, when the middleware has them: an SDP offer in, an answer out.
    calls, live = routes.get("calls"), routes.get("live")
    settings = [
        ("voice page", f"{base}/ (open it in a browser, press Start)" if page else None),
        ("token endpoint", f"POST {base}{token_path}"),
        ("WebRTC calls", f"POST {base}{calls} (Realtime; DELETE its Location)" if calls else None),
        ("GPT-Live", f"POST {base}{live} (over WebRTC; DELETE its Location)" if live else None),
        ("transcription", f"POST {base}/navai/realtime/transcription-secret"),
        ("health", f"GET {base}{HEALTH_PATH}"),
        # Never credentials: the options refuse them in either URL.
        ("upstream", opts.azure_endpoint or opts.openai_base_url),
        ("API key", _key_policy(opts, demo=demo)),
        ("model", _with_default(opts.default_model, DEFAULT_MODEL)),
        ("voice", _with_default(opts.default_voice, DEFAULT_VOICE)),
        ("instructions", _short(_with_default(opts.default_instructions, DEFAULT_INSTRUCTIONS))),
        ("language", opts.default_language),
        ("voice accent", opts.default_voice_accent),
        ("voice tone", opts.default_voice_tone),
        ("secret TTL", f"{opts.client_secret_ttl_seconds} s"),
        ("session", _session_policy(opts)),
        ("speech", _speech_policy(base, opts, demo=demo)),
        ("CORS origins", _cors_policy(cors)),
        ("authorization", _auth_policy(guard)),
        ("rate limit", _limit_policy(guard)),
        ("trusted proxies", ", ".join(map(str, guard.trusted_proxies)) or "none"),
    ]
    needs_api_key = opts.openai_api_key is None
    lines = [
        f"{PROG} {'demo' if demo else 'serve'}: listening on {_origin(host, port, local=False)}"
    ]
    if demo:
        lines += [
            "",
            "DEMO MODE: the upstream is a fake OpenAI on loopback. Its tokens start with",
            "ek_fake_ and work nowhere, and its calls answer with silence. For real ones,",
            "and a real conversation on the page: OPENAI_API_KEY=... navai-mw serve --page",
        ]
        if not webrtc:
            lines += ["", f"NOTE: {WEBRTC_MISSING}."]
    lines += ["", *(f"  {name:<15} {value}" for name, value in settings if value is not None)]
    if _unguarded(opts, guard, demo=demo):
        lines += ["", f"WARNING: {UNGUARDED_WARNING}"]
    if not demo and opts.uses_azure and os.environ.get("OPENAI_API_KEY", "").strip():
        lines += ["", f"NOTE: {AZURE_WINS_WARNING}."]
    lines += ["", _functions_banner(base, functions)]
    lines += [
        "Mint a token:",
        "  " + _curl_command(f"{base}{token_path}", needs_api_key=needs_api_key),
    ]
    if needs_api_key:
        lines.append("  (put your OpenAI API key in place of YOUR_OPENAI_API_KEY)")
    lines += ["", "Press Ctrl-C to stop."]
    return "\n".join(lines)
