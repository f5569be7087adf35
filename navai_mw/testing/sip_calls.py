"""The fake OpenAI's phone calls: a SIP call it announces (:meth:`ring`),
and the answers a server gives it, Realtime's
``POST /v1/realtime/calls/{call_id}/accept|reject|refer`` and GPT-Live's
``POST /v1/live/sessions/{session_id}/accept|reject|refer``.

One call rings under two ids, ``rtc_...`` and ``live_...``, as OpenAI's
does; the first answer on either decides it (a second gets 409). An
accepted call is a call like one the fake relayed: its sideband attaches
(Realtime's ``?call_id=``, Live's ``/attach``), the model's controls work
on it, and it ends with a hangup (Realtime), a ``session.close`` (Live) or
:meth:`end_call`. It has no media: the phone's audio is OpenAI's business.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal, cast

import attrs

from . import sideband_events as events
from . import webhook_events
from .scripted import RecordedRequest, _error_reply, _json_reply, _Reply

SIP_ANSWER_PATH: Final = re.compile(
    r"/v1/(?P<api>realtime/calls|live/sessions)/(?P<id>[^/]+)/(?P<action>accept|reject|refer)/?"
)
Kind = Literal["realtime", "live"]
Action = Literal["accept", "reject", "refer"]


@attrs.define(kw_only=True, eq=False)
class RingingCall:
    """A phone call the fake announced: its Realtime id (``call_id``), its
    GPT-Live id (``session_id``), the INVITE's ``sip_headers``, and how it
    was answered (``answered``: None while it rings, else ``"realtime"``
    or ``"live"`` for an accept, ``"reject"`` or ``"refer"``)."""

    call_id: str
    session_id: str
    sip_headers: tuple[tuple[str, str], ...] = ()
    answered: str | None = None

    def realtime_event(self) -> dict[str, Any]:
        """Its ``realtime.call.incoming`` webhook event."""
        return webhook_events.realtime_call_incoming(self.call_id, self.sip_headers)

    def live_event(self) -> dict[str, Any]:
        """Its ``live.transport.incoming`` webhook event."""
        return webhook_events.live_transport_incoming(self.session_id, self.sip_headers)


@attrs.frozen
class SipAnswer:
    """One answer a server gave a ringing call: the surface (``kind``),
    the ``action``, the id it named, its JSON ``body`` and its headers
    (lower-case names)."""

    kind: Kind
    action: Action
    call_id: str
    body: Any
    headers: dict[str, str] = attrs.field(repr=False)


def _refused(message: str) -> _Reply:
    return _error_reply(400, message, "invalid_request_error")


def _check(kind: Kind, action: Action, body: Any) -> tuple[dict[str, Any] | None, _Reply | None]:
    """The accepted session (for an accept), or OpenAI's 400 for a body
    that is not what the endpoint takes."""
    if not isinstance(body, dict):
        return None, _refused("Expected a JSON object.")
    if action == "accept":
        session = body if kind == "realtime" else body.get("session")
        if not isinstance(session, dict) or session.get("type") != kind:
            where = "The body" if kind == "realtime" else "session"
            return None, _refused(f"{where} must be a session of type {kind!r}.")
        if kind == "live" and not isinstance(session.get("model"), str):
            return None, _refused("Missing required parameter: 'session.model'.")
        return session, None
    if action == "reject":
        status = body.get("status_code")
        if (status is None and kind == "live") or (
            status is not None and (isinstance(status, bool) or not isinstance(status, int))
        ):
            return None, _refused("status_code must be an integer SIP status.")
        return None, None
    target = body.get("target_uri")
    if not isinstance(target, str) or not target.strip():
        return None, _refused("Missing required parameter: 'target_uri'.")
    return None, None


class _SipCalls:
    """The phone calls of :class:`FakeRealtimeWebRTC` (see its docstring)."""

    def _init_sip(self) -> None:
        self.ringing: list[RingingCall] = []
        self.sip_answers: list[SipAnswer] = []
        self._by_id: dict[str, RingingCall] = {}

    def _reset_sip(self) -> None:
        self.ringing.clear()
        self.sip_answers.clear()
        self._by_id.clear()

    # The sideband side's, which this shares (annotations only: the class
    # that mixes both in has them).
    _add_call: Callable[[Kind, str, dict[str, Any]], None]
    _notify: Callable[[], None]

    def ring(self, sip_headers: Iterable[tuple[str, str]] = ()) -> RingingCall:
        """A phone call rings: a :class:`RingingCall` under a new ``rtc_``
        and ``live_`` id, until a server answers it. Send its events
        (:meth:`RingingCall.realtime_event`, :meth:`RingingCall.live_event`)
        with a :class:`~navai_mw.testing.WebhookSender`."""
        token = secrets.token_hex(16)
        call = RingingCall(
            call_id=f"rtc_{token}", session_id=f"live_{token}", sip_headers=tuple(sip_headers)
        )
        self.ringing.append(call)
        self._by_id[call.call_id] = self._by_id[call.session_id] = call
        return call

    async def _sip_answer(self, request: RecordedRequest) -> _Reply:
        match = SIP_ANSWER_PATH.fullmatch(request.path)
        assert match is not None
        kind: Kind = "realtime" if match["api"] == "realtime/calls" else "live"
        call_id, action = match["id"], cast(Action, match["action"])
        ringing = self._by_id.get(call_id)
        known = ringing is not None and call_id == (
            ringing.call_id if kind == "realtime" else ringing.session_id
        )
        if ringing is None or not known:
            return _error_reply(
                404, f"Call with id '{call_id}' not found.", "invalid_request_error"
            )
        if ringing.answered is not None:
            return _error_reply(409, "The call was already answered.", "invalid_request_error")
        session, refused = _check(kind, action, request.json)
        if refused is not None:
            return refused
        self.sip_answers.append(SipAnswer(kind, action, call_id, request.json, request.headers))
        if session is not None:
            ringing.answered = kind
            resolved = (
                events.realtime_session(session, call_id)
                if kind == "realtime"
                else events.live_session(session, call_id)
            )
            self._add_call(kind, call_id, resolved)
        else:
            ringing.answered = action
        self._notify()
        return _json_reply(200, {})
