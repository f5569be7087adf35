"""Serving the navai routes from a framework's own views.

The handlers answer exactly as the middlewares do (a table of requests sent
to both); a view's own authentication stands for ``authorize`` through
``identity``; and the two recipes run on real servers with their
framework's auth on: Django (sessions, login, CSRF) as a script under
waitress, Flask (its session) imported and served by waitress."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from navai_mw import (
    AsyncNavaiHandler,
    NavaiHandler,
    NavaiVoiceBackendOptions,
    NavaiWSGIMiddleware,
    RequestError,
    create_realtime_client_secret_sync,
    create_transcription_client_secret_sync,
    synthesize_speech_sync,
)
from navai_mw.testing import FakeOpenAIRealtime

from .conftest import CANARY_KEY, without_request_id
from .test_recipes import EXAMPLES, ROOT, START_TIMEOUT, _load, _serve_waitress

TOKEN = "/navai/realtime/client-secret"


def not_found_app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"app"]


def add(a: int, b: int) -> int:
    return a + b


REQUESTS = [
    pytest.param("POST", TOKEN, {"content-type": "application/json"}, b"{}", id="mint"),
    pytest.param("POST", TOKEN, {"content-type": "application/json"}, b"[1]", id="not-object"),
    pytest.param("POST", TOKEN, {"content-type": "text/plain"}, b"{}", id="415"),
    pytest.param("GET", TOKEN, {}, b"", id="405"),
    pytest.param("POST", TOKEN, {"content-type": "application/json"}, b"{", id="bad-json"),
    pytest.param(
        "POST", TOKEN, {"content-type": "application/json"}, b'{"voice": 5}', id="bad-field"
    ),
    pytest.param(
        "OPTIONS",
        TOKEN,
        {"origin": "http://front.test", "access-control-request-method": "POST"},
        b"",
        id="preflight",
    ),
    pytest.param(
        "POST",
        TOKEN,
        {"origin": "http://evil.test", "content-type": "application/json"},
        b"{}",
        id="origin-refused",
    ),
    pytest.param("GET", "/navai/functions", {}, b"", id="functions-list"),
    pytest.param(
        "POST",
        "/navai/functions/execute",
        {"content-type": "application/json"},
        b'{"function_name": "add", "payload": {"args": [2, 3]}}',
        id="functions-execute",
    ),
    pytest.param(
        "POST",
        "/navai/speech/synthesize",
        {"content-type": "application/json"},
        b'{"text": "hi"}',
        id="speech-off",
    ),
]


@pytest.mark.parametrize(("method", "path", "headers", "body"), REQUESTS)
def test_handlers_answer_as_the_middleware(
    method: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, openai_base_url=fake.base_url)
    keywords: dict[str, Any] = {"cors_origins": ["http://front.test"], "functions": [add]}
    with fake.sync_transport() as transport:
        middleware = NavaiWSGIMiddleware(not_found_app, opts, transport=transport, **keywords)
        with httpx.Client(
            transport=httpx.WSGITransport(app=middleware), base_url="http://api.test"
        ) as client:
            expected = client.request(method, path, headers=headers, content=body)
        handler = NavaiHandler(opts, transport=transport, **keywords)
        answer = handler.handle(method, path, headers, body)

    async def handle_async() -> Any:
        async with fake.async_transport() as upstream:
            async_handler = AsyncNavaiHandler(opts, transport=upstream, **keywords)
            return await async_handler.handle(method, path, headers, body)

    async_answer = anyio.run(handle_async)
    sent = without_request_id(list(expected.headers.multi_items()))
    assert expected.headers["x-request-id"]
    for got in (answer, async_answer):
        assert got.status == expected.status_code
        headers = without_request_id([(name.lower(), value) for name, value in got.headers])
        if got.status == 200 and path == TOKEN:  # a fresh secret each time
            assert got.json().keys() == expected.json().keys()
            assert [name for name, _ in headers] == [name for name, _ in sent]
        else:
            assert got.body == expected.content
            assert headers == sent


def test_a_path_that_is_not_a_route_is_404_and_the_reason_is_spelled() -> None:
    handler = NavaiHandler(NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY), functions=[])
    answer = handler.handle("POST", "/elsewhere", {}, b"")
    assert (answer.status, answer.json()) == (404, {"error": "Not found."})
    assert answer.reason == "404 Not Found"
    handler.close()


def test_a_views_identity_counts_and_reaches_openai() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, openai_base_url=fake.base_url)
    json_headers = {"Content-Type": "application/json"}
    with fake.sync_transport() as transport:
        handler = NavaiHandler(
            opts, transport=transport, functions=[], rate_limit="1/minute", prefix="/api"
        )
        first = handler.handle("POST", "/api" + TOKEN, json_headers, b"{}", identity="ana")
        assert first.status == 200
        # The same user again: over the limit; another user: their own budget.
        again = handler.handle("POST", "/api" + TOKEN, json_headers, b"{}", identity="ana")
        assert again.status == 429
        other = handler.handle("POST", "/api" + TOKEN, json_headers, b"{}", identity="ben")
        assert other.status == 200
    identifiers = [request.headers["openai-safety-identifier"] for request in fake.requests]
    assert len(identifiers) == 2
    assert identifiers[0] != identifiers[1]
    assert "ana" not in identifiers[0]


@pytest.mark.parametrize("body", [5, True, None, [1], "text", 1.5])
def test_the_public_functions_refuse_what_is_not_an_object(body: Any) -> None:
    opts = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY,
        tts_provider="elevenlabs",
        elevenlabs_api_key="xi-key",
        elevenlabs_voice_id="v",
    )
    if body is None:
        return  # None is "no request": the defaults, tested elsewhere
    with pytest.raises(RequestError) as minted:
        create_realtime_client_secret_sync(opts, body)
    with pytest.raises(RequestError) as spoken:
        synthesize_speech_sync(opts, body)
    with pytest.raises(RequestError) as transcribed:
        create_transcription_client_secret_sync(opts, body)
    for caught in (minted, spoken, transcribed):
        assert (caught.value.status, caught.value.message) == (
            400,
            "Request body must be a JSON object.",
        )


# -- the recipes, on real servers ------------------------------------------------------


@pytest.fixture
def upstream_env(served_fake: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "NAVAI_"))}
    env["OPENAI_API_KEY"] = CANARY_KEY
    env["OPENAI_BASE_URL"] = served_fake
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def django_views(upstream_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """``python -m django_views.wsgi`` on a free port, with a demo user."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **upstream_env,
        "PORT": str(port),
        "DJANGO_DB_PATH": str(tmp_path / "db.sqlite3"),
        "DJANGO_DEMO_USER": "ana",
        "DJANGO_DEMO_PASSWORD": "pass-0123",
    }
    log = tmp_path / "django.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "django_views.wsgi"],
            cwd=EXAMPLES,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            try:
                httpx.get(url + "/csrf", timeout=5)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"django_views did not start:\n{log.read_text()}")
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(15)
    assert CANARY_KEY not in log.read_text()


