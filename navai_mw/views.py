"""Answer the navai routes from a framework's own views.

The middlewares answer before the framework sees a request, so its
sessions, its auth decorators and its CSRF checks never run. To put a navai
route behind them, serve it from a view instead, through a handler that
answers exactly as the middleware would (same statuses, headers and
bodies)::

    from navai_mw.views import NavaiHandler

    navai = NavaiHandler()  # options from the environment, as the middleware

    @csrf_exempt  # safe for JSON-only routes: see docs/recipes.md
    def navai_view(request, rest=""):
        if not request.user.is_authenticated:
            return JsonResponse({"error": "Authentication required."}, status=401)
        answer = navai.handle(
            request.method, request.path_info, request.headers, request.body,
            client=request.META.get("REMOTE_ADDR"), environ=request.META,
            identity=str(request.user.pk),  # rate limits per user
        )
        response = HttpResponse(answer.body, status=answer.status)
        for name, value in answer.headers:
            response[name] = value
        return response

:class:`NavaiHandler` blocks (Django, Flask); :class:`AsyncNavaiHandler`
is awaited (async Django views, Quart, Starlette endpoints). Both take the
middlewares' keywords (``path``, ``prefix``, ``functions``,
``authorize``...) and own the same things: the endpoint, the performer of
its effects, and an upstream transport, which ``close()``/``aclose()``
closes when the handler made it.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterable, Mapping
from typing import Any

import attrs
from typing_extensions import Unpack

from .config.configure import (
    RouteOptions,
    configure_endpoint,
    metrics_from,
    runtime_options,
    upstream_connections_from,
)
from .core.errors import OptionsError
from .core.options import NavaiVoiceBackendOptions
from .core.storage import is_redis
from .endpoint.answers import Answer
from .endpoint.endpoint import Endpoint
from .runtime.async_transports import AiohttpTransport
from .runtime.drivers import drive_async, drive_sync
from .runtime.function_workers import DEFAULT_FUNCTION_WORKERS
from .runtime.observe import Observer
from .runtime.performers import AsyncEffects, SyncEffects, is_async_hook
from .runtime.sideband import SidebandConnector
from .runtime.sync_transport import HttpxSyncTransport
from .runtime.transports import AsyncTransport, SyncTransport

__all__ = [
    "AsyncNavaiHandler",
    "NavaiHandler",
    "NavaiResponse",
]

Steps = Generator[Any, Any, None]


@attrs.frozen
class NavaiResponse:
    """What to answer: status, headers (name/value pairs) and body bytes
    (JSON, but for the empty ``204`` of a preflight)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def reason(self) -> str:
        """The status with its phrase (``"200 OK"``), as WSGI spells it."""
        return Answer(self.status, self.headers, self.body).status_line

    def json(self) -> Any:
        """The body, parsed."""
        return json.loads(self.body)


def _response(answer: Answer) -> NavaiResponse:
    return NavaiResponse(answer.status, list(answer.headers), answer.body)


def _webhooks_uri(endpoint: Endpoint) -> str | None:
    """Where the webhooks' deliveries and blocked identifiers live: the
    guard's storage, when the webhooks are on."""
    return endpoint.guard.store_uri if endpoint.settings.webhooks is not None else None


class NavaiHandler:
    """The navai routes for blocking views (Django, Flask).

    Keywords as :class:`~navai_mw.NavaiWSGIMiddleware`'s; ``authorize``
    must be a plain function. ``transport`` reaches OpenAI and ElevenLabs;
    without one, the handler makes one with at most
    ``max_upstream_connections`` connections (``NAVAI_MAX_UPSTREAM_CONNECTIONS``,
    else 1000) and ``close()`` closes it.
    """

    def __init__(
        self,
        opts: NavaiVoiceBackendOptions | None = None,
        *,
        transport: SyncTransport | None = None,
        function_workers: int = DEFAULT_FUNCTION_WORKERS,
        max_upstream_connections: int | None = None,
        **keywords: Unpack[RouteOptions],
    ) -> None:
        for name in ("authorize", "customize_session"):
            hook = keywords.get(name)
            if hook is not None and is_async_hook(hook):
                raise OptionsError(
                    f"{name} is an async function; the WSGI middleware calls it "
                    "synchronously. Pass a plain function."
                )
        self.endpoint = configure_endpoint(opts, **keywords)
        self.owns_transport = transport is None
        connections = upstream_connections_from(keywords.get("env"), max_upstream_connections)
        self.transport: SyncTransport = transport or HttpxSyncTransport(max_connections=connections)
        on_call_end, max_sidebands = runtime_options(keywords)
        self.observer = Observer(metrics=metrics_from(keywords))
        self.effects = SyncEffects(
            self.endpoint.guard.storage_uri,
            function_workers=function_workers,
            # A shared store for calls only when there are calls to share.
            calls_uri=self.endpoint.guard.store_uri if self.endpoint.relays else None,
            hangup_seconds=self.endpoint.settings.opts.upstream_timeout_seconds,
            sideband=SidebandConnector(self.transport, max_connections=connections),
            on_call_end=on_call_end,
            max_sidebands=max_sidebands,
            observer=self.observer,
            webhooks_uri=_webhooks_uri(self.endpoint),
        )
        # A call ends at its time cap by the endpoint's own steps, driven here
        # (on the calls' store's hangup threads); a webhook's work after its
        # answer too (on threads of its own).
        endpoint, transport, effects = self.endpoint, self.transport, self.effects
        observer = self.observer
        self.effects.calls.start(
            lambda key: drive_sync(
                endpoint.end_call(key), transport, perform=effects, observer=observer
            )
        )
        self.effects.later.start(
            lambda steps: drive_sync(steps, transport, perform=effects, observer=observer)
        )

    def handle(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes,
        *,
        client: str | None = None,
        environ: Mapping[str, Any] | None = None,
        identity: str | None = None,
        query: str = "",
        mount: str = "",
    ) -> NavaiResponse:
        """Answer one request whose body has been read. ``path`` is the
        route's (below the mount point); ``headers`` a mapping (a framework's
        multi-dict keeps every line: repeated lines are joined with ``", "``)
        or name/value pairs; ``client`` is the peer's address;
        ``environ`` is handed to ``authorize`` as ``RequestInfo.environ``.
        ``identity``, when the view has authenticated the caller (a logged-in
        user's id), is used instead of asking ``authorize``: rate limits
        count per identity, and OpenAI gets its safety identifier."""
        with self.observer.request(method, headers) as seen:
            steps = self.endpoint.handle(
                method,
                path,
                headers,
                body,
                peer=client,
                environ=environ,
                identity=identity,
                query=query,
                mount=mount,
                request_id=seen.request_id,
            )
            answer = drive_sync(steps, self.transport, perform=self.effects, observer=self.observer)
            self.observer.answered(seen, answer)
        return _response(answer)

    def close(self) -> None:
        """Cancel the calls' pending hangups; close the upstream client, when
        the handler made it."""
        self.effects.close()
        if self.owns_transport and isinstance(self.transport, HttpxSyncTransport):
            self.transport.close()


