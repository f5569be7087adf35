"""The sideband to a relayed call, sans-IO: OpenAI's events in, what to do out.

navai_mw opens one WebSocket per relayed call to OpenAI, with the server's
own credential: Realtime ``{api base, ws}/realtime?call_id={id}``, GPT-Live
``{api base, ws}/live/sessions/{id}/attach?graceful_close=true``. On it the
server sees every server event of the call, and may send client events the
browser never sees. :class:`Sideband` holds one call's state and decides,
event by event (as h11 and wsproto do for their protocols); the socket loop
that feeds it lives in ``runtime/``:

* **usage**: Realtime's ``response.done`` usage summed, with the
  transcription of the input audio; Live's ``session.usage.updated``
  (cumulative seconds: the last one counts, never a sum);
* **backend functions on the server** (``server_functions``): a function
  call the model makes (Realtime: a completed ``function_call`` item in
  ``response.done``; Live: a ``function_call`` output item inside a
  ``response.event``) becomes :class:`RunFunction`; its outcome comes back
  through :meth:`Sideband.function_done`, which answers the model with the
  ``function_call_output`` (the JSON ``POST /navai/functions/execute``
  answers) and asks for the next response. Names the server does not know
  are left alone (the browser's own tools);
* **a pinned session** (``pin_session``, Realtime): a ``session.created`` or
  ``session.updated`` that differs from what the server configured, in a
  field the server set, is reverted with the server's own
  ``session.update`` of the fields that differ (at most
  :data:`MAX_REVERTS_IN_A_ROW` times in a row: a field OpenAI will not take
  back is logged, not fought over forever). GPT-Live is pinned when the
  session is made (its browser may send no ``session.update`` at all).

Promises: nothing here touches a socket or reads a clock (times come in as
values); an event that is not JSON, too large, or of a kind not known is
skipped and counted, never raised; no event, log line or report holds a key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Final, Literal

import attrs

from ..core.effects import CallEnded, SendEvent
from ..core.errors import log_safe
from ..core.http import Credential
from ..core.options import NavaiVoiceBackendOptions
from ..core.reports import CallReport, CallUsage, EndReason, FunctionCallRecord
from ..core.urls import websocket_url
from .pricing import call_cost

__all__ = [
    "MAX_EVENT_BYTES",
    "MAX_REVERTS_IN_A_ROW",
    "RECOVERABLE_CLOSE_CODES",
    "FunctionCalled",
    "Sideband",
    "SidebandTarget",
    "sideband_target",
]

logger = logging.getLogger("navai_mw")

# A call's events are a few KiB (an audio delta, a session with its tools);
# one larger than this is refused, not buffered.
MAX_EVENT_BYTES: Final = 1024 * 1024
# The close codes after which OpenAI's own client reconnects (its
# is_recoverable_close): the socket dropped, the call may well live on. A
# normal close (1000) means the call is over.
RECOVERABLE_CLOSE_CODES: Final = frozenset({1001, 1005, 1006, 1011, 1012, 1013, 1015})
MAX_REVERTS_IN_A_ROW: Final = 3
Kind = Literal["realtime", "live"]


@attrs.frozen
class SidebandTarget:
    """Where a call's sideband connects, with which credential."""

    url: str
    headers: tuple[tuple[str, str], ...] = attrs.field(repr=False)


def sideband_target(
    opts: NavaiVoiceBackendOptions, kind: Kind, call_id: str, *, credential: Credential
) -> SidebandTarget:
    """The sideband of a relayed call: the API's base URL with its scheme
    turned into a WebSocket's, and the credential the call was started with."""
    base = websocket_url(opts.api_base_url)
    url = (
        f"{base}/realtime?call_id={call_id}"
        if kind == "realtime"
        else f"{base}/live/sessions/{call_id}/attach?graceful_close=true"
    )
    return SidebandTarget(url, (credential.header,))


@attrs.frozen
class FunctionCalled:
    """The model called ``name`` (a function the server serves) with
    ``arguments`` (None when they are not a JSON object); answer with
    :meth:`Sideband.answer` under ``tool_call_id``."""

    tool_call_id: str
    name: str
    arguments: dict[str, Any] | None


Action = SendEvent | FunctionCalled | CallEnded


