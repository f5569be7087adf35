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
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import sniffio
from typing_extensions import Unpack

from .config.configure import RouteOptions
from .core.errors import OptionsError
from .core.http import joined_headers
from .core.options import NavaiVoiceBackendOptions
from .endpoint.answers import Answer
from .endpoint.endpoint import route_path
from .runtime.drivers import drive_async
from .runtime.function_workers import DEFAULT_FUNCTION_WORKERS
from .runtime.transports import AsyncTransport
from .views import AsyncNavaiHandler

__all__ = [
    "NavaiASGIMiddleware",
]

logger = logging.getLogger("navai_mw")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Loose on purpose: frameworks type their scopes as TypedDicts, which a
# MutableMapping parameter would refuse.
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def _in_event_loop() -> bool:
    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return False
    return True


class NavaiASGIMiddleware:
    """Serve ``POST {path}`` with a fresh client secret; pass the rest to ``app``.

    ``opts=None`` reads the options (and ``NAVAI_CORS_ORIGIN``) from the
    environment. ``cors_origins`` lists the browser origins allowed to call
    the endpoint from another origin (``"*"`` for any). Pass ``transport``
    to choose how OpenAI is reached; the middleware closes only the
    transport it made itself.

    The other keywords are :class:`~navai_mw.config.configure.RouteOptions`' (the
    routes' paths, limits, functions, the session hook, CORS and the guard;
    docs/configuration.md has each with its default). The guard's
    (``authorize``, ``rate_limit``, ``rate_limit_storage``...) decide who may
    call a navai route and how often; each one left None is read from its
    ``NAVAI_*`` variable, whatever ``opts`` is. A sync ``authorize`` hook
    runs in a worker thread, an async one is awaited. ``function_workers``
    and ``max_upstream_connections`` size the backend functions' pool and
    the upstream connections.
    """

    def __init__(
        self,
        app: ASGIApp,
        opts: NavaiVoiceBackendOptions | None = None,
        *,
        transport: AsyncTransport | None = None,
        function_workers: int = DEFAULT_FUNCTION_WORKERS,
        max_upstream_connections: int | None = None,
        **keywords: Unpack[RouteOptions],
    ) -> None:
        self.app = app
        # A bad setting raises here, unless an event loop runs: then the
        # middleware is being built lazily inside the server's lifespan call
        # (Starlette and FastAPI build theirs so), where raising would make
        # uvicorn's lifespan "auto" carry on and serve 500s. The error is kept
        # and answered as lifespan.startup.failed: the server stops, saying why.
        self._failed: Exception | None = None
        try:
            self.handler = AsyncNavaiHandler(
                opts,
                transport=transport,
                function_workers=function_workers,
                max_upstream_connections=max_upstream_connections,
                **keywords,
            )
        except (OptionsError, TypeError, ValueError) as exc:
            if not _in_event_loop():
                raise
            self._failed = exc
            logger.error("navai_mw: the middleware cannot start: %s", exc)
            return
        self.endpoint = self.handler.endpoint
        self._effects = self.handler.effects
        self.transport = self.handler.transport
        self._paths = self.endpoint.paths
        self._tails = tuple(self._paths)
        # A call's own path ({calls path}/{id}) cannot be listed ahead.
        self._children = self.endpoint.dynamic_prefixes
        # What every path of ours contains ("/navai/" by default): most
        # passing paths are told apart by this one test.
        # (A common prefix of strings, not of path segments: a substring of each.)
        self._marker = os.path.commonprefix([*self._tails, *self._children]) or "/"  # noqa: RUF071
        self._takes_lifespan = self.handler.needs_lifespan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._failed is not None:
            await self._refuse(scope, receive, send, self._failed)
            return
        kind = scope["type"]
        # Every passing request pays for this test, so it starts with C calls
        # only: a path of ours ends with one of our spellings of it, or (a
        # call's own path) its parent ends with a relay's path.
        if kind == "http":
            path = scope["path"]
            if (
                self._marker in path
                and (
                    path.endswith(self._tails)
                    or path.endswith(self._children, 0, path.rfind("/") + 1)
                )
                and self.endpoint.owns(route_path(path, scope.get("root_path", "")))
            ):
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
        # The server's loop lives as long as the server: calls' sidebands run here.
        self._effects.serve_here()

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

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, failure: Exception) -> None:
        """A middleware that could not be built: its lifespan startup fails
        with the reason; anything else (a server running without lifespan)
        raises it, for the server to log."""
        if scope["type"] != "lifespan":
            raise failure
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.failed", "message": f"navai_mw: {failure}"})

    async def aclose(self) -> None:
        """Cancel the relayed calls' pending hangups in this process; close
        the upstream client, when the middleware made it. Called at lifespan
        shutdown."""
        if self._failed is None:
            await self.handler.aclose()

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        # With a shared Redis, every worker watches the calls' deadlines.
        self._effects.calls.ensure_polling()
        headers = joined_headers(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]
        )
        client = scope.get("client")
        observer = self._effects.observer
        with observer.request(scope["method"], headers) as seen:
            wanted = self.endpoint.begin(
                scope["method"],
                headers,
                request_id=seen.request_id,
                path=route_path(scope["path"], scope.get("root_path", "")),
                peer=client[0] if client else None,
                scope=scope,
                query=scope.get("query_string", b"").decode("latin-1"),
                mount=scope.get("root_path", ""),
            )
            if isinstance(wanted, Answer):
                observer.answered(seen, wanted)
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
                self.endpoint.finish(wanted, bytes(body)),
                self.transport,
                perform=self._effects,
                observer=observer,
            )
            observer.answered(seen, answer)
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
