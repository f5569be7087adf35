"""One rule for every navai environment variable (docs/configuration.md):

* a keyword given in code wins;
* every other navai keyword is read from ``os.environ``, whether or not
  ``opts=`` is given (``opts=`` covers the options' own fields only);
* an ``env=`` mapping replaces ``os.environ`` for all of them.

Each row names a variable, a value, and how the built handler shows it took
effect; every row is checked in every way of configuring, on both shells'
handlers.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from navai_mw import AsyncNavaiHandler, NavaiHandler, NavaiVoiceBackendOptions
from navai_mw.auth import BearerTokens, JWTBearer
from navai_mw.endpoint.webhook_steps import DEFAULT_DEDUP_SECONDS

OPTS = NavaiVoiceBackendOptions(openai_api_key="sk-in-code", default_voice="marin")
Handler = NavaiHandler | AsyncNavaiHandler


def _routes(handler: Handler) -> list[str]:
    return [route.name for route in handler.endpoint.routes]


def _safety(handler: Handler) -> str | None:
    return handler.endpoint.guard.safety_identifier("alice")


def _credentials(handler: Handler) -> bool:
    cors = handler.endpoint.cors.headers({"origin": "http://front.test"}) or ()
    return ("Access-Control-Allow-Credentials", "true") in cors


ALICE = hmac.new(b"a-safety-secret", b"app:alice", hashlib.sha256).hexdigest()

# variable -> (its value, the keyword that stands for it, what the handler shows with it)
ROWS: dict[str, tuple[str, str, Callable[[Handler], object], object]] = {
    "NAVAI_CORS_ORIGIN": (
        "http://front.test",
        "cors_origins",
        lambda h: h.endpoint.cors.origins,
        frozenset({"http://front.test"}),
    ),
    "NAVAI_RELAY": ("true", "relay", lambda h: "calls" in _routes(h), True),
    "NAVAI_TRANSCRIPTION": (
        "true",
        "transcription",
        lambda h: "transcription_secret" in _routes(h),
        True,
    ),
    "NAVAI_MAX_CALL_SECONDS": ("90", "max_call_seconds", lambda h: h.endpoint.max_call_seconds, 90),
    "NAVAI_FUNCTION_TIMEOUT_SECONDS": (
        "7",
        "function_timeout_seconds",
        lambda h: h.endpoint.settings.function_timeout,
        7,
    ),
    "NAVAI_AUTH_TOKENS": (
        "ops:0123456789abcdef0",
        "authorize",
        lambda h: getattr(h.endpoint.guard.authorize, "names", None),
        ("ops",),
    ),
    "NAVAI_RATE_LIMIT": (
        "3/minute",
        "rate_limit",
        lambda h: h.endpoint.guard.limits["mint"].text,
        "3/minute",
    ),
    "NAVAI_RATE_LIMIT_STORAGE": (
        "memory://",
        "rate_limit_storage",
        lambda h: h.endpoint.guard.store_uri,
        "memory://",
    ),
    "NAVAI_RATE_LIMIT_FAIL_OPEN": (
        "true",
        "rate_limit_fail_open",
        lambda h: h.endpoint.guard.fail_open,
        True,
    ),
    "NAVAI_TRUSTED_PROXIES": (
        "10.0.0.0/8",
        "trusted_proxies",
        lambda h: [str(net) for net in h.endpoint.guard.trusted_proxies],
        ["10.0.0.0/8"],
    ),
    "NAVAI_SAFETY_ID_SECRET": ("a-safety-secret", "safety_id_secret", _safety, ALICE),
    "NAVAI_MAX_UPSTREAM_CONNECTIONS": (
        "7",
        "max_upstream_connections",
        lambda h: getattr(h.transport, "max_connections", None),
        7,
    ),
    "NAVAI_MAX_SIDEBANDS": (
        "12",
        "max_sidebands",
        lambda h: h.effects.sidebands.limit,
        12,
    ),
}
# Read beside another: credentials need origins; a sideband, the relay.
COMPANIONS = {"NAVAI_CORS_ALLOW_CREDENTIALS": {"NAVAI_CORS_ORIGIN": "http://front.test"}}
ROWS["NAVAI_CORS_ALLOW_CREDENTIALS"] = ("true", "cors_allow_credentials", _credentials, True)


def _sideband(field: str) -> Callable[[Handler], object]:
    def shown(handler: Handler) -> object:
        sideband = handler.endpoint.settings.sideband
        return sideband is not None and (field == "" or getattr(sideband, field))

    return shown


for _variable, _keyword, _field in (
    ("NAVAI_SIDEBAND", "sideband", ""),
    ("NAVAI_SERVER_FUNCTIONS", "server_functions", "server_functions"),
    ("NAVAI_PIN_SESSION", "pin_session", "pin_session"),
    ("NAVAI_SIDEBAND_REQUIRED", "sideband_required", "required"),
):
    ROWS[_variable] = ("true", _keyword, _sideband(_field), True)
    COMPANIONS[_variable] = {"NAVAI_RELAY": "true"}


def _budget(handler: Handler) -> object:
    budgets = handler.endpoint.settings.budgets
    return None if budgets is None else budgets.policy.default[0].text


def _budget_field(field: str) -> Callable[[Handler], object]:
    def shown(handler: Handler) -> object:
        return getattr(handler.endpoint.settings.budgets, field, None)

    return shown


ROWS["NAVAI_BUDGET"] = ("3 minutes/day", "budget", _budget, "3 minutes/day")
ROWS["NAVAI_BUDGET_FAIL_OPEN"] = ("true", "budget_fail_open", _budget_field("fail_open"), True)
ROWS["NAVAI_BUDGET_SECRET_SECONDS"] = (
    "20",
    "budget_secret_seconds",
    _budget_field("secret_seconds"),
    20,
)
for _variable in ("NAVAI_BUDGET", "NAVAI_BUDGET_FAIL_OPEN", "NAVAI_BUDGET_SECRET_SECONDS"):
    COMPANIONS[_variable] = {"NAVAI_RELAY": "true"}
for _variable in ("NAVAI_BUDGET_FAIL_OPEN", "NAVAI_BUDGET_SECRET_SECONDS"):
    COMPANIONS[_variable]["NAVAI_BUDGET"] = "3 minutes/day"


def _webhooks(field: str) -> Callable[[Handler], object]:
    def shown(handler: Handler) -> object:
        webhooks = handler.endpoint.settings.webhooks
        return None if webhooks is None else getattr(webhooks, field)

    return shown


WEBHOOK_SECRET = "whsec_c2lnbmluZyBrZXk="
ROWS["OPENAI_WEBHOOK_SECRET"] = (
    WEBHOOK_SECRET,
    "openai_webhook_secret",
    _webhooks("key"),
    b"signing key",
)
ROWS["NAVAI_SIP_ACCEPT"] = ("live", "sip_accept", _webhooks("sip_accept"), "live")
ROWS["NAVAI_WEBHOOK_DEDUP_SECONDS"] = (
    "3600",
    "webhook_dedup_seconds",
    _webhooks("dedup_seconds"),
    3600,
)
ROWS["NAVAI_BLOCK_SECONDS"] = ("86400", "block_seconds", _webhooks("block_seconds"), 86400)
for _variable in ("NAVAI_SIP_ACCEPT", "NAVAI_WEBHOOK_DEDUP_SECONDS", "NAVAI_BLOCK_SECONDS"):
    COMPANIONS[_variable] = {"OPENAI_WEBHOOK_SECRET": WEBHOOK_SECRET}


def _build(kind: str, opts: NavaiVoiceBackendOptions | None, **keywords: Any) -> Handler:
    if kind == "wsgi":
        return NavaiHandler(opts, functions=[], **keywords)

    async def made() -> AsyncNavaiHandler:
        return AsyncNavaiHandler(opts, functions=[], **keywords)

    return anyio.run(made)


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ["OPENAI_API_KEY", *ROWS, *COMPANIONS, "OPENAI_REALTIME_VOICE"]:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
@pytest.mark.parametrize("variable", sorted(ROWS))
def test_every_variable_follows_the_one_rule(
    variable: str, kind: str, clean: pytest.MonkeyPatch
) -> None:
    value, keyword, shown, expected = ROWS[variable]
    companions = COMPANIONS.get(variable, {})
    environ = {variable: value, **companions}

    # Read from os.environ without options...
    for name, text in {**environ, "OPENAI_API_KEY": "sk-from-environ"}.items():
        clean.setenv(name, text)
    handler = _build(kind, None)
    assert shown(handler) == expected, "opts=None"
    # ...and with options given in code: they cover their own fields only.
    handler = _build(kind, OPTS)
    assert shown(handler) == expected, "opts given"
    assert handler.endpoint.opts is OPTS

    # An env= mapping replaces os.environ, whose value here is not even valid.
    clean.setenv(variable, "not a valid value, and not read")
    handler = _build(kind, None, env={**environ, "OPENAI_API_KEY": "sk-from-mapping"})
    assert shown(handler) == expected, "env= mapping"
    assert handler.endpoint.opts.openai_api_key == "sk-from-mapping"

    # A keyword given in code wins over both.
    clean.setenv(variable, value)
    given = _given(keyword)
    handler = _build(kind, OPTS, **{keyword: given[0]})
    assert shown(handler) == given[1], "keyword given"


def _given(keyword: str) -> tuple[object, object]:
    """A value for ``keyword`` unlike the variable's, and what it shows."""
    table: dict[str, tuple[object, object]] = {
        "cors_origins": (["http://code.test"], frozenset({"http://code.test"})),
        "relay": (False, False),
        "transcription": (False, False),
        "max_call_seconds": (30, 30),
        "function_timeout_seconds": (3, 3),
        "authorize": (BearerTokens({"code": "fedcba98765432100"}), ("code",)),
        "rate_limit": ("9/hour", "9/hour"),
        "rate_limit_storage": ("redis://127.0.0.1:1", "redis://127.0.0.1:1"),
        "rate_limit_fail_open": (False, False),
        "trusted_proxies": (["192.0.2.0/24"], ["192.0.2.0/24"]),
        "safety_id_secret": (
            "in-code",
            hmac.new(b"in-code", b"app:alice", hashlib.sha256).hexdigest(),
        ),
        "max_upstream_connections": (3, 3),
        "cors_allow_credentials": (False, False),
        "max_sidebands": (5, 5),
        "sideband": (False, False),
        "server_functions": (False, False),
        "pin_session": (False, False),
        "sideband_required": (False, False),
        "openai_webhook_secret": ("whsec_aW4gY29kZQ==", b"in code"),
        "sip_accept": ("realtime", "realtime"),
        "webhook_dedup_seconds": (60, 60),
        "block_seconds": (60, 60),
        "budget": ("9 minutes/day", "9 minutes/day"),
        "budget_fail_open": (False, False),
        "budget_secret_seconds": (5, 5),
    }
    return table[keyword]


