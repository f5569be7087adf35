"""The abuse loop: OpenAI's ``safety_identifier.blocked`` webhook names the
identifier navai_mw sent for a caller, and from then on that caller (and
only that caller) is refused, 403 ``code: "suspended"``, on every route
that spends money, before any upstream call; ``navai_mw.safety`` lists and
unblocks.

* the guard's decision, driven by hand (no shell, no storage);
* end to end: an ASGI worker (uvicorn) and a WSGI worker (waitress) share a
  real redis-server: a block delivered to one refuses the caller on both,
  the other callers go on, the fake OpenAI hears nothing more from the
  blocked one; unblocked, they mint again; a block's expiry; in memory
  under each shell alone; a phone call's caller blocked is refused (403).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
import redis

from navai_mw import NavaiASGIMiddleware, NavaiVoiceBackendOptions, NavaiWSGIMiddleware, RequestInfo
from navai_mw.auth import BearerTokens
from navai_mw.core.effects import HitLimit, IsBlocked, LimitResult
from navai_mw.core.identity import Identity
from navai_mw.core.rate_limit_policy import parse_rate_limits
from navai_mw.guard.guard import Guard
from navai_mw.safety import ablocked, aunblock, block, blocked, identifier_of, unblock
from navai_mw.testing import FakeOpenAIRealtime, WebhookSender, serve_asgi, webhook_events

from .conftest import hang_bound
from .redis_server import RedisServer, command, redis_fixture
from .shells import SHELLS, inner_asgi, inner_wsgi, serve_waitress

SECRET = "whsec_dGhlIGFidXNlIGxvb3AncyBzaWduaW5nIGtleQ=="
KEY = "sk-test-safety-0123456789"
TOKENS = {"alice": "alice-token-0123456789abcdef", "bob": "bob-token-0123456789abcdef"}
MINT = "/navai/realtime/client-secret"
WEBHOOK = "/navai/webhooks/openai"
BOUND = hang_bound(30.0)  # seconds

shared_redis = redis_fixture(scope="module")


# -- the guard's decision ----------------------------------------------------------------------

SAFETY_SECRET = b"a safety secret"
INFO = RequestInfo(method="POST", route="client_secret", path="/p", headers={}, client="1.2.3.4")


def _identifier(name: str) -> str:
    return hmac.new(SAFETY_SECRET, f"app:{name}".encode(), hashlib.sha256).hexdigest()


def _checked(guard: Guard, group: str, blocked_answer: bool | None) -> tuple[list[Any], Any]:
    steps = guard.check(INFO, group, identity="alice")
    effects: list[Any] = []
    try:
        effect = next(steps)
        while True:
            effects.append(effect)
            if isinstance(effect, IsBlocked):
                effect = steps.send(blocked_answer)
            else:
                assert isinstance(effect, HitLimit)
                effect = steps.send(LimitResult(windows=((9, 0.0),)))
    except StopIteration as done:
        return effects, done.value
    except Exception as exc:
        return effects, exc


def test_a_blocked_caller_is_refused_on_a_spending_route_only() -> None:
    guard = Guard(safety_secret=SAFETY_SECRET, blocklist=True)
    effects, refused = _checked(guard, "mint", True)
    assert effects == [IsBlocked(_identifier("alice"))]  # recomputed, never stored in clear
    assert refused.status == 403
    assert refused.code == "suspended"
    assert refused.message == (
        "Your access to voice features is suspended. Contact the service's support to learn more."
    )
    for group in ("functions", "usage", "end"):
        effects, passed = _checked(guard, group, True)
        assert effects == []
        assert passed == (Identity("alice", "app"), ())


def test_a_caller_not_blocked_goes_on_to_the_rate_limit() -> None:
    guard = Guard(
        safety_secret=SAFETY_SECRET,
        blocklist=True,
        limits=parse_rate_limits("10/minute"),
        storage_uri="memory://",
    )
    effects, (identity, headers) = _checked(guard, "speech", False)
    assert [type(effect) for effect in effects] == [IsBlocked, HitLimit]
    assert identity == "alice"
    assert headers


@pytest.mark.parametrize("fail_open", [False, True])
def test_a_blocked_set_that_cannot_be_read(
    fail_open: bool, caplog: pytest.LogCaptureFixture
) -> None:
    guard = Guard(
        safety_secret=SAFETY_SECRET,
        blocklist=True,
        fail_open=fail_open,
        store_uri="redis://:pw@127.0.0.1:6390/0",
    )
    with caplog.at_level(logging.WARNING, logger="navai_mw"):
        _, outcome = _checked(guard, "mint", None)
    if fail_open:
        assert outcome == (Identity("alice", "app"), ())
        assert caplog.messages == [
            "navai_mw: the blocked identifiers in redis://127.0.0.1:6390/0 cannot be read; "
            "letting the request through"  # the store named without its password
        ]
    else:
        assert outcome.status == 503
        assert outcome.message == "Access cannot be checked right now; try again shortly."
        assert outcome.headers == (("Retry-After", "5"),)
        assert caplog.messages == []


def test_without_webhooks_or_an_identity_nothing_is_asked() -> None:
    assert _checked(Guard(safety_secret=SAFETY_SECRET), "mint", True)[0] == []
    steps = Guard(safety_secret=SAFETY_SECRET, blocklist=True).check(INFO, "mint")
    with pytest.raises(StopIteration):
        next(steps)  # an anonymous caller has no identifier


# -- end to end ---------------------------------------------------------------------------------


@pytest.fixture
def upstream() -> Iterator[tuple[FakeOpenAIRealtime, str]]:
    fake = FakeOpenAIRealtime(api_key=KEY)
    with fake.serve() as base_url:
        yield fake, base_url


@contextlib.contextmanager
def worker(shell: str, base_url: str, **keywords: Any) -> Iterator[tuple[Any, str]]:
    """One worker: the middleware (for navai_mw.safety) and its URL."""
    opts = NavaiVoiceBackendOptions(openai_api_key=KEY, openai_base_url=base_url)
    keywords = {
        "authorize": BearerTokens(TOKENS),
        "openai_webhook_secret": SECRET,
        "functions": [],
        **keywords,
    }
    if shell == "uvicorn":
        app = NavaiASGIMiddleware(inner_asgi, opts, **keywords)
        with serve_asgi(app, lifespan="on") as url:
            yield app, url
        return
    wsgi = NavaiWSGIMiddleware(inner_wsgi, opts, **keywords)
    try:
        with serve_waitress(wsgi) as url:
            yield wsgi, url
    finally:
        wsgi.close()


def redis_keys(server: RedisServer) -> list[str]:
    client = redis.Redis.from_url(server.url)
    try:
        return [key.decode() for key in client.keys("*")]
    finally:
        client.close()


def mint(url: str, who: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {TOKENS[who]}", "Content-Type": "application/json"}
    return httpx.post(f"{url}{MINT}", json={}, headers=headers, timeout=BOUND)


def blocking(url: str, identifier: str) -> httpx.Response:
    sender = WebhookSender(SECRET, f"{url}{WEBHOOK}")
    return sender.send(webhook_events.safety_identifier_blocked(identifier, "cyber"))


def test_a_blocked_caller_is_refused_on_both_workers_then_unblocked(
    upstream: tuple[FakeOpenAIRealtime, str], shared_redis: RedisServer
) -> None:
    fake, base_url = upstream
    shared_redis.flush()
    storage = {"rate_limit_storage": shared_redis.url}
    with (
        worker("uvicorn", base_url, **storage) as (asgi, asgi_url),
        worker("waitress", base_url, **storage) as (wsgi, wsgi_url),
    ):
        urls = (asgi_url, wsgi_url)
        assert [mint(url, who).status_code for url in urls for who in TOKENS] == [200] * 4
        alice = identifier_of(asgi, "alice", scheme="token")
        assert alice == identifier_of(wsgi, "alice", scheme="token")  # one identifier for both
        sent = [r.headers.get("openai-safety-identifier") for r in fake.requests]
        assert sent.count(alice) == 2  # what OpenAI saw, and will name

        assert blocking(asgi_url, alice).json() == {"received": True}
        before = len(fake.requests)
        for url in urls:
            refused = mint(url, "alice")
            assert refused.status_code == 403
            assert refused.json()["code"] == "suspended"
            assert "suspended" in refused.json()["error"]
            assert mint(url, "bob").status_code == 200
        assert len(fake.requests) == before + 2  # bob's two; nothing of alice's

        [listed] = blocked(wsgi)
        assert (listed.identifier, listed.category, listed.until) == (alice, "cyber", None)
        stored = redis_keys(shared_redis)
        assert f"navai:blocked:{alice}" in stored
        assert not any("alice" in key for key in stored)  # never in clear
        assert unblock(asgi, alice) is True
        assert [mint(url, "alice").status_code for url in urls] == [200, 200]
        assert blocked(asgi) == []
        assert unblock(asgi, alice) is False


def test_a_block_lasts_block_seconds_in_redis(
    upstream: tuple[FakeOpenAIRealtime, str], shared_redis: RedisServer
) -> None:
    _, base_url = upstream
    shared_redis.flush()
    with worker("waitress", base_url, rate_limit_storage=shared_redis.url, block_seconds=3600) as (
        app,
        url,
    ):
        alice = identifier_of(app, "alice", scheme="token")
        assert blocking(url, alice).status_code == 200
        ttl = int(command(shared_redis.port, "TTL", f"navai:blocked:{alice}").lstrip(b":"))
        [listed] = blocked(app)
    assert 3500 < ttl <= 3600
    assert listed.until == pytest.approx(listed.blocked_at + 3600)


def test_in_memory_a_block_keeps_its_category_and_lasts_block_seconds(
    upstream: tuple[FakeOpenAIRealtime, str],
) -> None:
    _, base_url = upstream
    with worker("waitress", base_url, block_seconds=3600) as (app, url):
        alice = identifier_of(app, "alice", scheme="token")
        before = time.time()
        assert blocking(url, alice).status_code == 200
        after = time.time()
        [listed] = blocked(app)
    assert (listed.identifier, listed.category) == (alice, "cyber")
    assert before <= listed.blocked_at <= after  # when the webhook came
    assert listed.until == listed.blocked_at + 3600


@pytest.mark.parametrize("shell", SHELLS)
def test_in_memory_a_worker_keeps_its_own_blocked_set(
    shell: str, upstream: tuple[FakeOpenAIRealtime, str]
) -> None:
    _, base_url = upstream
    with worker(shell, base_url) as (app, url):
        bob = identifier_of(app, "bob", scheme="token")
        block(app, bob)
        assert mint(url, "bob").json()["code"] == "suspended"
        assert mint(url, "alice").status_code == 200

        async def listed_then_unblocked() -> list[str]:
            names = [entry.identifier for entry in await ablocked(app)]
            await aunblock(app, bob)
            return names

        assert anyio.run(listed_then_unblocked) == [bob]
        assert mint(url, "bob").status_code == 200


def test_the_api_needs_the_webhooks() -> None:
    from navai_mw import NavaiHandler, OptionsError

    handler = NavaiHandler(NavaiVoiceBackendOptions(openai_api_key=KEY), functions=[])
    try:
        with pytest.raises(OptionsError, match="openai_webhook_secret"):
            blocked(handler)
    finally:
        handler.close()
