"""The standalone server's own routes: ``GET /health``, the voice page's
files, and JSON errors for every other path."""

from __future__ import annotations

import json
from importlib import resources
from typing import Final

from ..asgi import ASGIApp, Message, Receive, Scope, Send

HEALTH_PATH: Final = "/health"

# Where each of the page's files is served, its name in navai_mw/cli/page/ and its type.
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
    ``navai_mw/cli/page/``. Send :data:`PAGE_HEADERS` with them if you can."""
    entry = _PAGE_FILES.get(path)
    if entry is None:
        return None
    name, content_type = entry
    return content_type, resources.files(__package__).joinpath("page").joinpath(name).read_bytes()


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
