"""Options, requests and the environment: validation, defaults, secret hygiene."""

from __future__ import annotations

from typing import Any

import pytest

from navai_mw import (
    CreateClientSecretRequest,
    NavaiError,
    NavaiVoiceBackendOptions,
    OptionsError,
    get_navai_voice_backend_options_from_env,
)
from navai_mw.config.env import get_cors_origins_from_env
from navai_mw.core.envvars import read_int

from .conftest import CANARY_KEY


def test_defaults() -> None:
    opts = NavaiVoiceBackendOptions(openai_api_key="sk-x")
    assert opts.client_secret_ttl_seconds == 600
    assert opts.allow_api_key_from_request is False
    assert opts.openai_base_url == "https://api.openai.com/v1"
    assert opts.upstream_timeout_seconds == 30
    assert opts.default_model is None


def test_options_are_frozen_and_keyword_only() -> None:
    opts = NavaiVoiceBackendOptions(openai_api_key="sk-x")
    with pytest.raises(AttributeError):
        opts.default_model = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        NavaiVoiceBackendOptions("sk-x")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("ttl", "ok"),
    [
        pytest.param(9, False, id="9"),
        pytest.param(10, True, id="10"),
        pytest.param(7200, True, id="7200"),
        pytest.param(7201, False, id="7201"),
    ],
)
def test_ttl_range(ttl: int, ok: bool) -> None:
    if ok:
        assert (
            NavaiVoiceBackendOptions(
                openai_api_key="k", client_secret_ttl_seconds=ttl
            ).client_secret_ttl_seconds
            == ttl
        )
    else:
        with pytest.raises(OptionsError) as caught:
            NavaiVoiceBackendOptions(openai_api_key="k", client_secret_ttl_seconds=ttl)
        assert str(caught.value) == (
            f"client_secret_ttl_seconds must be between 10 and 7200. Received: {ttl}"
        )


def test_ttl_seed_example_message() -> None:
    with pytest.raises(
        NavaiError,
        match=r"^client_secret_ttl_seconds must be between 10 and "
        r"7200\. Received: 8000$",
    ):
        NavaiVoiceBackendOptions(openai_api_key="k", client_secret_ttl_seconds=8000)


@pytest.mark.parametrize(
    ("ttl", "shown"),
    [
        pytest.param("abc", "'abc'", id="string"),
        pytest.param(600.5, "600.5", id="float"),
        pytest.param("", "''", id="empty-string"),
        pytest.param(True, "True", id="bool"),
        pytest.param(None, "None", id="none"),
    ],
)
def test_ttl_not_an_integer_names_the_value(ttl: Any, shown: str) -> None:
    with pytest.raises(OptionsError) as caught:
        NavaiVoiceBackendOptions(openai_api_key="k", client_secret_ttl_seconds=ttl)
    assert str(caught.value) == (f"client_secret_ttl_seconds must be an integer. Received: {shown}")


