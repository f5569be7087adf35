"""A phone call OpenAI announces (SIP, through a webhook), as an app's
``accept_call`` hook sees it, and the three answers the hook may give:
:class:`Accept`, :class:`Reject`, :class:`Refer` (docs/phone.md).

Promises: each answer checks its own fields when it is made (a bad one
raises ``ValueError`` in the hook, which navai_mw then treats as the hook
failing); the SIP headers are handed over as OpenAI sent them, and are
documented for what they are: what the caller's carrier chose to send,
never proof of who calls.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, Literal

import attrs

__all__ = ["Accept", "Answer", "IncomingCall", "Refer", "Reject"]

# A SIP final answer that refuses a call: 4xx, 5xx or 6xx (RFC 3261 §21).
_REJECT_STATUSES: Final = range(400, 700)
# A REFER's target: a telephone number or a SIP address, one token.
_TARGET: Final = re.compile(r"(?:tel|sips?):[\x21-\x7e]{1,250}")


@attrs.frozen(kw_only=True)
class IncomingCall:
    """A phone call waiting for an answer.

    Fields:
        call_id: OpenAI's id of it: ``rtc_...`` for Realtime, ``live_...``
            for GPT-Live (the ids differ for the same call).
        kind: ``"realtime"`` or ``"live"``: the surface that would answer.
        sip_headers: the INVITE's headers, ``(name, value)`` in the order
            sent, repeated names repeated. Untrusted: the caller's carrier
            writes them (``From`` can be anything); never authorize on them
            alone.
        media_security: ``"srtp"``, ``"rtp"``, another value, or None when
            OpenAI did not say.
    """

    call_id: str
    kind: Literal["realtime", "live"]
    sip_headers: tuple[tuple[str, str], ...] = ()
    media_security: str | None = None

    def header(self, name: str) -> str | None:
        """The first value of the SIP header ``name`` (any case), or None."""
        wanted = name.lower()
        return next((value for key, value in self.sip_headers if key.lower() == wanted), None)


def _session(_: object, __: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, Mapping):
        raise ValueError("Accept(session=...) must be a mapping of session fields (or None).")


def _identity(_: object, __: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError("Accept(identity=...) must be a non-empty string (or None).")


@attrs.frozen(kw_only=True)
class Accept:
    """Answer the call.

    Fields:
        session: fields laid over the session navai_mw builds for the call
            (the ``session=`` template for Realtime, ``live_session=`` for
            GPT-Live, with the model, instructions and voice), checked as a
            ``customize_session`` hook's session is; None: the template's.
        identity: who the caller is, for the call's budget, its report and
            its safety identifier (the caller's number, hashed if you
            wish); None: an anonymous caller.
    """

    session: Mapping[str, Any] | None = attrs.field(default=None, validator=_session)
    identity: str | None = attrs.field(default=None, validator=_identity)


def _status(_: object, __: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value not in _REJECT_STATUSES:
        raise ValueError(
            f"Reject(status_code=...) must be a SIP status 400-699. Received: {value!r}"
        )


@attrs.frozen
class Reject:
    """Refuse the call with a SIP status: 603 Decline by default, 486 Busy
    Here, 480 Temporarily Unavailable..."""

    status_code: int = attrs.field(default=603, validator=_status)


def _target(_: object, __: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or _TARGET.fullmatch(value) is None:
        raise ValueError(
            "Refer(target) must be a tel: or sip: URI without spaces "
            f"(tel:+14155550123, sip:agent@example.com). Received: {str(value)[:64]!r}"
        )


@attrs.frozen
class Refer:
    """Transfer the call (a SIP REFER) to ``target``: ``tel:+14155550123``
    or ``sip:agent@example.com``."""

    target: str = attrs.field(validator=_target)


Answer = Accept | Reject | Refer
