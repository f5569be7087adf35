"""The server's own WebSockets to OpenAI (a Live session's sideband): opened
the way the handler's transport reaches OpenAI.

:class:`SidebandConnector` is the one way navai_mw opens them. A transport
that offers ``connect_websocket(url, headers, *, timeout)`` (an async
context manager of a :class:`SidebandSocket`) is used for it: navai_mw's
:class:`~navai_mw.transports.AiohttpTransport` does, on its own session, so
a sideband takes the proxy (``HTTP(S)_PROXY``, ``NO_PROXY``), the
certificate trust (``SSL_CERT_FILE``/``SSL_CERT_DIR``, else certifi) and the
proxy's credentials its requests take. Any other transport (httpx's, or one
of your own without the method) gets a connector's own ``AiohttpTransport``,
which reads the same settings from the environment. Sidebands run on
asyncio: the ASGI server's loop, or the calls' store's loop.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from ..core.effects import CloseLive
from .aio import attempt_deadline
from .async_transports import AiohttpTransport

__all__ = [
    "SidebandConnector",
    "SidebandSocket",
    "WebSocketTransport",
    "close_live_session",
]

logger = logging.getLogger("navai_mw")


class SidebandSocket(Protocol):
    """An open WebSocket: text frames out and in."""

    async def send_text(self, text: str) -> None: ...

    async def receive_text(self) -> str | None:
        """The next text frame; None once the socket is closed."""
        ...


@runtime_checkable
class WebSocketTransport(Protocol):
    """A transport that also opens WebSockets, the way it sends requests."""

    def connect_websocket(
        self, url: str, headers: Sequence[tuple[str, str]], *, timeout: float
    ) -> AbstractAsyncContextManager[SidebandSocket]: ...


class SidebandConnector:
    """Opens sideband WebSockets for one handler: through ``transport``
    when it offers ``connect_websocket``, else through a transport of the
    connector's own (closed by :meth:`aclose`), of at most
    ``max_connections`` (else the handler's transports' default)."""

    def __init__(self, transport: object, *, max_connections: int | None = None) -> None:
        self._own: AiohttpTransport | None = None
        if isinstance(transport, WebSocketTransport):
            self._via: WebSocketTransport = transport
        else:
            self._via = self._own = AiohttpTransport(max_connections=max_connections)

    def connect(
        self, url: str, headers: Sequence[tuple[str, str]], *, timeout: float
    ) -> AbstractAsyncContextManager[SidebandSocket]:
        """A WebSocket to ``url`` with ``headers``; opening it fails with a
        :class:`TimeoutError` or an :class:`OSError` within ``timeout``."""
        return self._via.connect_websocket(url, headers, timeout=timeout)

    async def aclose(self) -> None:
        """Close the connector's own client (on every loop that made one)."""
        if self._own is not None:
            await self._own.aclose()


async def close_live_session(connector: SidebandConnector, effect: CloseLive) -> Exception | None:
    """Send ``session.close`` over a Live session's sideband WebSocket, all
    within the effect's timeout; the exception when that failed, else None."""
    try:
        async with (
            attempt_deadline(effect.timeout),
            connector.connect(effect.url, effect.headers, timeout=effect.timeout) as ws,
        ):
            await ws.send_text(json.dumps({"type": "session.close"}))
        return None
    except Exception as exc:
        logger.warning("navai_mw: closing a Live session failed: %s", type(exc).__name__)
        return exc
