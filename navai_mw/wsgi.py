"""WSGI middleware that serves the token endpoint and passes everything else on.

Usage::

    from navai_mw import NavaiWSGIMiddleware

    app.wsgi_app = NavaiWSGIMiddleware(app.wsgi_app)  # Flask; options from env

Only requests for the token path (below ``SCRIPT_NAME``) are answered here;
everything else reaches the wrapped app untouched. One pooled, thread-safe
upstream client serves every thread of the server.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from typing_extensions import Unpack

from .config.configure import RouteOptions
from .core.options import NavaiVoiceBackendOptions
from .endpoint.answers import Answer
from .runtime.drivers import drive_sync
from .runtime.function_workers import DEFAULT_FUNCTION_WORKERS
from .runtime.transports import SyncTransport
from .views import NavaiHandler

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = [
    "NavaiWSGIMiddleware",
]

# CGI spells these two without the HTTP_ prefix.
_UNPREFIXED = {"CONTENT_TYPE": "content-type", "CONTENT_LENGTH": "content-length"}
# Read the body in pieces of this size, so that a huge declared length never
# becomes a huge allocation.
_CHUNK = 16 * 1024


class NavaiWSGIMiddleware:
    """Serve ``POST {path}`` with a fresh client secret; pass the rest to ``app``.

    Arguments as for :class:`~navai_mw.NavaiASGIMiddleware`, with a
    :class:`~navai_mw.transports.SyncTransport`; ``authorize`` must be a
    plain function (it is called inline).
    """

    def __init__(
        self,
        app: WSGIApplication,
        opts: NavaiVoiceBackendOptions | None = None,
        *,
        transport: SyncTransport | None = None,
        function_workers: int = DEFAULT_FUNCTION_WORKERS,
        max_upstream_connections: int | None = None,
        **keywords: Unpack[RouteOptions],
    ) -> None:
        self.app = app
        self.handler = NavaiHandler(
            opts,
            transport=transport,
            function_workers=function_workers,
            max_upstream_connections=max_upstream_connections,
            **keywords,
        )
        self.endpoint = self.handler.endpoint
        self._effects = self.handler.effects
        self.transport = self.handler.transport

    def close(self) -> None:
        """Close the upstream client, when the middleware made it."""
        self.handler.close()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if not self.endpoint.owns(environ.get("PATH_INFO") or "/"):
            return self.app(environ, start_response)
        headers = {
            _UNPREFIXED.get(key) or key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key in _UNPREFIXED or key.startswith("HTTP_")
        }
        observer = self._effects.observer
        with observer.request(environ["REQUEST_METHOD"], headers) as seen:
            wanted = self.endpoint.begin(
                environ["REQUEST_METHOD"],
                headers,
                request_id=seen.request_id,
                path=environ.get("PATH_INFO") or "/",
                peer=environ.get("REMOTE_ADDR") or None,
                environ=environ,
                query=environ.get("QUERY_STRING", ""),
                mount=environ.get("SCRIPT_NAME", ""),
            )
            if isinstance(wanted, Answer):
                answer = wanted
            else:
                answer = drive_sync(
                    self.endpoint.finish(
                        wanted, _read_body(environ, wanted.limit, wanted.declared)
                    ),
                    self.transport,
                    perform=self._effects,
                    observer=observer,
                )
            observer.answered(seen, answer)
        return _respond(start_response, answer)


def _read_body(environ: WSGIEnvironment, limit: int, declared: int | None) -> bytes | None:
    # Without Content-Length, PEP 3333 allows reading only where the server
    # says the stream ends by itself (chunked bodies, wsgi.input_terminated).
    if declared is None and not environ.get("wsgi.input_terminated"):
        # No length and no end marker: an empty body, unless the client said
        # it was sending one in chunks that this server cannot frame for us.
        return None if environ.get("HTTP_TRANSFER_ENCODING") else b""
    stream: Any = environ["wsgi.input"]
    wanted = limit + 1 if declared is None else min(declared, limit + 1)
    body = bytearray()
    while len(body) < wanted:
        chunk = stream.read(min(_CHUNK, wanted - len(body)))
        if not chunk:
            break  # the client is gone, or the body ended early
        body += chunk
    return bytes(body)


def _respond(start_response: StartResponse, answer: Answer) -> list[bytes]:
    start_response(answer.status_line, answer.headers)
    return [answer.body]
