"""Transcription secrets (issue 12, part 3): the session built from the
options, the template and the request; the route on both shells, in process
over httpx and under real servers (uvicorn, waitress); the client
functions; the customize_session hook on this route.

Every session sent is checked against openai-python's
RealtimeTranscriptionSessionCreateRequest, with no key it does not know.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from navai_mw import (
    AsyncNavaiHandler,
    NavaiASGIMiddleware,
    NavaiHandler,
    NavaiVoiceBackendOptions,
    NavaiWSGIMiddleware,
    OptionsError,
    SessionContext,
    create_transcription_client_secret,
    create_transcription_client_secret_sync,
    get_navai_voice_backend_options_from_env,
)
from navai_mw.testing import FakeOpenAIRealtime, serve_asgi

from .conftest import CANARY_KEY
from .test_servers import inner_asgi as lifespan_asgi
from .test_servers import inner_wsgi as plain_wsgi
from .test_servers import serve_waitress
from .test_sessions import (
    FUNCTION_TOOL,
    NOT_PREPARED,
    SERVER_VAD,
    TOKEN,
    TRANSCRIPTION,
    AsyncRecorder,
    Recorder,
    assert_openai_accepts,
    every_way,
    inner_asgi,
    inner_wsgi,
    openai_problems,
    options,
    sent,
    shells,
)


@pytest.fixture(autouse=True)
def _transcription_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The transcription route is off unless switched on: every test here
    switches it on through the environment, as a deployment would."""
    monkeypatch.setenv("NAVAI_TRANSCRIPTION", "true")


DEFAULT_SESSION = {
    "type": "transcription",
    "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}},
}

# A realtime template with something for transcription and much that is not.
TEMPLATE: dict[str, Any] = {
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "noise_reduction": {"type": "near_field"},
            "turn_detection": SERVER_VAD,
            "transcription": {"language": "fr", "keywords": ["Giralda"], "delay": "low"},
        },
        "output": {"speed": 1.2},
    },
    "include": ["item.input_audio_transcription.logprobs"],
    "tools": [FUNCTION_TOOL],
    "tool_choice": "auto",
    "max_output_tokens": 500,
    "output_modalities": ["audio"],
    "tracing": "auto",
}


def transcription(**fields: Any) -> dict[str, Any]:
    return {"type": "transcription", "audio": {"input": {"transcription": fields}}}


def from_template(**fields: Any) -> dict[str, Any]:
    """What the route sends with TEMPLATE: its input audio and include,
    nothing else of it; the transcription fields given over the template's."""
    return {
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "noise_reduction": {"type": "near_field"},
                "turn_detection": SERVER_VAD,
                "transcription": {"language": "fr", "keywords": ["Giralda"], "delay": "low"}
                | fields,
            }
        },
        "include": ["item.input_audio_transcription.logprobs"],
    }