def test_django_view_behind_login_and_csrf(django_views: str, fake: FakeOpenAIRealtime) -> None:
    with httpx.Client(base_url=django_views, timeout=10) as client:
        anonymous = client.post("/api" + TOKEN, json={})
        assert (anonymous.status_code, anonymous.json()) == (
            401,
            {"error": "Authentication required."},
        )
        assert fake.requests == []
        # Django's CSRF check guards the login: no token, no session.
        refused = client.post("/login", json={"username": "ana", "password": "pass-0123"})
        assert refused.status_code == 403
        client.get("/csrf")
        token = client.cookies["csrftoken"]
        wrong = client.post(
            "/login",
            json={"username": "ana", "password": "nope"},
            headers={"X-CSRFToken": token},
        )
        assert wrong.status_code == 401
        logged_in = client.post(
            "/login",
            json={"username": "ana", "password": "pass-0123"},
            headers={"X-CSRFToken": token},
        )
        assert logged_in.status_code == 200
        # As the published front end calls it: JSON, no CSRF token.
        minted = client.post("/api" + TOKEN, json={"voice": "cedar"})
        assert minted.status_code == 200, minted.text
        assert minted.headers["cache-control"] == "no-store"
        assert minted.json()["value"].startswith("ek_fake_")
        assert fake.requests[-1].headers["openai-safety-identifier"]
        # The same rules as the middleware: 415 for a form body.
        form = client.post("/api" + TOKEN, content=b"{}", headers={"content-type": "text/plain"})
        assert form.status_code == 415
        listed = client.get("/api/navai/functions")
        assert listed.status_code == 200
        assert "items" in listed.json()


