"""Phone calls, end to end on real servers: the middleware under uvicorn
(ASGI) and waitress (WSGI) gets the fake OpenAI's signed webhooks for a
ringing call (FakeRealtimeWebRTC under uvicorn, which answers the accept,
reject and refer and holds the accepted call's sideband):

* accepted with the session template (``sip_accept``), its function run on
  the server over the sideband, its report delivered; the same call's
  other event acknowledged and left alone;
* accepted by the app's hook with its identity and its own instructions;
  on GPT-Live too;
* refused (the hook's SIP status; 603 with nobody to answer; 500 when the
  hook fails) and transferred;
* an accept OpenAI fails is never sent again, and is reported;
* a caller OpenAI blocked is refused (403), and only they are;
* an accepted call is hung up at its time cap.

Every answer navai_mw sends is checked against openai-python's params.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from navai_mw import (
    Accept,
    CallReport,
    IncomingCall,
    NavaiVoiceBackendOptions,
    Refer,
    Reject,
    RequestInfo,
)
from navai_mw.core.effects import Attempt, CallHook, HookResult
from navai_mw.endpoint.endpoint import Endpoint
from navai_mw.endpoint.routes.phone_steps import ACCEPT_HOOK_SECONDS, answer_phone_call
from navai_mw.testing import FakeRealtimeWebRTC, RingingCall, WebhookSender, webhook_events

from .conftest import log_message
from .openai_events import sip_answer
from .test_call_sideband import BOUND, INSTRUCTIONS, KEY, Orders, Reports, navai, sent_by_navai
from .test_call_sideband import anyio_backend as anyio_backend  # a fixture
from .test_call_sideband import fake as fake  # a fixture

pytest.importorskip("aiortc")

SECRET = "whsec_dGhlIHBob25lIHRlc3RzJyBzaWduaW5nIGtleQ=="
PATH = "/navai/webhooks/openai"
CALLER = "+14155550123"
SIP_HEADERS = (
    ("From", f"<sip:{CALLER}@carrier.example>;tag=9fxced76sl"),
    ("To", "<sip:proj_123@sip.api.openai.com>"),
    ("X-Account", "ac_42"),
)


@contextlib.contextmanager
def phone(shell: str, base_url: str, **keywords: Any) -> Iterator[WebhookSender]:
    """The middleware answering the fake's phone calls; its webhook sender."""
    keywords.setdefault("openai_webhook_secret", SECRET)
    with navai(shell, base_url, **keywords) as url:
        yield WebhookSender(SECRET, f"{url}{PATH}")


async def answered(upstream: FakeRealtimeWebRTC, ringing: RingingCall) -> Any:
    """The one answer the server gave the ringing call, checked against
    openai-python's params."""
    await upstream.await_until(lambda: ringing.answered is not None, timeout=BOUND)
    [answer] = [
        a for a in upstream.sip_answers if a.call_id in (ringing.call_id, ringing.session_id)
    ]
    sip_answer(answer.kind, answer.action, answer.body)
    return answer


async def logged(caplog: pytest.LogCaptureFixture, line: str) -> None:
    """Wait for navai_mw to log ``line`` (it may come after OpenAI's answer)."""
    with anyio.fail_after(BOUND):  # a bound against hangs, not a measurement
        while line not in [log_message(record) for record in caplog.records]:
            await anyio.sleep(0.01)