class Sideband:
    """One relayed call's sideband state (see the module docstring).

    ``session`` is the session the server sent OpenAI; with ``pin`` its
    fields are held there (Realtime). ``functions``, when given, are the
    names of the functions the model may call on the server.
    """

    def __init__(
        self,
        *,
        kind: Kind,
        call_id: str,
        identity: str | None,
        model: str,
        session: Mapping[str, Any] | None = None,
        pin: bool = False,
        functions: frozenset[str] | None = None,
    ) -> None:
        self.kind: Kind = kind
        self.call_id = call_id
        self.identity = identity
        self.model = model
        self._pinned = _pinnable(session) if pin and kind == "realtime" and session else None
        self._functions = functions
        self._transcription_model = _transcription_model(session)
        self._usage: dict[str, float] = {}
        self._calls: list[FunctionCallRecord] = []
        self._running: set[str] = set()
        self._reverts_in_a_row = 0
        self.ended = False
        # Counts, for the logs and metrics: events skipped, reverts made.
        self.skipped = 0
        self.reverts = 0

    # -- the socket's life -----------------------------------------------------------

    def opened(self) -> list[Action]:
        """The socket is open (again): with a pinned session, the server's
        fields are set once more, in case the browser changed them before
        the sideband attached (voice and model aside: OpenAI takes neither
        once the call runs)."""
        if self._pinned is None:
            return []
        fields = {k: v for k, v in self._pinned.items() if k not in ("model", "audio")}
        if not fields:
            return []
        return [SendEvent({"type": "session.update", "session": {"type": "realtime", **fields}})]

    def closed(self, code: int | None) -> Literal["reconnect", "ended"]:
        """The socket closed with ``code`` (None: no close frame, a broken
        socket): reconnect, or the call is over."""
        if self.ended:
            return "ended"
        if code is None or code in RECOVERABLE_CLOSE_CODES:
            return "reconnect"
        self.ended = True
        return "ended"

    # -- events in --------------------------------------------------------------------

    def receive(self, data: str | bytes) -> list[Action]:
        """One server event, as it came off the socket."""
        if len(data) > MAX_EVENT_BYTES:
            self.skipped += 1
            return []
        try:
            event = json.loads(data)
        except (ValueError, RecursionError):
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self.skipped += 1
            return []
        kind = event["type"]
        handler = (_REALTIME if self.kind == "realtime" else _LIVE).get(kind)
        if handler is None:
            return []  # an event the server has no use for: audio, transcripts...
        try:
            return handler(self, event)
        except (KeyError, TypeError, ValueError, AttributeError):
            self.skipped += 1  # a known event of an unexpected shape
            return []

    def _response_done(self, event: dict[str, Any]) -> list[Action]:
        response = event.get("response")
        if not isinstance(response, dict):
            self.skipped += 1
            return []
        usage = response.get("usage")
        if isinstance(usage, dict):
            self._add_realtime_usage(usage)
        if response.get("status") != "completed":
            return []  # a cancelled response's calls may be cut short: not run
        actions: list[Action] = []
        for item in response.get("output") or ():
            if isinstance(item, dict) and item.get("type") == "function_call":
                actions += self._function_call(item)
        return actions

    def _add_realtime_usage(self, usage: Mapping[str, Any]) -> None:
        inputs = _mapping(usage.get("input_token_details"))
        outputs = _mapping(usage.get("output_token_details"))
        cached = _mapping(inputs.get("cached_tokens_details"))
        for name, value in (
            ("input_tokens", usage.get("input_tokens")),
            ("output_tokens", usage.get("output_tokens")),
            ("input_text_tokens", inputs.get("text_tokens")),
            ("input_audio_tokens", inputs.get("audio_tokens")),
            ("input_cached_tokens", inputs.get("cached_tokens")),
            ("input_cached_audio_tokens", cached.get("audio_tokens")),
            ("output_text_tokens", outputs.get("text_tokens")),
            ("output_audio_tokens", outputs.get("audio_tokens")),
        ):
            self._add(name, value)

    def _transcribed(self, event: dict[str, Any]) -> list[Action]:
        usage = _mapping(event.get("usage"))
        if usage.get("type") == "duration":
            self._add("transcription_seconds", usage.get("seconds"), whole=False)
        elif usage.get("type") == "tokens":
            self._add("transcription_input_tokens", usage.get("input_tokens"))
            self._add("transcription_output_tokens", usage.get("output_tokens"))
        return []

    def _add(self, name: str, value: object, *, whole: bool = True) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            return
        if whole and not isinstance(value, int):
            return
        self._usage[name] = self._usage.get(name, 0) + value

    def _session_seen(self, event: dict[str, Any]) -> list[Action]:
        if self._pinned is None:
            return []
        differs = _difference(self._pinned, _mapping(event.get("session")))
        if differs is None:
            self._reverts_in_a_row = 0
            return []
        if self._reverts_in_a_row >= MAX_REVERTS_IN_A_ROW:
            return []  # logged when it was given up
        self._reverts_in_a_row += 1
        self.reverts += 1
        logger.warning(
            "navai_mw: call %s of %s changed its pinned session (%s); reverted",
            self.call_id,
            log_safe(self.identity or "anonymous"),
            ", ".join(sorted(differs)),
        )
        if self._reverts_in_a_row == MAX_REVERTS_IN_A_ROW:
            logger.error(
                "navai_mw: call %s: OpenAI keeps a session unlike the pinned one after %d "
                "reverts; no more reverts for this change",
                self.call_id,
                MAX_REVERTS_IN_A_ROW,
            )
        return [SendEvent({"type": "session.update", "session": {"type": "realtime", **differs}})]

    def _live_usage(self, event: dict[str, Any]) -> list[Action]:
        seconds = _mapping(event.get("usage")).get("seconds")
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds >= 0:
            self._usage["seconds"] = float(seconds)  # cumulative: the last one counts
        return []

    def _live_closed(self, event: dict[str, Any]) -> list[Action]:
        self._live_usage(event)
        self.ended = True
        return [CallEnded()]

    def _live_response_event(self, event: dict[str, Any]) -> list[Action]:
        inner = _mapping(event.get("event"))
        item = _mapping(inner.get("item"))
        if inner.get("type") == "response.output_item.done" and item.get("type") == "function_call":
            return self._function_call(item)
        return []

    # -- backend functions ------------------------------------------------------------

    def _function_call(self, item: Mapping[str, Any]) -> list[Action]:
        name, tool_call_id = item.get("name"), item.get("call_id")
        if not isinstance(name, str) or not isinstance(tool_call_id, str):
            return []
        if self._functions is None or name not in self._functions:
            return []  # not the server's to run (the browser's own tool)
        if tool_call_id in self._running:
            return []  # already running: an event seen twice
        self._running.add(tool_call_id)
        try:
            arguments = json.loads(item.get("arguments") or "{}")
        except (ValueError, RecursionError, TypeError):
            arguments = None
        return [
            FunctionCalled(tool_call_id, name, arguments if isinstance(arguments, dict) else None)
        ]

    def answer(
        self, tool_call_id: str, name: str, payload: object, *, ok: bool, seconds: float
    ) -> list[SendEvent]:
        """The model's function call ``tool_call_id`` gave ``payload``: it
        is recorded, and the model gets it as the call's output and goes on
        (nothing is sent once the call is over)."""
        self._running.discard(tool_call_id)
        self._calls.append(FunctionCallRecord(name=name, ok=ok, seconds=seconds))
        if self.ended:
            return []
        output = {
            "type": "function_call_output",
            "call_id": tool_call_id,
            "output": json.dumps(payload, separators=(",", ":"), default=str),
        }
        create = "conversation.item.create" if self.kind == "realtime" else "response.item.create"
        return [SendEvent({"type": create, "item": output}), SendEvent({"type": "response.create"})]

    # -- the report ---------------------------------------------------------------------

    @property
    def usage(self) -> CallUsage:
        values: dict[str, Any] = dict(self._usage)
        for name in ("transcription_seconds", "seconds"):
            if name in values:
                values[name] = float(values[name])
        return CallUsage(**values)

    def cost(self) -> float | None:
        """What the call's usage so far costs (None: a price not known)."""
        return call_cost(
            self.kind, self.model, self.usage, transcription_model=self._transcription_model
        )

    def report(
        self, *, started_at: float, ended_at: float, reason: EndReason, metered: bool
    ) -> CallReport:
        """The call's report, once it is over (the times are the runtime's)."""
        usage = self.usage
        return CallReport(
            call_id=self.call_id,
            kind=self.kind,
            identity=self.identity,
            model=self.model,
            started_at=started_at,
            ended_at=ended_at,
            end_reason=reason,
            metered=metered,
            usage=usage,
            cost_usd=call_cost(
                self.kind, self.model, usage, transcription_model=self._transcription_model
            ),
            function_calls=tuple(self._calls),
        )


