"""``POST /navai/webhooks/openai``: OpenAI calls the server back
(docs/phone.md). The delivery's signature is checked on the raw body before
anything reads it (``upstreams/openai_webhooks.py``, as openai-python's
``webhooks.unwrap``); then:

* ``safety_identifier.blocked``: the identifier joins the blocked set
  (before the answer: a 200 means it is stored), and its caller is refused
  from then on by the guard;
* ``realtime.call.incoming`` / ``live.transport.incoming``: a phone call
  rings; the one on the surface the server answers on is answered after
  the 200 (``phone_steps.py``), the other one's acknowledged and left;
* every other event (and a blocked identifier's) goes to the app's
  ``on_openai_event`` hook, after the 200.

A delivery is done once: its ``webhook-id`` is remembered (72 hours by
default, in the guard's storage: shared by every worker with Redis), and a
redelivery is answered 200 and nothing more. What runs after the answer is
bounded; past the bound, or with the storage down, the answer is 503,
and OpenAI delivers again later.

Promises: 200, 400, 401, 413 or 503, each with a JSON body; a refusal is
logged in one line without the body; nothing is done for a delivery whose
signature does not hold.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Generator, Mapping
from typing import Any, Final

from ...core.effects import (
    AfterAnswer,
    BlockIdentifier,
    CallHook,
    FirstDelivery,
    ForgetDelivery,
    HookResult,
    ReadClock,
)
from ...core.errors import RequestError, log_safe
from ...upstreams.openai_webhooks import blocked_identifier, incoming_call, verify_delivery
from ..body import parse_body
from ..route import Call, Reply, Settings
from ..webhook_steps import WebhookSettings
from .phone_steps import answer_phone_call

__all__ = ["EVENT_HOOK_SECONDS", "event_label", "handle"]

logger = logging.getLogger("navai_mw")

# The app's hook for an event is waited for this long at most (it runs
# after the answer: OpenAI is not kept waiting, but a worker is).
EVENT_HOOK_SECONDS: Final = 30.0
_RETRY_LATER: Final = (("Retry-After", "30"),)
_EVENT_TYPE: Final = re.compile(r"[a-z_]+(?:\.[a-z_]+){1,3}")


def handle(settings: Settings, call: Call) -> Generator[Any, Any, Reply]:
    hooks: WebhookSettings = settings.webhooks
    now = yield ReadClock(hooks.clock)
    try:
        webhook_id = verify_delivery(call.raw, call.info.headers, key=hooks.key, now=now)
        event = parse_body(call.raw)
    except RequestError as exc:
        logger.warning(
            "navai_mw: an OpenAI webhook is refused (%d): %s", exc.status, log_safe(exc.message)
        )
        raise
    kind = event.get("type")
    label = event_label(kind)
    blocked = blocked_identifier(event)
    if blocked is not None:
        # Stored before the 200, and again on a redelivery (the same block):
        # OpenAI's word is never lost to a worker that dies after answering.
        stored = yield BlockIdentifier(
            blocked.identifier, blocked.category, now, hooks.block_seconds
        )
        if not stored:
            return _unavailable(label, "the blocked identifiers cannot be stored")
        logger.warning(
            "navai_mw: OpenAI blocked a safety identifier (%s): its caller is refused from now on",
            log_safe(blocked.category),
        )
    incoming = incoming_call(event)
    if incoming is not None and incoming.kind != hooks.surface:
        # The call is answered on the other surface.
        return Reply(200, {"received": True}, webhook=(label, "ignored"))
    work = _work(settings, event, incoming, call)
    if work is None:
        outcome = "ignored" if blocked is None else "handled"
        return Reply(200, {"received": True}, webhook=(label, outcome))
    first = yield FirstDelivery(webhook_id, hooks.dedup_seconds)
    if first is None:
        work.close()
        return _unavailable(label, "deliveries cannot be remembered")
    if not first:
        work.close()
        logger.info("navai_mw: an OpenAI webhook was delivered again (%s)", log_safe(str(kind)))
        return Reply(200, {"received": True, "duplicate": True}, webhook=(label, "duplicate"))
    taken = yield AfterAnswer(work, f"the OpenAI webhook {log_safe(str(kind))[:64]!r}")
    if not taken:
        yield ForgetDelivery(webhook_id)  # OpenAI's next try must find it new
        return _unavailable(label, "this server is busy with earlier webhooks")
    return Reply(200, {"received": True}, webhook=(label, "handled"))


def event_label(kind: object) -> str:
    """An event's type as a metrics label: OpenAI's own spelling (only
    OpenAI can sign one), anything else ``other``."""
    if isinstance(kind, str) and len(kind) <= 64 and _EVENT_TYPE.fullmatch(kind):
        return kind
    return "other"


def _unavailable(label: str, why: str) -> Reply:
    logger.warning("navai_mw: an OpenAI webhook is answered 503: %s", why)
    return Reply(
        503,
        {"error": "The webhook cannot be handled right now; deliver it again later."},
        headers=_RETRY_LATER,
        webhook=(label, "unavailable"),
    )


def _work(
    settings: Settings, event: Mapping[str, Any], incoming: Any, call: Call
) -> Generator[Any, Any, None] | None:
    """What the delivery asks for after its answer (None: nothing)."""
    if incoming is not None:
        return answer_phone_call(settings, incoming, call.info)
    hook = settings.webhooks.on_event
    if hook is None:
        return None
    return _tell_the_app(hook, dict(event))


def _tell_the_app(hook: Any, event: dict[str, Any]) -> Generator[Any, Any, None]:
    result: HookResult = yield CallHook(hook, (event,), timeout=EVENT_HOOK_SECONDS)
    kind = log_safe(str(event.get("type")))[:64]
    if result.timed_out:
        logger.error(
            "navai_mw: on_openai_event did not finish %r within %g seconds",
            kind,
            EVENT_HOOK_SECONDS,
        )
    elif result.error is not None:
        logger.error(
            "navai_mw: on_openai_event raised %s on %r",
            type(result.error).__name__,
            kind,
            exc_info=result.error,
        )
