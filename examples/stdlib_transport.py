"""A sync transport on the standard library alone (``http.client``).

navai_mw reaches OpenAI through a transport: any object with
``send(request, *, timeout) -> HttpResponse``. The transport only moves
bytes; retries, the time budget and the reading of OpenAI's answer stay in
navai_mw. It reports failure with built-in exceptions:

* ``TimeoutError`` when the attempt ran out of time;
* ``OSError`` (``ConnectionError`` and friends) when no answer came.

This one opens a fresh connection per request, so it holds no state and is
safe to share between threads.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from navai_mw import (
    HttpRequest,
    HttpResponse,
    NavaiVoiceBackendOptions,
    NavaiWSGIMiddleware,
    OpenAIRealtimeClientSecretResponse,
    create_realtime_client_secret_sync,
)

_READ_SIZE = 64 * 1024


class StdlibTransport:
    """A ``SyncTransport`` over ``http.client``: one connection per request."""

    def send(self, request: HttpRequest, *, timeout: float) -> HttpResponse:
        url = urlsplit(request.url)
        connection_class = (
            http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        )
        deadline = time.monotonic() + timeout
        connection = connection_class(url.hostname or "", url.port, timeout=timeout)
        try:
            target = url.path + (f"?{url.query}" if url.query else "")
            connection.request(
                request.method, target, body=request.body, headers=dict(request.headers)
            )
            _shrink_timeout(connection, deadline)
            response = connection.getresponse()
            # Socket timeouts bound each read; shrinking them to the time left
            # bounds the whole body, so a trickling server cannot stretch it.
            body = bytearray()
            while True:
                _shrink_timeout(connection, deadline)
                chunk = response.read1(_READ_SIZE)
                if not chunk:
                    break
                body += chunk
                if len(body) > request.max_response_bytes:
                    break  # enough for the core to refuse it; stop reading
            return HttpResponse(
                status=response.status,
                headers=tuple((name.lower(), value) for name, value in response.getheaders()),
                body=bytes(body),
            )
        except http.client.HTTPException as exc:
            # A garbled or cut-off answer is no answer (most HTTPExceptions
            # are not OSErrors, so the convention needs this translation).
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
        finally:
            connection.close()


def _shrink_timeout(connection: http.client.HTTPConnection, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the upstream attempt ran out of time")
    if connection.sock is not None:
        connection.sock.settimeout(remaining)


# -- using it ------------------------------------------------------------------


def mint(opts: NavaiVoiceBackendOptions) -> OpenAIRealtimeClientSecretResponse:
    """One client secret, outside any web framework."""
    return create_realtime_client_secret_sync(
        opts, {"language": "Spanish"}, transport=StdlibTransport()
    )


def hello_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Stands in for your WSGI application."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from the wrapped app\n"]


def build_app(opts: NavaiVoiceBackendOptions) -> NavaiWSGIMiddleware:
    """Your WSGI app, with the token endpoint in front, over this transport."""
    return NavaiWSGIMiddleware(hello_app, opts, transport=StdlibTransport())
