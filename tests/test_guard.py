"""The guard on both shells, in process: the authorize hook's protocol, rate
limits on memory://, the client address behind trusted proxies, the safety
identifier, CORS for credentialed pages, and where each setting comes from.

Real Redis and real servers are in test_rate_limits.py; the built-in
authorizers in test_auth.py."""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from navai_mw import (
    AuthError,
    NavaiASGIMiddleware,
    NavaiVoiceBackendOptions,
    NavaiWSGIMiddleware,
    OptionsError,
    RequestInfo,
)
from navai_mw.auth import any_of, bearer_tokens, jwt_bearer
from navai_mw.guard.addresses import client_address, parse_trusted_proxies
from navai_mw.testing import FakeOpenAIRealtime

from .conftest import CANARY_KEY, closed_port, log_message

pytestmark = pytest.mark.anyio

PATH = "/navai/realtime/client-secret"
SECRET_TOKEN = "tok-0123456789-never-logged"


def hello_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app"]


async def hello_asgi(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


Post = Callable[..., httpx.Response]


@contextmanager
def both_shells(fake: FakeOpenAIRealtime, **keywords: Any) -> Iterator[list[tuple[str, Post]]]:
    """One ``post(json=..., headers=...)`` per shell, each with its own
    middleware and the same keywords; the ASGI one runs on a portal."""
    import anyio.from_thread

    opts = keywords.pop("opts", None) or NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=fake.base_url
    )
    asgi_keywords = {**keywords}
    asgi_keywords.setdefault("rate_limit_storage", "memory://")
    with anyio.from_thread.start_blocking_portal() as portal:
        upstream = fake.async_transport()
        asgi = NavaiASGIMiddleware(hello_asgi, opts, transport=upstream, **asgi_keywords)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=asgi, client=("203.0.113.7", 5000)),
            base_url="http://api.test",
        )

        def asgi_post(path: str = PATH, **kw: Any) -> httpx.Response:
            return portal.call(lambda: client.post(path, **kw))

        with fake.sync_transport() as sync_upstream:
            wsgi = NavaiWSGIMiddleware(hello_wsgi, opts, transport=sync_upstream, **keywords)
            with httpx.Client(
                transport=httpx.WSGITransport(app=wsgi, remote_addr="203.0.113.7"),
                base_url="http://api.test",
            ) as sync_client:
                yield [
                    ("asgi", asgi_post),
                    ("wsgi", lambda path=PATH, **kw: sync_client.post(path, **kw)),
                ]
        portal.call(client.aclose)
        portal.call(upstream.aclose)


# -- the storage, when it fails ----------------------------------------------------------


