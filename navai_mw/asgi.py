"""ASGI middleware that serves the token endpoint and passes everything else on.

Usage::

    from navai_mw import NavaiASGIMiddleware

    app = NavaiASGIMiddleware(app)  # options from the environment

    # Starlette / FastAPI
    app.add_middleware(NavaiASGIMiddleware, opts=opts, path="/api/realtime-token")

Only ``http`` requests for the token path are answered here; every other
request, and every ``websocket`` and ``lifespan`` scope, reaches the wrapped
app untouched. The middleware owns one pooled upstream client, made when the
middleware is built and closed when the server shuts the app down (after the
wrapped app has finished its own shutdown).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from ._calls import redis_uri
from ._client import drive_async
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
    route_path,
)
from ._guard import Authorizer, RequestInfo
from ._mint import SessionContext
from ._models import NavaiVoiceBackendOptions
from .functions import FunctionRegistry, FunctionSource
from .transports import AsyncTransport
from .views import AsyncNavaiHandler

__all__ = ["NavaiASGIMiddleware"]

logger = logging.getLogger("navai_mw")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Loose on purpose: frameworks type their scopes as TypedDicts, which a
# MutableMapping parameter would refuse.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


class NavaiASGIMiddleware:
    """Serve ``POST {path}`` with a fresh client secret; pass the rest to ``app``.

    ``opts=None`` reads the options (and ``NAVAI_CORS_ORIGIN``) from the
    environment. ``cors_origins`` lists the browser origins allowed to call
    the endpoint from another origin (``"*"`` for any). Pass ``transport``
    to choose how OpenAI is reached; the middleware closes only the
    transport it made itself.

    The guard's keywords (``authorize``, ``rate_limit``,
    ``rate_limit_storage``, ``rate_limit_fail_open``, ``trusted_proxies``,
    ``safety_id_secret``, ``cors_allow_credentials``) decide who may call a
    navai route and how often; each one left None is read from its
    ``NAVAI_*`` variable, whatever ``opts`` is. A sync ``authorize`` hook
    runs in a worker thread, an async one is awaited.
    """

    def __init__(
        self,
        app: ASGIApp,
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
        transport: AsyncTransport | None = None,
    ) -> None:
        self.app = app
        self.handler = AsyncNavaiHandler(
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
        self._paths = self.endpoint.paths
        self._tails = tuple(self._paths)
        # A call's own path ({calls path}/{id}) cannot be listed ahead.
        self._children = self.endpoint.dynamic_prefixes
        # Lifespan is ours to watch only when something of ours must close
        # at shutdown: the client we made, or calls' hangups and deadlines.
        self._takes_lifespan = (
            self.handler.owns_transport
            or self.endpoint.max_call_seconds is not None
            or (self.endpoint.relays and redis_uri(self.endpoint.guard.store_uri) is not None)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        # Every passing request pays for this test, so it starts with C calls
        # only: a path of ours ends with one of our spellings of it, or (a
        # call's own path) its parent ends with a relay's path.
        if kind == "http":
            path = scope["path"]
            if (
                path.endswith(self._tails) or path[: path.rfind("/") + 1].endswith(self._children)
            ) and self.endpoint.owns(route_path(path, scope.get("root_path", ""))):
                await self._serve(scope, receive, send)
                return
        elif kind == "lifespan" and self._takes_lifespan:
            await self._lifespan(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward lifespan to the app; once it has shut down, close what is
        ours (pending hangups; the upstream client, when we made it)."""
        received: list[str] = []
        sent = False

        async def tracking_receive() -> Message:
            message = await receive()
            received.append(message["type"])
            return message

        async def closing_send(message: Message) -> None:
            nonlocal sent
            sent = True
            if message["type"] == "lifespan.startup.complete":
                self._effects.calls.ensure_polling()
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.aclose()
            await send(message)

        try:
            await self.app(scope, tracking_receive, closing_send)
        except Exception:
            if sent or "lifespan.startup" in received:
                raise  # the app speaks lifespan, and its startup failed: say so
            logger.debug("navai_mw: the wrapped app does not speak lifespan; answering it")
        if sent:
            return
        # The app refused lifespan (Django, apps that serve only "http"). Speak
        # it in the app's place, so the upstream client still closes cleanly.
        if "lifespan.startup" not in received:
            await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown: the only message left in the protocol
        await self.aclose()
        await send({"type": "lifespan.shutdown.complete"})

    async def aclose(self) -> None:
        """Cancel the relayed calls' pending hangups in this process; close
        the upstream client, when the middleware made it. Called at lifespan
        shutdown."""
        await self.handler.aclose()

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        # With a shared Redis, every worker watches the calls' deadlines.
        self._effects.calls.ensure_polling()
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope["headers"]
        }
        client = scope.get("client")
        wanted = self.endpoint.begin(
            scope["method"],
            headers,
            path=route_path(scope["path"], scope.get("root_path", "")),
            peer=client[0] if client else None,
            scope=scope,
            query=scope.get("query_string", b"").decode("latin-1"),
            mount=scope.get("root_path", ""),
        )
        if isinstance(wanted, Answer):
            await _send(send, wanted)
            return
        body = bytearray()
        while len(body) <= wanted.limit:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left: nobody to mint a secret for
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        answer = await drive_async(
            self.endpoint.finish(wanted, bytes(body)), self.transport, perform=self._effects
        )
        await _send(send, answer)


async def _send(send: Send, answer: Answer) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": answer.status,
            # ASGI requires lower-case names (and Starlette's MutableHeaders
            # matches only those): a CORS middleware outside ours must find
            # and replace our Access-Control-* headers, not add a second set.
            "headers": [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in answer.headers
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer.body})
