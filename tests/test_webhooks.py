"""``POST /navai/webhooks/openai`` on real servers, both shells (uvicorn for
ASGI, waitress for WSGI), the fake's signed deliveries, and a real
redis-server where two workers share what they remember:

* the signature matrix: each delivery answered as openai-python's
  ``webhooks.unwrap`` (the oracle, on the same bytes at the same time)
  takes it: 200, 400 or 401; a body over 1 MiB is 413;
* the route is neither behind ``authorize`` nor CORS, and answers before
  the app's hook has finished;
* ``on_openai_event`` (plain and async) hears each delivery once: a
  redelivery, on the same worker or the other one, and a replay are 200
  and nothing more, also when the same delivery reaches both workers at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from navai_mw import NavaiVoiceBackendOptions
from navai_mw.auth import BearerTokens
from navai_mw.core.effects import (
    AfterAnswer,
    CallHook,
    FirstDelivery,
    ForgetDelivery,
    HookResult,
    ReadClock,
)
from navai_mw.endpoint.endpoint import Endpoint
from navai_mw.endpoint.routes.openai_webhook import _tell_the_app as tell_the_app
from navai_mw.endpoint.routes.openai_webhook import event_label
from navai_mw.testing import WebhookSender, webhook_events

from .conftest import hang_bound, log_message
from .redis_server import RedisServer, redis_fixture
from .shells import SHELLS, serve_shell
from .webhook_oracle import unwrap_status

SECRET = "whsec_" + base64.b64encode(b"the project's webhook signing key").decode()
KEY = "sk-test-webhooks-0123456789"
PATH = "/navai/webhooks/openai"
BOUND = hang_bound(30.0)  # seconds
OPTS = NavaiVoiceBackendOptions(openai_api_key=KEY, upstream_timeout_seconds=5)

shared_redis = redis_fixture(scope="module")


class Heard:
    """``on_openai_event``: the events, as they come (from another thread)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def __call__(self, event: dict[str, Any]) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def wait_for(self, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.events) >= count, BOUND)


class AsyncHeard(Heard):
    async def __call__(self, event: dict[str, Any]) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        super().__call__(event)


@contextlib.contextmanager
def served(shell: str, **keywords: Any) -> Iterator[WebhookSender]:
    keywords.setdefault("openai_webhook_secret", SECRET)
    with serve_shell(shell, OPTS, **keywords) as url:
        yield WebhookSender(SECRET, f"{url}{PATH}")


# -- the signature matrix ---------------------------------------------------------------------


def _matrix(sender: WebhookSender) -> dict[str, tuple[bytes, dict[str, str]]]:
    event = webhook_events.safety_warning_issued("case_1")
    now = int(time.time())
    other = WebhookSender("whsec_" + base64.b64encode(b"another key").decode(), sender.url)
    body, headers = sender.prepare(event)
    cases = {
        "good": sender.prepare(event),
        "tampered body": (body.replace(b"case_1", b"case_2"), headers),
        "wrong secret": other.prepare(event),
        "two signatures, one good": sender.prepare(event, extra_signatures=("v1,AAAA",)),
        "stale": sender.prepare(event, timestamp=now - 400),
        "future": sender.prepare(event, timestamp=now + 400),
        "a fractional timestamp": sender.prepare(event, timestamp=f"{now}.5"),
        "signed, but not JSON": sender.prepare(raw=b"not json"),
        "signed, but not UTF-8": sender.prepare(raw=b'{"id": "\xff"}'),
    }
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        cases[f"no {name}"] = sender.prepare(event, drop=(name,))
    return cases


