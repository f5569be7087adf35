"""The sans-IO HTTP endpoint behind both middlewares.

The ASGI and WSGI shells hand it a method, a path, a few headers and the
body bytes, and get back what to answer. Every decision about the token
path is here, so the two shells cannot drift apart:

1. :meth:`Endpoint.owns` -- is this path ours? (cheap: it runs on every
   request that passes through);
2. :meth:`Endpoint.begin` -- with the method and headers, either an
   :class:`Answer` at once (405, 413, 415, 403, CORS preflight) or a
   :class:`BodyWanted` saying how many bytes the shell may read at most;
3. :meth:`Endpoint.finish` -- with the body, a generator for the shell's
   driver: it runs the guard (:mod:`navai_mw._guard`), which yields the
   user's hook and the rate-limit hit as effects, then yields the upstream
   attempts (none for a refused or bad request) and returns the
   :class:`Answer`.

Promises: the only statuses answered are 200, 204, 400, 401, 403, 405, 413,
415, 429, 502, 503 and 504; every answer has a JSON body (but the 204
preflight); no answer carries the server's API key.
"""

from __future__ import annotations

import http
import json
import logging
import os
import re
from collections.abc import Generator, Iterable, Mapping
from typing import Any, Final

import attrs

from ._core import build_upstream_request, compact_json, exchange
from ._env import (
    get_cors_origins_from_env,
    get_navai_voice_backend_options_from_env,
    guard_from_env,
    read_bool,
)
from ._errors import NavaiError, RequestError, log_safe
from ._guard import Guard, RequestInfo, client_address
from ._models import NavaiVoiceBackendOptions

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_PATH",
    "Answer",
    "BodyWanted",
    "Endpoint",
    "route_path",
]

logger = logging.getLogger("navai_mw")

DEFAULT_PATH: Final = "/navai/realtime/client-secret"
# A real request is a few hundred bytes; 64 KiB leaves room for long
# instructions and still bounds what a client can make us buffer.
DEFAULT_MAX_BODY_SIZE: Final = 64 * 1024
# The request is one flat object; anything nested this deep is an attack on
# the parser, refused before json.loads can recurse into RecursionError.
MAX_JSON_DEPTH: Final = 32
# How long browsers may cache a preflight answer.
PREFLIGHT_MAX_AGE: Final = "600"

# A JSON string; an unterminated one runs to the end of the text, so that no
# quote is ever rescanned (a body of backslash-quotes would be quadratic).
_JSON_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_BRACKET: Final = re.compile(r"[\[\]{}]")
_DIGITS: Final = re.compile(r"[0-9]{1,19}")


def _reason(status: int) -> str:
    return f"{status} {http.HTTPStatus(status).phrase}"


_REASONS: Final = {
    status: _reason(status)
    for status in (200, 204, 400, 401, 403, 405, 413, 415, 429, 502, 503, 504)
}
# The route this endpoint serves, and the rate-limit group it counts in.
ROUTE: Final = "client_secret"
ROUTE_GROUP: Final = "mint"
# Headers a page may read from a cross-origin answer.
_EXPOSED: Final = ("Access-Control-Expose-Headers", "Retry-After, RateLimit, RateLimit-Policy")