_REALTIME: Final = {
    "response.done": Sideband._response_done,
    "conversation.item.input_audio_transcription.completed": Sideband._transcribed,
    "session.created": Sideband._session_seen,
    "session.updated": Sideband._session_seen,
}
_LIVE: Final = {
    "session.usage.updated": Sideband._live_usage,
    "session.closed": Sideband._live_closed,
    "response.event": Sideband._live_response_event,
}


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _pinnable(session: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a session the server set, to hold: all but its type."""
    return {key: value for key, value in session.items() if key != "type"}


def _transcription_model(session: Mapping[str, Any] | None) -> str | None:
    audio = _mapping((session or {}).get("audio"))
    model = _mapping(_mapping(audio.get("input")).get("transcription")).get("model")
    return model if isinstance(model, str) else None


def _difference(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The part of ``ours`` that ``theirs`` does not hold (object by
    object; a list or a value whole), or None when it holds all of it.
    ``theirs`` may hold more (OpenAI fills in its defaults)."""
    differs: dict[str, Any] = {}
    for key, value in ours.items():
        other = theirs.get(key)
        if isinstance(value, Mapping) and isinstance(other, Mapping):
            inner = _difference(value, other)
            if inner is not None:
                differs[key] = inner
        elif not _holds(value, other):
            differs[key] = value
    return differs or None


def _holds(ours: object, theirs: object) -> bool:
    if isinstance(ours, Mapping):
        return isinstance(theirs, Mapping) and _difference(ours, theirs) is None
    if isinstance(ours, list):
        return (
            isinstance(theirs, list)
            and len(ours) == len(theirs)
            and all(_holds(a, b) for a, b in zip(ours, theirs, strict=True))
        )
    if isinstance(ours, (int, float)) and not isinstance(ours, bool):
        return isinstance(theirs, (int, float)) and not isinstance(theirs, bool) and ours == theirs
    return ours == theirs