SESSIONS: dict[str, tuple[dict[str, Any], Any, dict[str, Any]]] = {
    # (options, request body, session sent)
    "defaults": ({}, None, DEFAULT_SESSION),
    "empty_body": ({}, {}, DEFAULT_SESSION),
    "options": (
        {
            "transcription_model": "gpt-4o-mini-transcribe",
            "transcription_language": "es",
            "transcription_prompt": "Place names in Andalusia",
        },
        None,
        transcription(
            model="gpt-4o-mini-transcribe", language="es", prompt="Place names in Andalusia"
        ),
    ),
    "request_over_options": (
        {"transcription_language": "es", "transcription_prompt": "Place names"},
        {"language": "de", "prompt": "Street names in Berlin"},
        transcription(model="gpt-4o-transcribe", language="de", prompt="Street names in Berlin"),
    ),
    "request_over_built_in": (
        {},
        {"language": "ja", "prompt": "Kanji"},
        transcription(model="gpt-4o-transcribe", language="ja", prompt="Kanji"),
    ),
    "blank_request_fields_are_absent": (
        {"transcription_language": "es"},
        {"language": "  ", "prompt": "", "unknown": "ignored"},
        transcription(model="gpt-4o-transcribe", language="es"),
    ),
    "template_input_audio_and_include": (
        {"session": TEMPLATE},
        None,
        from_template(model="gpt-4o-transcribe"),
    ),
    "options_over_template": (
        {
            "session": TEMPLATE,
            "transcription_model": "gpt-4o-mini-transcribe",
            "transcription_language": "es",
            "transcription_prompt": "Tapas",
        },
        None,
        from_template(model="gpt-4o-mini-transcribe", language="es", prompt="Tapas"),
    ),
    "request_over_options_over_template": (
        {"session": TEMPLATE, "transcription_language": "es"},
        {"language": "it", "prompt": "Pasta"},
        from_template(model="gpt-4o-transcribe", language="it", prompt="Pasta"),
    ),
    "option_model_over_template_model": (
        {
            "session": {"audio": {"input": {"transcription": {"model": "whisper-1"}}}},
            "transcription_model": "gpt-4o-mini-transcribe",
        },
        None,
        transcription(model="gpt-4o-mini-transcribe"),
    ),
    "template_model_over_built_in": (
        {"session": {"audio": {"input": {"transcription": {"model": "whisper-1"}}}}},
        {"language": "es"},
        transcription(model="whisper-1", language="es"),
    ),
}


@pytest.mark.parametrize(
    ("opts_kw", "body", "expected"), list(SESSIONS.values()), ids=list(SESSIONS)
)
def test_the_transcription_session_four_ways(
    opts_kw: dict[str, Any], body: Any, expected: dict[str, Any]
) -> None:
    assert_openai_accepts(expected)  # the fixture, checked against openai-python
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = options(fake, **opts_kw)
    with every_way(opts, fake, kind="transcription") as ways:
        for name, mint in ways:
            assert mint(body) == 200, name
            assert sent(fake) == expected, name
            assert_openai_accepts(sent(fake))
            assert fake.requests[-1].path == "/v1/realtime/client_secrets"
            assert fake.requests[-1].headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert len(fake.requests) == 4
    assert opts.session == opts_kw.get("session")  # the template is untouched


def test_the_template_is_untouched_by_transcription_secrets() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    before = copy.deepcopy(TEMPLATE)
    opts = options(fake, session=TEMPLATE)

    def grow(session: dict[str, Any]) -> dict[str, Any]:
        session["audio"]["input"]["turn_detection"]["threshold"] = 0.1
        session["audio"]["input"]["transcription"]["keywords"].append("Alcazar")
        session["include"].clear()
        return session

    with every_way(opts, fake, kind="transcription", customize=Recorder(grow)) as ways:
        for name, mint in ways:
            assert mint({}) == 200, name
            assert sent(fake)["audio"]["input"]["transcription"]["keywords"] == [
                "Giralda",
                "Alcazar",
            ]
    assert opts.session == before
    assert before == TEMPLATE


def test_the_environment_sets_the_transcription_options() -> None:
    env = {
        "OPENAI_API_KEY": "sk-x",
        "OPENAI_TRANSCRIPTION_MODEL": "gpt-4o-mini-transcribe",
        "OPENAI_TRANSCRIPTION_LANGUAGE": "es",
        "OPENAI_TRANSCRIPTION_PROMPT": "Place names in Andalusia",
        "OPENAI_REALTIME_SESSION": json.dumps(TEMPLATE),
    }
    opts = get_navai_voice_backend_options_from_env(env)
    assert opts.transcription_model == "gpt-4o-mini-transcribe"
    assert opts.transcription_language == "es"
    assert opts.transcription_prompt == "Place names in Andalusia"
    assert opts.session == TEMPLATE
    blank = get_navai_voice_backend_options_from_env(
        {
            "OPENAI_API_KEY": "sk-x",
            "OPENAI_TRANSCRIPTION_MODEL": " ",
            "OPENAI_TRANSCRIPTION_LANGUAGE": "",
        }
    )
    assert blank.transcription_model is None
    assert blank.transcription_language is None