def test_a_storage_failure_is_logged_naming_the_storage_without_its_password(
    fake: FakeOpenAIRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    port = closed_port()
    storage = f"redis://navai:{SECRET_TOKEN}@127.0.0.1:{port}/3?password={SECRET_TOKEN}"
    with (
        caplog.at_level(logging.WARNING, logger="navai_mw"),
        both_shells(fake, rate_limit="5/minute", rate_limit_storage=storage) as shells,
    ):
        for shell, post in shells:
            caplog.clear()
            refused = post(json={})
            assert refused.status_code == 503, shell
            assert [log_message(r) for r in caplog.records] == [
                f"navai_mw: the rate-limit storage redis://127.0.0.1:{port}/3 failed: "
                "ConnectionError"
            ], shell
            assert SECRET_TOKEN not in caplog.text


# -- the hook's protocol --------------------------------------------------------------


def user_header(info: RequestInfo) -> str | None:
    return info.headers.get("x-user")


def test_no_identity_is_401_with_a_challenge(fake: FakeOpenAIRealtime) -> None:
    with both_shells(fake, authorize=user_header) as shells:
        for _, post in shells:
            refused = post(json={})
            assert refused.status_code == 401
            assert refused.json() == {"error": "Authentication required."}
            assert refused.headers["www-authenticate"] == "Bearer"
            assert refused.headers["cache-control"] == "no-store"
            allowed = post(json={}, headers={"x-user": "alice"})
            assert allowed.status_code == 200, allowed.text
    assert len(fake.requests) == 2  # only the allowed ones reached OpenAI


@pytest.mark.parametrize(
    ("error", "status", "challenge"),
    [
        pytest.param(AuthError("Token expired."), 401, "Bearer", id="401"),
        pytest.param(AuthError("Not on the beta list.", status=403), 403, None, id="403"),
    ],
)
def test_auth_errors_answer_their_status(
    fake: FakeOpenAIRealtime, error: AuthError, status: int, challenge: str | None
) -> None:
    def refuse(info: RequestInfo) -> str:
        raise error

    with both_shells(fake, authorize=refuse) as shells:
        for _, post in shells:
            answer = post(json={})
            assert answer.status_code == status
            assert answer.json() == {"error": error.message}
            assert answer.headers.get("www-authenticate") == challenge
    assert fake.requests == []


def test_auth_error_status_is_401_or_403() -> None:
    with pytest.raises(ValueError, match="401 or 403"):
        AuthError("x", status=500)
    with pytest.raises(ValueError, match="invalid_request, invalid_token"):
        AuthError("x", error="bad_token")


def test_a_refused_token_is_named_in_the_challenge_and_a_missing_one_is_not(
    fake: FakeOpenAIRealtime,
) -> None:
    # RFC 6750 §3.1: no error code without credentials; invalid_token, with
    # a description, for credentials that came and were refused.
    tokens = bearer_tokens({"alice": SECRET_TOKEN})
    # Nothing listens there: a malformed JWT is refused before any fetch.
    jwts = jwt_bearer("http://127.0.0.1:9/jwks.json", audience="api", issuer="idp")
    for authorizer, description in (
        (tokens, "Invalid bearer token."),
        (jwts, "Invalid token: malformed."),
        (any_of(tokens, jwts), "Invalid bearer token."),
    ):
        with both_shells(fake, authorize=authorizer) as shells:
            for shell, post in shells:
                missing = post(json={})
                assert missing.status_code == 401, shell
                assert missing.headers["www-authenticate"] == "Bearer"
                other_scheme = post(json={}, headers={"authorization": "Basic YTpi"})
                assert other_scheme.headers["www-authenticate"] == "Bearer"
                for bad in ("Bearer not-the-token", "Bearer "):
                    refused = post(json={}, headers={"authorization": bad})
                    assert refused.status_code == 401, shell
                    assert refused.json() == {"error": description}
                    assert refused.headers["www-authenticate"] == (
                        f'Bearer error="invalid_token", error_description="{description}"'
                    )
    assert fake.requests == []


def test_a_hooks_auth_error_may_name_its_rfc_6750_error(fake: FakeOpenAIRealtime) -> None:
    def refuse(info: RequestInfo) -> str:
        if info.headers.get("x-scope") == "read":
            raise AuthError("Needs the voice scope.", status=403, error="insufficient_scope")
        raise AuthError('Session "x" ended.', error="invalid_token")

    with both_shells(fake, authorize=refuse) as shells:
        for _, post in shells:
            ended = post(json={})
            assert ended.status_code == 401
            # The description drops what its quotes could not hold.
            assert ended.headers["www-authenticate"] == (
                'Bearer error="invalid_token", error_description="Session x ended."'
            )
            scoped = post(json={}, headers={"x-scope": "read"})
            assert scoped.status_code == 403
            assert scoped.headers["www-authenticate"] == (
                'Bearer error="insufficient_scope", error_description="Needs the voice scope."'
            )


def test_a_hook_that_fails_is_503_logged_with_its_traceback(
    fake: FakeOpenAIRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(info: RequestInfo) -> str:
        raise RuntimeError(f"database down; password={SECRET_TOKEN}")

    caplog.set_level(logging.ERROR, logger="navai_mw")
    with both_shells(fake, authorize=broken) as shells:
        for _, post in shells:
            answer = post(json={})
            assert answer.status_code == 503
            assert answer.json() == {"error": "Authorization is unavailable; try again shortly."}
            assert SECRET_TOKEN not in answer.text
    records = [r for r in caplog.records if r.name == "navai_mw"]
    assert len(records) == 2
    for record in records:
        assert (
            log_message(record)
            == f"navai_mw: the authorize hook raised RuntimeError on POST {PATH}"
        )
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], RuntimeError)


