"""The server events the fake OpenAI sends on a call's data channel and its
sidebands, shaped as openai-python 3.63's types read them
(``openai.types.realtime.RealtimeServerEvent``, ``openai.types.live``'s
``ServerEvent`` and ``ConnectServerEvent``, and the Responses stream events
nested in Live's ``response.event``), and the one way a session update is
merged into a session.

Every function here is pure but for the ids it makes up and the clock a
Live session's ``expires_at`` reads.
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any, Final, Literal

Kind = Literal["realtime", "live"]
LiveCloseReason = Literal[
    "close_requested", "expired", "content", "remote_hangup", "connection_lost"
]

# GPT-Live's default model, for a session created without one (OpenAI
# requires one; the fake fills it in, as it fills in the server's defaults).
LIVE_DEFAULT_MODEL: Final = "gpt-live-1"
# How long a Live session lives before OpenAI ends it (its ``expires_at``).
LIVE_SESSION_SECONDS: Final = 60 * 60


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def event_id() -> str:
    return new_id("event")


def merge_session(session: dict[str, Any], update: Mapping[str, Any]) -> None:
    """Merge a ``session.update``'s session into ``session``, in place, the
    way OpenAI reads one: a field that is present replaces the field it
    names, objects are merged field by field (``audio.output.voice`` alone
    leaves ``audio.input`` as it was), and anything else, a list
    (``tools``) or ``null`` (``turn_detection``), replaces the whole value."""
    for key, value in update.items():
        current = session.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            merge_session(current, value)
        else:
            session[key] = copy.deepcopy(value)


def realtime_session(session: Mapping[str, Any], call_id: str) -> dict[str, Any]:
    """A Realtime call's session as OpenAI reports it: with the call's id,
    and a ``type`` (``realtime`` when the offer came without a session)."""
    return {"type": "realtime", **copy.deepcopy(dict(session)), "id": call_id}


def live_session(session: Mapping[str, Any], session_id: str) -> dict[str, Any]:
    """A Live session's resolved configuration (``SessionResource``): the
    session asked for, with its id, ``expires_at``, ``status`` and a model."""
    return {
        "model": LIVE_DEFAULT_MODEL,
        **copy.deepcopy(dict(session)),
        "id": session_id,
        "expires_at": int(time.time()) + LIVE_SESSION_SECONDS,
        "status": "active",
    }


def _event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": event_id(), **fields}


def session_created(session: Mapping[str, Any]) -> dict[str, Any]:
    return _event("session.created", session=copy.deepcopy(dict(session)))


def session_updated(session: Mapping[str, Any]) -> dict[str, Any]:
    return _event("session.updated", session=copy.deepcopy(dict(session)))


def session_started(session: Mapping[str, Any]) -> dict[str, Any]:
    return _event("session.started", session=copy.deepcopy(dict(session)))


def error(message: str, *, code: str = "invalid_request") -> dict[str, Any]:
    """An ``error`` event, valid for Realtime and Live alike."""
    return _event(
        "error", error={"type": "invalid_request_error", "code": code, "message": message}
    )


def item_added(item: Mapping[str, Any]) -> dict[str, Any]:
    """Realtime's ``conversation.item.added`` for an item a client created."""
    added = {
        "id": new_id("item"),
        **copy.deepcopy(dict(item)),
        "object": "realtime.item",
        "status": "completed",
    }
    return _event("conversation.item.added", item=added, previous_item_id=None)


def response_done(
    *, output: list[dict[str, Any]], usage: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Realtime's ``response.done`` of a completed response."""
    response: dict[str, Any] = {
        "id": new_id("resp"),
        "object": "realtime.response",
        "status": "completed",
        "output": output,
    }
    if usage is not None:
        response["usage"] = copy.deepcopy(dict(usage))
    return _event("response.done", response=response)


def assistant_text(text: str, *, usage: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Realtime's ``response.done`` of a completed response that says
    ``text`` (as a transcript of the model's audio would read)."""
    item = {
        "type": "message",
        "id": new_id("item"),
        "object": "realtime.item",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text}],
    }
    return response_done(output=[item], usage=usage)


def function_call_item(
    name: str, arguments: Mapping[str, Any], tool_call_id: str
) -> dict[str, Any]:
    """A completed ``function_call`` output item (Realtime's conversation
    item; its fields also make a Responses ``ResponseFunctionToolCall``)."""
    return {
        "type": "function_call",
        "id": new_id("item"),
        "call_id": tool_call_id,
        "name": name,
        "arguments": json.dumps(dict(arguments), separators=(",", ":")),
        "status": "completed",
    }


def realtime_function_call(
    name: str, arguments: Mapping[str, Any], tool_call_id: str
) -> dict[str, Any]:
    item = {**function_call_item(name, arguments, tool_call_id), "object": "realtime.item"}
    return response_done(output=[item])


def live_function_call(
    name: str, arguments: Mapping[str, Any], tool_call_id: str, *, sequence_number: int
) -> dict[str, Any]:
    """Live's ``response.event`` around a Responses ``response.output_item.done``
    that carries the ``function_call``."""
    inner = {
        "type": "response.output_item.done",
        "item": function_call_item(name, arguments, tool_call_id),
        "output_index": 0,
        "sequence_number": sequence_number,
    }
    return _event("response.event", delegation_id=new_id("delegation"), event=inner)


def transcription_completed(usage: Mapping[str, Any], transcript: str) -> dict[str, Any]:
    """Realtime's ``conversation.item.input_audio_transcription.completed``."""
    return _event(
        "conversation.item.input_audio_transcription.completed",
        item_id=new_id("item"),
        content_index=0,
        transcript=transcript,
        usage=copy.deepcopy(dict(usage)),
    )


def live_usage(seconds: float) -> dict[str, Any]:
    """Live's ``session.usage.updated``: ``seconds`` is the session's
    cumulative billable total, as OpenAI reports it."""
    return _event("session.usage.updated", usage={"seconds": seconds})


def live_closed(
    session: Mapping[str, Any], seconds: float, reason: LiveCloseReason
) -> dict[str, Any]:
    """Live's ``session.closed``, with the final usage."""
    return _event(
        "session.closed",
        reason=reason,
        session=copy.deepcopy(dict(session)),
        usage={"seconds": seconds},
    )