def test_flask_view_behind_its_session(
    monkeypatch: pytest.MonkeyPatch, fake: FakeOpenAIRealtime, served_fake: str
) -> None:
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "NAVAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_API_KEY", CANARY_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", served_fake)
    monkeypatch.setenv("FLASK_DEMO_PASSWORD", "pass-0123")
    module = _load(monkeypatch, "flask_views")
    try:
        with _serve_waitress(module.app) as base, httpx.Client(base_url=base, timeout=10) as client:
            anonymous = client.post("/api" + TOKEN, json={})
            assert anonymous.status_code == 401
            assert (
                client.post("/login", json={"username": "ana", "password": "x"}).status_code == 401
            )
            login = client.post("/login", json={"username": "ana", "password": "pass-0123"})
            assert login.status_code == 200
            minted = client.post("/api" + TOKEN, json={"voice": "cedar"})
            assert minted.status_code == 200, minted.text
            assert minted.json()["value"].startswith("ek_fake_")
            assert fake.requests[-1].json["session"]["audio"]["output"]["voice"] == "cedar"
            assert client.get("/api" + TOKEN).status_code == 405
    finally:
        module.navai.close()


def test_a_view_relays_a_call_with_its_query_and_mount() -> None:
    import json as json_module

    from .test_relay import ANSWER, OFFER, SyncUpstream, Upstream, parts

    upstream = Upstream()
    handler = NavaiHandler(
        NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY),
        transport=SyncUpstream(upstream),
        functions=[],
        relay=True,
    )
    made = handler.handle(
        "POST",
        "/navai/realtime/calls",
        {"Content-Type": "application/sdp"},
        OFFER.encode(),
        query="voice=cedar",
        mount="/site",
    )
    assert (made.status, made.body.decode()) == (201, ANSWER)
    location = dict(made.headers)["Location"]
    assert location.startswith("/site/navai/realtime/calls/rtc_")
    session = json_module.loads(parts(upstream.offers()[-1])["session"][1])
    assert session["audio"]["output"]["voice"] == "cedar"
    ended = handler.handle("DELETE", location.removeprefix("/site"), {}, b"")
    assert ended.status == 204
    handler.close()


def test_starlette_view_relays_hangs_up_and_keeps_its_query_and_mount(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The recipe's one route takes DELETE too: a relayed call started
    through it is hung up through it (Starlette answered 405 before)."""
    import json as json_module

    from starlette.applications import Starlette
    from starlette.routing import Mount

    from navai_mw.testing import serve_asgi

    from .test_relay import ANSWER, OFFER, AsyncUpstream, Upstream, parts

    for name in list(os.environ):
        if name.startswith(("OPENAI_", "NAVAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_API_KEY", CANARY_KEY)
    module = _load(monkeypatch, "starlette_views")
    upstream = Upstream()
    # The recipe's handler, relaying to a recorded upstream.
    monkeypatch.setattr(
        module,
        "navai",
        AsyncNavaiHandler(
            NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY),
            prefix="/api",
            transport=AsyncUpstream(upstream),
            functions=[],
            relay=True,
        ),
    )
    site = Starlette(routes=[Mount("/site", app=module.app)])
    ana = {"x-demo-user": "ana"}
    with serve_asgi(site, lifespan="on") as base, httpx.Client(base_url=base, timeout=10) as client:
        calls = "/site/api/navai/realtime/calls"
        assert client.post(calls, content=OFFER).status_code == 401  # no user
        made = client.post(
            calls + "?voice=cedar",
            content=OFFER,
            headers={**ana, "content-type": "application/sdp"},
        )
        assert (made.status_code, made.text) == (201, ANSWER)
        location = made.headers["location"]
        assert location.startswith("/site/api/navai/realtime/calls/rtc_")
        session = json_module.loads(parts(upstream.offers()[-1])["session"][1])
        assert session["audio"]["output"]["voice"] == "cedar"
        ended = client.delete(location, headers=ana)
        assert ended.status_code == 204, ended.text
        assert len(upstream.hangups()) == 1
        assert client.get("/site/hello").json() == {"hello": "starlette views"}