def test_transcription_options_must_be_strings() -> None:
    for name in ("transcription_model", "transcription_language", "transcription_prompt"):
        with pytest.raises(OptionsError) as caught:
            NavaiVoiceBackendOptions(openai_api_key="sk-x", **{name: 5})
        assert caught.value.message == f"{name} must be a string. Received: int"


# -- the route, in process ------------------------------------------------------------------


def test_the_route_answers_the_secret_alone_on_both_shells() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = options(fake, transcription_language="es")
    with shells(opts, fake) as both:
        for name, post in both:
            response = post(TRANSCRIPTION, json={"prompt": "Tapas"})
            assert response.status_code == 200, (name, response.text)
            payload = response.json()
            assert set(payload) == {"value", "expires_at"}  # no speech
            assert payload["value"].startswith("ek_fake_")
            assert isinstance(payload["expires_at"], int)
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["content-type"] == "application/json"
            assert CANARY_KEY not in response.text
            assert sent(fake) == transcription(
                model="gpt-4o-transcribe", language="es", prompt="Tapas"
            )
            # A trailing slash is the same route.
            assert post(TRANSCRIPTION + "/", json={}).status_code == 200
    assert len(fake.requests) == 4


ROUTE_ERRORS: dict[str, tuple[dict[str, Any], int, dict[str, Any]]] = {
    # (request keywords, status, answer)
    "field_type": (
        {"json": {"language": 5, "prompt": ["x"]}},
        400,
        {"error": "Invalid request field language, prompt: expected a string."},
    ),
    "api_key_type": (
        {"json": {"apiKey": 5}},
        400,
        {"error": "Invalid request field apiKey: expected a string."},
    ),
    "not_an_object": ({"json": ["es"]}, 400, {"error": "Request body must be a JSON object."}),
    "not_json": (
        {"content": b"{", "headers": {"content-type": "application/json"}},
        400,
        {},
    ),
    "not_json_media_type": (
        {"content": b"language=es", "headers": {"content-type": "text/plain"}},
        415,
        {"error": "Content-Type must be application/json (UTF-8)."},
    ),
}


@pytest.mark.parametrize(
    ("request_kw", "status", "answer"), list(ROUTE_ERRORS.values()), ids=list(ROUTE_ERRORS)
)
def test_the_route_refuses_bad_requests_like_the_client_secret_route(
    request_kw: dict[str, Any], status: int, answer: dict[str, Any]
) -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    with shells(options(fake), fake) as both:
        for name, post in both:
            response = post(TRANSCRIPTION, **request_kw)
            assert response.status_code == status, (name, response.text)
            if answer:
                assert response.json() == answer
            else:
                assert response.json()["error"].startswith("Request body is not valid JSON")
    assert fake.requests == []


def test_the_route_is_post_only() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = options(fake)

    async def asgi_get() -> httpx.Response:
        async with fake.async_transport() as upstream:
            asgi = NavaiASGIMiddleware(inner_asgi, opts, transport=upstream)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=asgi), base_url="http://api.test"
            ) as client:
                return await client.get(TRANSCRIPTION)

    with fake.sync_transport() as upstream:
        wsgi = NavaiWSGIMiddleware(inner_wsgi, opts, transport=upstream)
        with httpx.Client(
            transport=httpx.WSGITransport(app=wsgi), base_url="http://api.test"
        ) as client:
            answers = [anyio.run(asgi_get), client.get(TRANSCRIPTION)]
    for response in answers:
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
        assert response.json() == {"error": "Method not allowed. Use POST."}
    assert fake.requests == []