@pytest.mark.parametrize("value", [42, "", "   ", b"alice"])
def test_a_hook_that_returns_garbage_is_503(fake: FakeOpenAIRealtime, value: object) -> None:
    with both_shells(fake, authorize=lambda info: value) as shells:
        for _, post in shells:
            assert post(json={}).status_code == 503


def test_the_hook_sees_the_request(fake: FakeOpenAIRealtime) -> None:
    seen: list[RequestInfo] = []

    def record(info: RequestInfo) -> str:
        seen.append(info)
        return "alice"

    with both_shells(fake, authorize=record) as shells:
        for _, post in shells:
            assert post(PATH + "/", json={}, headers={"X-User": "a"}).status_code == 200
    asgi, wsgi = seen
    for info in seen:
        assert (info.method, info.route, info.path) == ("POST", "client_secret", PATH + "/")
        assert info.headers["x-user"] == "a"
        assert info.client == "203.0.113.7"
        with pytest.raises(TypeError):
            info.headers["x-user"] = "b"  # type: ignore[index]
    assert asgi.scope is not None
    assert asgi.scope["type"] == "http"
    assert asgi.environ is None
    assert wsgi.environ is not None
    assert wsgi.environ["REQUEST_METHOD"] == "POST"
    assert wsgi.scope is None


async def test_asgi_awaits_async_hooks_and_runs_sync_ones_off_the_loop(
    fake: FakeOpenAIRealtime,
) -> None:
    threads: dict[str, int] = {}

    async def async_hook(info: RequestInfo) -> str:
        threads["async"] = threading.get_ident()
        return "a"

    def sync_hook(info: RequestInfo) -> str:
        threads["sync"] = threading.get_ident()
        return "s"

    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, openai_base_url=fake.base_url)
    loop_thread = threading.get_ident()
    async with fake.async_transport() as upstream:
        for hook in (async_hook, sync_hook):
            app = NavaiASGIMiddleware(hello_asgi, opts, transport=upstream, authorize=hook)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t"
            ) as client:
                assert (await client.post(PATH, json={})).status_code == 200
    assert threads["async"] == loop_thread
    assert threads["sync"] != loop_thread


def test_wsgi_refuses_an_async_hook_when_built() -> None:
    async def hook(info: RequestInfo) -> str:
        return "a"

    class CallableHook:
        async def __call__(self, info: RequestInfo) -> str:
            return "a"

    opts = NavaiVoiceBackendOptions(openai_api_key="k")
    for async_hook in (hook, CallableHook()):
        with pytest.raises(OptionsError) as caught:
            NavaiWSGIMiddleware(hello_wsgi, opts, authorize=async_hook)
        assert caught.value.message == (
            "authorize is an async function; the WSGI middleware calls it synchronously. "
            "Pass a plain function."
        )


def test_the_guard_never_touches_the_apps_own_routes(fake: FakeOpenAIRealtime) -> None:
    calls: list[RequestInfo] = []

    def hook(info: RequestInfo) -> str | None:
        calls.append(info)
        return None

    with both_shells(fake, authorize=hook, rate_limit="1/minute") as shells:
        for _, post in shells:
            for _ in range(3):
                assert post("/other", json={}).text == "app"
    assert calls == []


# -- what spends quota ----------------------------------------------------------------


def test_answers_before_the_guard_and_refused_callers_spend_nothing(
    fake: FakeOpenAIRealtime,
) -> None:
    with both_shells(
        fake, authorize=user_header, rate_limit="2/minute", cors_origins=["https://app.test"]
    ) as shells:
        for name, post in shells:
            user = {"x-user": f"u-{name}"}
            for _ in range(3):
                assert post(json={}).status_code == 401  # no identity
                assert (
                    post(content=b"x", headers={**user, "content-type": "text/plain"}).status_code
                    == 415
                )
                assert (
                    post(
                        content=b"{" * 70_000, headers={**user, "content-type": "application/json"}
                    ).status_code
                    == 413
                )
                assert (
                    post(json={}, headers={**user, "origin": "https://evil.test"}).status_code
                    == 403
                )
            statuses = [post(json={}, headers=user).status_code for _ in range(3)]
            assert statuses == [200, 200, 429]


