"""Every navai route, one row each.

A row names the route (what ``authorize`` sees as ``RequestInfo.route``),
the keyword that sets its path (``None`` there switches the route off), its
default path, method, rate-limit group, the kind of body it takes, its
handler, whether it serves its path's children (``{path}/{id}``), what it
does (for the log line when it fails), and the feature it belongs to.

:class:`RouteMap` serves the rows at their configured paths and finds the
route for a request's path.

A new route is one row here and one module in ``routes/`` (and its path
keyword in :class:`~navai_mw.config.configure.RouteOptions`, for type
checkers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

import attrs

from ..core.errors import OptionsError
from ..upstreams.realtime_calls import is_call_id
from .route import BodyKind, Handler, Route
from .routes import (
    call_hangup,
    calls,
    client_secret,
    functions_execute,
    functions_list,
    live,
    live_close,
    openai_webhook,
    speech,
    transcription_secret,
    usage,
)

__all__ = [
    "DEFAULT_CALLS_PATH",
    "DEFAULT_FUNCTIONS_EXECUTE_PATH",
    "DEFAULT_FUNCTIONS_LIST_PATH",
    "DEFAULT_LIVE_PATH",
    "DEFAULT_PATH",
    "DEFAULT_SPEECH_SYNTHESIZE_PATH",
    "DEFAULT_TRANSCRIPTION_PATH",
    "DEFAULT_USAGE_PATH",
    "DEFAULT_WEBHOOK_PATH",
    "PATH_OPTIONS",
    "ROUTES",
    "RouteMap",
    "Row",
]

DEFAULT_PATH: Final = "/navai/realtime/client-secret"
DEFAULT_TRANSCRIPTION_PATH: Final = "/navai/realtime/transcription-secret"
DEFAULT_SPEECH_SYNTHESIZE_PATH: Final = "/navai/speech/synthesize"
DEFAULT_FUNCTIONS_LIST_PATH: Final = "/navai/functions"
DEFAULT_FUNCTIONS_EXECUTE_PATH: Final = "/navai/functions/execute"
DEFAULT_CALLS_PATH: Final = "/navai/realtime/calls"
DEFAULT_LIVE_PATH: Final = "/navai/live/sessions"
DEFAULT_USAGE_PATH: Final = "/navai/usage"
DEFAULT_WEBHOOK_PATH: Final = "/navai/webhooks/openai"

# What switches a route on: "reference" routes are the reference's four (on
# unless their path is None; the functions' two also follow
# include_functions_routes); "transcription" and "relay" routes spend money
# the reference never spent, so they are off until switched on (the relay's
# include the caller's budgets, which meter its calls); "webhooks" is on with
# OpenAI's webhook signing secret, which is its authentication.
Feature = Literal["reference", "functions", "transcription", "relay", "webhooks"]


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
    signed: bool = False

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
            signed=self.signed,
        )


ROUTES: Final = (
    Row(
        "client_secret", "client_secret_path", DEFAULT_PATH, "POST", "mint",
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
    Row(
        "usage", "usage_path", DEFAULT_USAGE_PATH, "GET", "usage",
        usage.handle, "reading a caller's budgets", body="none", feature="relay",
    ),
    Row(
        "openai_webhook", "webhook_path", DEFAULT_WEBHOOK_PATH, "POST", "webhook",
        openai_webhook.handle, "receiving an OpenAI webhook", body="raw", feature="webhooks",
        signed=True,
    ),
)  # fmt: skip

# The path keywords, each once (two rows, a route and its children's, may share one).
PATH_OPTIONS: Final = {row.option: row.default_path for row in ROUTES}


def _prefix(value: object) -> str:
    if not isinstance(value, str) or (value and not value.startswith("/")):
        raise OptionsError(f"prefix must be empty or start with '/'. Received: {value!r}")
    return value.rstrip("/")


def _route_path(prefix: str, value: object, name: str) -> str | None:
    """A route's path below the mount point: ``prefix`` + ``value``."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise OptionsError(f"{name} must start with '/'. Received: {value!r}")
    return (prefix + value).rstrip("/") or "/"


def _with_alias(given: Mapping[str, str | None]) -> dict[str, str | None]:
    """``path=`` is the client-secret route's path under the reference's
    name; ``client_secret_path=`` the name beside the other routes'."""
    paths = dict(given)
    if "path" in paths:
        if "client_secret_path" in paths:
            raise OptionsError(
                "path and client_secret_path both set the client-secret route's path: give one."
            )
        paths["client_secret_path"] = paths.pop("path")
    return paths


class RouteMap:
    """The routes served, and which one serves a path: the table's rows at
    the paths configured (``paths``: path keyword to path, None switching a
    route off), below ``prefix``, for the features switched on."""

    def __init__(
        self,
        prefix: str,
        given: Mapping[str, str | None],
        *,
        functions: bool,
        relay: bool,
        transcription: bool,
        webhooks: bool,
    ) -> None:
        paths = _with_alias(given)
        unknown = sorted(set(paths) - set(PATH_OPTIONS))
        if unknown:
            raise TypeError(f"Endpoint got unexpected keywords: {', '.join(unknown)}")
        features: dict[Feature, bool] = {
            "reference": True,
            "functions": functions,
            "transcription": transcription,
            "relay": relay,
            "webhooks": webhooks,
        }
        self.prefix = _prefix(prefix)
        wanted = (
            (row, _route_path(self.prefix, paths.get(row.option, row.default_path), row.option))
            for row in ROUTES
            if features[row.feature]
        )
        self.routes = tuple(row.route(path) for row, path in wanted if path is not None)
        # The client-secret route's path: where a request with no path goes.
        mint = [route.path for route in self.routes if route.name == "client_secret"]
        self.path = mint[0] if mint else None
        self._dynamic = tuple(route for route in self.routes if route.dynamic)
        # Routes for a path's children: {path}/{id}.
        self.dynamic_prefixes = tuple(f"{route.path}/" for route in self._dynamic)
        self._by_path: dict[str, Route] = {}
        for route in self.routes:
            if route.dynamic:
                continue
            for spelling in {route.path, route.path + "/"}:  # a trailing slash is fine
                other = self._by_path.setdefault(spelling, route)
                if other is not route:
                    raise OptionsError(
                        f"{route.name} and {other.name} have the same path: {route.path!r}"
                    )
        # Every spelling of every path that is ours.
        self.paths = frozenset(self._by_path)

    def owns(self, path: str) -> bool:
        """Whether a request for ``path`` (below the mount point) is ours."""
        return path in self._by_path or self._child_route(path) is not None

    def _child_route(self, path: str) -> Route | None:
        for route, prefix in zip(self._dynamic, self.dynamic_prefixes, strict=True):
            if path.startswith(prefix) and is_call_id(path[len(prefix) :]):
                return route
        return None

    def route_for(self, path: str) -> Route:
        """The route serving ``path`` (one that :meth:`owns`)."""
        route = self._by_path.get(path) or self._child_route(path)
        if route is None:
            raise KeyError(path)
        return route
