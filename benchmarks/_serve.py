"""Child-process entry point: serve one app on a listening socket it inherits.

    python -m benchmarks._serve ROLE --fd N [--upstream URL] [--transport KIND]
                                [--threads N] [--keepalive N] [--jwks URL]
                                [--rate-limit LIMIT --rate-limit-storage URI]
                                [--stall SECONDS]

Roles: ``upstream`` (the fake OpenAI, counting connections; ``--stall``
makes it answer that much later, as OpenAI does), ``navai``
(NavaiASGIMiddleware; ``--jwks`` and ``--rate-limit`` turn its guard on),
``peer`` (FastAPI + openai SDK), ``relay`` (a raw ASGI app that relays one
fixed body with aiohttp: the ceiling of any relay), all under uvicorn
with the asyncio loop and h11 (the pure-Python stack every arm shares);
``wsgi`` (NavaiWSGIMiddleware under waitress; ``--keepalive`` gives its
httpx.Client a keep-alive pool of that size instead of the default) and
``gunicorn`` (the same under gunicorn's gthread worker, ``--threads`` each).
``sideband-upstream`` is the sideband benchmark's fake OpenAI, on aiohttp's
server (``--rate`` events a second on each sideband, each closed after
``--hold`` seconds; ``navai --relay --sideband`` relays to it). The parent
made the socket, so there is no race for a free port and it knows the URL
before we start.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from typing import Any

from navai_mw.cli import tune_gc


def _uvicorn(
    app: Any, sock: socket.socket, http: Any = None, keep_alive: int | None = None
) -> None:
    import os

    import uvicorn

    # BENCH_UVICORN=auto: uvicorn's defaults (httptools and uvloop when
    # installed) instead of the pure-Python stack.
    auto = os.environ.get("BENCH_UVICORN") == "auto" and http is None
    config = uvicorn.Config(
        app,
        http="auto" if auto else (http or "h11"),
        loop="auto" if auto else "asyncio",
        lifespan="on",
        log_level="warning",
        access_log=False,
        **({} if keep_alive is None else {"timeout_keep_alive": keep_alive}),
    )
    # Every Python server's collector as `navai-mw serve` sets its own.
    tune_gc()
    uvicorn.Server(config).run(sockets=[sock])


def _serve_upstream(sock: socket.socket, stall: float) -> None:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from ._apps import CountedUpstream

    upstream = CountedUpstream(stall=stall)

    class CountingH11Protocol(H11Protocol):
        # One protocol instance per accepted TCP connection.
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            upstream.count_connection()
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            upstream.count_close()
            super().connection_lost(exc)

    # Idle connections kept 30 s (uvicorn's default is 5): the arms' pools
    # decide when theirs close, not the fake, as with OpenAI.
    _uvicorn(upstream, sock, http=CountingH11Protocol, keep_alive=30)


def _gunicorn(upstream: str, sock: socket.socket, threads: int) -> None:
    """One gunicorn gthread worker with ``threads`` threads, on the inherited socket."""
    import os

    from gunicorn.app.base import BaseApplication

    from ._apps import navai_wsgi

    class One(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in {
                "bind": [f"fd://{sock.fileno()}"],
                "workers": 1,
                "worker_class": "gthread",
                "threads": threads,
                # As many keep-alive connections as wrk opens, so that none waits
                # for a thread to notice it went idle.
                "worker_connections": 4096,
                "backlog": 4096,
                "loglevel": "warning",
                "accesslog": None,
            }.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            app = navai_wsgi(upstream)
            tune_gc()
            return app

    os.set_inheritable(sock.fileno(), True)
    One().run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._serve")
    parser.add_argument(
        "role",
        choices=["upstream", "navai", "peer", "relay", "wsgi", "gunicorn", "sideband-upstream"],
    )
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--upstream", default="")
    parser.add_argument("--transport", default=None)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--keepalive", type=int, default=None)
    parser.add_argument("--jwks", default=None)
    parser.add_argument("--rate-limit", default=None)
    parser.add_argument("--rate-limit-storage", default=None)
    parser.add_argument("--stall", type=float, default=0.0)
    parser.add_argument("--relay", action="store_true")
    parser.add_argument("--sideband", action="store_true")
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--hold", type=float, default=0.0)
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)

    if args.role == "upstream":
        _serve_upstream(sock, args.stall)
    elif args.role == "navai":
        from ._apps import navai_asgi

        navai = navai_asgi(
            args.upstream,
            args.transport,
            jwks_url=args.jwks,
            rate_limit=args.rate_limit,
            rate_limit_storage=args.rate_limit_storage,
            relay=args.relay or args.sideband,
            sideband=args.sideband,
        )
        _uvicorn(navai, sock)
    elif args.role == "sideband-upstream":
        from ._sideband_upstream import serve

        serve(sock, rate=args.rate, hold=args.hold, stall=args.stall)
    elif args.role == "peer":
        from ._peer import make_peer

        _uvicorn(make_peer(args.upstream), sock)
    elif args.role == "relay":
        from ._apps import AiohttpRelay

        _uvicorn(AiohttpRelay(args.upstream), sock)
    elif args.role == "gunicorn":
        _gunicorn(args.upstream, sock, args.threads)
    else:
        import waitress

        from ._apps import navai_wsgi

        # With more connections than threads waitress queues, and says so on
        # every request; the queue is the point of the benchmark.
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        app = navai_wsgi(args.upstream, keepalive=args.keepalive)
        tune_gc()
        # waitress accepts 100 connections at most by default: as many as threads.
        waitress.serve(
            app,
            sockets=[sock],
            threads=args.threads,
            connection_limit=max(100, args.threads),
            _quiet=True,
        )


if __name__ == "__main__":
    main()