def test_429_carries_retry_after_and_the_draft_headers(fake: FakeOpenAIRealtime) -> None:
    with both_shells(fake, authorize=user_header, rate_limit="2/minute;5/hour") as shells:
        for name, post in shells:
            user = {"x-user": f"pace-{name}"}
            first = post(json={}, headers=user)
            assert first.headers["ratelimit-policy"] == '"mint";q=2;w=60, "mint";q=5;w=3600'
            assert first.headers["ratelimit"].startswith('"mint";r=1;t=')
            post(json={}, headers=user)
            refused = post(json={}, headers=user)
            assert refused.status_code == 429
            assert refused.json() == {"error": "Too many requests; try again later."}
            wait = int(refused.headers["retry-after"])
            assert 1 <= wait <= 60
            assert refused.headers["ratelimit"] == f'"mint";r=0;t={wait}'


def test_each_identity_has_its_own_budget_and_anonymous_callers_share_by_address(
    fake: FakeOpenAIRealtime,
) -> None:
    with both_shells(fake, authorize=user_header, rate_limit="1/minute") as shells:
        for name, post in shells:
            assert post(json={}, headers={"x-user": f"a-{name}"}).status_code == 200
            assert post(json={}, headers={"x-user": f"b-{name}"}).status_code == 200
            assert post(json={}, headers={"x-user": f"a-{name}"}).status_code == 429
    with both_shells(fake, rate_limit="1/minute") as shells:
        for _, post in shells:  # no hook: keyed by the client address
            assert post(json={}).status_code == 200
            assert post(json={}).status_code == 429


def test_memory_limits_are_exact_under_threads(fake: FakeOpenAIRealtime) -> None:
    with both_shells(fake, rate_limit="10/minute") as shells:
        for _, post in shells:
            with ThreadPoolExecutor(max_workers=16) as pool:
                answers = [pool.submit(post, json={}) for _ in range(30)]
                statuses = [answer.result().status_code for answer in answers]
            assert sorted(statuses) == [200] * 10 + [429] * 20


# -- the client address -------------------------------------------------------------------


TRUSTED = parse_trusted_proxies("10.0.0.0/8, 2001:db8::/32")


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        pytest.param(
            "203.0.113.7", {"x-forwarded-for": "1.2.3.4"}, "203.0.113.7", id="untrusted-peer"
        ),
        pytest.param("10.0.0.1", {"x-forwarded-for": "1.2.3.4"}, "1.2.3.4", id="one-proxy"),
        pytest.param(
            "10.0.0.1", {"x-forwarded-for": "6.6.6.6, 1.2.3.4, 10.0.0.2"}, "1.2.3.4", id="chain"
        ),
        pytest.param(
            "10.0.0.1", {"x-forwarded-for": "10.0.0.3, 10.0.0.2"}, "10.0.0.3", id="all-trusted"
        ),
        pytest.param(
            "10.0.0.1", {"x-forwarded-for": "1.2.3.4, garbage"}, "10.0.0.1", id="garbage-hop"
        ),
        pytest.param("10.0.0.1", {}, "10.0.0.1", id="no-header"),
        pytest.param(
            "10.0.0.1",
            {"forwarded": 'for=1.2.3.4;proto=https, for="[2001:db8::9]:4711"'},
            "1.2.3.4",
            id="forwarded-ipv6-trusted-hop",
        ),
        pytest.param(
            "2001:db8::1", {"forwarded": 'for="[2001:db9::5]"'}, "2001:db9::5", id="ipv6-peer"
        ),
        pytest.param(
            "10.0.0.1",
            {"forwarded": "for=1.2.3.4", "x-forwarded-for": "5.6.7.8"},
            "5.6.7.8",
            id="x-forwarded-for-wins",
        ),
        pytest.param(
            "10.0.0.1", {"forwarded": "proto=https"}, "10.0.0.1", id="forwarded-without-for"
        ),
        pytest.param(
            "10.0.0.1", {"x-forwarded-for": "1.2.3.4:5678"}, "1.2.3.4", id="hop-with-port"
        ),
        pytest.param(
            "::ffff:10.0.0.1", {"x-forwarded-for": "1.2.3.4"}, "1.2.3.4", id="mapped-peer"
        ),
        pytest.param(None, {"x-forwarded-for": "1.2.3.4"}, None, id="no-peer"),
        pytest.param(
            "10.0.0.1",
            {"forwarded": 'for=1.2.3.4, for="a=b"'},
            "10.0.0.1",
            id="forwarded-garbled-hop-with-an-equals-sign",
        ),
        pytest.param(
            "10.0.0.1",
            {"x-forwarded-for": "1.2.3.4, 5.6.7.8X"},
            "10.0.0.1",
            id="garbled-hop-with-a-letter-after-the-address",
        ),
        pytest.param(
            "10.0.0.1",
            {"forwarded": 'for="X1.2.3.4"'},
            "10.0.0.1",
            id="forwarded-garbled-hop-with-a-letter-before-the-address",
        ),
        pytest.param(
            "10.0.0.1",
            {"forwarded": 'for="[2001:db9::5]:_x]"'},
            "2001:db9::5",
            id="bracketed-hop-whose-port-holds-a-bracket",
        ),
    ],
)
def test_client_address(peer: str | None, headers: dict[str, str], client: str | None) -> None:
    assert client_address(peer, headers, TRUSTED) == client


