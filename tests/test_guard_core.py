"""The guard's decisions, driven by hand: no shell, no storage, no clock.

Each test sends the guard's effects their results directly, the way the
shells' performers would, and checks what it decides."""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

import pytest

from navai_mw import AuthError, NavaiError, NavaiVoiceBackendOptions, OptionsError, RequestInfo
from navai_mw.config.env import guard_from_env
from navai_mw.core.effects import Attempt, CallHook, HitLimit, HookResult, LimitResult, Outcome
from navai_mw.core.exchange import attempts
from navai_mw.core.http import HttpRequest, HttpResponse
from navai_mw.core.rate_limit_policy import RateLimitPolicy, parse_rate_limits
from navai_mw.endpoint.answers import Answer
from navai_mw.endpoint.endpoint import Endpoint
from navai_mw.guard.addresses import client_address, parse_trusted_proxies
from navai_mw.guard.guard import Guard
from navai_mw.runtime.drivers import drive_sync

NOW = 1_800_000_000.0
INFO = RequestInfo(method="POST", route="client_secret", path="/p", headers={}, client="1.2.3.4")


def run_check(
    guard: Guard, results: list[Any], info: RequestInfo = INFO
) -> tuple[list[Any], tuple[str | None, tuple[tuple[str, str], ...]]]:
    """Run ``guard.check``, answering its effects with ``results`` in turn;
    returns the effects it yielded and what it returned."""
    steps = guard.check(info, "mint")
    effects = [next(steps)] if results else []
    try:
        if not results:
            next(steps)
        for result in results:
            effects.append(steps.send(result))
    except StopIteration as done:
        return effects[: len(results)], done.value
    raise AssertionError(f"the guard asked for more than {len(results)} effects: {effects}")


def limited(text: str) -> Guard:
    return Guard(limits=parse_rate_limits(text), storage_uri="memory://")


# -- the limit's answer ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("windows", "header"),
    [
        pytest.param([(9, NOW + 42.2)], '"mint";r=9;t=43', id="rounded-up"),
        pytest.param([(9, NOW)], '"mint";r=9;t=60', id="fresh-window-is-all-ahead"),
        pytest.param([(10, NOW)], '"mint";r=10;t=0', id="untouched-window"),
        pytest.param([(10, NOW - 5)], '"mint";r=10;t=0', id="reset-in-the-past"),
        pytest.param([(9, NOW + 1)], '"mint";r=9;t=1', id="one-second"),
    ],
)
def test_the_ratelimit_header(windows: list[tuple[int, float]], header: str) -> None:
    _, (identity, headers) = run_check(
        limited("10/minute"), [LimitResult(allowed=True, windows=tuple(windows), now=NOW)]
    )
    assert identity is None
    assert dict(headers) == {"RateLimit-Policy": '"mint";q=10;w=60', "RateLimit": header}


def test_the_tightest_window_speaks_for_the_policy() -> None:
    guard = limited("10/minute;100/hour;3/day")
    windows = ((5, NOW + 30), (2, NOW + 600), (2, NOW + 7000))
    _, (_, headers) = run_check(guard, [LimitResult(allowed=True, windows=windows, now=NOW)])
    assert dict(headers)["RateLimit"] == '"mint";r=2;t=7000'  # fewest left, then longest wait
    assert dict(headers)["RateLimit-Policy"] == (
        '"mint";q=10;w=60, "mint";q=100;w=3600, "mint";q=3;w=86400'
    )


def test_of_two_windows_the_second_can_be_the_tightest() -> None:
    windows = ((5, NOW + 30), (2, NOW + 600))
    _, (_, headers) = run_check(
        limited("10/minute;100/hour"), [LimitResult(allowed=True, windows=windows, now=NOW)]
    )
    assert dict(headers)["RateLimit"] == '"mint";r=2;t=600'


@pytest.mark.parametrize(
    ("windows", "retry_after"),
    [
        pytest.param(((0, NOW + 17.5),), "18", id="seconds-until-a-slot"),
        pytest.param(((0, NOW),), "60", id="fresh-window"),
        pytest.param(((10, NOW - 3),), "1", id="window-emptied-meanwhile"),
    ],
)
def test_over_the_limit_is_429_with_retry_after(
    windows: tuple[tuple[int, float], ...], retry_after: str
) -> None:
    with pytest.raises(NavaiError) as caught:
        run_check(limited("10/minute"), [LimitResult(allowed=False, windows=windows, now=NOW)])
    assert (caught.value.status, caught.value.message) == (
        429,
        "Too many requests; try again later.",
    )
    assert caught.value.headers[0] == ("Retry-After", retry_after)
    assert [name for name, _ in caught.value.headers] == [
        "Retry-After",
        "RateLimit-Policy",
        "RateLimit",
    ]


