"""``navai-mw serve``, ``demo`` and ``fake-upstream``: uvicorn on a socket bound
first, one worker or several, and the signals that end them."""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from types import FrameType
from typing import Final
from urllib.parse import urlsplit

import attrs

from ..asgi import NavaiASGIMiddleware
from ..config.env import get_cors_origins_from_env, get_navai_voice_backend_options_from_env
from ..core.errors import NavaiError
from ..core.storage import is_redis
from ..endpoint.endpoint import Endpoint
from ..testing.elevenlabs import FakeElevenLabs
from ..testing.openai import FakeOpenAIRealtime
from ..testing.servers import serve_asgi
from ..testing.sidebands import REALTIME_SIDEBAND_PATH
from ..testing.upstreams import openai_app
from ..testing.webrtc import LIVE_SESSIONS_PATH, REALTIME_CALLS_PATH, FakeRealtimeWebRTC
from . import demo_functions
from .banner import PROG, UNGUARDED_WARNING, _banner, _fail, _origin, _unguarded
from .demo import (
    _DEMO_DROPPED,
    _DEMO_DROPPED_PREFIXES,
    DEMO_API_KEY,
    DEMO_ELEVENLABS_KEY,
    DEMO_VOICE_ID,
    _demo_fakes,
    _demo_upstream,
)
from .site import _own_routes

logger = logging.getLogger("navai_mw")

# The collector's young generation in a server: most of what a request
# allocates dies with it, and Python's default (a collection every 700 new
# objects, one every request or two) scans the requests in flight each time.
# Ten times that costs about a tenth less CPU per mint (docs/benchmarks.md).
GEN0_THRESHOLD: Final = 7000


