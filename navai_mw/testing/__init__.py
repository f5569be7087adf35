"""Fake upstreams, for your tests and for ``navai-mw demo``: OpenAI Realtime
and ElevenLabs text-to-speech.

:class:`FakeOpenAIRealtime` is an ASGI app that answers
``POST /v1/realtime/client_secrets`` the way OpenAI does, records every
request it gets, and can be told to misbehave::

    from navai_mw import NavaiVoiceBackendOptions, create_realtime_client_secret_sync
    from navai_mw.testing import FakeOpenAIRealtime

    fake = FakeOpenAIRealtime()
    opts = NavaiVoiceBackendOptions(openai_api_key="sk-test", openai_base_url=fake.base_url)
    with fake.sync_transport() as transport:
        secret = create_realtime_client_secret_sync(opts, transport=transport)
    assert secret.value.startswith("ek_fake_")
    assert fake.requests[0].json["session"]["model"] == "gpt-realtime"

    fake.fail(503, times=1)        # the next request gets a 503, then all is well
    fake.rate_limit(retry_after="7")
    fake.stall(5.0)                # answer only after five seconds
    fake.return_garbage()          # 200 with a body that is not JSON

Its secrets start with ``ek_fake_`` and work nowhere.

:class:`FakeElevenLabs` answers ``POST /v1/text-to-speech/{voice_id}`` the
way ElevenLabs does, with a few hundred bytes of made-up audio that
:meth:`~FakeElevenLabs.audio_for` predicts, and misbehaves on request the
same way (but for ``return_garbage``)::

    from navai_mw import HttpRequest
    from navai_mw.testing import FakeElevenLabs

    fake = FakeElevenLabs(api_key="xi-test")
    request = HttpRequest(
        method="POST",
        url=f"{fake.base_url}/v1/text-to-speech/voice123?output_format=pcm_16000",
        headers=(("xi-api-key", "xi-test"), ("content-type", "application/json")),
        body=b'{"text": "Hello", "model_id": "eleven_multilingual_v2"}',
    )
    with fake.sync_transport() as transport:
        response = transport.send(request, timeout=5)
    assert response.status == 200
    assert response.header("content-type") == "audio/pcm"
    assert response.body == fake.audio_for("Hello", "voice123", "pcm_16000")
    assert fake.requests[0].query == {"output_format": "pcm_16000"}

    fake.fail(503, "Busy", times=1)  # {"detail": {"status": ..., "message": "Busy"}}
    fake.rate_limit(retry_after="3")  # 429, "Too many concurrent requests"

In-process, reach either fake with its ``sync_transport()`` or
``async_transport()``; for a real server on loopback, ``serve()`` it (needs
uvicorn, the ``server`` extra).

:class:`FakeRealtimeWebRTC` is OpenAI's WebRTC side, over real WebRTC (aiortc,
the ``webrtc`` extra): ``POST /v1/realtime/calls`` answers a browser's SDP
offer, and ``session.created`` arrives on its data channel; GPT-Live's
``POST /v1/live/sessions`` too, and the calls' sideband WebSockets, on
which a test plays OpenAI's part (``fake.call_function(call_id, ...)``,
``fake.end_call(call_id)``...). ``serve()`` it (on exit, every peer
connection and sideband is closed).

:class:`FakeJWKS` is an identity provider's JWKS with one signing key, and
signs the tokens a test needs (``FakeJWKS().token("alice")``; the ``jwt``
extra). :class:`WebhookSender` delivers OpenAI's webhooks, signed as OpenAI
signs them (the events in :mod:`~navai_mw.testing.webhook_events`; a phone
call rings with ``FakeRealtimeWebRTC().ring()``, and its answers are in
``sip_answers``). :class:`FakeUpstreams` puts every fake behind one
transport, told apart by the request's host, since the middleware's one ``transport=``
carries OpenAI's, ElevenLabs' and the JWKS's requests alike.
"""

from __future__ import annotations

from ..core.faces import publish
from . import webhook_events
from .elevenlabs import FakeElevenLabs
from .jwks import FakeJWKS
from .openai import FakeOpenAIRealtime
from .scripted import RecordedRequest
from .servers import serve_asgi
from .sip_calls import RingingCall, SipAnswer
from .upstreams import FakeUpstreams
from .webhooks import Delivery, WebhookSender
from .webrtc import FakeRealtimeWebRTC, RecordedCall, RecordedLiveSession

__all__ = [
    "Delivery",
    "FakeElevenLabs",
    "FakeJWKS",
    "FakeOpenAIRealtime",
    "FakeRealtimeWebRTC",
    "FakeUpstreams",
    "RecordedCall",
    "RecordedLiveSession",
    "RecordedRequest",
    "RingingCall",
    "SipAnswer",
    "WebhookSender",
    "serve_asgi",
    "webhook_events",
]

publish(__name__, globals(), __all__)