def test_missing_key_without_request_keys() -> None:
    for key in (None, "", "   "):
        with pytest.raises(OptionsError) as caught:
            NavaiVoiceBackendOptions(openai_api_key=key)
        assert str(caught.value) == "Missing openai_api_key in NavaiVoiceBackendOptions."
    assert NavaiVoiceBackendOptions(allow_api_key_from_request=True).openai_api_key is None


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        pytest.param(
            {"openai_api_key": "sk bad"},
            "openai_api_key must be printable ASCII",
            id="key-with-space",
        ),
        pytest.param(
            {"openai_api_key": "sk-\nx"},
            "openai_api_key must be printable ASCII",
            id="key-with-newline",
        ),
        pytest.param({"upstream_timeout_seconds": 0}, "upstream_timeout_seconds", id="timeout-0"),
        pytest.param(
            {"upstream_timeout_seconds": -1}, "upstream_timeout_seconds", id="timeout-neg"
        ),
        pytest.param(
            {"upstream_timeout_seconds": float("inf")}, "upstream_timeout_seconds", id="timeout-inf"
        ),
        pytest.param(
            {"upstream_timeout_seconds": "5"}, "upstream_timeout_seconds", id="timeout-str"
        ),
        pytest.param(
            {"upstream_timeout_seconds": True}, "upstream_timeout_seconds", id="timeout-bool"
        ),
        pytest.param({"openai_base_url": "ftp://x"}, "openai_base_url", id="base-url-scheme"),
        pytest.param({"openai_base_url": "http://a b"}, "openai_base_url", id="base-url-space"),
        pytest.param({"openai_base_url": "http://[::1"}, "openai_base_url", id="base-url-broken"),
        pytest.param(
            {"openai_base_url": "https://a.test/v1?x=1"}, "openai_base_url", id="base-url-query"
        ),
        pytest.param(
            {"openai_base_url": "https://a.test/v1#"}, "openai_base_url", id="base-url-fragment"
        ),
        pytest.param({"openai_base_url": "https:///v1"}, "openai_base_url", id="base-url-no-host"),
        pytest.param(
            {"openai_base_url": "http://a.test:0/v1"}, "openai_base_url", id="base-url-port-0"
        ),
        pytest.param({"openai_base_url": 5}, "openai_base_url", id="base-url-not-text"),
        pytest.param(
            {"default_model": 5},
            "default_model must be a string. Received: int",
            id="model-not-text",
        ),
        pytest.param(
            {"openai_api_key": b"sk"},
            "openai_api_key must be a string. Received: bytes",
            id="key-bytes",
        ),
        pytest.param(
            {"allow_api_key_from_request": "false"}, "must be True or False", id="allow-not-bool"
        ),
    ],
)
def test_invalid_options(fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(OptionsError, match=fragment) as caught:
        NavaiVoiceBackendOptions(**{"openai_api_key": "sk-ok", **fields})
    assert "sk-ok" not in str(caught.value)


def test_invalid_key_is_not_echoed() -> None:
    bad = CANARY_KEY + " tail"
    with pytest.raises(OptionsError) as caught:
        NavaiVoiceBackendOptions(openai_api_key=bad)
    assert CANARY_KEY not in str(caught.value)
    assert CANARY_KEY not in repr(caught.value)


def test_keys_never_in_repr() -> None:
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY)
    req = CreateClientSecretRequest(api_key=CANARY_KEY, model="m")
    assert CANARY_KEY not in repr(opts)
    assert CANARY_KEY not in str(opts)
    assert CANARY_KEY not in repr(req)
    assert "model='m'" in repr(req)


def test_key_is_trimmed() -> None:
    assert NavaiVoiceBackendOptions(openai_api_key="  sk-x \n").openai_api_key == "sk-x"


def test_request_blank_fields_are_absent() -> None:
    req = CreateClientSecretRequest(model=" ", voice="", language="es", api_key="  ")
    assert (req.model, req.voice, req.language, req.api_key) == (None, None, "es", None)


# -- the environment ---------------------------------------------------------------------

FULL_ENV = {
    "OPENAI_API_KEY": "sk-env",
    "OPENAI_REALTIME_MODEL": "gpt-realtime-mini",
    "OPENAI_REALTIME_VOICE": "cedar",
    "OPENAI_REALTIME_INSTRUCTIONS": "Be brief.",
    "OPENAI_REALTIME_LANGUAGE": "Spanish",
    "OPENAI_REALTIME_VOICE_ACCENT": "Mexican",
    "OPENAI_REALTIME_VOICE_TONE": "warm",
    "OPENAI_REALTIME_CLIENT_SECRET_TTL": "120",
    "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1",
}


def test_every_variable_is_read() -> None:
    opts = get_navai_voice_backend_options_from_env(FULL_ENV)
    assert opts == NavaiVoiceBackendOptions(
        openai_api_key="sk-env",
        default_model="gpt-realtime-mini",
        default_voice="cedar",
        default_instructions="Be brief.",
        default_language="Spanish",
        default_voice_accent="Mexican",
        default_voice_tone="warm",
        client_secret_ttl_seconds=120,
        allow_api_key_from_request=False,
        openai_base_url="http://127.0.0.1:8000/v1",
    )


def test_empty_environment() -> None:
    opts = get_navai_voice_backend_options_from_env({})
    assert opts == NavaiVoiceBackendOptions(allow_api_key_from_request=True)


def test_blank_variables_count_as_unset() -> None:
    env = {name: "  " for name in FULL_ENV}
    assert get_navai_voice_backend_options_from_env(
        env
    ) == get_navai_voice_backend_options_from_env({})


