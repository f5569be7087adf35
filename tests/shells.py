"""Both shells under real servers on loopback: the ASGI middleware under
uvicorn, the WSGI middleware under waitress, each in a thread, each making
its own upstream client. Both servers are told to leave forwarding headers
alone (uvicorn's ``proxy_headers``, waitress's
``clear_untrusted_proxy_headers``), so that navai reads them itself."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import waitress
from waitress import wasyncore

from navai_mw import NavaiASGIMiddleware, NavaiVoiceBackendOptions, NavaiWSGIMiddleware
from navai_mw.testing import serve_asgi

# Parametrize a test with these: the server, and so the shell, it runs under.
SHELLS = ("uvicorn", "waitress")


async def inner_asgi(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"inner"})


def inner_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"inner"]


@contextlib.contextmanager
def serve_waitress(app: Any) -> Iterator[str]:
    socket_map: dict[int, Any] = {}
    server = waitress.create_server(
        app,
        map=socket_map,
        host="127.0.0.1",
        port=0,
        threads=8,
        clear_untrusted_proxy_headers=False,
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        stop_waitress(server, socket_map)
        thread.join(timeout=10)


@contextlib.contextmanager
def serve_shell(kind: str, opts: NavaiVoiceBackendOptions, **keywords: Any) -> Iterator[str]:
    """The middleware of ``kind`` (``"uvicorn"``: ASGI, ``"waitress"``:
    WSGI) with ``opts`` and ``keywords``, served on loopback; yields its
    base URL. No backend functions unless given: no folder is searched."""
    keywords.setdefault("functions", [])
    if kind == "uvicorn":
        app = NavaiASGIMiddleware(inner_asgi, opts, **keywords)
        with serve_asgi(app, lifespan="on", proxy_headers=False) as url:
            yield url
        return
    wsgi_app = NavaiWSGIMiddleware(inner_wsgi, opts, **keywords)
    try:
        with serve_waitress(wsgi_app) as url:
            yield url
    finally:
        wsgi_app.close()


def stop_waitress(server: Any, socket_map: dict[int, Any]) -> None:
    """Stop a waitress server whose loop runs on another thread: its worker
    threads first, since one finishing a response wakes the loop through the
    trigger's pipe (closed first, that write fails with EBADF, or lands in
    whatever file reused the descriptor); then every socket, closed from
    inside the server's own loop, which ends it. The trigger's lock is held
    from adding that work until the pipe is written: a wake-up still on its
    way from a worker could otherwise run it in between, and close the pipe
    under the write."""
    server.task_dispatcher.shutdown()
    trigger = server.trigger
    with trigger.lock:
        trigger.thunks.append(lambda: wasyncore.close_all(socket_map))
        trigger._physical_pull()
