"""Every navai route, one row each.

A row names the route (what ``authorize`` sees as ``RequestInfo.route``),
the keyword that sets its path (``None`` there switches the route off), its
default path, method, rate-limit group, the kind of body it takes, its
handler, whether it serves its path's children (``{path}/{id}``), what it
does (for the log line when it fails), and the feature it belongs to.

A new route is one row here and one module in ``routes/`` (and its path
keyword in :class:`~navai_mw.config.configure.RouteOptions`, for type
checkers).
"""

from __future__ import annotations

from typing import Final, Literal

import attrs

from .route import BodyKind, Handler, Route
from .routes import (
    call_hangup,
    calls,
    client_secret,
    functions_execute,
    functions_list,
    live,
    live_close,
    speech,
    transcription_secret,
)

__all__ = [
    "DEFAULT_CALLS_PATH",
    "DEFAULT_FUNCTIONS_EXECUTE_PATH",
    "DEFAULT_FUNCTIONS_LIST_PATH",
    "DEFAULT_LIVE_PATH",
    "DEFAULT_PATH",
    "DEFAULT_SPEECH_SYNTHESIZE_PATH",
    "DEFAULT_TRANSCRIPTION_PATH",
    "ROUTES",
    "Row",
]

DEFAULT_PATH: Final = "/navai/realtime/client-secret"
DEFAULT_TRANSCRIPTION_PATH: Final = "/navai/realtime/transcription-secret"
DEFAULT_SPEECH_SYNTHESIZE_PATH: Final = "/navai/speech/synthesize"
DEFAULT_FUNCTIONS_LIST_PATH: Final = "/navai/functions"
DEFAULT_FUNCTIONS_EXECUTE_PATH: Final = "/navai/functions/execute"
DEFAULT_CALLS_PATH: Final = "/navai/realtime/calls"
DEFAULT_LIVE_PATH: Final = "/navai/live/sessions"

# What switches a route on: "reference" routes are the reference's own (on
# unless their path is None); the others follow their feature's switch.
Feature = Literal["reference", "functions", "transcription", "relay"]


@attrs.frozen
class Row:
    """One route of the table (see the module docstring)."""

    name: str
    option: str
    default_path: str
    method: str
    group: str
    handle: Handler = attrs.field(repr=False)
    doing: str
    body: BodyKind = "json"
    dynamic: bool = False
    feature: Feature = "reference"

    def route(self, path: str) -> Route:
        """The row served at ``path``."""
        return Route(
            self.name,
            path,
            self.method,
            self.group,
            self.handle,
            body=self.body,
            dynamic=self.dynamic,
            doing=self.doing,
        )


ROUTES: Final = (
    Row(
        "client_secret", "path", DEFAULT_PATH, "POST", "mint",
        client_secret.handle, "minting a client secret",
    ),
    Row(
        "transcription_secret", "transcription_secret_path", DEFAULT_TRANSCRIPTION_PATH,
        "POST", "mint", transcription_secret.handle, "minting a transcription secret",
        feature="transcription",
    ),
    Row(
        "speech_synthesize", "speech_synthesize_path", DEFAULT_SPEECH_SYNTHESIZE_PATH,
        "POST", "speech", speech.handle, "synthesizing speech",
    ),
    Row(
        "functions_list", "functions_list_path", DEFAULT_FUNCTIONS_LIST_PATH,
        "GET", "functions", functions_list.handle, "listing backend functions",
        feature="functions",
    ),
    Row(
        "functions_execute", "functions_execute_path", DEFAULT_FUNCTIONS_EXECUTE_PATH,
        "POST", "functions", functions_execute.handle, "running a backend function",
        feature="functions",
    ),
    Row(
        "calls", "calls_path", DEFAULT_CALLS_PATH, "POST", "mint",
        calls.handle, "relaying a WebRTC offer", body="sdp", feature="relay",
    ),
    Row(
        "call_hangup", "calls_path", DEFAULT_CALLS_PATH, "DELETE", "end",
        call_hangup.handle, "hanging up a call", body="none", dynamic=True, feature="relay",
    ),
    Row(
        "live", "live_path", DEFAULT_LIVE_PATH, "POST", "mint",
        live.handle, "relaying a WebRTC offer to GPT-Live", body="sdp", feature="relay",
    ),
    Row(
        "live_close", "live_path", DEFAULT_LIVE_PATH, "DELETE", "end",
        live_close.handle, "closing a Live session", body="none", dynamic=True, feature="relay",
    ),
)  # fmt: skip