# -- accepted -----------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
async def test_a_call_accepted_with_the_template_runs_functions_and_is_reported(
    shell: str, fake: tuple[FakeRealtimeWebRTC, str]
) -> None:
    upstream, base_url = fake
    orders, reports = Orders(), Reports()
    with phone(
        shell,
        base_url,
        sip_accept="realtime",
        functions=[orders.lookup_order],
        server_functions=True,
        pin_session=True,
        on_call_end=reports,
        include_functions_routes=False,
    ) as sender:
        ringing = upstream.ring(SIP_HEADERS)
        announced = await sender.asend(ringing.realtime_event())
        other_surface = await sender.asend(ringing.live_event())
        assert announced.json() == other_surface.json() == {"received": True}
        answer = await answered(upstream, ringing)
        call_id = ringing.call_id
        assert (answer.kind, answer.action) == ("realtime", "accept")
        assert answer.body["instructions"] == INSTRUCTIONS
        assert [tool["name"] for tool in answer.body["tools"]] == ["lookup_order"]
        assert answer.headers["authorization"] == f"Bearer {KEY}"
        await upstream.await_until(lambda: upstream.open_sidebands(call_id) == 1, timeout=BOUND)

        tool_call = await upstream.acall_function(call_id, "lookup_order", {"order_id": "A7"})
        output = await upstream.await_for_event(
            call_id,
            "conversation.item.create",
            where=lambda event: event["item"].get("call_id") == tool_call,
            timeout=BOUND,
        )
        assert json.loads(output["item"]["output"])["result"] == {
            "order": "A7",
            "status": "shipped",
        }
        assert orders.looked_up == [("A7", None)]  # an anonymous caller
        await upstream.aend_call(call_id)
        report: CallReport = await reports.one()
    assert [a.kind for a in upstream.sip_answers] == ["realtime"]  # the Live event was left
    assert report.call_id == call_id
    assert report.kind == "realtime"
    assert report.identity is None
    assert report.end_reason == "remote"
    assert report.metered is True
    assert [(f.name, f.ok) for f in report.function_calls] == [("lookup_order", True)]
    sent_by_navai(upstream, call_id)


class Receptionist:
    """``accept_call``: the caller's number as their identity, and a word
    for them in the instructions; what it was given, kept."""

    def __init__(self) -> None:
        self.heard: list[IncomingCall] = []

    def __call__(self, incoming: IncomingCall) -> Accept:
        self.heard.append(incoming)
        number = (incoming.header("from") or "").partition("sip:")[2].partition("@")[0]
        return Accept(identity=number, session={"instructions": f"Greet {number}."})


class AsyncReceptionist(Receptionist):
    async def __call__(self, incoming: IncomingCall) -> Accept:  # type: ignore[override]
        await anyio.sleep(0)
        return super().__call__(incoming)


@pytest.mark.anyio
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
@pytest.mark.parametrize("hook", [Receptionist, AsyncReceptionist], ids=["plain", "async"])
async def test_the_hook_accepts_with_its_identity_and_session(
    shell: str, hook: type[Receptionist], fake: tuple[FakeRealtimeWebRTC, str]
) -> None:
    upstream, base_url = fake
    receptionist, reports = hook(), Reports()
    with phone(shell, base_url, accept_call=receptionist, sideband=True, on_call_end=reports) as (
        sender
    ):
        ringing = upstream.ring(SIP_HEADERS)
        await sender.asend(ringing.realtime_event())
        answer = await answered(upstream, ringing)
        assert answer.body["instructions"] == f"Greet {CALLER}."
        assert len(answer.headers["openai-safety-identifier"]) == 64  # the caller's, hashed
        await upstream.await_until(
            lambda: upstream.open_sidebands(ringing.call_id) == 1, timeout=BOUND
        )
        await upstream.aend_call(ringing.call_id)
        report = await reports.one()
    [incoming] = receptionist.heard
    assert incoming.call_id == ringing.call_id
    assert incoming.kind == "realtime"
    assert incoming.sip_headers == SIP_HEADERS
    assert incoming.media_security == "srtp"
    assert report.identity == CALLER
    assert report.identity_key == f"app:{CALLER}"


@pytest.mark.anyio
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
async def test_a_call_accepted_on_gpt_live(
    shell: str, fake: tuple[FakeRealtimeWebRTC, str]
) -> None:
    upstream, base_url = fake
    reports = Reports()
    with phone(
        shell,
        base_url,
        sip_accept="live",
        pin_session=True,
        on_call_end=reports,
        live_session={"client": {"data_channel": {"allowed_server_events": "all"}}},
    ) as sender:
        ringing = upstream.ring(SIP_HEADERS)
        await sender.asend(ringing.realtime_event())  # the Realtime surface's: left alone
        await sender.asend(ringing.live_event())
        answer = await answered(upstream, ringing)
        assert (answer.kind, answer.action, answer.call_id) == (
            "live",
            "accept",
            ringing.session_id,
        )
        session = answer.body["session"]
        assert session["type"] == "live"
        assert session["instructions"] == INSTRUCTIONS
        assert "client" not in session  # a phone call has no data channel
        await upstream.await_until(
            lambda: upstream.open_sidebands(ringing.session_id) == 1, timeout=BOUND
        )
        await upstream.areport_usage(ringing.session_id, 42)
        await upstream.aend_call(ringing.session_id)
        report = await reports.one()
    assert report.kind == "live"
    assert report.call_id == ringing.session_id
    assert report.end_reason == "remote"
    assert report.usage.seconds == 42