def test_without_trusted_proxies_forwarding_headers_change_nothing() -> None:
    assert client_address("10.0.0.1", {"x-forwarded-for": "1.2.3.4"}, ()) == "10.0.0.1"


@pytest.mark.parametrize("value", ["10.0.0.0/33", "localhost", "1.2.3"])
def test_bad_trusted_proxies_fail_at_start_up(value: str) -> None:
    with pytest.raises(OptionsError) as caught:
        NavaiWSGIMiddleware(
            hello_wsgi, NavaiVoiceBackendOptions(openai_api_key="k"), trusted_proxies=[value]
        )
    assert caught.value.message == (
        f"trusted_proxies must hold IP addresses or CIDR networks. Received: {value!r}"
    )


def test_a_spoofed_header_cannot_buy_a_fresh_budget(fake: FakeOpenAIRealtime) -> None:
    with both_shells(fake, rate_limit="1/minute") as shells:
        for _, post in shells:
            assert post(json={}, headers={"x-forwarded-for": "1.1.1.1"}).status_code == 200
            assert post(json={}, headers={"x-forwarded-for": "2.2.2.2"}).status_code == 429


# -- abuse attribution upstream -------------------------------------------------------------


def test_the_safety_identifier_is_a_keyed_hash_of_the_identity(fake: FakeOpenAIRealtime) -> None:
    with both_shells(fake, authorize=user_header) as shells:
        for _, post in shells:
            assert post(json={}, headers={"x-user": "alice"}).status_code == 200
    key = hashlib.sha256(b"navai_mw safety identifier\0" + CANARY_KEY.encode()).digest()
    # The identity's key: the scheme that proved it (an app's hook), then its name.
    expected = hmac.new(key, b"app:alice", hashlib.sha256).hexdigest()
    sent = [r.headers.get("openai-safety-identifier") for r in fake.requests]
    assert sent == [expected, expected]  # the same on both shells: every worker agrees
    fake.reset()
    with both_shells(fake, authorize=user_header, safety_id_secret="s3cret") as shells:
        shells[0][1](json={}, headers={"x-user": "alice"})
    assert fake.requests[0].headers["openai-safety-identifier"] == (
        hmac.new(b"s3cret", b"app:alice", hashlib.sha256).hexdigest()
    )
    fake.reset()
    with both_shells(fake) as shells:  # no identity, no identifier
        shells[0][1](json={})
    assert "openai-safety-identifier" not in fake.requests[0].headers


# -- CORS for pages that send cookies ---------------------------------------------------------


def test_credentialed_cors_echoes_the_origin_and_exposes_the_pacing_headers(
    fake: FakeOpenAIRealtime,
) -> None:
    origin = {"origin": "https://app.test"}
    with both_shells(
        fake, cors_origins=["*"], cors_allow_credentials=True, rate_limit="5/minute"
    ) as shells:
        for _, post in shells:
            answer = post(json={}, headers=origin)
            assert answer.status_code == 200
            assert answer.headers["access-control-allow-origin"] == "https://app.test"
            assert answer.headers["access-control-allow-credentials"] == "true"
            assert answer.headers["access-control-expose-headers"] == (
                "Retry-After, RateLimit, RateLimit-Policy, Location, X-Request-ID"
            )
    with both_shells(fake, cors_origins=["*"]) as shells:
        answer = shells[0][1](json={}, headers=origin)
        assert answer.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in answer.headers