def test_upstream_errors_map_as_on_the_client_secret_route() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    with shells(options(fake), fake) as both:
        for name, post in both:
            fake.fail(400, f"Invalid value for 'model' (key {CANARY_KEY}).", times=1)
            failed = post(TRANSCRIPTION, json={})
            assert failed.status_code == 502, name
            assert failed.json()["error"].startswith("OpenAI client_secrets failed (400): ")
            assert CANARY_KEY not in failed.text
            assert "[redacted]" in failed.text
            fake.rate_limit(retry_after="7", times=1)
            limited = post(TRANSCRIPTION, json={})
            assert limited.status_code == 429, name
            assert limited.headers["retry-after"] == "7"


def test_the_key_policy_is_the_client_secret_routes() -> None:
    fake = FakeOpenAIRealtime()
    no_key = NavaiVoiceBackendOptions(
        allow_api_key_from_request=True, openai_base_url=fake.base_url
    )
    with shells(no_key, fake) as both:
        for name, post in both:
            missing = post(TRANSCRIPTION, json={})
            assert missing.status_code == 400, name
            assert missing.json()["error"].startswith("Missing API key.")
            assert post(TRANSCRIPTION, json={"apiKey": "sk-client-key"}).status_code == 200
            assert fake.requests[-1].headers["authorization"] == "Bearer sk-client-key"
    server_key = options(fake, allow_api_key_from_request=True)
    with shells(server_key, fake) as both:
        for _, post in both:
            assert post(TRANSCRIPTION, json={"apiKey": "sk-client-key"}).status_code == 200
            assert fake.requests[-1].headers["authorization"] == f"Bearer {CANARY_KEY}"


@pytest.mark.parametrize(
    ("keywords", "served", "passed_on"),
    [
        ({"transcription_secret_path": "/api/stt-secret"}, "/api/stt-secret", TRANSCRIPTION),
        ({"prefix": "/api"}, "/api" + TRANSCRIPTION, TRANSCRIPTION),
        ({"transcription_secret_path": None}, None, TRANSCRIPTION),
    ],
    ids=["moved", "prefixed", "off"],
)
def test_the_path_is_configurable_and_switchable(
    keywords: dict[str, Any], served: str | None, passed_on: str
) -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    with shells(options(fake), fake, **keywords) as both:
        for name, post in both:
            inner = post(passed_on, json={})
            assert inner.status_code == 200, name
            assert inner.text == "app"  # the wrapped app's answer
            if served is not None:
                minted = post(served, json={})
                assert minted.status_code == 200, (name, minted.text)
                assert minted.json()["value"].startswith("ek_fake_")
                assert sent(fake)["type"] == "transcription"
            # The client-secret route is where it was (below the prefix).
            token = "/api" + TOKEN if keywords.get("prefix") else TOKEN
            assert post(token, json={}).json()["value"].startswith("ek_fake_")


def test_the_route_may_not_share_the_client_secret_path() -> None:
    opts = NavaiVoiceBackendOptions(openai_api_key="sk-x")
    with pytest.raises(ValueError, match="have the same path"):
        NavaiWSGIMiddleware(inner_wsgi, opts, transcription_secret_path=TOKEN)
    with pytest.raises(ValueError, match="transcription_secret_path must start with '/'"):
        NavaiASGIMiddleware(inner_asgi, opts, transcription_secret_path="stt")


def test_authorize_sees_the_route_and_the_mint_group_is_shared() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    routes: list[str] = []

    def authorize(info: Any) -> str:
        routes.append(info.route)
        return "alice"

    with shells(options(fake), fake, authorize=authorize, rate_limit={"mint": "2/minute"}) as both:
        for name, post in both:
            assert post(TRANSCRIPTION, json={}).status_code == 200, name
            assert post(TOKEN, json={}).status_code == 200, name
            refused = post(TRANSCRIPTION, json={})
            assert refused.status_code == 429, name
            assert refused.headers["ratelimit-policy"].startswith('"mint"')
    assert routes == ["transcription_secret", "client_secret", "transcription_secret"] * 2
    assert len(fake.requests) == 4