@pytest.mark.parametrize(
    ("key", "switch", "allowed"),
    [
        pytest.param("sk-env", None, False, id="key-no-switch"),
        pytest.param("sk-env", "true", True, id="key-true"),
        pytest.param("sk-env", "TRUE", True, id="key-TRUE"),
        pytest.param("sk-env", " True ", True, id="key-True-spaced"),
        pytest.param("sk-env", "false", False, id="key-false"),
        pytest.param("sk-env", "1", False, id="key-1-is-not-true"),
        pytest.param("sk-env", "yes", False, id="key-yes-is-not-true"),
        pytest.param(None, None, True, id="no-key-no-switch"),
        pytest.param(None, "false", True, id="no-key-false-still-allowed"),
        pytest.param("   ", None, True, id="blank-key-is-no-key"),
    ],
)
def test_key_policy_from_env(key: str | None, switch: str | None, allowed: bool) -> None:
    env = {"OPENAI_API_KEY": key, "NAVAI_ALLOW_FRONTEND_API_KEY": switch}
    assert get_navai_voice_backend_options_from_env(env).allow_api_key_from_request is allowed


@pytest.mark.parametrize(
    ("raw", "ttl"),
    [
        pytest.param("600", 600, id="600"),
        pytest.param(" 10 ", 10, id="spaced"),
        pytest.param("7200", 7200, id="7200"),
        pytest.param("", 600, id="empty-is-default"),
        pytest.param(None, 600, id="unset-is-default"),
    ],
)
def test_ttl_from_env(raw: str | None, ttl: int) -> None:
    env = {"OPENAI_API_KEY": "k", "OPENAI_REALTIME_CLIENT_SECRET_TTL": raw}
    assert get_navai_voice_backend_options_from_env(env).client_secret_ttl_seconds == ttl


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param("abc", "must be an integer. Received: 'abc'", id="abc"),
        pytest.param("600.5", "must be an integer. Received: '600.5'", id="600.5"),
        pytest.param("6e2", "must be an integer. Received: '6e2'", id="exponent"),
        pytest.param("9", "must be between 10 and 7200. Received: 9", id="9"),
        pytest.param("7201", "must be between 10 and 7200. Received: 7201", id="7201"),
    ],
)
def test_bad_ttl_from_env(raw: str, message: str) -> None:
    env = {"OPENAI_API_KEY": "k", "OPENAI_REALTIME_CLIENT_SECRET_TTL": raw}
    with pytest.raises(OptionsError, match=message):
        get_navai_voice_backend_options_from_env(env)


def test_an_integer_variable_for_no_option_is_named_alone_when_malformed() -> None:
    with pytest.raises(OptionsError) as caught:
        read_int({"NAVAI_SOME_COUNT": "ten"}, "NAVAI_SOME_COUNT")
    assert caught.value.message == "NAVAI_SOME_COUNT must be an integer. Received: 'ten'"


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in FULL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-os")
    monkeypatch.setenv("OPENAI_REALTIME_VOICE", "verse")
    monkeypatch.setenv("NAVAI_CORS_ORIGIN", "http://localhost:5173, http://a.test ,")
    opts = get_navai_voice_backend_options_from_env()
    assert (opts.openai_api_key, opts.default_voice) == ("sk-from-os", "verse")
    assert get_cors_origins_from_env() == ["http://localhost:5173", "http://a.test"]


def test_cors_origins_unset_means_off() -> None:
    assert get_cors_origins_from_env({}) is None
    assert get_cors_origins_from_env({"NAVAI_CORS_ORIGIN": " "}) is None
    assert get_cors_origins_from_env({"NAVAI_CORS_ORIGIN": "*"}) == ["*"]


def test_a_provider_is_read_in_any_case_and_what_is_not_text_is_named() -> None:
    opts = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, tts_provider=" ElevenLabs ", elevenlabs_api_key="xi-key"
    )
    assert opts.tts_provider == "elevenlabs"
    with pytest.raises(OptionsError) as caught:
        NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, tts_provider=5)  # type: ignore[arg-type]
    assert caught.value.message == "tts_provider must be 'openai' or 'elevenlabs'. Received: 5"


def test_a_base_url_loses_its_trailing_slashes_and_only_them() -> None:
    opts = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY,
        openai_base_url=" https://proxy.test/BOX// ",
        elevenlabs_base_url="https://speech.test/XX/",
    )
    assert opts.openai_base_url == "https://proxy.test/BOX"
    assert opts.elevenlabs_base_url == "https://speech.test/XX"