def tune_gc() -> None:
    """Set the garbage collector for a server process that has built its
    app: what exists now (modules, the app, its options) is frozen out of
    every later collection, and the youngest generation is collected ten
    times less often; the older generations keep their settings."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, older, oldest)


def run_server(args: argparse.Namespace) -> int:
    """``navai-mw serve`` and ``navai-mw demo``, until Ctrl-C or SIGTERM."""
    import uvicorn

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
                functions=[demo_functions] if demo else None,
                # The page calls through the relay: on with the page,
                # else as NAVAI_RELAY says.
                relay=True if page else None,
                # The demo's calls have the server in them (its functions
                # run here, its session is pinned); else as NAVAI_SIDEBAND... say.
                server_functions=True if demo and webrtc and _has_pydantic() else None,
                pin_session=True if demo and webrtc else None,
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
                sideband=endpoint.settings.sideband,
                budgets=endpoint.settings.budgets,
            ),
            flush=True,
        )
        if _unguarded(opts, app.endpoint.guard, demo=demo):
            logger.warning("navai-mw: %s", UNGUARDED_WARNING)
        workers = getattr(args, "workers", 1)
        metrics_port = getattr(args, "metrics_port", None)
        if metrics_port is not None:
            try:
                metrics_url = stack.enter_context(_metrics_server(args.host, metrics_port, workers))
            except (NavaiError, OSError) as exc:
                return _fail(f"cannot serve metrics: {exc}")
            print(f"  metrics         {metrics_url} (Prometheus)", flush=True)
        if workers > 1:
            for warning in per_process_state(endpoint):
                logger.warning("navai-mw: %s workers: %s", workers, warning)
            return _run_workers(args, listener, host, bound_port, cors, page, workers)
        # uvicorn would rewrite the client address from X-Forwarded-For for
        # loopback peers; NAVAI_TRUSTED_PROXIES decides that here instead.
        config = uvicorn.Config(app, host=host, port=bound_port, lifespan="on", proxy_headers=False)
        server = uvicorn.Server(config)
        tune_gc()
        # uvicorn shuts down gracefully on Ctrl-C or SIGTERM, then re-raises
        # the signal: the KeyboardInterrupt that comes out is the end, not an error.
        with _sigterm_interrupts(), suppress(KeyboardInterrupt):
            server.run(sockets=[listener])
    return 0 if server.started else 1


_WORKER_SPEC: Final = "NAVAI_CLI_WORKER"


def per_process_state(endpoint: Endpoint) -> list[str]:
    """What would be wrong with several worker processes and no shared
    Redis: each worker would count, own and cap on its own."""
    shared = is_redis(endpoint.guard.store_uri)
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


@contextmanager
def _metrics_server(host: str, port: int, workers: int) -> Iterator[str]:
    """Prometheus's /metrics on ``host``:``port``, in a thread of this
    process; with several workers, in multiprocess mode (a directory of
    its own, unless PROMETHEUS_MULTIPROC_DIR names one), removed at the end."""
    made = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        made = tempfile.mkdtemp(prefix="navai-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made  # the workers inherit it
    try:
        from prometheus_client import start_http_server

        from ..metrics import registry

        server, thread = start_http_server(port, addr=host, registry=registry())
        try:
            yield _local_url(f"http://{host}:{server.server_port}/metrics")
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
    except ImportError:
        raise NavaiError(
            "prometheus-client is not installed: pip install 'navai-mw[metrics]'"
        ) from None
    finally:
        if made is not None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(made, ignore_errors=True)


def worker_app() -> NavaiASGIMiddleware:
    """One worker's app, for ``navai-mw serve --workers N`` (uvicorn calls it
    in each worker process)."""
    spec = json.loads(os.environ[_WORKER_SPEC])
    app = NavaiASGIMiddleware(
        _own_routes(spec["path"], page=spec["page"]),
        get_navai_voice_backend_options_from_env(),
        path=spec["path"],
        cors_origins=spec["cors"],
        relay=True if spec["page"] else None,
    )
    tune_gc()
    return app


def fake_upstream(args: argparse.Namespace) -> int:
    """``navai-mw fake-upstream``: the fakes, until Ctrl-C or SIGTERM."""
    try:  # a busy port or a bad host, told apart before any server thread starts
        _listen(args.host, args.port).close()
    except OSError as exc:
        return _fail(f"cannot listen on {args.host}:{args.port}: {_reason(exc)}")
    openai = FakeOpenAIRealtime(api_key=args.api_key)
    elevenlabs = FakeElevenLabs()
    try:
        webrtc: FakeRealtimeWebRTC | None = FakeRealtimeWebRTC(api_key=args.api_key)
    except ImportError:  # no aiortc (the webrtc extra): secrets and speech only
        webrtc = None
    with ExitStack() as stack:
        # SIGTERM ends it as Ctrl-C does, from here on: also while starting.
        # The fakes serve from threads, so Ctrl-C is ours to catch: also
        # when it was started with SIGINT ignored.
        stack.enter_context(_sigterm_interrupts(signal.SIGINT))
        try:
            # One host, as OpenAI's: secrets, and the WebRTC calls and Live
            # sessions (aiortc needs asyncio; the lifespan closes its peers).
            served = serve_asgi(
                openai_app(openai, webrtc),
                host=args.host,
                port=args.port,
                loop="asyncio",
                lifespan="on",
            )
            openai_url = stack.enter_context(served) + "/v1"
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
        root = _local_url(openai_url).removesuffix("/v1")
        ws_root = "ws" + root.removeprefix("http")
        calls = (
            f"# WebRTC: the fake OpenAI also answers POST {root}{REALTIME_CALLS_PATH} and "
            f"POST {root}{LIVE_SESSIONS_PATH} with a real peer (aiortc), and their sidebands "
            f"(WebSocket {ws_root}{REALTIME_SIDEBAND_PATH}?call_id=... and "
            f"{ws_root}{LIVE_SESSIONS_PATH}/{{id}}/attach); switch your app's "
            "relays on (NAVAI_RELAY=true) to call through it."
            if webrtc is not None
            else "# WebRTC: no calls or Live sessions (aiortc is not installed: "
            "pip install 'navai-mw[webrtc]')."
        )
        print(
            f"export OPENAI_BASE_URL={shlex.quote(_local_url(openai_url))}\n"
            f"export ELEVENLABS_BASE_URL={shlex.quote(_local_url(elevenlabs_url))}\n"
            f"# {PROG} fake-upstream: a fake OpenAI and a fake ElevenLabs, offline; export "
            f"the lines above where your app runs; {keys}. Ctrl-C stops them.\n"
            f"{calls}",
            flush=True,
        )
        with suppress(KeyboardInterrupt):
            while True:  # uvicorn serves from threads; here only the signals matter
                time.sleep(3600)
    return 0


def _has_pydantic() -> bool:
    """Whether the functions can be described to the model (the ``sideband``
    extra, which the ``demo`` extra brings)."""
    return importlib.util.find_spec("pydantic") is not None


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


DEFAULT_HOST: Final = "127.0.0.1"

DEFAULT_PORT: Final = 3000

_PORT: Final = re.compile(r"[0-9]{1,5}")


def _port(text: str) -> int:
    if _PORT.fullmatch(text.strip()) is None or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}")
    return int(text)