def test_cors_on_the_route() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    origin = {"origin": "https://app.test"}
    with shells(options(fake), fake, cors_origins=["https://app.test"]) as both:
        for name, post in both:
            response = post(TRANSCRIPTION, json={}, headers=origin)
            assert response.status_code == 200, name
            assert response.headers["access-control-allow-origin"] == "https://app.test"
            refused = post(TRANSCRIPTION, json={}, headers={"origin": "https://evil.test"})
            assert refused.status_code == 403
    assert len(fake.requests) == 2


# -- the hook on this route -----------------------------------------------------------------------


@pytest.mark.parametrize("hook_kind", [Recorder, AsyncRecorder], ids=["sync", "async"])
def test_the_hook_sees_and_changes_the_transcription_session(hook_kind: type[Recorder]) -> None:
    def tune(session: dict[str, Any]) -> dict[str, Any]:
        session["audio"]["input"]["noise_reduction"] = {"type": "far_field"}
        session["audio"]["input"]["transcription"]["model"] = "whisper-1"
        return session

    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = options(fake, session=TEMPLATE)
    hook = hook_kind(tune)
    with every_way(opts, fake, kind="transcription", customize=hook) as ways:
        for name, mint in ways:
            assert mint({"language": "es"}) == 200, name
            assert hook.seen[-1].kind == "transcription"
            built = from_template(model="gpt-4o-transcribe", language="es")
            built["audio"]["input"]["noise_reduction"] = {"type": "far_field"}
            built["audio"]["input"]["transcription"]["model"] = "whisper-1"
            assert hook.seen[-1].session == built  # the hook's copy, as changed
            assert sent(fake) == built
            assert_openai_accepts(sent(fake))


def test_the_hook_gets_the_transcription_route_and_identity() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    hook = Recorder()
    with shells(options(fake), fake, customize_session=hook, authorize=lambda info: "bob") as both:
        for name, post in both:
            assert post(TRANSCRIPTION, json={}).status_code == 200, name
            context: SessionContext = hook.seen[-1]
            assert context.kind == "transcription"
            assert context.identity == "bob"
            assert context.request is not None
            assert context.request.route == "transcription_secret"
            assert context.session == DEFAULT_SESSION
            # OpenAI may single out bob, and only bob, by a hash of his name.
            identifier = fake.requests[-1].headers["openai-safety-identifier"]
            assert len(identifier) == 64
            assert "bob" not in identifier


BROKEN = {
    "realtime_field": lambda s: {**s, "tools": [FUNCTION_TOOL]},
    "realtime_type": lambda s: {**s, "type": "realtime"},
    # OpenAI's transcription session has audio.input only.
    "output_audio": lambda s: {**s, "audio": {**s["audio"], "output": {"voice": "ash"}}},
    "bad_noise_reduction": lambda s: {**s, "audio": {"input": {"noise_reduction": {"type": "x"}}}},
}


@pytest.mark.parametrize("change", list(BROKEN.values()), ids=list(BROKEN))
def test_a_hook_result_unfit_for_a_transcription_session_is_503(
    change: Any, caplog: pytest.LogCaptureFixture
) -> None:
    result = change(copy.deepcopy(DEFAULT_SESSION))
    if result["type"] == "transcription":  # unfit by openai-python's own types too
        assert openai_problems(result) != []
    caplog.set_level(logging.ERROR, logger="navai_mw")
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    with every_way(options(fake), fake, kind="transcription", customize=Recorder(change)) as ways:
        for name, mint in ways:
            assert mint({}) == 503, name
    with shells(options(fake), fake, customize_session=Recorder(change)) as both:
        for _, post in both:
            assert post(TRANSCRIPTION, json={}).json() == NOT_PREPARED
    assert fake.requests == []
    assert any(
        "the customize_session hook's session is refused" in record.getMessage()
        for record in caplog.records
    )


# -- the client functions and the view handlers ---------------------------------------------