# -- where settings come from -----------------------------------------------------------------


def test_guard_variables_are_read_even_when_options_come_from_code(
    fake: FakeOpenAIRealtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NAVAI_RATE_LIMIT", "1/minute")
    monkeypatch.setenv("NAVAI_TRUSTED_PROXIES", "203.0.113.0/24")
    with both_shells(fake) as shells:
        for _, post in shells:
            assert post(json={}, headers={"x-forwarded-for": "9.9.9.1"}).status_code == 200
            assert post(json={}, headers={"x-forwarded-for": "9.9.9.1"}).status_code == 429
            assert post(json={}, headers={"x-forwarded-for": "9.9.9.2"}).status_code == 200
    with both_shells(fake, rate_limit="3/minute", trusted_proxies=[]) as shells:  # keywords win
        for _, post in shells:
            assert [post(json={}).status_code for _ in range(4)] == [200, 200, 200, 429]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        pytest.param(
            "NAVAI_RATE_LIMIT_FAIL_OPEN",
            "maybe",
            "NAVAI_RATE_LIMIT_FAIL_OPEN must be one of true, false, 1, 0, yes, no. "
            "Received: 'maybe'",
            id="bool",
        ),
        pytest.param(
            "NAVAI_RATE_LIMIT",
            "ten per minute",
            "rate_limit for 'mint' is not in the limits notation (\"10/minute;200/day\"). "
            "Received: 'ten per minute'",
            id="limit",
        ),
        pytest.param(
            "NAVAI_CORS_ALLOW_CREDENTIALS",
            "on",
            "NAVAI_CORS_ALLOW_CREDENTIALS must be one of true, false, 1, 0, yes, no. "
            "Received: 'on'",
            id="credentials",
        ),
    ],
)
def test_bad_guard_variables_fail_at_start_up(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    opts = NavaiVoiceBackendOptions(openai_api_key="k")
    for build in (
        lambda: NavaiWSGIMiddleware(hello_wsgi, opts),
        lambda: NavaiASGIMiddleware(hello_asgi, opts),
    ):
        with pytest.raises(OptionsError) as caught:
            build()
        assert caught.value.message == message


def test_rate_limit_mapping_names_known_groups_only() -> None:
    opts = NavaiVoiceBackendOptions(openai_api_key="k")
    with pytest.raises(OptionsError) as caught:
        NavaiWSGIMiddleware(hello_wsgi, opts, rate_limit={"mint": "1/minute", "mnt": "2/day"})
    assert caught.value.message == (
        "rate_limit names unknown route groups: mnt. Groups: mint, functions, speech, usage."
    )


# -- no spelling of a navai path skips the guard ------------------------------------------


@pytest.mark.parametrize(
    ("root", "path"),
    [
        pytest.param("", PATH, id="plain"),
        pytest.param("", PATH + "/", id="trailing-slash"),
        pytest.param("/api", "/api" + PATH, id="mounted"),
        pytest.param("/api", "/api" + PATH + "/", id="mounted-trailing-slash"),
    ],
)
async def test_every_spelling_of_a_navai_path_is_guarded(
    fake: FakeOpenAIRealtime, root: str, path: str
) -> None:
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, openai_base_url=fake.base_url)
    async with fake.async_transport() as upstream:
        asgi = NavaiASGIMiddleware(hello_asgi, opts, transport=upstream, authorize=user_header)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=asgi, root_path=root), base_url="http://t"
        ) as client:
            asgi_answer = await client.post(path, json={})
    with fake.sync_transport() as sync_upstream:
        wsgi = NavaiWSGIMiddleware(hello_wsgi, opts, transport=sync_upstream, authorize=user_header)
        with httpx.Client(
            transport=httpx.WSGITransport(app=wsgi, script_name=root), base_url="http://t"
        ) as client:
            # httpx hands WSGI the URL's path as PATH_INFO: give it the part
            # below SCRIPT_NAME, as a server mounting the app would.
            wsgi_answer = client.post(path.removeprefix(root), json={})
    for answer in (asgi_answer, wsgi_answer):
        assert answer.status_code == 401, answer.text
    assert fake.requests == []


# -- trio ---------------------------------------------------------------------------------------


