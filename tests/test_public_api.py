"""The public API: every name each public module exports stays importable
from where users import it, says that home in its ``repr`` and tracebacks,
and the layers below stay private."""

from __future__ import annotations

import importlib
import inspect
import traceback

import pytest

import navai_mw

# What each public module exports (its ``__all__``), as users import it.
PUBLIC: dict[str, list[str]] = {
    "navai_mw.budgets": ["areset_usage", "ausage", "reset_usage", "usage"],
    "navai_mw.safety": [
        "BlockedIdentifier",
        "ablock",
        "ablocked",
        "aunblock",
        "block",
        "blocked",
        "identifier_of",
        "unblock",
    ],
    "navai_mw": [
        "Accept",
        "AsyncNavaiHandler",
        "AuthError",
        "CallReport",
        "CallUsage",
        "CreateClientSecretRequest",
        "CreateTranscriptionSecretRequest",
        "FunctionCallRecord",
        "FunctionContext",
        "FunctionRegistry",
        "HttpRequest",
        "HttpResponse",
        "IncomingCall",
        "NavaiASGIMiddleware",
        "NavaiError",
        "NavaiFunctionError",
        "NavaiHandler",
        "NavaiResponse",
        "NavaiVoiceBackendOptions",
        "NavaiWSGIMiddleware",
        "OpenAIRealtimeClientSecretResponse",
        "OptionsError",
        "Refer",
        "Reject",
        "RequestError",
        "RequestInfo",
        "SessionContext",
        "SynthesizedSpeech",
        "UpstreamError",
        "VoiceSettings",
        "create_realtime_client_secret",
        "create_realtime_client_secret_sync",
        "create_transcription_client_secret",
        "create_transcription_client_secret_sync",
        "get_navai_voice_backend_options_from_env",
        "load_navai_functions",
        "synthesize_speech",
        "synthesize_speech_sync",
    ],
    "navai_mw.asgi": ["NavaiASGIMiddleware"],
    "navai_mw.wsgi": ["NavaiWSGIMiddleware"],
    "navai_mw.views": ["AsyncNavaiHandler", "NavaiHandler", "NavaiResponse"],
    "navai_mw.auth": [
        "AnyOf",
        "BearerTokens",
        "JWTBearer",
        "any_of",
        "authorizer_from_env",
        "bearer_tokens",
        "jwt_bearer",
    ],
    "navai_mw.functions": [
        "DEFAULT_FUNCTIONS_FOLDER",
        "FunctionContext",
        "FunctionRegistry",
        "FunctionSource",
        "NavaiFunction",
        "NavaiFunctionError",
        "load_navai_functions",
    ],
    "navai_mw.testing": [
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
    ],
    "navai_mw.transports": [
        "DEFAULT_MAX_CONNECTIONS",
        "AiohttpTransport",
        "AsyncTransport",
        "HttpxAsyncTransport",
        "HttpxSyncTransport",
        "SyncTransport",
    ],
    "navai_mw.cli": ["PAGE_HEADERS", "main", "page_file", "tune_gc", "worker_app"],
    "navai_mw.sansio": [
        "Attempt",
        "CallHook",
        "HookResult",
        "HttpRequest",
        "HttpResponse",
        "OpenAIRealtimeClientSecretResponse",
        "Outcome",
        "SessionContext",
        "SynthesizedSpeech",
        "build_speech_request",
        "build_upstream_request",
        "mint_client_secret",
        "mint_transcription_secret",
        "parse_speech_response",
        "parse_upstream_response",
        "synthesize",
    ],
}
# Names the tests, the docs and earlier versions import from a public module
# beside its ``__all__``: kept importable.
ALSO_IMPORTABLE: dict[str, list[str]] = {
    "navai_mw.auth": ["MAX_JWKS_BYTES"],
    "navai_mw.functions": ["locale_sort_key"],
    "navai_mw.transports": ["upstream_connections"],
    "navai_mw.cli": ["DEMO_API_KEY", "DEMO_VOICE_ID", "UVICORN_MISSING", "HEALTH_PATH"],
}
PRIVATE_LAYERS = (
    "core",
    "upstreams",
    "guard",
    "backend_functions",
    "endpoint",
    "config",
    "runtime",
)


@pytest.mark.parametrize(("module", "names"), PUBLIC.items(), ids=list(PUBLIC))
def test_every_public_name_is_exported_from_its_module(module: str, names: list[str]) -> None:
    imported = importlib.import_module(module)
    assert sorted(imported.__all__) == sorted(names)
    for name in [*names, *ALSO_IMPORTABLE.get(module, [])]:
        assert hasattr(imported, name), f"{module}.{name}"


def _homes() -> list[tuple[str, str, object]]:
    # A name exported by the package root says the root; one exported only
    # by another face says that face.
    rooted = set(PUBLIC["navai_mw"])
    chosen: dict[int, tuple[str, str, object]] = {}
    for module, names in PUBLIC.items():
        imported = importlib.import_module(module)
        for name in names:
            value = getattr(imported, name)
            if not (inspect.isclass(value) or inspect.isfunction(value)):
                continue
            home = "navai_mw" if name in rooted else module
            chosen[id(value)] = (home, name, value)
    return list(chosen.values())


@pytest.mark.parametrize(("home", "name", "value"), _homes(), ids=lambda v: str(v)[:40])
def test_public_classes_and_functions_say_their_public_home(
    home: str, name: str, value: object
) -> None:
    assert value.__module__ == home  # type: ignore[attr-defined]
    assert not any(f".{layer}." in f"{value.__module__}." for layer in PRIVATE_LAYERS)


def test_a_traceback_names_the_public_exception() -> None:
    with pytest.raises(navai_mw.OptionsError) as caught:
        navai_mw.NavaiVoiceBackendOptions(client_secret_ttl_seconds=8000, openai_api_key="k")
    line = traceback.format_exception_only(caught.value)[-1]
    assert line.startswith("navai_mw.OptionsError: client_secret_ttl_seconds")
    assert repr(navai_mw.HttpRequest).startswith("<class 'navai_mw.HttpRequest'>")


def test_public_attrs_classes_still_structure_after_moving_home() -> None:
    # cattrs reads the string annotations of the request classes: they must
    # resolve although their module now says navai_mw.
    from navai_mw.core.client_requests import structure_request

    request = structure_request({"voiceAccent": "Scottish", "model": "gpt-realtime"})
    assert request.voice_accent == "Scottish"
    assert request == navai_mw.CreateClientSecretRequest(
        model="gpt-realtime", voice_accent="Scottish"
    )