@attrs.frozen
class Answer:
    """What to send back: status, headers (str pairs) and body bytes."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status_line(self) -> str:
        """The WSGI spelling of the status (``"200 OK"``)."""
        return _REASONS[self.status]


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


def route_path(path: str, root_path: str) -> str:
    """``path`` below the mount point ``root_path`` (ASGI spells both in full)."""
    if root_path and path.startswith(root_path):
        return path[len(root_path) :] or "/"
    return path


def _media_type_ok(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media_type, _, params = content_type.partition(";")
    media_type = media_type.strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/")
        and media_type.endswith("+json")
        and len(media_type) > len("application/+json")  # a subtype before the suffix
    ):
        return False
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True


def _too_deep(text: str) -> bool:
    if text.count("{") + text.count("[") <= MAX_JSON_DEPTH:
        return False  # cannot nest deeper than it has brackets: the usual case
    depth = 0
    for bracket in _BRACKET.findall(_JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            return True
    return False


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RequestError(f"Request body has a duplicate key: {key[:64]!r}.")
            seen.add(key)
    return result


def _no_constants(name: str) -> Any:
    raise RequestError(f"Request body is not valid JSON: {name} is not allowed.")


def parse_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a :class:`RequestError` (400)."""
    if not body:
        return {}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("Request body is not valid UTF-8.") from None
    if _too_deep(text):
        raise RequestError(f"Request body nests deeper than {MAX_JSON_DEPTH} levels.")
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constants)
    except ValueError as exc:
        raise RequestError(f"Request body is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise RequestError("Request body must be a JSON object.")
    return data


def _json(status: int, payload: object, headers: Iterable[tuple[str, str]]) -> Answer:
    body = compact_json(payload)
    return Answer(
        status,
        [*_JSON_HEADERS, ("Content-Length", str(len(body))), *headers],
        body,
    )


_JSON_HEADERS: Final = (
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
)


def _error(exc: NavaiError, headers: Iterable[tuple[str, str]] = ()) -> Answer:
    return _json(exc.status, {"error": exc.message}, [*exc.headers, *headers])


def _normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


class Endpoint:
    """The token endpoint, configured once; holds no per-request state."""

    def __init__(
        self,
        opts: NavaiVoiceBackendOptions,
        *,
        path: str = DEFAULT_PATH,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        cors_origins: Iterable[str] | None = None,
        cors_allow_credentials: bool = False,
        guard: Guard | None = None,
    ) -> None:
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/'. Received: {path!r}")
        if (
            isinstance(max_body_size, bool)
            or not isinstance(max_body_size, int)
            or max_body_size < 0
        ):
            raise ValueError(
                f"max_body_size must be a non-negative integer. Received: {max_body_size!r}"
            )
        self.opts = opts
        self.path = path.rstrip("/") or "/"
        self.max_body_size = max_body_size
        # Every spelling of the path that is ours (a trailing slash is fine).
        self.paths = frozenset({self.path, self.path + "/"})
        if isinstance(cors_origins, str):  # "https://a.test, https://b.test", as in the env
            cors_origins = cors_origins.split(",")
        origins = (
            None
            if cors_origins is None
            else {_normalize_origin(o) for o in cors_origins if o.strip()}
        )
        self._any_origin = origins is not None and "*" in origins
        self._origins: frozenset[str] | None = None if origins is None else frozenset(origins)
        self._allow = ("Allow", "POST" if origins is None else "POST, OPTIONS")
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
        path: str,
        max_body_size: int,
        cors_origins: Iterable[str] | None,
        cors_allow_credentials: bool | None = None,
        **guard: Any,
    ) -> Endpoint:
        """The middlewares' way in: ``opts=None`` reads the environment, CORS
        origins (``NAVAI_CORS_ORIGIN``) included unless given. The guard's
        keywords (``authorize``, ``rate_limit``...) each come from the
        environment when not given, whatever ``opts`` is."""
        if opts is None:
            opts = get_navai_voice_backend_options_from_env()
            if cors_origins is None:
                cors_origins = get_cors_origins_from_env()
        if cors_allow_credentials is None:
            cors_allow_credentials = read_bool(os.environ, "NAVAI_CORS_ALLOW_CREDENTIALS", False)
        return cls(
            opts,
            path=path,
            max_body_size=max_body_size,
            cors_origins=cors_origins,
            cors_allow_credentials=cors_allow_credentials,
            guard=guard_from_env(api_key=opts.openai_api_key, **guard),
        )

    def owns(self, path: str) -> bool:
        """Whether a request for ``path`` (below the mount point) is ours."""
        return path in self.paths

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

    def _preflight(self, headers: Mapping[str, str], cors: tuple[tuple[str, str], ...]) -> Answer:
        allowed = [
            *(header for header in cors if header is not _EXPOSED),  # for answers only
            ("Access-Control-Allow-Methods", "POST"),
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
    ) -> Answer | BodyWanted:
        """Decide what to do before any of the body is read.

        ``headers`` maps lower-case names to values; ``path`` is below the
        mount point; ``peer`` is the socket peer's address; ``scope`` or
        ``environ`` is handed to an ``authorize`` hook as it is.
        """
        cors = self._cors(headers)
        if cors is None:
            return _error(RequestError("Origin not allowed.", status=403), [("Vary", "Origin")])
        if method == "OPTIONS" and self._origins is not None:
            return self._preflight(headers, cors)
        if method != "POST":
            return _error(
                RequestError("Method not allowed. Use POST.", status=405), [self._allow, *cors]
            )
        raw_length = headers.get("content-length", "").strip()
        declared = None
        if raw_length:
            if _DIGITS.fullmatch(raw_length) is None:
                return _error(RequestError("Invalid Content-Length."), cors)
            declared = int(raw_length)
            if declared > self.max_body_size:
                return self._too_large(cors)
        content_type_ok = _media_type_ok(headers.get("content-type"))
        if declared and not content_type_ok:
            return self._unsupported(cors)
        info = RequestInfo(
            method=method,
            route=ROUTE,
            path=self.path if path is None else path,
            headers=headers,
            client=client_address(peer, headers, self.guard.trusted_proxies),
            scope=scope,
            environ=environ,
        )
        return BodyWanted(
            limit=self.max_body_size,
            declared=declared,
            cors=cors,
            content_type_ok=content_type_ok,
            info=info,
        )

    def _too_large(self, cors: Iterable[tuple[str, str]]) -> Answer:
        message = f"Request body is larger than {self.max_body_size} bytes."
        return _error(RequestError(message, status=413), cors)

    def _unsupported(self, cors: Iterable[tuple[str, str]]) -> Answer:
        message = "Content-Type must be application/json (UTF-8)."
        return _error(RequestError(message, status=415), cors)

    def finish(self, wanted: BodyWanted, body: bytes | None) -> Generator[Any, Any, Answer]:
        """Given the body read, mint a secret: a generator for the shell's driver.

        ``body`` is None when the client sent one the server cannot frame
        (chunked, on a WSGI server that does not end the stream itself).
        """
        cors = wanted.cors
        if body is None:
            return _error(RequestError("Send the request body with a Content-Length."), cors)
        if len(body) > wanted.limit:
            return self._too_large(cors)
        if wanted.declared is not None and len(body) != wanted.declared:
            shape = (
                "incomplete" if len(body) < wanted.declared else "longer than its Content-Length"
            )
            return _error(RequestError(f"Request body is {shape}."), cors)
        if body and not wanted.content_type_ok:
            return self._unsupported(cors)
        try:
            identity, limit_headers = yield from self.guard.check(wanted.info, ROUTE_GROUP)
        except NavaiError as exc:
            return _error(exc, cors)
        answer_headers = (*cors, *limit_headers)
        try:
            request = build_upstream_request(
                self.opts,
                parse_body(body),
                safety_identifier=self.guard.safety_identifier(identity),
            )
            secret = yield from exchange(request, budget=self.opts.upstream_timeout_seconds)
        except RequestError as exc:
            return _error(exc, answer_headers)
        except NavaiError as exc:
            logger.warning("navai_mw: minting a client secret failed: %s", log_safe(exc.message))
            return _error(exc, answer_headers)
        return _json(200, {"value": secret.value, "expires_at": secret.expires_at}, answer_headers)
