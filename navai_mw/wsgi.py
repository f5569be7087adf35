"""WSGI middleware that serves the token endpoint and passes everything else on.

Usage::

    from navai_mw import NavaiWSGIMiddleware

    app.wsgi_app = NavaiWSGIMiddleware(app.wsgi_app)  # Flask; options from env

Only requests for the token path (below ``SCRIPT_NAME``) are answered here;
everything else reaches the wrapped app untouched. One pooled, thread-safe
upstream client serves every thread of the server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._client import drive_sync
from ._effects import DEFAULT_FUNCTION_WORKERS
from ._endpoint import (
    DEFAULT_CALLS_PATH,
    DEFAULT_FUNCTIONS_EXECUTE_PATH,
    DEFAULT_FUNCTIONS_LIST_PATH,
    DEFAULT_LIVE_PATH,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_OFFER_SIZE,
    DEFAULT_PATH,
    DEFAULT_SPEECH_SYNTHESIZE_PATH,
    DEFAULT_TRANSCRIPTION_PATH,
    Answer,
)
from ._guard import Authorizer, RequestInfo
from ._mint import SessionContext
from ._models import NavaiVoiceBackendOptions
from .functions import FunctionRegistry, FunctionSource
from .transports import SyncTransport
from .views import NavaiHandler

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["NavaiWSGIMiddleware"]

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
        prefix: str = "",
        path: str | None = DEFAULT_PATH,
        transcription_secret_path: str | None = DEFAULT_TRANSCRIPTION_PATH,
        calls_path: str | None = DEFAULT_CALLS_PATH,
        live_path: str | None = DEFAULT_LIVE_PATH,
        max_call_seconds: float | None = None,
        max_offer_size: int = DEFAULT_MAX_OFFER_SIZE,
        customize_session: Callable[[SessionContext], Any] | None = None,
        functions_list_path: str | None = DEFAULT_FUNCTIONS_LIST_PATH,
        functions_execute_path: str | None = DEFAULT_FUNCTIONS_EXECUTE_PATH,
        speech_synthesize_path: str | None = DEFAULT_SPEECH_SYNTHESIZE_PATH,
        include_functions_routes: bool = True,
        functions: Iterable[FunctionSource] | FunctionRegistry | None = None,
        function_timeout_seconds: float | None = None,
        function_workers: int = DEFAULT_FUNCTION_WORKERS,
        max_upstream_connections: int | None = None,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        cors_origins: Iterable[str] | None = None,
        cors_allow_credentials: bool | None = None,
        authorize: Callable[[RequestInfo], Any] | Authorizer | None = None,
        rate_limit: str | Mapping[str, str] | None = None,
        rate_limit_storage: str | None = None,
        rate_limit_fail_open: bool | None = None,
        trusted_proxies: str | Iterable[str] | None = None,
        safety_id_secret: str | None = None,
        transport: SyncTransport | None = None,
    ) -> None:
        self.app = app
        self.handler = NavaiHandler(
            opts,
            transport=transport,
            function_workers=function_workers,
            max_upstream_connections=max_upstream_connections,
            prefix=prefix,
            path=path,
            transcription_secret_path=transcription_secret_path,
            calls_path=calls_path,
            live_path=live_path,
            max_call_seconds=max_call_seconds,
            max_offer_size=max_offer_size,
            customize_session=customize_session,
            functions_list_path=functions_list_path,
            functions_execute_path=functions_execute_path,
            speech_synthesize_path=speech_synthesize_path,
            include_functions_routes=include_functions_routes,
            functions=functions,
            function_timeout_seconds=function_timeout_seconds,
            max_body_size=max_body_size,
            cors_origins=cors_origins,
            cors_allow_credentials=cors_allow_credentials,
            authorize=authorize,
            rate_limit=rate_limit,
            rate_limit_storage=rate_limit_storage,
            rate_limit_fail_open=rate_limit_fail_open,
            trusted_proxies=trusted_proxies,
            safety_id_secret=safety_id_secret,
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
        wanted = self.endpoint.begin(
            environ["REQUEST_METHOD"],
            headers,
            path=environ.get("PATH_INFO") or "/",
            peer=environ.get("REMOTE_ADDR") or None,
            environ=environ,
            query=environ.get("QUERY_STRING", ""),
            mount=environ.get("SCRIPT_NAME", ""),
        )
        if isinstance(wanted, Answer):
            return _respond(start_response, wanted)
        answer = drive_sync(
            self.endpoint.finish(wanted, _read_body(environ, wanted.limit, wanted.declared)),
            self.transport,
            perform=self._effects,
        )
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
