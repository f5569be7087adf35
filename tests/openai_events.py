"""openai-python's own event types, as validators for what navai_mw and its
fakes send and receive on a call's sideband, what the fake delivers to a
webhook, and what navai_mw answers a phone call with.

openai-python marks its event unions with a discriminator pydantic does not
read; each union is re-annotated here with ``type`` as its discriminator, so
an event validates in one step and a wrong one fails with one clear error.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

from openai.types.live import ConnectClientEvent, ConnectServerEvent, ServerEvent
from openai.types.live.session_accept_params import SessionAcceptParams
from openai.types.live.session_refer_params import SessionReferParams
from openai.types.live.session_reject_params import SessionRejectParams
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from openai.types.realtime.call_accept_params import CallAcceptParams
from openai.types.realtime.call_refer_params import CallReferParams
from openai.types.realtime.call_reject_params import CallRejectParams
from openai.types.responses import ResponseStreamEvent
from openai.types.webhooks import UnwrapWebhookEvent
from openai.types.webhooks.safety_identifier_blocked_webhook_event import (
    SafetyIdentifierBlockedWebhookEvent,
)
from pydantic import Field, TypeAdapter
from typing_extensions import is_typeddict


def _tagged(union: Any) -> TypeAdapter[Any]:
    return TypeAdapter(Annotated[get_args(union)[0], Field(discriminator="type")])


REALTIME_SERVER = _tagged(RealtimeServerEvent)
REALTIME_CLIENT = _tagged(RealtimeClientEvent)
LIVE_SERVER = _tagged(ConnectServerEvent)
LIVE_CLIENT = _tagged(ConnectClientEvent)
# What a Live session's data channel carries (no session.resumed/paused).
LIVE_CHANNEL_SERVER = _tagged(ServerEvent)
# The Responses stream event nested in a Live ``response.event``.
RESPONSES_STREAM = _tagged(ResponseStreamEvent)


def client_event(kind: str, event: Any) -> Any:
    """``event`` validated as a client event of a ``kind`` call."""
    return (REALTIME_CLIENT if kind == "realtime" else LIVE_CLIENT).validate_python(event)


def server_event(kind: str, event: Any) -> Any:
    """``event`` validated as a server event of a ``kind`` call."""
    return (REALTIME_SERVER if kind == "realtime" else LIVE_SERVER).validate_python(event)


def channel_event(kind: str, event: Any) -> Any:
    """``event`` validated as a server event on a ``kind`` call's data
    channel (a Live ``response.event``'s nested event too)."""
    if kind == "realtime":
        return REALTIME_SERVER.validate_python(event)
    validated = LIVE_CHANNEL_SERVER.validate_python(event)
    _nested(event)
    return validated


def sideband_event(kind: str, event: Any) -> Any:
    """``event`` validated as a server event on a ``kind`` call's sideband,
    a Live ``response.event``'s nested Responses stream event included."""
    validated = server_event(kind, event)
    _nested(event)
    return validated


def _nested(event: Any) -> None:
    if isinstance(event, dict) and event.get("type") == "response.event":
        RESPONSES_STREAM.validate_python(event["event"])


# -- webhooks, and the answers to a phone call ----------------------------------------------

# Every event OpenAI delivers to a webhook (openai.types.webhooks): unwrap's
# union, and the blocked identifier's, which openai-python 3.63 types but
# leaves out of that union (unwrap builds it as another event's class).
WEBHOOK_EVENT = TypeAdapter(
    Annotated[
        Union[(*get_args(get_args(UnwrapWebhookEvent)[0]), SafetyIdentifierBlockedWebhookEvent)],
        Field(discriminator="type"),
    ]
)

# The body of each answer to a ringing call, as openai-python sends it.
SIP_ANSWERS: dict[tuple[str, str], Any] = {
    ("realtime", "accept"): CallAcceptParams,
    ("realtime", "reject"): CallRejectParams,
    ("realtime", "refer"): CallReferParams,
    ("live", "accept"): SessionAcceptParams,
    ("live", "reject"): SessionRejectParams,
    ("live", "refer"): SessionReferParams,
}
_SIP_ADAPTERS = {key: TypeAdapter(params) for key, params in SIP_ANSWERS.items()}


def webhook_event(event: Any) -> Any:
    """``event`` validated as a webhook event OpenAI delivers."""
    return WEBHOOK_EVENT.validate_python(event)


def sip_answer(kind: str, action: str, body: Any) -> Any:
    """``body`` validated as the params of a ``kind`` call's ``action``
    (``accept``, ``reject``, ``refer``), with no field the params lack
    (pydantic lets a TypedDict's extra keys through: they are looked for
    here, at every level the params describe)."""
    params = SIP_ANSWERS[(kind, action)]
    validated = _SIP_ADAPTERS[(kind, action)].validate_python(body)
    unknown = _extras(params, body, "body")
    assert not unknown, f"fields openai-python's {params.__name__} does not have: {unknown}"
    return validated


def _extras(kind: Any, value: Any, path: str) -> list[str]:
    """Where ``value`` has a key the TypedDict ``kind`` (or one nested in it)
    does not declare."""
    origin = get_origin(kind)
    if is_typeddict(kind):
        if not isinstance(value, dict):
            return []
        hints = get_type_hints(kind)
        found = [f"{path}.{key}" for key in value if key not in hints]
        for key, item in value.items():
            if key in hints:
                found += _extras(hints[key], item, f"{path}.{key}")
        return found
    if origin is Annotated:
        return _extras(get_args(kind)[0], value, path)
    if origin in (Union, types.UnionType):
        # The value is one of the alternatives: the one it fits best.
        return min((_extras(option, value, path) for option in get_args(kind)), key=len)
    args = get_args(kind)
    if isinstance(value, list) and len(args) == 1:
        return [
            extra
            for index, item in enumerate(value)
            for extra in _extras(args[0], item, f"{path}[{index}]")
        ]
    return []
