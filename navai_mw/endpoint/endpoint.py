"""The sans-IO HTTP endpoint behind both middlewares and the view handlers.

The ASGI and WSGI shells hand it a method, a path, a few headers and the
body bytes, and get back what to answer. Every HTTP rule the navai routes
share is here, once, so the two shells cannot drift apart; what each route
does is in its own module (``routes/``), found through the route table:

1. :meth:`Endpoint.owns` -- is this path ours? (cheap: it runs on every
   request that passes through);
2. :meth:`Endpoint.begin` -- with the method and headers, either an
   :class:`Answer` at once (405, 413, 415, 403, CORS preflight) or a
   :class:`BodyWanted` saying how many bytes the shell may read at most;
3. :meth:`Endpoint.finish` -- with the body, a generator for the shell's
   driver: it runs the guard (:mod:`navai_mw.guard.guard`), which yields the
   user's hook and the rate-limit hit as effects, then the route's handler,
   which yields upstream attempts, a backend function's call or the calls'
   store, and returns the :class:`Answer`.

Promises: the only statuses answered are those of
:data:`~navai_mw.endpoint.answers.ANSWERED_STATUSES` (a 500 only when a
backend function, the app's own code, fails); every answer has a JSON body
but a 204 and a relay's SDP answer; no answer carries the server's API key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any, Final

import attrs

from ..backend_functions.registry import FunctionRegistry
from ..core.errors import NavaiError, OptionsError, RequestError, log_safe
from ..core.http import RequestInfo, checked_request_id, joined_headers
from ..core.options import MAX_UPSTREAM_TIMEOUT_SECONDS, NavaiVoiceBackendOptions
from ..core.values import flag, seconds
from ..guard.addresses import client_address
from ..guard.guard import Guard
from ..upstreams.mint import SessionHook
from ..upstreams.openai_webhooks import MAX_WEBHOOK_BYTES
from .answers import Answer, error_answer, json_answer, raw_answer, too_large, unsupported
from .body import declared_length, json_type_ok, parse_body, sdp_type_ok
from .budget_steps import budget_settings
from .call_sideband import sideband_settings
from .cors import Cors
from .route import Call, Route, Settings
from .route_table import RouteMap
from .routes.relay_steps import DEFAULT_MAX_OFFER_SIZE, end_relayed
from .webhook_steps import webhook_settings

__all__ = [
    "DEFAULT_FUNCTION_TIMEOUT_SECONDS",
    "DEFAULT_MAX_BODY_SIZE",
    "MAX_CALL_SECONDS",
    "BodyWanted",
    "Endpoint",
    "route_path",
]

logger = logging.getLogger("navai_mw")

# A real request is a few hundred bytes; 64 KiB leaves room for long
# instructions and still bounds what a client can make us buffer.
DEFAULT_MAX_BODY_SIZE: Final = 64 * 1024
DEFAULT_FUNCTION_TIMEOUT_SECONDS: Final = 30.0
# A Realtime session lasts an hour at most; a day bounds every timer.
MAX_CALL_SECONDS: Final = 24 * 3600.0


# A body kind with a fixed limit of its own: a webhook's, which the sender
# chooses (a keyword could only be too small for OpenAI's events).
_LIMITS: Final = {"raw": MAX_WEBHOOK_BYTES}


def _too_large(route: Route, limit: int, cors: Iterable[tuple[str, str]]) -> Answer:
    if route.signed:  # a server sends it: worth a line in the log
        logger.warning("navai_mw: an OpenAI webhook is refused (413): over %d bytes", limit)
    return too_large(limit, cors)


@attrs.frozen
class BodyWanted:
    """Read the body, at most ``limit + 1`` bytes, then call ``finish``.

    ``declared`` is the Content-Length, when the client sent one; ``info``
    is the request as the guard and an ``authorize`` hook see it.
    """

    limit: int
    declared: int | None
    cors: tuple[tuple[str, str], ...]
    content_type_ok: bool
    info: RequestInfo
    route: Route = attrs.field(repr=False)
    query: str = ""
    mount: str = ""
    request_id: str = ""


def _annotated(answer: Answer, route: Route, request_id: str) -> Answer:
    """An answer with its request id, and the route that gave it."""
    headers = [*answer.headers, ("X-Request-ID", request_id)] if request_id else answer.headers
    # Built, not evolved: attrs.evolve reads the class's fields on every call.
    return Answer(
        answer.status, headers, answer.body, route.name, route.group, answer.guard, answer.webhook
    )


def _refused_as(exc: NavaiError) -> str:
    """What the guard decided, for the operator, from its refusal."""
    if exc.status == 401:
        return "unauthenticated"
    if exc.status == 403:
        return exc.code or "forbidden"
    if exc.status == 429:
        return "rate_limited"
    return "storage_down" if exc.status == 503 else "refused"


def route_path(path: str, root_path: str) -> str:
    """``path`` below the mount point ``root_path`` (ASGI spells both in full)."""
    if root_path and path.startswith(root_path):
        return path[len(root_path) :] or "/"
    return path


def _size(value: object, name: str, *, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        what = "a non-negative" if least == 0 else "a positive"
        raise OptionsError(f"{name} must be {what} integer. Received: {value!r}")
    return value


class Endpoint:
    """The navai routes, configured once; holds no per-request state.

    ``opts`` are the options; ``guard`` the guard (none by default);
    ``functions`` the backend functions. The keywords are the routes' own:
    each path keyword of the route table (None switches its route off),
    ``prefix``, ``include_functions_routes``, ``relay`` and ``transcription``
    (the routes beyond the reference's, off by default), ``max_body_size``,
    ``max_offer_size``, ``max_call_seconds``, ``function_timeout_seconds``,
    ``customize_session``, ``cors_origins``, ``cors_allow_credentials``,
    ``sideband``, ``server_functions``, ``pin_session``,
    ``sideband_required`` (docs/calls.md), ``budget``,
    ``budget_fail_open``, ``budget_secret_seconds``, ``budget_clock``
    (docs/budgets.md), ``openai_webhook_secret``, ``webhook_dedup_seconds``,
    ``block_seconds``, ``accept_call``, ``sip_accept``, ``on_openai_event``,
    ``webhook_clock`` (docs/phone.md); :mod:`navai_mw.config` reads
    their environment variables first.
    """

    def __init__(
        self,
        opts: NavaiVoiceBackendOptions,
        *,
        guard: Guard | None = None,
        functions: FunctionRegistry | None = None,
        prefix: str = "",
        include_functions_routes: bool = True,
        relay: bool = False,
        transcription: bool = False,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        max_offer_size: int = DEFAULT_MAX_OFFER_SIZE,
        max_call_seconds: float | None = None,
        function_timeout_seconds: float = DEFAULT_FUNCTION_TIMEOUT_SECONDS,
        customize_session: SessionHook | None = None,
        cors_origins: Iterable[str] | str | None = None,
        cors_allow_credentials: bool = False,
        sideband: bool = False,
        server_functions: bool = False,
        pin_session: bool = False,
        sideband_required: bool = False,
        budget: object = None,
        budget_fail_open: bool = False,
        budget_secret_seconds: float | None = None,
        budget_clock: Callable[[], float] | None = None,
        openai_webhook_secret: str | None = None,
        webhook_dedup_seconds: float | None = None,
        block_seconds: float | None = None,
        accept_call: Callable[..., Any] | None = None,
        sip_accept: str | None = None,
        on_openai_event: Callable[..., Any] | None = None,
        webhook_clock: Callable[[], float] | None = None,
        **paths: str | None,
    ) -> None:
        if customize_session is not None and not callable(customize_session):
            raise OptionsError("customize_session must be a function (or None).")
        self.opts = opts
        webhooks = webhook_settings(
            openai_webhook_secret,
            dedup_seconds=webhook_dedup_seconds,
            block_seconds=block_seconds,
            accept_call=accept_call,
            sip_accept=sip_accept,
            on_openai_event=on_openai_event,
            clock=webhook_clock,
        )
        guard = guard or Guard()
        # OpenAI's webhooks say whom it blocked: from then on, the guard asks.
        self.guard = attrs.evolve(guard, blocklist=True) if webhooks is not None else guard
        # Calls the server holds: relayed ones, and phone calls it may accept.
        answers_calls = webhooks is not None and webhooks.answers_calls
        relays_calls = flag(relay, "relay")
        holds_calls = relays_calls or answers_calls
        if answers_calls and opts.openai_api_key is None and not opts.uses_azure:
            raise OptionsError(
                "Answering phone calls (accept_call, sip_accept) needs the server's key: "
                "configure openai_api_key."
            )
        functions = functions if functions is not None else FunctionRegistry()
        # Checked first: a budget without the relay is told so in its own words.
        budgets = budget_settings(
            budget,
            fail_open=budget_fail_open,
            secret_seconds=budget_secret_seconds,
            clock=budget_clock,
            relay=holds_calls,
        )
        self.settings = Settings(
            opts=opts,
            guard=self.guard,
            functions=functions,
            customize_session=customize_session,
            function_timeout=seconds(
                function_timeout_seconds,
                "function_timeout_seconds",
                most=MAX_UPSTREAM_TIMEOUT_SECONDS,
            ),
            max_call_seconds=None
            if max_call_seconds is None
            else seconds(
                max_call_seconds, "max_call_seconds", most=MAX_CALL_SECONDS, most_text="a day"
            ),
            sideband=sideband_settings(
                sideband=sideband,
                server_functions=server_functions,
                pin_session=pin_session,
                # A budget meters every call: no call without its sideband.
                required=True if budgets is not None else sideband_required,
                relay=holds_calls,
                functions=functions,
            ),
            budgets=budgets,
            webhooks=webhooks,
        )
        self.max_body_size = _size(max_body_size, "max_body_size", least=0)
        self.max_offer_size = _size(max_offer_size, "max_offer_size", least=1)
        self.cors = Cors(cors_origins, credentials=cors_allow_credentials)
        self.map = RouteMap(
            prefix,
            paths,
            functions=flag(include_functions_routes, "include_functions_routes"),
            relay=relays_calls,
            transcription=flag(transcription, "transcription"),
            webhooks=webhooks is not None,
        )
        self.routes, self.path, self.paths = self.map.routes, self.map.path, self.map.paths
        self.dynamic_prefixes = self.map.dynamic_prefixes
        # Whether it holds calls (relayed, or phone calls it accepts), and so
        # has calls to own, cap and end.
        self.relays = bool(self.dynamic_prefixes) or answers_calls

    @property
    def functions(self) -> FunctionRegistry:
        return self.settings.functions

    @property
    def max_call_seconds(self) -> float | None:
        return self.settings.max_call_seconds

    def owns(self, path: str) -> bool:
        """Whether a request for ``path`` (below the mount point) is ours."""
        return self.map.owns(path)

    def route_for(self, path: str) -> Route:
        """The route serving ``path`` (one that :meth:`owns`)."""
        return self.map.route_for(path)

    def end_call(self, key: str) -> Generator[Any, Any, None]:
        """The steps that end a relayed call or Live session (for the time
        cap: the composition root drives them when a deadline passes)."""
        return end_relayed(self.settings, key, "time_cap")

    # -- the request ---------------------------------------------------------

    def begin(
        self,
        method: str,
        headers: Mapping[str, str],
        *,
        request_id: str = "",
        path: str | None = None,
        peer: str | None = None,
        scope: Mapping[str, Any] | None = None,
        environ: Mapping[str, Any] | None = None,
        query: str = "",
        mount: str = "",
    ) -> Answer | BodyWanted:
        """Decide what to do before any of the body is read.

        ``headers`` maps lower-case names to values; ``request_id`` is the
        one navai_mw made for this request, used when the client sent no
        ``X-Request-ID`` it can keep; ``path`` is below the mount point
        (None: the client-secret route's); ``peer`` is the socket peer's
        address; ``scope`` or ``environ`` is handed to an ``authorize`` hook
        as it is. Every answer carries the request id.
        """
        rid = checked_request_id(headers.get("x-request-id")) or request_id
        route = self.route_for(path if path is not None else self.path or "")
        begun = self._begin(
            route, method, headers, path=path, peer=peer, scope=scope, environ=environ,
            query=query, mount=mount, request_id=rid,
        )  # fmt: skip
        if isinstance(begun, Answer):
            return _annotated(begun, route, rid)
        return begun

    def _begin(
        self,
        route: Route,
        method: str,
        headers: Mapping[str, str],
        *,
        path: str | None = None,
        peer: str | None = None,
        scope: Mapping[str, Any] | None = None,
        environ: Mapping[str, Any] | None = None,
        query: str = "",
        mount: str = "",
        request_id: str = "",
    ) -> Answer | BodyWanted:
        # A signed route's caller is a server, never a browser: no CORS.
        cors = () if route.signed else self.cors.headers(headers)
        if cors is None:
            forbidden = RequestError("Origin not allowed.", status=403)
            return error_answer(forbidden, [("Vary", "Origin")])
        cors_on = self.cors.on and not route.signed
        if method == "OPTIONS" and cors_on:
            return self.cors.preflight(route.method, headers, cors)
        if method != route.method:
            allow = route.allow_cors if cors_on else route.allow
            message = f"Method not allowed. Use {route.method}."
            return error_answer(RequestError(message, status=405), [allow, *cors])
        limit = _LIMITS.get(route.body) or (
            self.max_offer_size if route.body == "sdp" else self.max_body_size
        )
        try:
            declared = declared_length(headers.get("content-length"))
        except RequestError as exc:
            return error_answer(exc, cors)
        if declared is not None and declared > limit:
            return _too_large(route, limit, cors)
        content_type = headers.get("content-type")
        content_type_ok = (
            True
            if route.body == "raw"  # its handler reads it
            else sdp_type_ok(content_type)
            if route.body == "sdp"
            else json_type_ok(content_type)
        )
        if declared and not content_type_ok:
            return unsupported(route.body, cors)
        info = RequestInfo(
            method=method,
            route=route.name,
            path=route.path if path is None else path,
            headers=headers,
            client=client_address(peer, headers, self.guard.trusted_proxies),
            scope=scope,
            environ=environ,
        )
        return BodyWanted(
            limit, declared, cors, content_type_ok, info, route, query, mount, request_id
        )

    def finish(
        self, wanted: BodyWanted, body: bytes | None, *, identity: str | None = None
    ) -> Generator[Any, Any, Answer]:
        """Given the body read, serve the route: a generator for the shell's
        driver, which performs what it yields. Its answer carries the
        request id (and, for the operator, what was decided)."""
        answer = yield from self._finish(wanted, body, identity=identity)
        return _annotated(answer, wanted.route, wanted.request_id)

    def _finish(
        self, wanted: BodyWanted, body: bytes | None, *, identity: str | None = None
    ) -> Generator[Any, Any, Answer]:
        """Given the body read, serve the route: a generator for the shell's
        driver, which performs what it yields.

        ``body`` is None when the client sent one the server cannot frame
        (chunked, on a WSGI server that does not end the stream itself).
        """
        cors = wanted.cors
        if body is None:
            return error_answer(RequestError("Send the request body with a Content-Length."), cors)
        if len(body) > wanted.limit:
            return _too_large(wanted.route, wanted.limit, cors)
        if wanted.declared is not None and len(body) != wanted.declared:
            shape = (
                "incomplete" if len(body) < wanted.declared else "longer than its Content-Length"
            )
            return error_answer(RequestError(f"Request body is {shape}."), cors)
        route = wanted.route
        if body and not wanted.content_type_ok:
            return unsupported(route.body, cors)
        try:
            # A signed route's handler checks its caller's signature itself.
            identity, limit_headers = (
                (None, ())
                if route.signed
                else (yield from self.guard.check(wanted.info, route.group, identity=identity))
            )
        except NavaiError as exc:
            return attrs.evolve(error_answer(exc, cors), guard=_refused_as(exc))
        answer_headers = (*cors, *limit_headers)
        try:
            parsed = parse_body(body) if route.body == "json" else {}
            call = Call(parsed, wanted.info, identity, body, wanted.query, wanted.mount)
            reply = yield from route.handle(self.settings, call)
        except RequestError as exc:
            guard = "budget_exhausted" if exc.code == "budget_exhausted" else "allowed"
            return attrs.evolve(error_answer(exc, answer_headers), guard=guard)
        except NavaiError as exc:
            logger.warning("navai_mw: %s failed: %s", route.doing, log_safe(exc.message))
            return attrs.evolve(error_answer(exc, answer_headers), guard="allowed")
        if reply.raw is None:
            answer = json_answer(reply.status, reply.payload, [*reply.headers, *answer_headers])
        else:
            answer = raw_answer(
                reply.status, reply.raw, reply.content_type, [*reply.headers, *answer_headers]
            )
        return Answer(
            answer.status, answer.headers, answer.body, guard="allowed", webhook=reply.webhook
        )

    def handle(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes,
        *,
        peer: str | None = None,
        scope: Mapping[str, Any] | None = None,
        environ: Mapping[str, Any] | None = None,
        identity: str | None = None,
        query: str = "",
        mount: str = "",
        request_id: str = "",
    ) -> Generator[Any, Any, Answer]:
        """A whole request at once, for a framework's view that has read the
        body already: :meth:`begin` and :meth:`finish` in one generator.
        ``headers`` may have names in any case; the body's length is its
        own; lines of one name (a framework's multi-dict, or name/value
        pairs) are joined as the ASGI shell joins them. A path that is not a
        navai route is a 404. ``identity``, when the view authenticated the
        caller, stands for ``authorize``'s."""
        lowered = joined_headers(headers.items() if isinstance(headers, Mapping) else headers)
        lowered.pop("transfer-encoding", None)
        lowered["content-length"] = str(len(body))
        if not self.owns(path):
            return error_answer(RequestError("Not found.", status=404))
        wanted = self.begin(
            method,
            lowered,
            request_id=request_id,
            path=path,
            peer=peer,
            scope=scope,
            environ=environ,
            query=query,
            mount=mount,
        )
        if isinstance(wanted, Answer):
            return wanted
        return (yield from self.finish(wanted, body, identity=identity))