def test_the_env_mapping_reaches_the_options_and_the_functions(
    clean: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    folder = tmp_path / "src" / "ai" / "functions-modules"
    folder.mkdir(parents=True)
    (folder / "tools.py").write_text("def ping() -> str:\n    return 'pong'\n")
    clean.setenv("OPENAI_REALTIME_VOICE", "alloy")
    clean.setenv("NAVAI_FUNCTIONS_BASE_DIR", "/nowhere")
    env = {
        "OPENAI_API_KEY": "sk-from-mapping",
        "OPENAI_REALTIME_VOICE": "cedar",
        "NAVAI_FUNCTIONS_BASE_DIR": str(tmp_path),
        "NAVAI_FUNCTIONS_FOLDERS": "src/ai/functions-modules",
    }
    handler = NavaiHandler(None, env=env)
    try:
        assert handler.endpoint.opts.default_voice == "cedar"
        assert handler.endpoint.functions.names == ["ping"]
    finally:
        handler.close()


def test_jwt_bearer_from_the_environment_follows_the_rule(clean: pytest.MonkeyPatch) -> None:
    jwt = {
        "NAVAI_AUTH_JWKS_URL": "https://issuer.test/.well-known/jwks.json",
        "NAVAI_AUTH_AUDIENCE": "https://api.test",
        "NAVAI_AUTH_ISSUER": "https://issuer.test/",
    }
    for name, value in jwt.items():
        clean.setenv(name, value)
    in_code = NavaiHandler(OPTS, functions=[])
    mapped = NavaiHandler(OPTS, functions=[], env={})
    try:
        assert isinstance(in_code.endpoint.guard.authorize, JWTBearer)
        assert mapped.endpoint.guard.authorize is None  # the mapping has none of them
    finally:
        in_code.close()
        mapped.close()


def test_a_variable_left_unset_leaves_its_default(clean: pytest.MonkeyPatch) -> None:
    handler = _build("wsgi", OPTS, env={}, relay=True, budget="3 minutes/day")
    webhooks = _build("wsgi", OPTS, env={}, openai_webhook_secret=WEBHOOK_SECRET)
    try:
        assert handler.endpoint.settings.max_call_seconds is None
        assert _budget_field("secret_seconds")(handler) is None
        assert _webhooks("dedup_seconds")(webhooks) == DEFAULT_DEDUP_SECONDS
        assert _webhooks("block_seconds")(webhooks) is None
        assert _webhooks("clock")(webhooks) is time.time
    finally:
        handler.close()
        webhooks.close()


def test_a_webhook_clock_given_in_code_is_the_one_used(clean: pytest.MonkeyPatch) -> None:
    def clock() -> float:
        return 1_700_000_000.0

    handler = _build("wsgi", OPTS, openai_webhook_secret=WEBHOOK_SECRET, webhook_clock=clock)
    try:
        assert _webhooks("clock")(handler) is clock
    finally:
        handler.close()
