"""Every fake upstream behind one transport: the middleware's one
``transport=`` reaches OpenAI, ElevenLabs and an identity provider's JWKS,
so a test of an app that uses them all needs one transport, as the
deployment needs one."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..core.options import NavaiVoiceBackendOptions
from ..runtime.async_transports import HttpxAsyncTransport
from ..runtime.sync_transport import HttpxSyncTransport
from .elevenlabs import FakeElevenLabs
from .jwks import FakeJWKS
from .openai import CLIENT_SECRETS_PATH, FakeOpenAIRealtime
from .scripted import _ScriptedUpstream
from .webrtc import FakeRealtimeWebRTC

ASGIApp = Any


def openai_app(secrets: FakeOpenAIRealtime, webrtc: FakeRealtimeWebRTC | None) -> ASGIApp:
    """OpenAI's one host as one ASGI app: client secrets from ``secrets``,
    the rest (WebRTC calls and their hangups, GPT-Live sessions and their
    sideband) from ``webrtc`` when there is one. Serve it on an asyncio
    loop (aiortc needs one), with its lifespan."""
    if webrtc is None:
        return secrets

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/") == CLIENT_SECRETS_PATH:
            await secrets(scope, receive, send)
        else:  # the lifespan too: at shutdown it closes every peer connection
            await webrtc(scope, receive, send)

    return app


def _host(base_url: str) -> str:
    return urlsplit(base_url).netloc.lower()


_SYNC_WEBRTC = json.dumps(
    {
        "error": "FakeRealtimeWebRTC answers on an event loop only: reach it with "
        "FakeUpstreams.async_transport(), or serve() it."
    }
).encode()


class FakeUpstreams:
    """The fakes, told apart by the host a request goes to: OpenAI's
    (:class:`FakeOpenAIRealtime`, and :class:`FakeRealtimeWebRTC` for its
    calls and Live sessions when given one), ElevenLabs'
    (:class:`FakeElevenLabs`) and an identity provider's (:class:`FakeJWKS`,
    when given one). Hand the middleware ``async_transport()`` or
    ``sync_transport()``, and :meth:`options` the fakes' base URLs::

        fakes = FakeUpstreams(jwks=FakeJWKS())
        opts = fakes.options(openai_api_key="sk-test", tts_provider="elevenlabs", ...)
        app = NavaiASGIMiddleware(app, opts, transport=fakes.async_transport(),
                                  authorize=fakes.jwks.authorizer())

    Each fake keeps its own ``requests`` and script (``fail``, ``stall``...).
    A request to a host no fake holds fails as an unknown host does: it
    cannot connect.
    """

    def __init__(
        self,
        *,
        openai: FakeOpenAIRealtime | None = None,
        elevenlabs: FakeElevenLabs | None = None,
        jwks: FakeJWKS | None = None,
        webrtc: FakeRealtimeWebRTC | None = None,
    ) -> None:
        self.openai = openai if openai is not None else FakeOpenAIRealtime()
        self.elevenlabs = elevenlabs if elevenlabs is not None else FakeElevenLabs()
        self.jwks = jwks
        self.webrtc = webrtc

    def options(self, **fields: Any) -> NavaiVoiceBackendOptions:
        """Options whose base URLs are the fakes' (OpenAI's and ElevenLabs'),
        with ``fields`` on top."""
        fields.setdefault("openai_base_url", self.openai.base_url)
        fields.setdefault("elevenlabs_base_url", self.elevenlabs.base_url)
        return NavaiVoiceBackendOptions(**fields)

    def _target(self, host: str, path: str) -> _ScriptedUpstream:
        """The fake that answers a request to ``host`` for ``path``."""
        openai_host = _host(self.openai.base_url)
        webrtc = self.webrtc
        # On OpenAI's own host, the client secrets are the secrets fake's.
        if (
            webrtc is not None
            and host == _host(webrtc.base_url)
            and (host != openai_host or path.rstrip("/") != CLIENT_SECRETS_PATH)
        ):
            return webrtc
        fakes: list[_ScriptedUpstream] = [self.openai, self.elevenlabs]
        if self.jwks is not None:
            fakes.append(self.jwks)
        for fake in fakes:
            if host == _host(fake.base_url):
                return fake
        known = ", ".join(_host(fake.base_url) for fake in fakes)
        raise httpx.ConnectError(f"No fake upstream at {host}; FakeUpstreams holds {known}.")

    # -- ways to reach them -------------------------------------------------------

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or ())
        host = headers.get(b"host", b"").decode("latin-1").lower()
        await self._target(host, scope.get("path", "/"))(scope, receive, send)

    def _handle_sync(self, request: httpx.Request) -> httpx.Response:
        fake = self._target(request.url.netloc.decode("ascii").lower(), request.url.path)
        if isinstance(fake, FakeRealtimeWebRTC):
            return httpx.Response(501, content=_SYNC_WEBRTC)
        return fake._handle_sync(request)

    def sync_transport(self) -> HttpxSyncTransport:
        """A sync transport that reaches every fake in-process (no sockets);
        the WebRTC fake answers only the async one."""
        return HttpxSyncTransport(httpx.Client(transport=httpx.MockTransport(self._handle_sync)))

    def async_transport(self) -> HttpxAsyncTransport:
        """An async transport that reaches every fake in-process (no sockets)."""
        return HttpxAsyncTransport(httpx.AsyncClient(transport=httpx.ASGITransport(app=self)))
