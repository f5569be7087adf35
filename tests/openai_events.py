"""openai-python's own event types, as validators for what navai_mw and its
fakes send and receive on a call's sideband.

openai-python marks its event unions with a discriminator pydantic does not
read; each union is re-annotated here with ``type`` as its discriminator, so
an event validates in one step and a wrong one fails with one clear error.
"""

from __future__ import annotations

from typing import Annotated, Any, get_args

from openai.types.live import ConnectClientEvent, ConnectServerEvent, ServerEvent
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from openai.types.responses import ResponseStreamEvent
from pydantic import Field, TypeAdapter


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
