"""Child-process entry point: serve one app on a listening socket it inherits.

    python -m benchmarks._serve ROLE --fd N [--upstream URL] [--transport KIND]
                                [--threads N] [--keepalive N] [--jwks URL]
                                [--rate-limit LIMIT --rate-limit-storage URI]

Roles: ``upstream`` (the fake OpenAI, counting connections), ``navai``
(NavaiASGIMiddleware; ``--jwks`` and ``--rate-limit`` turn its guard on),
``peer`` (FastAPI + openai SDK), all under uvicorn
with the asyncio loop and h11 (the pure-Python stack every arm shares); and
``wsgi`` (NavaiWSGIMiddleware under waitress; ``--keepalive`` gives its
httpx.Client a keep-alive pool of that size instead of the default). The parent made the socket,
so there is no race for a free port and it knows the URL before we start.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from typing import Any


def _uvicorn(app: Any, sock: socket.socket, http: Any = "h11") -> None:
    import uvicorn

    config = uvicorn.Config(
        app, http=http, loop="asyncio", lifespan="on", log_level="warning", access_log=False
    )
    uvicorn.Server(config).run(sockets=[sock])


def _serve_upstream(sock: socket.socket) -> None:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from ._apps import CountedUpstream

    upstream = CountedUpstream()

    class CountingH11Protocol(H11Protocol):
        # One protocol instance per accepted TCP connection.
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            upstream.count_connection()
            super().connection_made(transport)

    _uvicorn(upstream, sock, http=CountingH11Protocol)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._serve")
    parser.add_argument("role", choices=["upstream", "navai", "peer", "wsgi"])
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--upstream", default="")
    parser.add_argument("--transport", default=None)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--keepalive", type=int, default=None)
    parser.add_argument("--jwks", default=None)
    parser.add_argument("--rate-limit", default=None)
    parser.add_argument("--rate-limit-storage", default=None)
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)

    if args.role == "upstream":
        _serve_upstream(sock)
    elif args.role == "navai":
        from ._apps import navai_asgi

        navai = navai_asgi(
            args.upstream,
            args.transport,
            jwks_url=args.jwks,
            rate_limit=args.rate_limit,
            rate_limit_storage=args.rate_limit_storage,
        )
        _uvicorn(navai, sock)
    elif args.role == "peer":
        from ._peer import make_peer

        _uvicorn(make_peer(args.upstream), sock)
    else:
        import waitress

        from ._apps import navai_wsgi

        # With more connections than threads waitress queues, and says so on
        # every request; the queue is the point of the benchmark.
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        app = navai_wsgi(args.upstream, keepalive=args.keepalive)
        waitress.serve(app, sockets=[sock], threads=args.threads, _quiet=True)


if __name__ == "__main__":
    main()