@pytest.mark.parametrize("shell", SHELLS)
def test_each_delivery_is_answered_as_unwrap_takes_it(
    shell: str, caplog: pytest.LogCaptureFixture
) -> None:
    heard = Heard()
    caplog.set_level(logging.WARNING, logger="navai_mw")
    with served(shell, on_openai_event=heard) as sender:
        for case, (body, headers) in _matrix(sender).items():
            oracle = unwrap_status(body, headers, SECRET, time.time())
            answer = sender.post(body, headers)
            assert answer.status_code == oracle, (case, answer.text)
            assert "error" in answer.json() or answer.json()["received"] is True
        heard.wait_for(2)  # "good" and "two signatures, one good"
    assert len(heard.events) == 2
    refusals = [r.getMessage() for r in caplog.records if "webhook is refused" in r.getMessage()]
    assert len(refusals) == 10
    assert not any("case_" in line or SECRET in line for line in caplog.messages)


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("declared", [True, False])
def test_a_body_over_a_mebibyte_is_413_before_its_signature(
    shell: str, declared: bool, caplog: pytest.LogCaptureFixture
) -> None:
    heard = Heard()
    caplog.set_level(logging.WARNING, logger="navai_mw")
    event = webhook_events.event("batch.completed", {"id": "b" * (1024 * 1024)})
    with served(shell, on_openai_event=heard) as sender:
        body, headers = sender.prepare(event)
        assert unwrap_status(body, headers, SECRET, time.time()) == 200  # signed all right
        if declared:
            answer = sender.post(body, headers)
        else:
            chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
            answer = httpx.post(sender.url, content=chunks, headers=headers, timeout=BOUND)
    assert answer.status_code == 413
    assert "1048576" in answer.json()["error"]
    assert heard.events == []
    assert "navai_mw: an OpenAI webhook is refused (413): over 1048576 bytes" in [
        log_message(record) for record in caplog.records
    ]


# -- neither authorize nor CORS; the answer before the hook -----------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_a_delivery_is_read_by_its_signature_whatever_its_content_type_says(shell: str) -> None:
    heard = Heard()
    with served(shell, on_openai_event=heard) as sender:
        body, headers = sender.prepare(webhook_events.safety_warning_issued("case_text"))
        as_text = sender.post(body, {**headers, "content-type": "text/plain"})
        body, headers = sender.prepare(
            webhook_events.safety_warning_issued("case_untyped"), drop=("content-type",)
        )
        untyped = sender.post(body, headers)
        heard.wait_for(2)
    assert [as_text.status_code, untyped.status_code] == [200, 200]
    assert sorted(event["data"]["id"] for event in heard.events) == [
        "case_text",
        "case_untyped",
    ]


@pytest.mark.parametrize("shell", SHELLS)
def test_the_signature_is_the_routes_only_authentication(shell: str) -> None:
    heard = Heard()
    with served(
        shell,
        on_openai_event=heard,
        authorize=BearerTokens({"alice": "alice-token-0123456789"}),
        rate_limit="1/minute",
        cors_origins=["http://front.test"],
    ) as sender:
        answers = [
            sender.send(webhook_events.safety_warning_issued(f"case_{n}"), drop=())
            for n in range(3)
        ]
        body, headers = sender.prepare(webhook_events.safety_warning_issued("case_x"))
        from_a_page = sender.post(body, {**headers, "origin": "http://evil.test"})
        preflight = httpx.options(sender.url, headers={"origin": "http://front.test"})
    assert [a.status_code for a in answers] == [200, 200, 200]  # no limit, no token
    assert from_a_page.status_code == 200
    assert not any(name.lower().startswith("access-control") for name in from_a_page.headers)
    assert not any(name.lower().startswith("ratelimit") for name in answers[0].headers)
    assert preflight.status_code == 405
    assert preflight.headers["allow"] == "POST"


@pytest.mark.parametrize("shell", SHELLS)
def test_the_answer_goes_out_before_the_hook_finishes(shell: str) -> None:
    release = threading.Event()
    started = threading.Event()

    def slow(event: dict[str, Any]) -> None:
        started.set()
        release.wait(BOUND)

    with served(shell, on_openai_event=slow) as sender:
        try:
            answer = sender.send(webhook_events.safety_warning_issued("case_1"))
            assert answer.status_code == 200
            assert started.wait(BOUND)
            assert not release.is_set()  # the hook still runs: OpenAI has its answer
        finally:
            release.set()


# -- each delivery once -----------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("hook", [Heard, AsyncHeard], ids=["plain", "async"])
def test_a_redelivery_and_a_replay_are_done_once(
    shell: str, hook: type[Heard], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="navai_mw")
    heard = hook()
    with served(shell, on_openai_event=heard) as sender:
        first = sender.send(webhook_events.safety_warning_issued("case_1"))
        again = sender.redeliver()
        replayed = sender.replay()
        heard.wait_for(1)
    assert first.json() == {"received": True}
    assert again.json() == replayed.json() == {"received": True, "duplicate": True}
    assert [e["data"]["id"] for e in heard.events] == ["case_1"]
    kind = webhook_events.safety_warning_issued("case_1")["type"]
    lines = [log_message(record) for record in caplog.records]
    assert lines.count(f"navai_mw: an OpenAI webhook was delivered again ({kind})") == 2


