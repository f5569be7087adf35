"""What a route is, and what its handler gets and gives.

A handler is ``handle(settings, call)``: a generator that yields effects
and returns a :class:`Reply`. It sees neither headers nor CORS nor framing
(the endpoint has dealt with them), and raises a
:class:`~navai_mw.NavaiError` to refuse.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Final, Literal

import attrs

from ..backend_functions.registry import FunctionRegistry
from ..core.http import RequestInfo
from ..core.options import NavaiVoiceBackendOptions
from ..core.rate_limit_policy import GROUPS
from ..guard.guard import Guard
from ..upstreams.mint import Mint, SessionHook

__all__ = [
    "ROUTE_GROUPS",
    "BodyKind",
    "Call",
    "Handler",
    "Reply",
    "Route",
    "Settings",
    "SidebandSettings",
    "mint_for",
]

# A route's rate-limit group: one of the guard's, "end" (ending a call
# spends nothing, so no limit may stand in its way), or "webhook" (OpenAI
# calls it: neither authorize nor a limit stands in its way).
ROUTE_GROUPS: Final = (*GROUPS, "end", "webhook")
# What a route's body is: JSON, an SDP offer, nothing, or bytes its handler
# reads itself (a webhook, checked against its signature before anything
# parses it).
BodyKind = Literal["json", "sdp", "none", "raw"]


@attrs.frozen(kw_only=True)
class SidebandSettings:
    """How relayed calls get their sideband (docs/calls.md).

    Fields: server_functions (the backend functions offered to the model
    and run on the server), tools (those functions as the session's
    tools), pin_session (what the server set cannot be changed from the
    browser), required (a call without its sideband is refused, or hung
    up).
    """

    server_functions: bool = False
    tools: tuple[dict[str, Any], ...] = ()
    pin_session: bool = False
    required: bool = False


@attrs.frozen(kw_only=True)
class Settings:
    """What every route's handler may read: the configuration, made once.

    Fields: opts, guard, functions (the registry), customize_session (the
    hook, or None), function_timeout (seconds), max_call_seconds (the time
    cap of a relayed call, or None), sideband (how relayed calls get
    their sideband; None: they get none).
    """

    opts: NavaiVoiceBackendOptions
    guard: Guard
    functions: FunctionRegistry
    customize_session: SessionHook | None = None
    function_timeout: float
    max_call_seconds: float | None = None
    sideband: SidebandSettings | None = None
    budgets: Any = None  # a BudgetSettings (endpoint/budget_steps.py), or None
    webhooks: Any = None  # a WebhookSettings (endpoint/webhook_steps.py), or None


@attrs.frozen
class Call:
    """One request as a route's handler sees it, past every check."""

    body: dict[str, Any]
    info: RequestInfo
    identity: str | None
    raw: bytes = b""
    query: str = ""
    mount: str = ""


@attrs.frozen
class Reply:
    """What a route's handler answers: a status and a JSON payload, or
    ``raw`` bytes of ``content_type`` (an SDP answer; None for a 204's
    empty body); ``headers`` extra; ``webhook``, for the operator's
    metrics only, a webhook's event type and what became of it."""

    status: int
    payload: object
    raw: bytes | None = None
    content_type: str | None = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    webhook: tuple[str, str] | None = None


Handler = Callable[[Settings, Call], Generator[Any, Any, Reply]]


def _known_group(_: object, __: attrs.Attribute[str], value: str) -> None:
    # A typo here would silently mean "no limit": refused when the table is made.
    if value not in ROUTE_GROUPS:
        raise ValueError(f"route group must be one of {', '.join(ROUTE_GROUPS)}: {value!r}")


@attrs.frozen
class Route:
    """One navai route as served: its name (what ``authorize`` sees as
    ``RequestInfo.route``), path, method, rate-limit group, handler, the kind
    of body it takes, whether it serves its path's children
    (``{path}/{id}``), what it does (for a log line when it fails), and
    whether it is ``signed``: its caller is a server that signs each
    request (OpenAI's webhooks), so neither CORS nor the guard stand
    before it, and its handler checks the signature."""

    name: str
    path: str
    method: str
    group: str = attrs.field(validator=_known_group)
    handle: Handler = attrs.field(repr=False)
    body: BodyKind = "json"
    dynamic: bool = False
    doing: str = attrs.field(default="", repr=False)
    signed: bool = False
    allow: tuple[str, str] = attrs.field(init=False, repr=False)
    allow_cors: tuple[str, str] = attrs.field(init=False, repr=False)

    @allow.default
    def _allow(self) -> tuple[str, str]:
        return ("Allow", self.method)

    @allow_cors.default
    def _allow_cors(self) -> tuple[str, str]:
        return ("Allow", f"{self.method}, OPTIONS")


def mint_for(mint: Callable[..., Mint], settings: Settings, call: Call) -> Mint:
    """A client secret for ``call``: ``mint`` (the client-secret or the
    transcription one) with the server's hook and the caller's identity."""
    return (
        yield from mint(
            settings.opts,
            call.body,
            customize=settings.customize_session,
            identity=call.identity,
            request=call.info,
            safety_identifier=settings.guard.safety_identifier(call.identity),
        )
    )