@pytest.mark.anyio
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
async def test_the_hook_accepts_a_live_call_with_its_identity_and_session(
    shell: str, fake: tuple[FakeRealtimeWebRTC, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="navai_mw")
    upstream, base_url = fake
    with phone(shell, base_url, sip_accept="live", accept_call=Receptionist()) as sender:
        ringing = upstream.ring(SIP_HEADERS)
        await sender.asend(ringing.live_event())
        answer = await answered(upstream, ringing)
        await logged(caplog, f"navai_mw: call live:{ringing.session_id} is accepted (live)")
    session = answer.body["session"]
    assert session["instructions"] == f"Greet {CALLER}."
    assert session["model"] == "gpt-live-1"  # the template's, under the hook's fields
    assert len(session["safety_identifier"]) == 64  # the caller's, hashed, where Live takes it


@pytest.mark.anyio
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
async def test_an_accepted_call_is_logged_by_its_id_and_kind(
    shell: str, fake: tuple[FakeRealtimeWebRTC, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="navai_mw")
    upstream, base_url = fake
    with phone(shell, base_url, sip_accept="realtime") as sender:
        ringing = upstream.ring(SIP_HEADERS)
        await sender.asend(ringing.realtime_event())
        await answered(upstream, ringing)
        await logged(caplog, f"navai_mw: call {ringing.call_id} is accepted (realtime)")


# -- refused, transferred, failed -----------------------------------------------------------


def _raises(incoming: IncomingCall) -> Accept:
    raise LookupError("the CRM is down")


def _says_hello(incoming: IncomingCall) -> str:
    return "hello"


@pytest.mark.anyio
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
@pytest.mark.parametrize(
    ("keywords", "action", "body"),
    [
        ({"accept_call": lambda call: Reject(486)}, "reject", {"status_code": 486}),
        ({}, "reject", {"status_code": 603}),  # nobody answers phone calls
        ({"accept_call": _raises, "sip_accept": "realtime"}, "reject", {"status_code": 500}),
        ({"accept_call": _says_hello}, "reject", {"status_code": 500}),
        (
            {"accept_call": lambda call: Refer("tel:+14155550199")},
            "refer",
            {"target_uri": "tel:+14155550199"},
        ),
    ],
    ids=["hook rejects", "nobody answers", "hook raises", "hook returns junk", "hook refers"],
)
async def test_a_call_refused_or_transferred(
    shell: str,
    keywords: dict[str, Any],
    action: str,
    body: dict[str, Any],
    fake: tuple[FakeRealtimeWebRTC, str],
) -> None:
    upstream, base_url = fake
    with phone(shell, base_url, **keywords) as sender:
        ringing = upstream.ring(SIP_HEADERS)
        await sender.asend(ringing.realtime_event())
        answer = await answered(upstream, ringing)
    assert (answer.kind, answer.action, answer.body) == ("realtime", action, body)
    assert upstream.open_sidebands(ringing.call_id) == 0


@pytest.mark.anyio
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
@pytest.mark.parametrize(
    ("answer_with", "action", "body"),
    [
        (Reject(486), "reject", {"status_code": 486}),
        (Refer("tel:+14155550199"), "refer", {"target_uri": "tel:+14155550199"}),
    ],
    ids=["rejects", "refers"],
)
async def test_a_live_call_is_refused_or_transferred_on_live(
    shell: str,
    answer_with: Reject | Refer,
    action: str,
    body: dict[str, Any],
    fake: tuple[FakeRealtimeWebRTC, str],
) -> None:
    upstream, base_url = fake
    with phone(shell, base_url, sip_accept="live", accept_call=lambda call: answer_with) as sender:
        ringing = upstream.ring(SIP_HEADERS)
        await sender.asend(ringing.live_event())
        answer = await answered(upstream, ringing)
    assert (answer.kind, answer.action, answer.call_id) == ("live", action, ringing.session_id)
    assert answer.body == body
    assert upstream.open_sidebands(ringing.session_id) == 0


@pytest.mark.anyio
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
@pytest.mark.parametrize(
    ("surface", "why"),
    [
        (
            "realtime",
            "session is not a valid session: expected a string, got int @ session.instructions",
        ),
        ("live", "instructions must be a string"),
    ],
)
async def test_a_session_the_hook_gives_that_cannot_be_sent_refuses_the_call_with_500(
    shell: str,
    surface: str,
    why: str,
    fake: tuple[FakeRealtimeWebRTC, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream, base_url = fake
    with phone(
        shell,
        base_url,
        sip_accept=surface,
        accept_call=lambda call: Accept(identity=CALLER, session={"instructions": 42}),
    ) as sender:
        ringing = upstream.ring(SIP_HEADERS)
        await sender.asend(ringing.live_event() if surface == "live" else ringing.realtime_event())
        answer = await answered(upstream, ringing)
        call_id = ringing.session_id if surface == "live" else ringing.call_id
        await logged(
            caplog, f"navai_mw: call {call_id} is refused: its session cannot be sent: {why}"
        )
    assert (answer.kind, answer.action, answer.call_id) == (surface, "reject", call_id)
    assert answer.body == {"status_code": 500}
    assert [a.action for a in upstream.sip_answers] == ["reject"]  # never accepted


@pytest.mark.anyio
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
@pytest.mark.parametrize("fails", [False, True], ids=["sent", "failed"])
@pytest.mark.parametrize(
    ("answer", "doing", "done", "path"),
    [
        (Refer("tel:+14155550199"), "transferring", "is transferred", "refer"),
        (Reject(486), "refusing", "is refused (SIP 486)", "reject"),
    ],
    ids=["transfer", "refusal"],
)
async def test_an_answer_is_logged_by_the_call_and_its_failure_without_the_key(
    shell: str,
    fails: bool,
    answer: Refer | Reject,
    doing: str,
    done: str,
    path: str,
    fake: tuple[FakeRealtimeWebRTC, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="navai_mw")
    upstream, base_url = fake
    with phone(shell, base_url, accept_call=lambda call: answer) as sender:
        ringing = upstream.ring(SIP_HEADERS)
        if fails:
            # A 4xx: neither answer is tried again.
            upstream.fail(400, f"The call cannot take that now ({KEY}).", times=1)
        await sender.asend(ringing.realtime_event())
        line = (
            f"navai_mw: {doing} call {ringing.call_id} failed: OpenAI realtime calls "
            "failed (400): The call cannot take that now ([redacted])."
            if fails
            else f"navai_mw: call {ringing.call_id} {done}"
        )
        await logged(caplog, line)
    sent = [r for r in upstream.requests if r.path.endswith(f"{ringing.call_id}/{path}")]
    assert len(sent) == 1  # a failed answer is not sent again
    assert KEY not in caplog.text


@pytest.mark.anyio
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
async def test_a_failed_accept_is_reported_and_never_sent_again(
    shell: str, fake: tuple[FakeRealtimeWebRTC, str], caplog: pytest.LogCaptureFixture
) -> None:
    upstream, base_url = fake
    reports = Reports()
    with phone(shell, base_url, sip_accept="realtime", sideband=True, on_call_end=reports) as (
        sender
    ):
        ringing = upstream.ring(SIP_HEADERS)
        upstream.fail(500, f"The server had an error ({KEY}).", times=1)
        await sender.asend(ringing.realtime_event())
        report = await reports.one()
        await logged(
            caplog,
            f"navai_mw: accepting call {ringing.call_id} failed (never sent again: OpenAI may "
            "have taken it): OpenAI realtime calls failed (500): The server had an error "
            "([redacted]).",
        )
    accepts = [r for r in upstream.requests if r.path.endswith(f"{ringing.call_id}/accept")]
    assert len(accepts) == 1
    assert ringing.answered is None
    assert report.end_reason == "accept_failed"
    assert report.metered is False
    assert report.call_id == ringing.call_id
    # No hook named the caller: the report names nobody.
    assert (report.kind, report.identity, report.model) == ("realtime", None, "gpt-realtime")
    assert report.started_at == report.ended_at
    assert KEY not in caplog.text


@pytest.mark.anyio
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
async def test_a_failed_accept_is_reported_with_the_hooks_caller_and_no_model_it_unset(
    shell: str, fake: tuple[FakeRealtimeWebRTC, str]
) -> None:
    upstream, base_url = fake
    reports = Reports()
    # The hook's session takes the template's model away (a null passes the schema).
    with phone(
        shell,
        base_url,
        accept_call=lambda call: Accept(identity=CALLER, session={"model": None}),
        on_call_end=reports,
    ) as sender:
        ringing = upstream.ring(SIP_HEADERS)
        upstream.fail(500, "The server had an error.", times=1)
        await sender.asend(ringing.realtime_event())
        report = await reports.one()
    assert report.end_reason == "accept_failed"
    assert report.identity == CALLER
    assert report.model == ""  # no model is named, rather than None


@pytest.mark.anyio
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
async def test_a_caller_openai_blocked_is_refused(
    shell: str, fake: tuple[FakeRealtimeWebRTC, str], caplog: pytest.LogCaptureFixture
) -> None:
    upstream, base_url = fake
    secret = "the phone tests' safety secret"
    identifier = hmac.new(secret.encode(), f"app:{CALLER}".encode(), hashlib.sha256).hexdigest()
    with phone(
        shell, base_url, accept_call=Receptionist(), safety_id_secret=secret, sideband=True
    ) as sender:
        blocked = await sender.asend(webhook_events.safety_identifier_blocked(identifier))
        assert blocked.status_code == 200
        ringing = upstream.ring(SIP_HEADERS)
        await sender.asend(ringing.realtime_event())
        answer = await answered(upstream, ringing)
        await logged(
            caplog,
            f"navai_mw: call {ringing.call_id} is refused: Your access to voice features is "
            "suspended. Contact the service's support to learn more.",
        )
        other = upstream.ring((("From", "<sip:+14155550100@carrier.example>"),))
        await sender.asend(other.realtime_event())
        other_answer = await answered(upstream, other)
    assert (answer.action, answer.body) == ("reject", {"status_code": 403})
    assert other_answer.action == "accept"  # only the blocked caller


class Budgets:
    """``budget``: a minute a day for everyone; the requests it was asked about, kept."""

    def __init__(self) -> None:
        self.asked: list[tuple[str | None, RequestInfo]] = []

    def __call__(self, identity: str | None, info: RequestInfo) -> str:
        self.asked.append((identity, info))
        return "1 minutes/day"


@pytest.mark.anyio
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
async def test_a_ringing_call_over_its_callers_budget_is_refused_with_403(
    shell: str, fake: tuple[FakeRealtimeWebRTC, str], caplog: pytest.LogCaptureFixture
) -> None:
    upstream, base_url = fake
    budgets = Budgets()
    with phone(shell, base_url, accept_call=Receptionist(), sideband=True, budget=budgets) as (
        sender
    ):
        # The first call holds the caller's whole minute while it lasts.
        first = upstream.ring(SIP_HEADERS)
        await sender.asend(first.realtime_event())
        assert (await answered(upstream, first)).action == "accept"
        await upstream.await_until(
            lambda: upstream.open_sidebands(first.call_id) == 1, timeout=BOUND
        )
        second = upstream.ring(SIP_HEADERS)
        await sender.asend(second.realtime_event())
        answer = await answered(upstream, second)
        await logged(
            caplog,
            f"navai_mw: call {second.call_id} is refused: Your budget of 1 minutes/day is "
            "spent; it is whole again at the next period.",
        )
        await upstream.aend_call(first.call_id)
    assert (answer.action, answer.body) == ("reject", {"status_code": 403})
    assert [r.path for r in upstream.requests if second.call_id in r.path] == [
        f"/v1/realtime/calls/{second.call_id}/reject"
    ]
    # The budget sees the caller, and the webhook's route and path, no header.
    assert [identity for identity, _ in budgets.asked] == [CALLER, CALLER]
    info = budgets.asked[0][1]
    assert (info.method, info.route, info.path, info.headers) == (
        "POST",
        "openai_webhook",
        PATH,
        {},
    )


def _budget_store_down(identity: str | None, info: RequestInfo) -> str:
    raise ConnectionError("the budgets' database is down")


@pytest.mark.anyio
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
async def test_a_ringing_call_whose_budget_cannot_be_read_is_refused_with_503(
    shell: str, fake: tuple[FakeRealtimeWebRTC, str], caplog: pytest.LogCaptureFixture
) -> None:
    upstream, base_url = fake
    with phone(shell, base_url, sip_accept="realtime", budget=_budget_store_down) as sender:
        ringing = upstream.ring(SIP_HEADERS)
        await sender.asend(ringing.realtime_event())
        answer = await answered(upstream, ringing)
        await logged(
            caplog,
            f"navai_mw: call {ringing.call_id} is refused: Budgets cannot be checked right now; "
            "try again shortly.",
        )
    assert (answer.action, answer.body) == ("reject", {"status_code": 503})


@pytest.mark.anyio
@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
async def test_an_accepted_call_ends_at_its_time_cap(
    shell: str, fake: tuple[FakeRealtimeWebRTC, str]
) -> None:
    upstream, base_url = fake
    reports = Reports()
    with phone(
        shell,
        base_url,
        sip_accept="realtime",
        sideband=True,
        on_call_end=reports,
        max_call_seconds=1,
    ) as sender:
        ringing = upstream.ring(SIP_HEADERS)
        await sender.asend(ringing.realtime_event())
        await answered(upstream, ringing)
        report = await reports.one()
    assert upstream.hangups == [ringing.call_id]  # hung up as a relayed call is
    assert report.end_reason == "time_cap"


# -- the hook's failures and a missing key, step by step -------------------------------------

WEBHOOK = RequestInfo(method="POST", route="openai_webhook", path=PATH, headers={})
RINGING = IncomingCall(call_id="rtc_0123456789abcdef", kind="realtime")


def _phone_steps(opts: NavaiVoiceBackendOptions, **keywords: Any) -> Any:
    """The steps answering ``RINGING``, driven by hand."""
    settings = Endpoint(
        opts, openai_webhook_secret=SECRET, webhook_clock=lambda: 1_700_000_000.0, **keywords
    ).settings
    return answer_phone_call(settings, RINGING, WEBHOOK)


@pytest.mark.parametrize(
    ("result", "line"),
    [
        (
            HookResult(timed_out=True, elapsed=ACCEPT_HOOK_SECONDS),
            f"navai_mw: accept_call did not answer call {RINGING.call_id} within 10 seconds; "
            "it is refused",
        ),
        (
            HookResult(error=LookupError("the CRM is down")),
            f"navai_mw: accept_call raised LookupError on call {RINGING.call_id}; it is refused",
        ),
        (
            HookResult(value="hello"),
            f"navai_mw: accept_call returned str on call {RINGING.call_id}, not Accept, Reject "
            "or Refer; it is refused",
        ),
    ],
    ids=["times out", "raises", "returns junk"],
)
def test_a_hook_that_fails_has_ten_seconds_and_refuses_the_call_with_500_saying_how(
    result: HookResult, line: str, caplog: pytest.LogCaptureFixture
) -> None:
    hook = Receptionist()
    steps = _phone_steps(NavaiVoiceBackendOptions(openai_api_key=KEY), accept_call=hook)
    asked = next(steps)
    assert isinstance(asked, CallHook)
    assert (asked.hook, asked.args, asked.timeout) == (hook, (RINGING,), 10.0)
    refusal = steps.send(result)
    assert isinstance(refusal, Attempt)
    assert refusal.request.url.endswith(f"/{RINGING.call_id}/reject")
    assert json.loads(refusal.request.body) == {"status_code": 500}
    [record] = [r for r in caplog.records if r.name.startswith("navai_mw")]
    assert (record.levelno, log_message(record)) == (logging.ERROR, line)
    # Only a hook that raised has a traceback to show: its own.
    error = result.error
    assert record.exc_info == ((type(error), error, error.__traceback__) if error else None)


def _no_token() -> str:
    raise PermissionError("Entra is down")


def test_a_call_azure_gives_no_token_for_is_left_ringing_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    opts = NavaiVoiceBackendOptions(
        azure_endpoint="https://navai-tests.openai.azure.com", azure_ad_token_provider=_no_token
    )
    steps = _phone_steps(opts, accept_call=lambda call: Reject(486))
    steps.send(HookResult(value=steps.send(None).hook(RINGING)))  # the app's hook answers
    with pytest.raises(StopIteration):  # the provider's failure: nothing is sent
        steps.send(HookResult(error=PermissionError("Entra is down")))
    lines = [(r.levelno, log_message(r)) for r in caplog.records if r.name.startswith("navai_mw")]
    assert lines == [
        (logging.ERROR, "navai_mw: the Azure token provider raised PermissionError"),
        (
            logging.ERROR,
            f"navai_mw: call {RINGING.call_id} cannot be answered: Azure OpenAI token provider "
            "failed; no token to send.",
        ),
    ]