@contextlib.contextmanager
def two_workers(redis: RedisServer, **keywords: Any) -> Iterator[tuple[WebhookSender, ...]]:
    """An ASGI and a WSGI worker sharing one Redis."""
    keywords.setdefault("rate_limit_storage", redis.url)
    with served("uvicorn", **keywords) as asgi, served("waitress", **keywords) as wsgi:
        yield asgi, wsgi


def test_a_redelivery_to_the_other_worker_is_done_once(shared_redis: RedisServer) -> None:
    shared_redis.flush()
    heard = Heard()
    with two_workers(shared_redis, on_openai_event=heard) as (asgi, wsgi):
        first = asgi.send(webhook_events.safety_warning_issued("case_1"))
        body, headers = asgi.redelivery()
        again = wsgi.post(body, headers)
        heard.wait_for(1)
    assert first.json() == {"received": True}
    assert again.json() == {"received": True, "duplicate": True}
    assert len(heard.events) == 1
    # Remembered 72 hours, in the shared Redis.
    ttl = int(shared_redis_command(shared_redis, "TTL", f"navai:webhook:{headers['webhook-id']}"))
    assert 71 * 3600 < ttl <= 72 * 3600


def shared_redis_command(redis: RedisServer, *words: str) -> str:
    from .redis_server import command

    return command(redis.port, *words).decode().lstrip(":")


@pytest.mark.anyio
async def test_one_delivery_at_both_workers_at_once_is_done_once(
    shared_redis: RedisServer,
) -> None:
    shared_redis.flush()
    heard = Heard()
    with two_workers(shared_redis, on_openai_event=heard) as (asgi, wsgi):
        body, headers = asgi.prepare(webhook_events.safety_warning_issued("case_1"))
        answers: list[httpx.Response] = []

        async def deliver(sender: WebhookSender) -> None:
            answers.append(await sender.apost(body, headers))

        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(deliver, asgi)
                group.start_soon(deliver, wsgi)
        heard.wait_for(1)
    assert all(answer.status_code == 200 for answer in answers)
    assert sum(not answer.json().get("duplicate") for answer in answers) == 1
    assert len(heard.events) == 1


@pytest.mark.parametrize("shell", SHELLS)
def test_deliveries_kept_with_redis_down_are_503_and_done_on_the_next_try(
    shell: str, shared_redis: RedisServer
) -> None:
    shared_redis.flush()
    heard = Heard()
    with served(shell, on_openai_event=heard, rate_limit_storage=shared_redis.url) as sender:
        shared_redis.stop()
        try:
            refused = sender.send(webhook_events.safety_warning_issued("case_1"))
        finally:
            shared_redis.start()
        again = sender.redeliver()
        heard.wait_for(1)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "30"
    assert again.json() == {"received": True}
    assert len(heard.events) == 1


@pytest.mark.parametrize("shell", SHELLS)
def test_a_delivery_no_store_can_remember_is_503_and_not_handled(
    shell: str, caplog: pytest.LogCaptureFixture
) -> None:
    heard = Heard()
    down = "redis://127.0.0.1:1/0"  # nothing listens there
    with served(shell, on_openai_event=heard, rate_limit_storage=down) as sender:
        refused = sender.send(webhook_events.safety_warning_issued("case_1"))
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "30"
    assert refused.json() == {
        "error": "The webhook cannot be handled right now; deliver it again later."
    }
    assert heard.events == []
    assert "navai_mw: an OpenAI webhook is answered 503: deliveries cannot be remembered" in [
        log_message(record) for record in caplog.records
    ]


