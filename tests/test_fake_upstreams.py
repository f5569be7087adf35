"""navai_mw.testing.FakeUpstreams: every fake behind the middleware's one
transport, told apart by host (OpenAI, ElevenLabs, an identity provider's
JWKS, OpenAI's WebRTC side), on both shells; and FakeJWKS on its own."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio.from_thread
import httpx
import pytest

from navai_mw import NavaiASGIMiddleware, NavaiWSGIMiddleware
from navai_mw.testing import FakeJWKS, FakeRealtimeWebRTC, FakeUpstreams

from .test_fake_webrtc import Browser

OPENAI_KEY = "sk-test-fake-upstreams"
XI_KEY = "xi-test-fake-upstreams"
MINT = "/navai/realtime/client-secret"
SPEECH = "/navai/speech/synthesize"

Post = Callable[..., httpx.Response]


async def hello_asgi(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


def hello_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"app"]


def make_fakes() -> FakeUpstreams:
    from navai_mw.testing import FakeElevenLabs, FakeOpenAIRealtime

    return FakeUpstreams(
        openai=FakeOpenAIRealtime(api_key=OPENAI_KEY),
        elevenlabs=FakeElevenLabs(api_key=XI_KEY),
        jwks=FakeJWKS(),
    )


@contextmanager
def both_shells(fakes: FakeUpstreams, **overrides: Any) -> Iterator[list[tuple[str, Post]]]:
    opts = fakes.options(
        openai_api_key=OPENAI_KEY,
        tts_provider="elevenlabs",
        elevenlabs_api_key=XI_KEY,
        elevenlabs_voice_id="voice-1",
        **overrides,
    )
    assert fakes.jwks is not None
    keywords: dict[str, Any] = {"functions": [], "authorize": fakes.jwks.authorizer()}
    with anyio.from_thread.start_blocking_portal() as portal:
        upstream = fakes.async_transport()
        asgi = NavaiASGIMiddleware(hello_asgi, opts, transport=upstream, **keywords)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://t")

        def asgi_post(path: str, **kw: Any) -> httpx.Response:
            return portal.call(lambda: client.post(path, **kw))

        with fakes.sync_transport() as sync_upstream:
            wsgi = NavaiWSGIMiddleware(hello_wsgi, opts, transport=sync_upstream, **keywords)
            with httpx.Client(
                transport=httpx.WSGITransport(app=wsgi), base_url="http://t"
            ) as sync_client:
                yield [("asgi", asgi_post), ("wsgi", sync_client.post)]
        portal.call(client.aclose)
        portal.call(upstream.aclose)


def test_one_transport_reaches_openai_elevenlabs_and_the_jwks_on_both_shells() -> None:
    fakes = make_fakes()
    assert fakes.jwks is not None
    alice = {"authorization": f"Bearer {fakes.jwks.token('alice')}"}
    with both_shells(fakes) as shells:
        for shell, post in shells:
            minted = post(MINT, json={}, headers=alice)
            assert minted.status_code == 200, (shell, minted.text)
            assert minted.json()["value"].startswith("ek_fake_")
            spoken = post(SPEECH, json={"text": "hello"}, headers=alice)
            assert spoken.status_code == 200, (shell, spoken.text)
            assert base64.b64decode(spoken.json()["audioBase64"]) == (
                fakes.elevenlabs.audio_for("hello", "voice-1")
            )
            stranger = FakeJWKS().token("mallory")  # another key, the same kid
            refused = post(MINT, json={}, headers={"authorization": f"Bearer {stranger}"})
            assert refused.status_code == 401
            assert refused.json() == {"error": "Invalid token: bad signature."}
    # Each fake saw its own requests only.
    assert [r.path for r in fakes.openai.requests] == ["/v1/realtime/client_secrets"] * 2
    assert [r.path for r in fakes.elevenlabs.requests] == ["/v1/text-to-speech/voice-1"] * 2
    assert {r.path for r in fakes.jwks.requests} == {"/.well-known/jwks.json"}


def test_a_host_no_fake_holds_cannot_be_reached() -> None:
    fakes = make_fakes()
    assert fakes.jwks is not None
    alice = {"authorization": f"Bearer {fakes.jwks.token('alice')}"}
    with both_shells(fakes, elevenlabs_base_url="http://nowhere.invalid") as shells:
        for shell, post in shells:
            response = post(SPEECH, json={"text": "hello"}, headers=alice)
            assert response.status_code == 502, (shell, response.text)
            assert response.json() == {"error": "ElevenLabs synthesize could not be reached."}
    with pytest.raises(httpx.ConnectError, match=r"No fake upstream at nowhere\.invalid; "):
        fakes._target("nowhere.invalid", "/")


def test_the_jwks_fake_can_fail_and_its_tokens_expire() -> None:
    now = [1_700_000_000.0]
    idp = FakeJWKS(clock=lambda: now[0])
    fakes = FakeUpstreams(jwks=idp)
    with both_shells(fakes) as shells:
        for shell, post in shells:
            idp.fail(500)
            down = post(MINT, json={}, headers={"authorization": f"Bearer {idp.token('a')}"})
            assert down.status_code == 503, shell
    idp.reset()
    expired = idp.token("a", expires_in=-3600)
    with both_shells(fakes) as shells:
        for shell, post in shells:
            late = post(MINT, json={}, headers={"authorization": f"Bearer {expired}"})
            assert late.status_code == 401, shell
            assert late.json() == {"error": "Invalid token: expired."}


def test_the_webrtc_fake_answers_on_openais_host_through_the_async_transport() -> None:
    webrtc = FakeRealtimeWebRTC()
    fakes = FakeUpstreams(webrtc=webrtc)
    opts = fakes.options(openai_api_key=OPENAI_KEY)

    async def main() -> tuple[int, int, int]:
        browser = Browser()
        upstream = fakes.async_transport()
        app = NavaiASGIMiddleware(hello_asgi, opts, transport=upstream, functions=[], relay=True)
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t"
            ) as client:
                offer = await browser.offer()
                made = await client.post(
                    "/navai/realtime/calls",
                    content=offer,
                    headers={"content-type": "application/sdp"},
                )
                await browser.answer(made.text)
                assert (await browser.next_event())["type"] == "session.created"
                minted = await client.post(MINT, json={})  # still the secrets fake's
                ended = await client.delete(made.headers["location"])
            return made.status_code, minted.status_code, ended.status_code
        finally:
            await browser.close()
            await app.aclose()
            await webrtc.aclose()
            await upstream.aclose()

    assert asyncio.run(main()) == (201, 200, 204)
    assert len(webrtc.calls) == 1
    assert webrtc.hangups == [webrtc.calls[0].call_id]
    assert len(fakes.openai.requests) == 1


def test_the_sync_transport_says_the_webrtc_fake_needs_an_event_loop() -> None:
    fakes = FakeUpstreams(webrtc=FakeRealtimeWebRTC())
    with httpx.Client(transport=httpx.MockTransport(fakes._handle_sync)) as client:
        response = client.post(f"{fakes.openai.base_url}/realtime/calls", content=b"v=0")
        assert response.status_code == 501
        assert "async_transport()" in response.json()["error"]
        minted = client.post(
            f"{fakes.openai.base_url}/realtime/client_secrets",
            json={"session": {"type": "realtime"}},
            headers={"authorization": "Bearer sk-any"},
        )
        assert minted.status_code == 200


def test_fake_jwks_serves_its_key_and_signs_with_it() -> None:
    import jwt

    idp = FakeJWKS(audience="aud-1", issuer="https://idp.test/")
    with idp.serve() as url, httpx.Client() as client:
        assert idp.jwks_url == f"{url}/.well-known/jwks.json"
        [key] = client.get(idp.jwks_url).json()["keys"]
        assert client.get(f"{url}/other").status_code == 404
    assert idp.jwks_url == "https://fake-idp.invalid/.well-known/jwks.json"
    assert key["kid"] == "fake-key-1"
    assert "d" not in key  # the public half only
    token = idp.token("alice", role="admin", iat=None)
    claims = jwt.decode(
        token,
        jwt.PyJWK(key).key,
        algorithms=["ES256"],
        audience="aud-1",
        issuer="https://idp.test/",
    )
    assert claims["sub"] == "alice"
    assert claims["role"] == "admin"
    assert "iat" not in claims
    assert jwt.get_unverified_header(token)["kid"] == "fake-key-1"