def test_the_key_is_the_identity_else_the_address() -> None:
    def hook(info: RequestInfo) -> str:
        return "alice"

    effects, _ = run_check(
        Guard(authorize=hook, limits=parse_rate_limits("1/minute")),
        [HookResult("alice"), LimitResult(windows=((0, NOW),), now=NOW)],
    )
    assert isinstance(effects[0], CallHook)
    assert effects[0].args == (INFO,)
    assert isinstance(effects[1], HitLimit)
    assert effects[1].key == "navai:mint:id:app:alice"
    effects, _ = run_check(limited("1/minute"), [LimitResult(windows=((0, NOW),), now=NOW)])
    assert effects[0].key == "navai:mint:ip:1.2.3.4"
    nobody = RequestInfo(method="POST", route="r", path="/", headers={}, client=None)
    effects, _ = run_check(limited("1/minute"), [LimitResult(windows=((0, NOW),), now=NOW)], nobody)
    assert effects[0].key == "navai:mint:ip:unknown"


def test_no_policy_for_the_group_asks_nothing() -> None:
    guard = Guard(limits=parse_rate_limits({"speech": "1/minute"}))
    assert run_check(guard, []) == ([], (None, ()))


# -- the hook's answers ----------------------------------------------------------------


def test_a_hook_that_returns_garbage_is_logged_by_type(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="navai_mw")
    with pytest.raises(NavaiError) as caught:
        run_check(Guard(authorize=lambda info: 42), [HookResult(42)])
    assert (caught.value.status, caught.value.message) == (
        503,
        "Authorization is unavailable; try again shortly.",
    )
    assert [r.getMessage() for r in caplog.records] == [
        "navai_mw: the authorize hook returned int; it must return a non-empty string or None"
    ]


def test_an_auth_error_from_the_hook_is_raised_as_it_is() -> None:
    refusal = AuthError("No.", status=403)
    with pytest.raises(AuthError) as caught:
        run_check(Guard(authorize=lambda info: None), [HookResult(error=refusal)])
    assert caught.value is refusal


class Stub:
    """A built-in-style authorizer: one upstream attempt, then an identity."""

    def __init__(self) -> None:
        self.seen: list[RequestInfo] = []

    def steps(self, info: RequestInfo) -> Generator[Attempt, Outcome, str | None]:
        self.seen.append(info)
        request = HttpRequest(method="GET", url="http://jwks.test", headers=(), body=b"")
        response = yield from attempts(request, budget=5, what="it")
        return response.body.decode() or None


def test_a_built_in_authorizer_runs_its_own_steps() -> None:
    stub = Stub()
    guard = Guard(authorize=stub)
    steps = guard.check(INFO, "mint")
    attempt = next(steps)
    assert isinstance(attempt, Attempt)
    assert attempt.request.url == "http://jwks.test"
    with pytest.raises(StopIteration) as done:
        steps.send(Outcome(HttpResponse(status=200, body=b"bob")))
    assert done.value.value == ("bob", ())
    assert stub.seen == [INFO]
    steps = guard.check(INFO, "mint")
    next(steps)
    with pytest.raises(AuthError):
        steps.send(Outcome(HttpResponse(status=200, body=b"")))  # no identity: 401


# -- the driver's clock starts at the first attempt -----------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_slow_hook_does_not_eat_the_upstream_budget() -> None:
    clock = Clock()

    def steps() -> Generator[Any, Any, HttpResponse]:
        yield CallHook(lambda info: "a", (INFO,))  # the hook takes 100 s of this clock
        request = HttpRequest(method="POST", url="http://x", headers=(), body=b"")
        return (yield from attempts(request, budget=10))

    def perform(effect: object) -> HookResult:
        clock.now += 100
        return HookResult("a")

    class Upstream:
        def send(self, request: HttpRequest, *, timeout: float) -> HttpResponse:
            clock.now += 1
            return HttpResponse(status=200, body=b"ok")

    response = drive_sync(steps(), Upstream(), perform=perform, clock=clock)
    assert response.body == b"ok"  # measured from the first attempt: 1 s, not 101


# -- configuration ---------------------------------------------------------------------


def test_guard_from_env_reads_every_variable() -> None:
    env = {
        "NAVAI_AUTH_TOKENS": "ops:tok-ops-0123456789abcdef",
        "NAVAI_RATE_LIMIT": "3/minute",
        "NAVAI_RATE_LIMIT_STORAGE": " redis://127.0.0.1:1/0 ",
        "NAVAI_RATE_LIMIT_FAIL_OPEN": "yes",
        "NAVAI_TRUSTED_PROXIES": "10.0.0.0/8",
        "NAVAI_SAFETY_ID_SECRET": "s3cret",
    }
    guard = guard_from_env(env, api_key="sk-x")
    assert type(guard.authorize).__name__ == "BearerTokens"
    assert sorted(guard.limits) == ["functions", "mint", "speech", "usage"]
    assert guard.limits["mint"].text == "3/minute"
    assert guard.storage_uri == "redis://127.0.0.1:1/0"
    assert guard.fail_open is True
    assert guard.trusted_proxies == parse_trusted_proxies("10.0.0.0/8")
    assert guard.safety_secret == b"s3cret"