@pytest.mark.parametrize("shell", SHELLS)
def test_a_block_no_store_can_keep_is_503_to_be_delivered_again(
    shell: str, caplog: pytest.LogCaptureFixture
) -> None:
    down = "redis://127.0.0.1:1/0"  # nothing listens there
    with served(shell, rate_limit_storage=down) as sender:
        refused = sender.send(webhook_events.safety_identifier_blocked("ab" * 16, "fraud"))
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "30"
    assert refused.json() == {
        "error": "The webhook cannot be handled right now; deliver it again later."
    }
    lines = [log_message(record) for record in caplog.records]
    why = "the blocked identifiers cannot be stored"
    assert f"navai_mw: an OpenAI webhook is answered 503: {why}" in lines
    assert not any("OpenAI blocked a safety identifier" in line for line in lines)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_hook_that_raises_is_logged_by_its_error_and_the_event_type(
    shell: str, caplog: pytest.LogCaptureFixture
) -> None:
    heard = Heard()

    def fails(event: dict[str, Any]) -> None:
        heard(event)
        if event["data"].get("safety_identifier") == "bad":
            raise LookupError("the case tracker is down")

    event = webhook_events.safety_warning_issued("case_1")
    with served(shell, on_openai_event=fails) as sender:
        fine = sender.send(event)
        bad = sender.send(
            {**event, "id": "evt_2", "data": {**event["data"], "safety_identifier": "bad"}}
        )
        heard.wait_for(2)
        line = f"navai_mw: on_openai_event raised LookupError on {event['type']!r}"
        deadline = time.monotonic() + BOUND  # a bound against hangs, not a measurement
        while line not in [log_message(r) for r in caplog.records] and time.monotonic() < deadline:
            time.sleep(0.01)
    assert (fine.status_code, bad.status_code) == (200, 200)  # answered before the hook ran
    errors = [log_message(r) for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [line]  # the hook that finished says nothing
    assert "tracker" not in "".join(errors)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- start-up ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keywords", "named"),
    [
        ({"openai_webhook_secret": None, "on_openai_event": print}, "openai_webhook_secret"),
        ({"openai_webhook_secret": None, "sip_accept": "realtime"}, "openai_webhook_secret"),
        ({"sip_accept": "sip"}, "sip_accept"),
        ({"openai_webhook_secret": "whsec_not base64!"}, "openai_webhook_secret"),
        ({"openai_webhook_secret": "whsec_"}, "openai_webhook_secret"),
        ({"webhook_dedup_seconds": 0}, "webhook_dedup_seconds"),
        ({"block_seconds": -1}, "block_seconds"),
        ({"on_openai_event": "print"}, "on_openai_event"),
        ({"accept_call": 603}, "accept_call"),
    ],
)
def test_a_webhook_setting_that_cannot_work_fails_at_start_up(
    keywords: dict[str, Any], named: str
) -> None:
    from navai_mw import NavaiHandler, OptionsError

    keywords = {"openai_webhook_secret": SECRET, **keywords}
    with pytest.raises(OptionsError, match=named):
        NavaiHandler(OPTS, functions=[], env={}, **keywords)


def test_answering_calls_needs_the_servers_key() -> None:
    from navai_mw import NavaiHandler, OptionsError

    no_key = NavaiVoiceBackendOptions(allow_api_key_from_request=True)
    with pytest.raises(OptionsError, match="openai_api_key"):
        NavaiHandler(no_key, functions=[], env={}, openai_webhook_secret=SECRET, sip_accept="live")
    # Blocked identifiers and other events need no key of the server's.
    handler = NavaiHandler(no_key, functions=[], env={}, openai_webhook_secret=SECRET)
    handler.close()