def test_the_client_functions_return_the_secret() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = options(fake)
    with fake.sync_transport() as transport:
        secret = create_transcription_client_secret_sync(
            opts, {"language": "es"}, transport=transport
        )
    assert secret.value.startswith("ek_fake_")
    assert secret.session is not None
    assert secret.session["type"] == "transcription"

    async def mint() -> Any:
        async with fake.async_transport() as transport:
            return await create_transcription_client_secret(
                opts, {"prompt": "Tapas"}, transport=transport
            )

    other = anyio.run(mint)
    assert other.value.startswith("ek_fake_")
    assert other.value != secret.value
    assert [request.json["session"] for request in fake.requests] == [
        transcription(model="gpt-4o-transcribe", language="es"),
        transcription(model="gpt-4o-transcribe", prompt="Tapas"),
    ]


def test_the_view_handlers_serve_the_route() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = options(fake, transcription_prompt="Tapas")
    headers = {"Content-Type": "application/json"}
    body = b'{"language": "es"}'
    with fake.sync_transport() as transport:
        answer = NavaiHandler(opts, transport=transport).handle(
            "POST", TRANSCRIPTION, headers, body
        )
    assert answer.status == 200
    assert set(answer.json()) == {"value", "expires_at"}

    async def handle() -> Any:
        async with fake.async_transport() as transport:
            handler = AsyncNavaiHandler(opts, transport=transport)
            return await handler.handle("POST", TRANSCRIPTION, headers, body)

    assert anyio.run(handle).status == 200
    expected = transcription(model="gpt-4o-transcribe", language="es", prompt="Tapas")
    assert [request.json["session"] for request in fake.requests] == [expected, expected]


# -- under real servers --------------------------------------------------------------------------


@pytest.fixture
def served_opts(fake: FakeOpenAIRealtime, served_fake: str) -> NavaiVoiceBackendOptions:
    return NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY,
        openai_base_url=served_fake,
        upstream_timeout_seconds=10,
        transcription_language="es",
        session=TEMPLATE,
    )


@pytest.fixture(params=["uvicorn", "waitress"])
def served_app(
    request: pytest.FixtureRequest, served_opts: NavaiVoiceBackendOptions
) -> Iterator[str]:
    """The middleware under a real server, with the upstream client it made
    itself, talking to the fake over loopback."""
    if request.param == "uvicorn":
        asgi = NavaiASGIMiddleware(lifespan_asgi, served_opts)
        with serve_asgi(asgi) as url:
            yield url
    else:
        wsgi = NavaiWSGIMiddleware(plain_wsgi, served_opts)
        try:
            with serve_waitress(wsgi) as url:
                yield url
        finally:
            wsgi.close()


def test_the_route_under_a_real_server(served_app: str, fake: FakeOpenAIRealtime) -> None:
    with httpx.Client(base_url=served_app, timeout=20) as client:
        minted = client.post(TRANSCRIPTION, json={"prompt": "Tapas"})
        assert minted.status_code == 200, minted.text
        assert set(minted.json()) == {"value", "expires_at"}
        assert minted.json()["value"].startswith("ek_fake_")
        # A body in chunks, as a browser's stream or curl -T would send it.
        chunked = client.post(
            TRANSCRIPTION,
            content=iter([b'{"language": ', b'"de"}']),
            headers={"content-type": "application/json"},
        )
        assert chunked.status_code == 200, chunked.text
        wrong = client.get(TRANSCRIPTION)
        assert wrong.status_code == 405
        assert client.get("/elsewhere").text == "inner /elsewhere"
    first = fake.requests[0].json["session"]
    assert first == from_template(model="gpt-4o-transcribe", language="es", prompt="Tapas")
    assert_openai_accepts(first)
    assert fake.requests[1].json["session"]["audio"]["input"]["transcription"]["language"] == "de"
    assert fake.requests[0].headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert CANARY_KEY not in minted.text
