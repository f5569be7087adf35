"""The sans-IO HTTP endpoint behind both middlewares: a small route table.

The ASGI and WSGI shells hand it a method, a path, a few headers and the
body bytes, and get back what to answer. Every decision about the navai
routes (the client secret, the backend functions' list and execute, speech)
is here, so the two shells cannot drift apart:

1. :meth:`Endpoint.owns` -- is this path ours? (cheap: it runs on every
   request that passes through);
2. :meth:`Endpoint.begin` -- with the method and headers, either an
   :class:`Answer` at once (405, 413, 415, 403, CORS preflight) or a
   :class:`BodyWanted` saying how many bytes the shell may read at most;
3. :meth:`Endpoint.finish` -- with the body, a generator for the shell's
   driver: it runs the guard (:mod:`navai_mw.guard.guard`), which yields the
   user's hook and the rate-limit hit as effects, then the route's handler,
   which yields upstream attempts (OpenAI, ElevenLabs) or a backend
   function's call, and returns the :class:`Answer`.

Promises: the only statuses answered are 200, 201 (a relayed call), 204,
400, 401, 403, 404, 405, 413, 415, 429, 500 (only when a backend function,
the app's own code, fails), 502, 503 and 504; every answer has a JSON body
but a 204 and a relay's SDP answer; no answer carries the server's API key.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any, Final

import attrs
from typing_extensions import TypedDict

from ..backend_functions.calling import bind_call, function_reply
from ..backend_functions.loading import FunctionSource, load_navai_functions
from ..backend_functions.registry import FunctionContext, FunctionRegistry
from ..config.env import (
    get_cors_origins_from_env,
    get_navai_voice_backend_options_from_env,
    guard_from_env,
)
from ..core.client_requests import structure_request
from ..core.effects import CallFunction, CallOwned, ForgetCall, FunctionOutcome, RememberCall
from ..core.envvars import read_bool, read_seconds
from ..core.errors import NavaiError, OptionsError, RequestError, UpstreamError, log_safe
from ..core.exchange import attempts, secret_of, upstream_failure, upstream_message
from ..core.http import RequestInfo
from ..core.options import (
    DEFAULT_INSTRUCTIONS,
    DEFAULT_VOICE,
    MAX_UPSTREAM_TIMEOUT_SECONDS,
    NavaiVoiceBackendOptions,
)
from ..guard.addresses import client_address
from ..guard.authorizers import Authorizer
from ..guard.guard import Guard
from ..upstreams.elevenlabs import build_speech_request, speech_exchange
from ..upstreams.live import DEFAULT_LIVE_MODEL, LIVE, close_live, live_request, parse_live_response
from ..upstreams.mint import (
    Mint,
    SessionHook,
    credential_for,
    customized,
    mint_client_secret,
    mint_transcription_secret,
)
from ..upstreams.openai_secrets import build_instructions, build_session, check_policy
from ..upstreams.realtime_calls import (
    CALLS,
    RelayedCall,
    calls_request,
    hangup_request,
    is_call_id,
    parse_calls_response,
)
from .answers import Answer, _error, _json, _raw, _too_large, _unsupported
from .body import _DIGITS, _media_type_ok, _sdp_type_ok, parse_body
from .cors import _EXPOSED, PREFLIGHT_MAX_AGE, _normalize_origin
from .route import Call, Handler, Reply, Route
from .routes.relay_steps import DEFAULT_MAX_OFFER_SIZE, check_offer, overrides_from_query

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_PATH",
    "BodyWanted",
    "Endpoint",
    "RouteOptions",
    "route_path",
]

logger = logging.getLogger("navai_mw")

DEFAULT_PATH: Final = "/navai/realtime/client-secret"
# A real request is a few hundred bytes; 64 KiB leaves room for long
# instructions and still bounds what a client can make us buffer.
DEFAULT_MAX_BODY_SIZE: Final = 64 * 1024


DEFAULT_FUNCTIONS_LIST_PATH: Final = "/navai/functions"
DEFAULT_FUNCTIONS_EXECUTE_PATH: Final = "/navai/functions/execute"
DEFAULT_SPEECH_SYNTHESIZE_PATH: Final = "/navai/speech/synthesize"
DEFAULT_FUNCTION_TIMEOUT_SECONDS: Final = 30.0
DEFAULT_TRANSCRIPTION_PATH: Final = "/navai/realtime/transcription-secret"
DEFAULT_CALLS_PATH: Final = "/navai/realtime/calls"
DEFAULT_LIVE_PATH: Final = "/navai/live/sessions"


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


def route_path(path: str, root_path: str) -> str:
    """``path`` below the mount point ``root_path`` (ASGI spells both in full)."""
    if root_path and path.startswith(root_path):
        return path[len(root_path) :] or "/"
    return path


def _cap(value: object) -> float:
    return _seconds(value, "max_call_seconds", 24 * 3600, "a day")


class RouteOptions(TypedDict, total=False):
    """The keywords of the middlewares and the view handlers, listed once
    (:meth:`Endpoint.configured` gives their defaults; see
    docs/configuration.md).

    Routes: ``prefix``; ``path`` (the client secret),
    ``transcription_secret_path``, ``calls_path``, ``live_path``,
    ``functions_list_path``, ``functions_execute_path``,
    ``speech_synthesize_path`` (None switches a route off);
    ``include_functions_routes``. Limits: ``max_body_size``,
    ``max_offer_size``, ``max_call_seconds``, ``function_timeout_seconds``.
    Behaviour: ``functions``, ``customize_session``. Browsers:
    ``cors_origins``, ``cors_allow_credentials``. The guard: ``authorize``,
    ``rate_limit``, ``rate_limit_storage``, ``rate_limit_fail_open``,
    ``trusted_proxies``, ``safety_id_secret``.
    """

    prefix: str
    path: str | None
    transcription_secret_path: str | None
    calls_path: str | None
    live_path: str | None
    functions_list_path: str | None
    functions_execute_path: str | None
    speech_synthesize_path: str | None
    include_functions_routes: bool
    max_body_size: int
    max_offer_size: int
    max_call_seconds: float | None
    function_timeout_seconds: float | None
    functions: Iterable[FunctionSource] | FunctionRegistry | None
    customize_session: SessionHook | None
    cors_origins: Iterable[str] | None
    cors_allow_credentials: bool | None
    authorize: Callable[[RequestInfo], Any] | Authorizer | None
    rate_limit: str | Mapping[str, str] | None
    rate_limit_storage: str | None
    rate_limit_fail_open: bool | None
    trusted_proxies: str | Iterable[str] | None
    safety_id_secret: str | None


def _prefix(value: str) -> str:
    if not isinstance(value, str) or (value and not value.startswith("/")):
        raise ValueError(f"prefix must be empty or start with '/'. Received: {value!r}")
    return value.rstrip("/")


def _route_path(prefix: str, value: str | None, name: str) -> str | None:
    """A route's path below the mount point: ``prefix`` + ``value``."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"{name} must start with '/'. Received: {value!r}")
    return (prefix + value).rstrip("/") or "/"