def test_a_forked_child_remembers_deliveries_on_connections_of_its_own(
    shared_redis: RedisServer,
) -> None:
    """gunicorn's pre-fork model: the parent used the webhook store, then
    forks; the child's deliveries are remembered in Redis on a client of
    its own (the parent's belongs to a loop the child does not have)."""
    script = textwrap.dedent(
        f"""
        import gc, os
        from navai_mw.core.effects import FirstDelivery
        from navai_mw.runtime.call_store import CallStore
        from navai_mw.runtime.webhook_store import WebhookKeeper

        url = {shared_redis.url!r}
        keeper = WebhookKeeper(url, CallStore(url))
        assert keeper.perform_sync(FirstDelivery("wh_parent", 60.0)) is True
        pid = os.fork()
        if pid == 0:
            gc.collect()  # the parent's client, dropped here, must not be finalized
            first = keeper.perform_sync(FirstDelivery("wh_child", 60.0))
            again = keeper.perform_sync(FirstDelivery("wh_parent", 60.0))
            os._exit(0 if (first, again) == (True, False) else 3)
        _, status = os.waitpid(pid, 0)
        assert keeper.perform_sync(FirstDelivery("wh_child", 60.0)) is False
        print(os.waitstatus_to_exitcode(status))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "0\n", done.stderr


def test_a_hook_has_thirty_seconds_and_one_that_overruns_is_logged_by_the_event_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Driven by hand: a hook that overruns is a hook call that timed out.
    def slow(event: dict[str, Any]) -> None:
        raise AssertionError("never called by hand")

    event = webhook_events.safety_warning_issued("case_1")
    steps = tell_the_app(slow, event)
    call = next(steps)
    assert isinstance(call, CallHook)
    assert (call.hook, call.args, call.timeout) == (slow, (event,), 30.0)  # docs/phone.md
    with caplog.at_level(logging.ERROR, logger="navai_mw"), pytest.raises(StopIteration):
        steps.send(HookResult(timed_out=True, elapsed=30.0))
    assert [log_message(r) for r in caplog.records] == [
        f"navai_mw: on_openai_event did not finish {event['type']!r} within 30 seconds"
    ]


def test_a_failing_hooks_line_carries_its_traceback_and_a_type_of_64_characters_at_most(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failure = LookupError("the case tracker is down")
    steps = tell_the_app(print, {"type": "t" * 100})
    next(steps)
    with caplog.at_level(logging.ERROR, logger="navai_mw"), pytest.raises(StopIteration):
        steps.send(HookResult(error=failure, elapsed=0.1))
    [record] = caplog.records
    assert log_message(record) == f"navai_mw: on_openai_event raised LookupError on {'t' * 64!r}"
    assert record.exc_info is not None
    assert record.exc_info[1] is failure


@pytest.mark.parametrize(
    ("kind", "named"),
    [("safety.warning_issued", "safety.warning_issued"), ("a." + "b" * 100, "a." + "b" * 62)],
)
def test_a_server_too_busy_for_the_work_after_a_webhook_forgets_it_and_answers_503(
    kind: str, named: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Driven by hand: the after-answer workers all taken is the work not taken.
    endpoint = Endpoint(
        OPTS, openai_webhook_secret=SECRET, on_openai_event=print, webhook_clock=time.time
    )
    sender = WebhookSender(SECRET, f"http://t{PATH}")
    body, headers = sender.prepare({**webhook_events.safety_warning_issued("case_1"), "type": kind})
    steps = endpoint.handle("POST", PATH, headers, body)
    assert isinstance(next(steps), ReadClock)
    first = steps.send(time.time())
    assert isinstance(first, FirstDelivery)
    work = steps.send(True)
    assert isinstance(work, AfterAnswer)
    assert work.what == f"the OpenAI webhook {named!r}"  # for the line if it fails
    forget = steps.send(False)  # not taken
    assert forget == ForgetDelivery(first.key)  # OpenAI's next try must find it new
    with caplog.at_level(logging.WARNING, logger="navai_mw"), pytest.raises(StopIteration) as done:
        steps.send(None)
    answer = done.value.value
    assert answer.status == 503
    assert ("Retry-After", "30") in answer.headers
    assert answer.webhook == (event_label(kind), "unavailable")
    assert [log_message(record) for record in caplog.records] == [
        "navai_mw: an OpenAI webhook is answered 503: this server is busy with earlier webhooks"
    ]


@pytest.mark.parametrize("shell", SHELLS)
def test_a_refusal_and_a_block_are_logged_by_what_they_were(
    shell: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="navai_mw")
    with served(shell) as sender:
        forged = sender.send(webhook_events.safety_warning_issued("case_1"), drop=("webhook-id",))
        blocked = sender.send(webhook_events.safety_identifier_blocked("ab" * 16, "fraud"))
    assert (forged.status_code, blocked.status_code) == (400, 200)
    lines = [log_message(record) for record in caplog.records]
    assert f"navai_mw: an OpenAI webhook is refused (400): {forged.json()['error']}" in lines
    assert (
        "navai_mw: OpenAI blocked a safety identifier (fraud): its caller is refused from now on"
    ) in lines


@pytest.mark.parametrize(
    ("kind", "label"),
    [
        ("safety_identifier.blocked", "safety_identifier.blocked"),
        ("a." + "b" * 62, "a." + "b" * 62),  # 64 characters: its own
        ("a." + "b" * 63, "other"),
        ("Realtime.Call", "other"),
        ("nodot", "other"),
        (7, "other"),
        (None, "other"),
    ],
)
def test_an_event_type_is_its_own_label_only_as_openai_spells_one(kind: object, label: str) -> None:
    assert event_label(kind) == label
