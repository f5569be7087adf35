"""A transport written on aiohttp alone, without httpx: a reference arm.

It shows what the httpx layer costs on top of aiohttp. It satisfies
navai_mw's ``AsyncTransport`` protocol and its failure rules: a timeout is
``TimeoutError``, no answer is ``ConnectionError``, and a refused connection
is *not* a timeout (httpx_aiohttp 0.2.0 maps it to ``httpx.ConnectTimeout``,
which navai_mw then treats as a 504 without retrying).
"""

from __future__ import annotations

import asyncio
from typing import Any

from navai_mw import HttpRequest, HttpResponse
from navai_mw.transports import DEFAULT_MAX_CONNECTIONS

# As navai_mw's default transports: at most this many upstream connections.
MAX_CONNECTIONS = DEFAULT_MAX_CONNECTIONS
KEEPALIVE_SECONDS = 5.0


class AiohttpNativeTransport:
    """One ``aiohttp.ClientSession``, made on first use inside the running loop."""

    def __init__(self) -> None:
        self._session: Any = None

    def _open(self) -> Any:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_SECONDS)
        # No cookie jar, no decompression, no redirects: the upstream call is
        # one POST whose answer is read as bytes.
        return aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
        )

    async def send(self, request: HttpRequest, *, timeout: float) -> HttpResponse:
        import aiohttp

        if self._session is None:
            self._session = self._open()
        try:
            async with self._session.request(
                request.method,
                request.url,
                headers=list(request.headers),
                data=request.body,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                body = await response.read()
                return HttpResponse(
                    status=response.status,
                    headers=tuple((k.lower(), v) for k, v in response.headers.items()),
                    body=body,
                )
        except asyncio.TimeoutError as exc:  # aiohttp's timeouts are asyncio's
            raise TimeoutError(str(exc) or "timed out") from None
        except aiohttp.ClientError as exc:
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
