"""OpenAI's webhooks, sans-IO: a delivery's signature checked exactly as
openai-python's ``client.webhooks.unwrap`` checks it, and the events
navai_mw acts on read out of a delivery that passed.

OpenAI signs with Standard Webhooks: ``webhook-id``, ``webhook-timestamp``
(UNIX seconds) and ``webhook-signature`` (one or more ``v1,<base64>``,
separated by spaces), an HMAC-SHA256 over ``{id}.{timestamp}.{body}`` keyed
with the secret (``whsec_`` and base64, or the secret's own bytes).

Promises:

* the check follows ``unwrap`` step by step, in its order, on the raw body
  bytes, before anything parses them: the same deliveries pass (the tests
  hold the two to the same inputs). ``standardwebhooks`` is not used: it
  refuses a secret without ``whsec_``, a signature without ``v1,`` and a
  fractional timestamp differently;
* what ``unwrap`` refuses as malformed (a header missing, a body that is
  not UTF-8) is a ``400``; what it refuses as unsigned (a timestamp that is
  not a whole number, older or newer than the tolerance, no signature that
  matches) a ``401``;
* the secret never reaches a message, and the signatures are compared in
  constant time;
* the time is a value the caller reads (nothing here reads a clock).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, Final, Literal

import attrs

from ..core.errors import OptionsError, RequestError
from ..core.sip import IncomingCall
from .realtime_calls import is_call_id

__all__ = [
    "BLOCKED",
    "INCOMING",
    "MAX_WEBHOOK_BYTES",
    "TOLERANCE_SECONDS",
    "Blocked",
    "blocked_identifier",
    "incoming_call",
    "signing_key",
    "verify_delivery",
]

# openai-python's tolerance, both ways: a delivery older than this is a
# replay, one newer a clock far off (or a forgery).
TOLERANCE_SECONDS: Final = 300
# Every event OpenAI sends is a few KiB; a MiB bounds what a caller who
# knows the URL can make the server buffer before the signature is known.
MAX_WEBHOOK_BYTES: Final = 1024 * 1024
# The events navai_mw acts on itself.
INCOMING: Final[Mapping[str, Literal["realtime", "live"]]] = {
    "realtime.call.incoming": "realtime",
    "live.transport.incoming": "live",
}
BLOCKED: Final = "safety_identifier.blocked"
# A SIP INVITE carries a few dozen headers; more is not a call anybody made.
_MAX_SIP_HEADERS: Final = 256
# What navai_mw keeps of a blocked identifier's category (OpenAI's are
# short words: "bio", "cyber").
_MAX_CATEGORY: Final = 64
# The identifiers navai_mw sends are 64 hex digits; OpenAI's own limit is 64
# characters of anything.
_MAX_IDENTIFIER: Final = 256

_HEADERS: Final = ("webhook-signature", "webhook-timestamp", "webhook-id")


def signing_key(secret: str) -> bytes:
    """The HMAC key of a webhook signing secret, as openai-python derives it:
    the base64 after ``whsec_`` (read as ``base64.b64decode`` reads it), or
    the secret's own UTF-8 bytes. An :class:`OptionsError` (at start-up)
    when the secret cannot be one."""
    try:
        key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
    except (binascii.Error, ValueError):
        raise OptionsError(
            "openai_webhook_secret starts with whsec_ but the rest is not base64: "
            "copy the secret from OpenAI's dashboard whole."
        ) from None
    if not key:
        raise OptionsError("openai_webhook_secret is empty once decoded.")
    return key


def verify_delivery(
    body: bytes,
    headers: Mapping[str, str],
    *,
    key: bytes,
    now: float,
    tolerance: int = TOLERANCE_SECONDS,
) -> str:
    """The delivery's ``webhook-id`` when ``body`` is signed with ``key``
    within ``tolerance`` seconds of ``now`` (UNIX seconds); else a
    :class:`RequestError`, 400 or 401 (see the module docstring).
    ``headers`` has lower-case names."""
    found = {name: headers.get(name) for name in _HEADERS}
    missing = [name for name, value in found.items() if value is None]
    if missing:
        raise RequestError(
            f"The webhook has no {' and no '.join(missing)} header: OpenAI signs every delivery."
        )
    signature, timestamp, webhook_id = (str(found[name]) for name in _HEADERS)
    try:
        # int() as openai-python reads it: "1.5" is refused, " 17 " is 17.
        sent_at = int(timestamp)
    except ValueError:
        raise RequestError(
            "The webhook's timestamp is not a whole number of seconds.", status=401
        ) from None
    current = int(now)
    if current - sent_at > tolerance:
        raise RequestError("The webhook's timestamp is too old.", status=401)
    if sent_at > current + tolerance:
        raise RequestError("The webhook's timestamp is too new.", status=401)
    # Each part is "v1,<base64>"; openai-python compares a part without the
    # prefix as it is.
    signatures = [part[3:] if part.startswith("v1,") else part for part in signature.split()]
    try:
        signed = f"{webhook_id}.{timestamp}.".encode()
        body.decode("utf-8")
    except UnicodeError:
        raise RequestError("The webhook's body is not UTF-8 text.") from None
    digest = hmac.new(key, signed + body, hashlib.sha256).digest()
    expected = base64.b64encode(digest)
    for candidate in signatures:
        if not candidate.isascii():
            # openai-python's compare raises here, before it looks further.
            break
        if hmac.compare_digest(expected, candidate.encode()):
            return webhook_id
    raise RequestError("The webhook's signature does not match.", status=401)


def _text(value: object, most: int) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= most else None


def incoming_call(event: Mapping[str, Any]) -> IncomingCall | None:
    """The phone call of a ``realtime.call.incoming`` or
    ``live.transport.incoming`` event (None when it is neither, or names no
    usable call)."""
    kind = INCOMING.get(str(event.get("type")))
    data = event.get("data")
    if kind is None or not isinstance(data, Mapping):
        return None
    call_id = data.get("call_id" if kind == "realtime" else "session_id")
    if not isinstance(call_id, str) or not is_call_id(call_id):
        return None
    raw = data.get("sip_headers")
    headers = tuple(
        (str(item["name"]), str(item["value"]))
        for item in (raw if isinstance(raw, list) else [])[:_MAX_SIP_HEADERS]
        if isinstance(item, Mapping)
        and isinstance(item.get("name"), str)
        and isinstance(item.get("value"), str)
    )
    security = data.get("sip_media_security")
    return IncomingCall(
        call_id=call_id,
        kind=kind,
        sip_headers=headers,
        media_security=security if isinstance(security, str) else None,
    )


@attrs.frozen
class Blocked:
    """A ``safety_identifier.blocked`` event: the identifier OpenAI blocked
    (one navai_mw sent: a keyed hash, never an identity), and why."""

    identifier: str
    category: str


def blocked_identifier(event: Mapping[str, Any]) -> Blocked | None:
    """The identifier of a ``safety_identifier.blocked`` event (None when it
    is another event, or names none)."""
    data = event.get("data")
    if event.get("type") != BLOCKED or not isinstance(data, Mapping):
        return None
    identifier = _text(data.get("safety_identifier"), _MAX_IDENTIFIER)
    if identifier is None:
        return None
    category = _text(data.get("safety_category"), _MAX_CATEGORY) or "unknown"
    return Blocked(identifier, category)
