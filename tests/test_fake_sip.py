"""The fake OpenAI's phone calls and webhooks, and the requests navai_mw
answers a phone call with:

* every event the fake delivers validates as openai-python's webhook event
  types, and is signed as ``webhooks.unwrap`` expects;
* a ringing call answers to Realtime's and GPT-Live's accept, reject and
  refer, the first answer deciding it (409 for the next, 404 for an id it
  never rang under);
* navai_mw's accept, reject and refer bodies validate as openai-python's
  params, an accept and a refer are never sent twice, a reject is retried.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from navai_mw import Accept, IncomingCall, NavaiVoiceBackendOptions, Refer, Reject, UpstreamError
from navai_mw.core.effects import Attempt, Outcome
from navai_mw.core.http import Credential, HttpResponse
from navai_mw.testing import FakeRealtimeWebRTC, WebhookSender, webhook_events
from navai_mw.upstreams.live import accept_live, refer_live, reject_live
from navai_mw.upstreams.openai_webhooks import incoming_call
from navai_mw.upstreams.realtime_calls import AcceptedCall, accept_call, refer_call, reject_call

from .openai_events import sip_answer, webhook_event
from .webhook_oracle import unwrap_status

pytest.importorskip("aiortc")

KEY = "sk-test-phone-0123456789"
SECRET = "whsec_dGhlIGZha2UncyB3ZWJob29rIHNpZ25pbmcga2V5"
OPTS = NavaiVoiceBackendOptions(openai_api_key=KEY, upstream_timeout_seconds=5)
CREDENTIAL = Credential.bearer(KEY)
SIP_HEADERS = (("From", "<sip:+14155550123@carrier.example>;tag=1"), ("To", "<sip:proj@sip>"))


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeRealtimeWebRTC, str]]:
    upstream = FakeRealtimeWebRTC(api_key=KEY)
    with upstream.serve() as base_url:
        yield upstream, base_url


# -- the events, and how they are signed -------------------------------------------------------

EVENTS = {
    "realtime.call.incoming": webhook_events.realtime_call_incoming("rtc_1", SIP_HEADERS),
    "live.transport.incoming": webhook_events.live_transport_incoming("live_1", SIP_HEADERS),
    "safety_identifier.blocked": webhook_events.safety_identifier_blocked("ab" * 32),
    "safety.warning_issued": webhook_events.safety_warning_issued("case_1"),
    "batch.completed": webhook_events.event("batch.completed", {"id": "batch_1"}),
}


@pytest.mark.parametrize("kind", sorted(EVENTS))
def test_every_event_is_one_openai_python_reads(kind: str) -> None:
    assert webhook_event(EVENTS[kind]).type == kind


def test_a_ringing_calls_events_are_openai_pythons() -> None:
    upstream = FakeRealtimeWebRTC(api_key=KEY)
    ringing = upstream.ring(SIP_HEADERS)
    realtime, live = webhook_event(ringing.realtime_event()), webhook_event(ringing.live_event())
    assert realtime.data.call_id == ringing.call_id
    assert live.data.session_id == ringing.session_id
    assert [(h.name, h.value) for h in realtime.data.sip_headers] == list(SIP_HEADERS)


def test_the_sender_signs_as_unwrap_expects_and_bends_on_request() -> None:
    sender = WebhookSender(SECRET, "http://navai.invalid/navai/webhooks/openai")
    event = EVENTS["safety.warning_issued"]
    now = time.time()
    assert unwrap_status(*sender.prepare(event), SECRET, now) == 200
    body, headers = sender.prepare(event)
    assert unwrap_status(body + b" ", headers, SECRET, now) == 401
    assert unwrap_status(*sender.prepare(event, timestamp=int(now) - 600), SECRET, now) == 401
    assert unwrap_status(*sender.prepare(event, drop=("webhook-id",)), SECRET, now) == 400
    good = sender.prepare(event, extra_signatures=("v1,AAAA",))
    assert unwrap_status(*good, SECRET, now) == 200
    redelivered_body, redelivered = sender.redelivery()
    assert redelivered["webhook-id"] == good[1]["webhook-id"]
    assert json.loads(redelivered_body) == event
    assert unwrap_status(redelivered_body, redelivered, SECRET, now) == 200


# -- the fake's answers to a ringing call ------------------------------------------------------


def post(base_url: str, path: str, body: Any, *, key: str = KEY) -> httpx.Response:
    return httpx.post(
        f"{base_url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


def test_the_first_answer_decides_a_ringing_call(served: tuple[FakeRealtimeWebRTC, str]) -> None:
    upstream, base_url = served
    ringing = upstream.ring(SIP_HEADERS)
    session = {"type": "live", "model": "gpt-live-1"}
    accepted = post(base_url, f"/live/sessions/{ringing.session_id}/accept", {"session": session})
    assert accepted.status_code == 200, accepted.text
    assert ringing.answered == "live"
    again = post(base_url, f"/realtime/calls/{ringing.call_id}/accept", {"type": "realtime"})
    assert again.status_code == 409
    [answer] = [a for a in upstream.sip_answers if a.call_id == ringing.session_id]
    assert (answer.kind, answer.action, answer.body) == ("live", "accept", {"session": session})
    # Accepted, the call is one the fake knows: its sideband may attach.
    assert upstream.open_sidebands(ringing.session_id) == 0
    upstream.end_call(ringing.session_id)


@pytest.mark.parametrize(
    ("path", "body", "answered"),
    [
        ("/realtime/calls/{rtc}/reject", {"status_code": 486}, "reject"),
        ("/realtime/calls/{rtc}/reject", {}, "reject"),
        ("/live/sessions/{live}/refer", {"target_uri": "tel:+14155550199"}, "refer"),
    ],
)
def test_a_ringing_call_is_refused_or_transferred(
    served: tuple[FakeRealtimeWebRTC, str], path: str, body: Any, answered: str
) -> None:
    upstream, base_url = served
    ringing = upstream.ring()
    where = path.format(rtc=ringing.call_id, live=ringing.session_id)
    assert post(base_url, where, body).status_code == 200
    assert ringing.answered == answered
    assert upstream.sip_answers[-1].body == body


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/realtime/calls/rtc_nothing/accept", {"type": "realtime"}, 404),
        ("/realtime/calls/{live}/accept", {"type": "realtime"}, 404),
        ("/realtime/calls/{rtc}/accept", {"type": "live"}, 400),
        ("/live/sessions/{live}/accept", {"session": {"type": "live"}}, 400),
        ("/live/sessions/{live}/reject", {}, 400),
        ("/realtime/calls/{rtc}/refer", {"target_uri": " "}, 400),
    ],
)
def test_the_fake_refuses_what_openai_refuses(
    served: tuple[FakeRealtimeWebRTC, str], path: str, body: Any, status: int
) -> None:
    upstream, base_url = served
    ringing = upstream.ring()
    where = path.format(rtc=ringing.call_id, live=ringing.session_id)
    assert post(base_url, where, body).status_code == status
    assert ringing.answered is None


def test_an_answer_needs_the_key(served: tuple[FakeRealtimeWebRTC, str]) -> None:
    upstream, base_url = served
    ringing = upstream.ring()
    refused = post(base_url, f"/realtime/calls/{ringing.call_id}/reject", {}, key="sk-wrong")
    assert refused.status_code == 401
    assert ringing.answered is None


# -- navai_mw's own requests, sans-IO -----------------------------------------------------------

REALTIME_SESSION = {
    "type": "realtime",
    "model": "gpt-realtime",
    "instructions": "Answer the phone.",
    "audio": {"output": {"voice": "marin"}},
    "tools": [{"type": "function", "name": "lookup_order", "parameters": {"type": "object"}}],
}
LIVE_SESSION = {
    "model": "gpt-live-1",
    "instructions": "Answer the phone.",
    "audio": {"output": {"voice": "marin"}},
    "safety_identifier": "ab" * 32,
    # A browser's fields, which a phone call's accept leaves out.
    "client": {"data_channel": {"allowed_client_events": []}},
    "idle_timeout_s": 30,
}


def _first(steps: Any) -> Attempt:
    attempt = next(steps)
    assert isinstance(attempt, Attempt)
    return attempt


def _body(attempt: Attempt) -> Any:
    return json.loads(attempt.request.body)


STEPS = {
    ("realtime", "accept"): lambda: accept_call(
        OPTS, "rtc_1", REALTIME_SESSION, credential=CREDENTIAL, safety_identifier="cd" * 32
    ),
    ("realtime", "reject"): lambda: reject_call(OPTS, "rtc_1", 603, credential=CREDENTIAL),
    ("realtime", "refer"): lambda: refer_call(OPTS, "rtc_1", "tel:+1415", credential=CREDENTIAL),
    ("live", "accept"): lambda: accept_live(OPTS, "live_1", LIVE_SESSION, credential=CREDENTIAL),
    ("live", "reject"): lambda: reject_live(OPTS, "live_1", 486, credential=CREDENTIAL),
    ("live", "refer"): lambda: refer_live(OPTS, "live_1", "sip:a@b.example", credential=CREDENTIAL),
}


@pytest.mark.parametrize(("kind", "action"), sorted(STEPS))
def test_every_answer_is_openai_pythons_params(kind: str, action: str) -> None:
    attempt = _first(STEPS[(kind, action)]())
    request = attempt.request
    api = "realtime/calls/rtc_1" if kind == "realtime" else "live/sessions/live_1"
    assert (request.method, request.url) == ("POST", f"{OPTS.api_base_url}/{api}/{action}")
    headers = dict(request.headers)
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert (headers["Content-Type"], headers["Accept"]) == ("application/json", "*/*")
    assert request.max_response_bytes == 64 * 1024  # a short JSON answer, as a hangup's
    assert request.secret == KEY
    assert KEY not in repr(request)
    sip_answer(kind, action, _body(attempt))


def test_a_realtime_accept_carries_the_safety_identifier_in_its_header() -> None:
    request = _first(STEPS[("realtime", "accept")]()).request
    assert ("OpenAI-Safety-Identifier", "cd" * 32) in request.headers


def test_a_live_accept_leaves_the_browsers_fields_out() -> None:
    session = _body(_first(STEPS[("live", "accept")]()))["session"]
    assert session["type"] == "live"
    assert session["safety_identifier"] == "ab" * 32
    assert "client" not in session
    assert "idle_timeout_s" not in session


def _send_until_it_ends(steps: Any, outcome: Outcome) -> None:
    """``outcome`` to every attempt (a reject is tried again, within its
    budget) until the steps end."""
    while True:
        steps.send(outcome)


@pytest.mark.parametrize(("kind", "action"), sorted(STEPS))
def test_an_answer_that_reaches_nobody_or_gets_a_300_names_the_api(kind: str, action: str) -> None:
    api = "OpenAI realtime calls" if kind == "realtime" else "OpenAI live sessions"
    unreached = STEPS[(kind, action)]()
    _first(unreached)
    with pytest.raises(UpstreamError) as failure:
        _send_until_it_ends(unreached, Outcome(None, elapsed=0.1))
    assert failure.value.message == f"{api} could not be reached."
    moved = STEPS[(kind, action)]()
    _first(moved)
    with pytest.raises(UpstreamError) as failure:
        moved.send(Outcome(HttpResponse(status=300, body=b'{"error": {"message": "moved"}}')))
    assert failure.value.message == f"{api} failed (300): moved"


@pytest.mark.parametrize(("kind", "action"), sorted(STEPS))
def test_only_a_reject_is_retried(kind: str, action: str) -> None:
    steps = STEPS[(kind, action)]()
    _first(steps)
    failed = Outcome(HttpResponse(status=503, body=b'{"error": {"message": "busy"}}'))
    if action == "reject":
        again = steps.send(failed)
        assert isinstance(again, Attempt)
        with pytest.raises(StopIteration):
            steps.send(Outcome(HttpResponse(status=200, body=b"{}"), elapsed=1.0))
        return
    # Never sent twice: OpenAI may have accepted (or transferred) before failing.
    with pytest.raises(UpstreamError, match="busy") as failure:
        steps.send(failed)
    assert failure.value.status == 502


BUDGETED = {
    ("realtime", "accept"): lambda budget: accept_call(
        OPTS, "rtc_1", REALTIME_SESSION, credential=CREDENTIAL, budget=budget
    ),
    ("realtime", "reject"): lambda budget: reject_call(
        OPTS, "rtc_1", 603, credential=CREDENTIAL, budget=budget
    ),
    ("realtime", "refer"): lambda budget: refer_call(
        OPTS, "rtc_1", "tel:+1415", credential=CREDENTIAL, budget=budget
    ),
    ("live", "accept"): lambda budget: accept_live(
        OPTS, "live_1", LIVE_SESSION, credential=CREDENTIAL, budget=budget
    ),
    ("live", "reject"): lambda budget: reject_live(
        OPTS, "live_1", 486, credential=CREDENTIAL, budget=budget
    ),
    ("live", "refer"): lambda budget: refer_live(
        OPTS, "live_1", "sip:a@b.example", credential=CREDENTIAL, budget=budget
    ),
}


@pytest.mark.parametrize(("kind", "action"), sorted(BUDGETED))
def test_an_answer_waits_what_is_left_of_the_webhooks_budget(kind: str, action: str) -> None:
    # What a slow token provider left of the budget, not the whole of it again.
    assert _first(BUDGETED[(kind, action)](1.5)).timeout == 1.5
    assert _first(STEPS[(kind, action)]()).timeout == 5


@pytest.mark.parametrize(("kind", "action"), sorted(STEPS))
def test_a_refused_answer_names_the_api_that_refused_it(kind: str, action: str) -> None:
    steps = STEPS[(kind, action)]()
    _first(steps)
    refused = Outcome(HttpResponse(status=400, body=b'{"error": {"message": "no such call"}}'))
    with pytest.raises(UpstreamError) as failure:
        steps.send(refused)
    api = "OpenAI realtime calls" if kind == "realtime" else "OpenAI live sessions"
    assert failure.value.message == f"{api} failed (400): no such call"
    assert failure.value.status == 502


_NOT_A_SESSION = "Accept(session=...) must be a mapping of session fields (or None)."


@pytest.mark.parametrize(
    "target",
    ["tel:+1 415", "mailto:a@b.example", 14155550123, "sip:" + "agent " * 20],
    ids=["a-space", "not-tel-or-sip", "not-text", "long"],
)
def test_a_transfer_is_to_a_tel_or_sip_uri_and_says_what_it_got(target: object) -> None:
    with pytest.raises(ValueError, match=r"^Refer\(target\) must be") as caught:
        Refer(target)  # type: ignore[arg-type]
    assert str(caught.value) == (
        "Refer(target) must be a tel: or sip: URI without spaces "
        f"(tel:+14155550123, sip:agent@example.com). Received: {str(target)[:64]!r}"
    )


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"identity": ""}, "Accept(identity=...) must be a non-empty string (or None)."),
        ({"identity": "  "}, "Accept(identity=...) must be a non-empty string (or None)."),
        ({"identity": 14155550123}, "Accept(identity=...) must be a non-empty string (or None)."),
        ({"session": ["instructions"]}, _NOT_A_SESSION),
        ({"session": "Greet the caller."}, _NOT_A_SESSION),
    ],
    ids=["empty", "blank", "a-number", "a-list", "text"],
)
def test_an_accept_says_what_is_wrong_with_it(keywords: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=r"^Accept\((identity|session)=\.\.\.\) must be") as caught:
        Accept(**keywords)
    assert str(caught.value) == message


def test_an_accept_takes_a_name_and_session_fields_or_nothing() -> None:
    assert Accept(identity=" +14155550123 ").identity == " +14155550123 "
    assert Accept(session={}).session == {}
    assert (Accept().identity, Accept().session) == (None, None)


@pytest.mark.parametrize(("kind", "call_id"), [("realtime", "rtc_1"), ("live", "live_1")])
def test_an_accepted_call_is_named_by_its_id(kind: str, call_id: str) -> None:
    steps = STEPS[(kind, "accept")]()
    _first(steps)
    with pytest.raises(StopIteration) as done:
        steps.send(Outcome(HttpResponse(status=200, body=b"{}")))
    assert done.value.value == AcceptedCall(call_id)


@pytest.mark.parametrize(
    "status", [486.0, True, 399, 700, "486"], ids=["float", "bool", "low", "high", "text"]
)
def test_a_refusal_is_a_sip_status_and_says_what_it_got(status: object) -> None:
    with pytest.raises(ValueError, match=r"^Reject\(status_code=\.\.\.\) must be") as caught:
        Reject(status)  # type: ignore[arg-type]
    assert str(caught.value) == (
        f"Reject(status_code=...) must be a SIP status 400-699. Received: {status!r}"
    )


def test_a_sip_header_is_found_in_any_case_or_is_none() -> None:
    incoming = IncomingCall(
        call_id="rtc_1", kind="realtime", sip_headers=(("From", "<sip:+1415@a.example>"),)
    )
    assert incoming.header("from") == "<sip:+1415@a.example>"
    assert incoming.header("X-Account") is None


def test_only_an_incoming_event_with_its_data_is_a_phone_call() -> None:
    ringing = webhook_events.realtime_call_incoming("rtc_0123456789abcdef", (("From", "a"),))
    call = incoming_call(ringing)
    assert call is not None
    assert (call.call_id, call.kind, call.sip_headers) == (
        "rtc_0123456789abcdef",
        "realtime",
        (("From", "a"),),
    )
    live = incoming_call(webhook_events.live_transport_incoming("live_0123456789abcdef", ()))
    assert live is not None
    assert (live.call_id, live.kind) == ("live_0123456789abcdef", "live")
    assert incoming_call({**ringing, "data": ["not", "an", "object"]}) is None
    assert incoming_call({**ringing, "data": None}) is None
    another = {**ringing, "type": "realtime.call.ended"}  # its data names a call all the same
    assert incoming_call(another) is None
    assert incoming_call({**ringing, "data": {**ringing["data"], "call_id": "not an id"}}) is None
    odd = [{"name": "X-Odd", "value": 5}, "junk", {"value": "v"}, {"name": "To", "value": "b"}]
    call = incoming_call({**ringing, "data": {**ringing["data"], "sip_headers": odd}})
    assert call is not None
    assert call.sip_headers == (("To", "b"),)  # only a name and a value, both text
    for security, read in (("srtp", "srtp"), (5, None), ({"srtp": True}, None)):
        data = {**ringing["data"], "sip_media_security": security}
        secured = incoming_call({**ringing, "data": data})
        assert secured is not None
        assert secured.media_security == read  # text, or none at all