def _seconds(value: object, name: str, most: float, most_text: str) -> float:
    """A number of seconds in (0, most], or an options error naming it."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 < value <= most
    ):
        raise OptionsError(
            f"{name} must be a number of seconds above 0 and at most {most_text}. "
            f"Received: {value!r}"
        )
    return float(value)


def _timeout(value: object) -> float:
    most = MAX_UPSTREAM_TIMEOUT_SECONDS
    return _seconds(value, "function_timeout_seconds", most, f"{most:g}")


class Endpoint:
    """The navai routes, configured once; holds no per-request state."""

    def __init__(
        self,
        opts: NavaiVoiceBackendOptions,
        *,
        prefix: str = "",
        path: str | None = DEFAULT_PATH,
        transcription_secret_path: str | None = DEFAULT_TRANSCRIPTION_PATH,
        calls_path: str | None = DEFAULT_CALLS_PATH,
        live_path: str | None = DEFAULT_LIVE_PATH,
        max_call_seconds: float | None = None,
        max_offer_size: int = DEFAULT_MAX_OFFER_SIZE,
        functions_list_path: str | None = DEFAULT_FUNCTIONS_LIST_PATH,
        functions_execute_path: str | None = DEFAULT_FUNCTIONS_EXECUTE_PATH,
        speech_synthesize_path: str | None = DEFAULT_SPEECH_SYNTHESIZE_PATH,
        include_functions_routes: bool = True,
        functions: FunctionRegistry | None = None,
        customize_session: SessionHook | None = None,
        function_timeout_seconds: float = DEFAULT_FUNCTION_TIMEOUT_SECONDS,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        cors_origins: Iterable[str] | None = None,
        cors_allow_credentials: bool = False,
        guard: Guard | None = None,
    ) -> None:
        if (
            isinstance(max_body_size, bool)
            or not isinstance(max_body_size, int)
            or max_body_size < 0
        ):
            raise ValueError(
                f"max_body_size must be a non-negative integer. Received: {max_body_size!r}"
            )
        if not isinstance(include_functions_routes, bool):
            raise ValueError(
                "include_functions_routes must be True or False. "
                f"Received: {include_functions_routes!r}"
            )
        self.opts = opts
        self.max_body_size = max_body_size
        self.prefix = _prefix(prefix)
        self.functions = functions if functions is not None else FunctionRegistry()
        self.function_timeout = _timeout(function_timeout_seconds)
        if customize_session is not None and not callable(customize_session):
            raise ValueError("customize_session must be a function (or None).")
        self.customize_session = customize_session
        self.max_call_seconds = None if max_call_seconds is None else _cap(max_call_seconds)
        if (
            isinstance(max_offer_size, bool)
            or not isinstance(max_offer_size, int)
            or (max_offer_size < 1)
        ):
            raise ValueError(
                f"max_offer_size must be a positive integer. Received: {max_offer_size!r}"
            )
        self.max_offer_size = max_offer_size

        def _path(value: str | None, name: str) -> str | None:
            return _route_path(self.prefix, value, name)

        calls = _path(calls_path, "calls_path")
        live = _path(live_path, "live_path")
        wanted: list[tuple[str, str | None, str, str, Handler]] = [
            ("client_secret", _path(path, "path"), "POST", "mint", self._client_secret),
            (
                "transcription_secret",
                _path(transcription_secret_path, "transcription_secret_path"),
                "POST",
                "mint",
                self._transcription_secret,
            ),
            (
                "speech_synthesize",
                _path(speech_synthesize_path, "speech_synthesize_path"),
                "POST",
                "speech",
                self._speech,
            ),
        ]
        if include_functions_routes:
            wanted += [
                (
                    "functions_list",
                    _path(functions_list_path, "functions_list_path"),
                    "GET",
                    "functions",
                    self._functions_list,
                ),
                (
                    "functions_execute",
                    _path(functions_execute_path, "functions_execute_path"),
                    "POST",
                    "functions",
                    self._functions_execute,
                ),
            ]
        routes = [
            Route(name, route_path, method, group, handle)
            for name, route_path, method, group, handle in wanted
            if route_path is not None
        ]
        if calls is not None:
            routes.append(Route("calls", calls, "POST", "mint", self._calls, body="sdp"))
            # Ending a call spends nothing: no rate limit may stand in its way.
            routes.append(
                Route("call_hangup", calls, "DELETE", "end", self._hangup, "none", dynamic=True)
            )
        if live is not None:
            routes.append(Route("live", live, "POST", "mint", self._live, body="sdp"))
            routes.append(
                Route("live_close", live, "DELETE", "end", self._close, "none", dynamic=True)
            )
        self.routes = tuple(routes)
        # Whether it relays calls (and so has calls to own, cap and end).
        self.relays = calls is not None or live is not None
        # Routes for a path's children: {path}/{id}.
        self._dynamic = tuple(route for route in routes if route.dynamic)
        self.dynamic_prefixes = tuple(f"{route.path}/" for route in self._dynamic)
        self._by_path: dict[str, Route] = {}
        for route in self.routes:
            if route.dynamic:
                continue
            for spelling in {route.path, route.path + "/"}:  # a trailing slash is fine
                other = self._by_path.setdefault(spelling, route)
                if other is not route:
                    raise ValueError(
                        f"{route.name} and {other.name} have the same path: {route.path!r}"
                    )
        self.path = _route_path(self.prefix, path, "path")
        # Every spelling of every path that is ours.
        self.paths = frozenset(self._by_path)
        if isinstance(cors_origins, str):  # "https://a.test, https://b.test", as in the env
            cors_origins = cors_origins.split(",")
        origins = (
            None
            if cors_origins is None
            else {_normalize_origin(o) for o in cors_origins if o.strip()}
        )
        self._any_origin = origins is not None and "*" in origins
        self._origins: frozenset[str] | None = None if origins is None else frozenset(origins)
        if not isinstance(cors_allow_credentials, bool):
            raise ValueError(
                "cors_allow_credentials must be True or False. "
                f"Received: {cors_allow_credentials!r}"
            )
        # With credentials, browsers refuse "*": the origin is echoed instead.
        self._credentials = cors_allow_credentials
        self.guard = guard or Guard()

    @classmethod
    def configured(
        cls,
        opts: NavaiVoiceBackendOptions | None,
        *,
        prefix: str = "",
        path: str | None = DEFAULT_PATH,
        transcription_secret_path: str | None = DEFAULT_TRANSCRIPTION_PATH,
        calls_path: str | None = DEFAULT_CALLS_PATH,
        live_path: str | None = DEFAULT_LIVE_PATH,
        max_call_seconds: float | None = None,
        max_offer_size: int = DEFAULT_MAX_OFFER_SIZE,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        cors_origins: Iterable[str] | None = None,
        cors_allow_credentials: bool | None = None,
        customize_session: SessionHook | None = None,
        functions_list_path: str | None = DEFAULT_FUNCTIONS_LIST_PATH,
        functions_execute_path: str | None = DEFAULT_FUNCTIONS_EXECUTE_PATH,
        speech_synthesize_path: str | None = DEFAULT_SPEECH_SYNTHESIZE_PATH,
        include_functions_routes: bool = True,
        functions: Iterable[FunctionSource] | FunctionRegistry | None = None,
        function_timeout_seconds: float | None = None,
        **guard: Any,
    ) -> Endpoint:
        """The middlewares' way in: ``opts=None`` reads the environment, CORS
        origins (``NAVAI_CORS_ORIGIN``) included unless given. The guard's
        keywords (``authorize``, ``rate_limit``...), and the function
        timeout, each come from the environment when not given, whatever
        ``opts`` is. Backend functions are loaded now (from the module
        folders unless ``functions`` names them), when their routes are on."""
        if opts is None:
            opts = get_navai_voice_backend_options_from_env()
            if cors_origins is None:
                cors_origins = get_cors_origins_from_env()
        if cors_allow_credentials is None:
            cors_allow_credentials = read_bool(os.environ, "NAVAI_CORS_ALLOW_CREDENTIALS", False)
        if max_call_seconds is None:
            cap = read_seconds(os.environ, "NAVAI_MAX_CALL_SECONDS", 0.0)
            max_call_seconds = cap or None
        if function_timeout_seconds is None:
            function_timeout_seconds = read_seconds(
                os.environ, "NAVAI_FUNCTION_TIMEOUT_SECONDS", DEFAULT_FUNCTION_TIMEOUT_SECONDS
            )
        registry = None
        if include_functions_routes and (functions_list_path or functions_execute_path):
            registry = (
                functions
                if isinstance(functions, FunctionRegistry)
                else load_navai_functions(functions)
            )
        if opts.tts_provider == "elevenlabs" and opts.elevenlabs_api_key is None:
            logger.warning(
                "navai_mw: speech is voiced by ElevenLabs but no ElevenLabs API key is set "
                "(ELEVENLABS_API_KEY): the speech route will answer 400"
            )
        return cls(
            opts,
            prefix=prefix,
            path=path,
            transcription_secret_path=transcription_secret_path,
            calls_path=calls_path,
            live_path=live_path,
            max_call_seconds=max_call_seconds,
            max_offer_size=max_offer_size,
            customize_session=customize_session,
            functions_list_path=functions_list_path,
            functions_execute_path=functions_execute_path,
            speech_synthesize_path=speech_synthesize_path,
            include_functions_routes=include_functions_routes,
            functions=registry,
            function_timeout_seconds=function_timeout_seconds,
            max_body_size=max_body_size,
            cors_origins=cors_origins,
            cors_allow_credentials=cors_allow_credentials,
            # The safety identifier's secret derives from the server's key.
            guard=guard_from_env(api_key=opts.openai_api_key or opts.azure_api_key, **guard),
        )

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

    # -- CORS ------------------------------------------------------------

    def _cors(self, headers: Mapping[str, str]) -> tuple[tuple[str, str], ...] | None:
        """CORS response headers, or None when the origin is refused."""
        if self._origins is None:
            return ()
        origin = headers.get("origin")
        if origin is None:
            return (("Vary", "Origin"),)
        if self._any_origin or _normalize_origin(origin) in self._origins:
            allowed = "*" if self._any_origin and not self._credentials else origin
            cors: tuple[tuple[str, str], ...] = (
                ("Access-Control-Allow-Origin", allowed),
                ("Vary", "Origin"),
                _EXPOSED,
            )
            if self._credentials:
                cors += (("Access-Control-Allow-Credentials", "true"),)
            return cors
        # No exception for "same-origin" requests: the only sign of one is
        # the Host header, which a DNS-rebinding page controls. A page served
        # by this app lists its own origin like any other.
        return None

    def _preflight(
        self, route: Route, headers: Mapping[str, str], cors: tuple[tuple[str, str], ...]
    ) -> Answer:
        allowed = [
            *(header for header in cors if header is not _EXPOSED),  # for answers only
            ("Access-Control-Allow-Methods", route.method),
            ("Access-Control-Max-Age", PREFLIGHT_MAX_AGE),
        ]
        requested = headers.get("access-control-request-headers")
        if requested:
            allowed.append(("Access-Control-Allow-Headers", requested))
        return Answer(204, allowed, b"")

    # -- the request ---------------------------------------------------------

    def begin(
        self,
        method: str,
        headers: Mapping[str, str],
        *,
        path: str | None = None,
        peer: str | None = None,
        scope: Mapping[str, Any] | None = None,
        environ: Mapping[str, Any] | None = None,
        query: str = "",
        mount: str = "",
    ) -> Answer | BodyWanted:
        """Decide what to do before any of the body is read.

        ``headers`` maps lower-case names to values; ``path`` is below the
        mount point (None: the client-secret route's); ``peer`` is the
        socket peer's address; ``scope`` or ``environ`` is handed to an
        ``authorize`` hook as it is.
        """
        route = self.route_for(path if path is not None else self.path or "")
        cors = self._cors(headers)
        if cors is None:
            return _error(RequestError("Origin not allowed.", status=403), [("Vary", "Origin")])
        if method == "OPTIONS" and self._origins is not None:
            return self._preflight(route, headers, cors)
        if method != route.method:
            allow = route.allow if self._origins is None else route.allow_cors
            message = f"Method not allowed. Use {route.method}."
            return _error(RequestError(message, status=405), [allow, *cors])
        limit = self.max_offer_size if route.body == "sdp" else self.max_body_size
        raw_length = headers.get("content-length", "").strip()
        declared = None
        if raw_length:
            if _DIGITS.fullmatch(raw_length) is None:
                return _error(RequestError("Invalid Content-Length."), cors)
            declared = int(raw_length)
            if declared > limit:
                return _too_large(limit, cors)
        content_type_ok = (
            _sdp_type_ok(headers.get("content-type"))
            if route.body == "sdp"
            else _media_type_ok(headers.get("content-type"))
        )
        if declared and not content_type_ok:
            return _unsupported(route, cors)
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
            limit=limit,
            declared=declared,
            cors=cors,
            content_type_ok=content_type_ok,
            info=info,
            route=route,
            query=query,
            mount=mount,
        )

    def finish(
        self, wanted: BodyWanted, body: bytes | None, *, identity: str | None = None
    ) -> Generator[Any, Any, Answer]:
        """Given the body read, serve the route: a generator for the shell's
        driver, which performs what it yields (the guard's hook and
        rate-limit hit, upstream attempts, a backend function's call).

        ``body`` is None when the client sent one the server cannot frame
        (chunked, on a WSGI server that does not end the stream itself).
        """
        cors = wanted.cors
        if body is None:
            return _error(RequestError("Send the request body with a Content-Length."), cors)
        if len(body) > wanted.limit:
            return _too_large(wanted.limit, cors)
        if wanted.declared is not None and len(body) != wanted.declared:
            shape = (
                "incomplete" if len(body) < wanted.declared else "longer than its Content-Length"
            )
            return _error(RequestError(f"Request body is {shape}."), cors)
        route = wanted.route
        if body and not wanted.content_type_ok:
            return _unsupported(route, cors)
        try:
            identity, limit_headers = yield from self.guard.check(
                wanted.info, route.group, identity=identity
            )
        except NavaiError as exc:
            return _error(exc, cors)
        answer_headers = (*cors, *limit_headers)
        try:
            parsed = parse_body(body) if route.body == "json" else {}
            call = Call(parsed, wanted.info, identity, body, wanted.query, wanted.mount)
            reply = yield from route.handle(call)
        except RequestError as exc:
            return _error(exc, answer_headers)
        except NavaiError as exc:
            logger.warning("navai_mw: %s failed: %s", _DOING[route.name], log_safe(exc.message))
            return _error(exc, answer_headers)
        if reply.raw is None:
            return _json(reply.status, reply.payload, [*reply.headers, *answer_headers])
        return _raw(reply, answer_headers)

    def handle(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        peer: str | None = None,
        scope: Mapping[str, Any] | None = None,
        environ: Mapping[str, Any] | None = None,
        identity: str | None = None,
        query: str = "",
        mount: str = "",
    ) -> Generator[Any, Any, Answer]:
        """A whole request at once, for a framework's view that has read the
        body already: :meth:`begin` and :meth:`finish` in one generator.
        ``headers`` may have names in any case; the body's length is its
        own. A path that is not a navai route is a 404. ``identity``, when
        the view authenticated the caller, stands for ``authorize``'s."""
        lowered = {name.lower(): value for name, value in headers.items()}
        lowered.pop("transfer-encoding", None)
        lowered["content-length"] = str(len(body))
        if not self.owns(path):
            return _error(RequestError("Not found.", status=404))
        wanted = self.begin(
            method,
            lowered,
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

    # -- the routes ------------------------------------------------------------

    def _client_secret(self, call: Call) -> Generator[Any, Any, Reply]:
        secret = yield from self._mint(mint_client_secret, call)
        return Reply(
            200, {"value": secret.value, "expires_at": secret.expires_at, "speech": secret.speech}
        )

    def _transcription_secret(self, call: Call) -> Generator[Any, Any, Reply]:
        secret = yield from self._mint(mint_transcription_secret, call)
        return Reply(200, {"value": secret.value, "expires_at": secret.expires_at})

    def _mint(self, mint: Callable[..., Mint], call: Call) -> Mint:
        return (
            yield from mint(
                self.opts,
                call.body,
                customize=self.customize_session,
                identity=call.identity,
                request=call.info,
                safety_identifier=self.guard.safety_identifier(call.identity),
            )
        )

    def _calls(self, call: Call) -> Generator[Any, Any, Reply]:
        offer = check_offer(call.raw)
        req = structure_request(overrides_from_query(call.query))
        check_policy(self.opts, req)
        self._need_server_key()
        session = yield from customized(
            self.opts,
            build_session(self.opts, req),
            kind="realtime",
            customize=self.customize_session,
            identity=call.identity,
            request=call.info,
        )
        credential = yield from credential_for(self.opts, self.opts.openai_api_key)
        upstream = calls_request(
            self.opts,
            offer,
            session,
            credential=credential,
            safety_identifier=self.guard.safety_identifier(call.identity),
        )
        # Never retried: a second POST could start a second call.
        response = yield from attempts(
            upstream, budget=self.opts.upstream_timeout_seconds, max_retries=0, what=CALLS
        )
        relayed = parse_calls_response(response, secret=secret_of(upstream))
        return (yield from self._relayed(call, relayed.call_id, relayed))

    def _hangup(self, call: Call) -> Generator[Any, Any, Reply]:
        call_id = call.info.path.rsplit("/", 1)[-1]
        yield from self._owned(call_id, call.identity, "call")
        yield from self._end(call_id)
        return Reply(204, None, raw=b"")

    def end_call(self, key: str) -> Generator[Any, Any, None]:
        """The steps that end a relayed call or Live session (for the time
        cap: the shells' performers run them when a deadline passes)."""
        return self._end(key)

    def _end(self, key: str) -> Generator[Any, Any, None]:
        """End a relayed call (hang it up) or Live session (``live:{id}``:
        ``session.close`` on its sideband connection), and forget it."""
        credential = yield from credential_for(self.opts, self.opts.openai_api_key)
        if key.startswith("live:"):
            failure = yield close_live(self.opts, key.removeprefix("live:"), credential=credential)
            if failure is not None:
                raise UpstreamError(f"{LIVE} could not be closed: {type(failure).__name__}.")
            yield ForgetCall(key)
            return
        call_id = key
        upstream = hangup_request(self.opts, call_id, credential=credential)
        response = yield from attempts(
            upstream, budget=self.opts.upstream_timeout_seconds, what=CALLS
        )
        if response.status != 404 and not 200 <= response.status < 300:
            raise upstream_failure(CALLS, response, upstream_message(response.body), credential[1])
        yield ForgetCall(call_id)

    def _live(self, call: Call) -> Generator[Any, Any, Reply]:
        offer = check_offer(call.raw)
        req = structure_request(overrides_from_query(call.query))
        check_policy(self.opts, req)
        self._need_server_key()
        opts = self.opts
        session: dict[str, Any] = {
            **(opts.live_session or {}),
            "model": req.model or opts.live_model or DEFAULT_LIVE_MODEL,
            "instructions": build_instructions(
                req.instructions or opts.default_instructions or DEFAULT_INSTRUCTIONS,
                req.language or opts.default_language,
                req.voice_accent or opts.default_voice_accent,
                req.voice_tone or opts.default_voice_tone,
            ),
            "audio": {"output": {"voice": req.voice or opts.default_voice or DEFAULT_VOICE}},
        }
        safety = self.guard.safety_identifier(call.identity)
        if safety is not None:
            session["safety_identifier"] = safety  # Live takes it in the body
        credential = yield from credential_for(opts, opts.openai_api_key)
        upstream = live_request(opts, offer, session, credential=credential)
        response = yield from attempts(
            upstream, budget=opts.upstream_timeout_seconds, max_retries=0, what=LIVE
        )
        relayed = parse_live_response(response, secret=secret_of(upstream))
        return (yield from self._relayed(call, f"live:{relayed.call_id}", relayed))

    def _close(self, call: Call) -> Generator[Any, Any, Reply]:
        session_id = call.info.path.rsplit("/", 1)[-1]
        yield from self._owned(f"live:{session_id}", call.identity, "session")
        yield from self._end(f"live:{session_id}")
        return Reply(204, None, raw=b"")

    def _owned(self, key: str, identity: str | None, what: str) -> Generator[Any, Any, None]:
        owned = yield CallOwned(key, identity)
        if owned is None:  # the calls' store could not be asked
            raise NavaiError(
                "Calls cannot be looked up right now; try again shortly.",
                status=503,
                headers=(("Retry-After", "5"),),
            )
        if not owned:
            # Another identity's, or one this server never relayed: it does
            # not exist, as far as this caller can tell.
            raise RequestError(f"Unknown {what}.", status=404)

    def _need_server_key(self) -> None:
        if self.opts.openai_api_key is None and not self.opts.uses_azure:
            # A request's key cannot ride in a URL: the relay needs the server's.
            raise RequestError(
                "Missing API key. The relay uses the server's key: configure openai_api_key."
            )

    def _relayed(self, call: Call, key: str, relayed: RelayedCall) -> Generator[Any, Any, Reply]:
        """Remember who started it, cap it, and answer the browser."""
        yield RememberCall(key, call.identity, self.max_call_seconds)
        location = f"{call.mount}{call.info.path.rstrip('/')}/{relayed.call_id}"
        return Reply(
            201,
            None,
            raw=relayed.answer.encode(),
            content_type="application/sdp",
            headers=(("Location", location),),
        )

    def _speech(self, call: Call) -> Generator[Any, Any, Reply]:
        request = build_speech_request(self.opts, call.body)
        speech = yield from speech_exchange(request, budget=self.opts.upstream_timeout_seconds)
        return Reply(200, speech.to_wire())

    def _functions_list(self, call: Call) -> Generator[Any, Any, Reply]:
        registry = self.functions
        items = [
            {"name": item.name, "description": item.description, "source": item.source}
            for item in registry.ordered
        ]
        return Reply(200, {"items": items, "warnings": list(registry.warnings)})
        yield  # a generator, as every handler is  # pragma: no cover

    def _functions_execute(self, call: Call) -> Generator[Any, Any, Reply]:
        raw_name = call.body.get("function_name")
        name = raw_name.strip().lower() if isinstance(raw_name, str) else ""
        if not name:
            raise RequestError("function_name is required.")
        function = self.functions.by_name.get(name)
        if function is None:
            return Reply(
                404,
                {
                    "error": "Unknown or disallowed function.",
                    "available_functions": self.functions.names,
                },
            )
        payload = call.body.get("payload")
        context = FunctionContext(
            function=function.name,
            identity=call.identity,
            client=call.info.client,
            headers=call.info.headers,
            request=call.info,
        )
        run = bind_call(function, payload if isinstance(payload, dict) else {}, context)
        outcome: FunctionOutcome = yield CallFunction(
            run, is_async=function.is_async, timeout=self.function_timeout
        )
        return Reply(*function_reply(function, outcome, self.function_timeout))


# What a failing route was doing, for the log line.
_DOING: Final = {
    "client_secret": "minting a client secret",
    "transcription_secret": "minting a transcription secret",
    "calls": "relaying a WebRTC offer",
    "call_hangup": "hanging up a call",
    "live": "relaying a WebRTC offer to GPT-Live",
    "live_close": "closing a Live session",
    "speech_synthesize": "synthesizing speech",
    "functions_list": "listing backend functions",
    "functions_execute": "running a backend function",
}