def test_guard_from_env_defaults() -> None:
    guard = guard_from_env({}, api_key=None)
    # No limits: nothing counted; the calls' store is the process's memory.
    assert guard == Guard(store_uri="memory://")
    assert guard.storage_uri is None
    assert guard.active is False
    assert guard.safety_identifier("alice") is None
    assert guard_from_env({"NAVAI_RATE_LIMIT": "1/day"}, api_key=None).storage_uri == "memory://"


def test_guard_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NAVAI_AUTH_TOKENS", "NAVAI_AUTH_JWKS_URL", "NAVAI_RATE_LIMIT_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NAVAI_RATE_LIMIT", "3/minute")
    monkeypatch.setenv("NAVAI_TRUSTED_PROXIES", "10.0.0.0/8")
    guard = guard_from_env(api_key=None)
    assert guard.limits["mint"].text == "3/minute"
    assert guard.trusted_proxies == parse_trusted_proxies("10.0.0.0/8")


def test_guard_keywords_win_over_the_environment() -> None:
    def hook(info: RequestInfo) -> str:
        return "a"

    env = {"NAVAI_AUTH_TOKENS": "ops:tok-ops-0123456789abcdef", "NAVAI_RATE_LIMIT": "1/day"}
    guard = guard_from_env(
        env,
        api_key=None,
        authorize=hook,
        rate_limit="5/minute",
        rate_limit_storage="memory://",
        rate_limit_fail_open=False,
        safety_id_secret="k",
    )
    assert guard.authorize is hook
    assert guard.limits["mint"].text == "5/minute"


def test_jwks_variables_alone_build_a_jwt_authorizer() -> None:
    env = {
        "NAVAI_AUTH_JWKS_URL": "https://idp.example/.well-known/jwks.json",
        "NAVAI_AUTH_AUDIENCE": "voice",
        "NAVAI_AUTH_ISSUER": "https://idp.example/",
    }
    assert type(guard_from_env(env, api_key=None).authorize).__name__ == "JWTBearer"


def test_unknown_groups_are_all_named() -> None:
    with pytest.raises(OptionsError) as caught:
        parse_rate_limits({"mnt": "1/day", "speach": "1/day"})
    assert caught.value.message == (
        "rate_limit names unknown route groups: mnt, speach. "
        "Groups: mint, functions, speech, usage."
    )


def test_cors_allow_credentials_must_be_a_bool() -> None:
    opts = NavaiVoiceBackendOptions(openai_api_key="k")
    with pytest.raises(ValueError, match=r"^cors_allow_credentials must be True or False\. "):
        Endpoint(opts, cors_allow_credentials="yes")  # type: ignore[arg-type]


def test_the_hook_sees_the_path_it_was_given() -> None:
    wanted = Endpoint(NavaiVoiceBackendOptions(openai_api_key="k"), path="/t").begin(
        "POST", {}, path="/t/"
    )
    assert wanted.info.path == "/t/"  # type: ignore[union-attr]


# -- addresses -----------------------------------------------------------------------------


def test_a_network_with_host_bits_is_taken_as_its_network() -> None:
    assert parse_trusted_proxies(["10.1.2.3/8"]) == parse_trusted_proxies(["10.0.0.0/8"])


@pytest.mark.parametrize(
    ("headers", "client"),
    [
        pytest.param({"forwarded": "for=1.2.3.4,for=10.0.0.2"}, "1.2.3.4", id="no-space"),
        pytest.param({"forwarded": 'for="1.2.3.4"'}, "1.2.3.4", id="quoted"),
        pytest.param({"forwarded": 'for="[::1]:80"'}, "::1", id="bracketed-with-port"),
    ],
)
def test_forwarded_spellings(headers: dict[str, str], client: str) -> None:
    assert client_address("10.0.0.1", headers, parse_trusted_proxies("10.0.0.0/8,::1")) == client


def test_a_policy_keeps_its_text() -> None:
    assert RateLimitPolicy.parse("mint", "1/minute").text == "1/minute"


def test_a_guard_refusal_carries_the_cors_headers() -> None:
    def nobody(info: RequestInfo) -> None:
        return None

    endpoint = Endpoint(
        NavaiVoiceBackendOptions(openai_api_key="k"),
        cors_origins=["https://app.test"],
        guard=Guard(authorize=nobody),
    )
    wanted = endpoint.begin("POST", {"origin": "https://app.test"})
    assert not isinstance(wanted, Answer)
    steps = endpoint.finish(wanted, b"")
    assert isinstance(next(steps), CallHook)
    with pytest.raises(StopIteration) as done:
        steps.send(HookResult(None))
    answer = done.value.value
    assert answer.status == 401
    assert ("Access-Control-Allow-Origin", "https://app.test") in answer.headers
    assert ("WWW-Authenticate", "Bearer") in answer.headers


def test_without_a_path_the_hook_sees_the_endpoints() -> None:
    wanted = Endpoint(NavaiVoiceBackendOptions(openai_api_key="k"), path="/tokenX/").begin(
        "POST", {}
    )
    assert not isinstance(wanted, Answer)
    assert wanted.info.path == "/tokenX"