def test_memory_limits_and_hooks_work_under_trio(fake: FakeOpenAIRealtime) -> None:
    import trio

    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, openai_base_url=fake.base_url)

    async def main() -> list[int]:
        async with fake.async_transport() as upstream:
            app = NavaiASGIMiddleware(
                hello_asgi, opts, transport=upstream, authorize=user_header, rate_limit="2/minute"
            )
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t"
            ) as client:
                return [
                    (await client.post(PATH, json={}, headers={"x-user": "t"})).status_code
                    for _ in range(3)
                ]

    assert trio.run(main) == [200, 200, 429]


def test_redis_limits_are_refused_clearly_under_trio(
    fake: FakeOpenAIRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    import trio

    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, openai_base_url=fake.base_url)
    message = (
        "rate_limit_storage on Redis or Valkey needs asyncio (its client runs on asyncio only); "
        "under trio, use memory://."
    )
    built_outside = NavaiASGIMiddleware(
        hello_asgi, opts, rate_limit="2/minute", rate_limit_storage="redis://127.0.0.1:1"
    )

    async def main() -> int:
        # Built on trio (as a framework builds its stack, inside the lifespan):
        # refused at once, as the lifespan's startup failure.
        built_inside = NavaiASGIMiddleware(
            hello_asgi, opts, rate_limit="2/minute", rate_limit_storage="redis://127.0.0.1:1"
        )
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "lifespan.startup"}

        async def send(event: dict[str, Any]) -> None:
            sent.append(event)

        await built_inside({"type": "lifespan"}, receive, send)
        assert sent == [{"type": "lifespan.startup.failed", "message": f"navai_mw: {message}"}]
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=built_outside), base_url="http://t"
        ) as client:  # built before the loop: each request is refused, fail closed
            return (await client.post(PATH, json={})).status_code

    assert trio.run(main) == 503
    assert f"navai_mw: {message}" in [log_message(r) for r in caplog.records]


# -- a storage that cannot be reached, or used -------------------------------------------------


def test_an_unreachable_storage_fails_closed_or_open(
    fake: FakeOpenAIRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    from .conftest import closed_port

    storage = f"redis://127.0.0.1:{closed_port()}/0"
    with both_shells(fake, rate_limit="5/minute", rate_limit_storage=storage) as shells:
        for _, post in shells:
            refused = post(json={})
            assert refused.status_code == 503
            assert refused.json() == {"error": "Rate limiting is unavailable; try again shortly."}
            assert refused.headers["retry-after"] == "5"
    assert fake.requests == []
    caplog.clear()
    with both_shells(
        fake, rate_limit="5/minute", rate_limit_storage=storage, rate_limit_fail_open=True
    ) as shells:
        for _, post in shells:
            passed = post(json={})
            assert passed.status_code == 200
            assert "ratelimit" not in passed.headers
    messages = [log_message(r) for r in caplog.records if r.name == "navai_mw"]
    assert (
        messages.count(
            f"navai_mw: the rate-limit storage {storage} is unreachable; "
            "letting the request through"
        )
        == 2
    )


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        pytest.param(
            {"rate_limit": "1/minute", "rate_limit_storage": "nosuch://x"},
            "rate_limit_storage cannot be used: ConfigurationError",
            id="unknown-storage",
        ),
        pytest.param(
            {"rate_limit": 5},
            "rate_limit must be a string or a mapping from route group to string.",
            id="number",
        ),
        pytest.param(
            {"rate_limit": " ; "},
            "rate_limit for 'mint' is not in the limits notation (\"10/minute;200/day\"). "
            "Received: ' ; '",
            id="empty",
        ),
    ],
)
def test_unusable_limit_settings_fail_at_start_up(keywords: dict[str, Any], message: str) -> None:
    opts = NavaiVoiceBackendOptions(openai_api_key="k")
    for build in (
        lambda: NavaiWSGIMiddleware(hello_wsgi, opts, **keywords),
        lambda: NavaiASGIMiddleware(hello_asgi, opts, **keywords),
    ):
        with pytest.raises(OptionsError) as caught:
            build()
        assert caught.value.message == message


def test_blank_entries_in_trusted_proxies_are_skipped() -> None:
    assert parse_trusted_proxies(" 10.0.0.1 , ,::1") == parse_trusted_proxies(["10.0.0.1", "::1"])