class AsyncNavaiHandler:
    """The navai routes for async views (Starlette, Quart, async Django).

    Keywords as :class:`~navai_mw.NavaiASGIMiddleware`'s. ``aclose()``
    closes the upstream client when the handler made it.
    """

    def __init__(
        self,
        opts: NavaiVoiceBackendOptions | None = None,
        *,
        transport: AsyncTransport | None = None,
        function_workers: int = DEFAULT_FUNCTION_WORKERS,
        max_upstream_connections: int | None = None,
        **keywords: Unpack[RouteOptions],
    ) -> None:
        self.endpoint = configure_endpoint(opts, **keywords)
        self.owns_transport = transport is None
        connections = upstream_connections_from(keywords.get("env"), max_upstream_connections)
        self.transport: AsyncTransport = transport or AiohttpTransport(max_connections=connections)
        on_call_end, max_sidebands = runtime_options(keywords)
        self.observer = Observer(metrics=metrics_from(keywords))
        self.effects = AsyncEffects(
            self.endpoint.guard.storage_uri,
            function_workers=function_workers,
            # A shared store for calls only when there are calls to share.
            calls_uri=self.endpoint.guard.store_uri if self.endpoint.relays else None,
            hangup_seconds=self.endpoint.settings.opts.upstream_timeout_seconds,
            sideband=SidebandConnector(self.transport, max_connections=connections),
            on_call_end=on_call_end,
            max_sidebands=max_sidebands,
            observer=self.observer,
            webhooks_uri=_webhooks_uri(self.endpoint),
        )
        self.effects.check()
        endpoint, transport, effects = self.endpoint, self.transport, self.effects

        async def end_call(key: str) -> None:
            # A call ends at its time cap by the endpoint's own steps, driven
            # here, on the calls' store's loop: the transport must work there
            # (navai_mw's make a client per event loop).
            await drive_async(
                endpoint.end_call(key), transport, perform=effects, observer=effects.observer
            )

        async def after_answer(steps: Steps) -> None:
            # A webhook's work after its answer: on the server's loop, or
            # the calls' store's.
            await drive_async(steps, transport, perform=effects, observer=effects.observer)

        self.effects.calls.start(end_call)
        self.effects.later.start(after_answer)

    async def handle(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes,
        *,
        client: str | None = None,
        scope: Mapping[str, Any] | None = None,
        identity: str | None = None,
        query: str = "",
        mount: str = "",
    ) -> NavaiResponse:
        """Answer one request whose body has been read (as
        :meth:`NavaiHandler.handle`; ``scope`` reaches ``authorize``)."""
        with self.observer.request(method, headers) as seen:
            steps = self.endpoint.handle(
                method,
                path,
                headers,
                body,
                peer=client,
                scope=scope,
                identity=identity,
                query=query,
                mount=mount,
                request_id=seen.request_id,
            )
            answer = await drive_async(
                steps, self.transport, perform=self.effects, observer=self.observer
            )
            self.observer.answered(seen, answer)
        return _response(answer)

    @property
    def needs_lifespan(self) -> bool:
        """Whether something of the handler's must start or close with the
        server: the upstream client it made, the calls' time caps, the
        shared calls' store whose deadlines every worker watches, the
        calls' sidebands (closed, and their calls reported, at shutdown), or
        the webhooks' work after their answers (on the server's loop)."""
        return (
            self.owns_transport
            or self.endpoint.max_call_seconds is not None
            or self.endpoint.settings.sideband is not None
            or self.endpoint.settings.webhooks is not None
            or (self.endpoint.relays and is_redis(self.endpoint.guard.store_uri))
        )

    async def aclose(self) -> None:
        """Cancel the calls' pending hangups; close the upstream client, when
        the handler made it."""
        await self.effects.aclose()
        if self.owns_transport and isinstance(self.transport, AiohttpTransport):
            await self.transport.aclose()
