"""The HTTP values both sides speak: a request to make, a response received,
the request view hooks see, compact JSON, what a header may hold, and one
value per header name from the lines a client sent."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs

# What a transport reads of an upstream answer when the request names no
# limit; each request the core builds names its own.
DEFAULT_MAX_RESPONSE_BYTES: Final = 1024 * 1024

# An API key goes into an HTTP header: visible ASCII only, so that no key can
# smuggle a header break or make the HTTP client raise while encoding.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")


def is_header_safe(value: str) -> bool:
    return _HEADER_SAFE.fullmatch(value) is not None


# What a server sends as an answer's header: a token for the name, and a
# value without a line break or another control character (in latin-1, as
# ASGI and WSGI encode it).
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE: Final = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def is_answer_header(name: object, value: object) -> bool:
    """Whether a server can send ``name: value`` as it is (what an app's
    hook puts in an error's headers is asked this before it is answered)."""
    return (
        isinstance(name, str)
        and isinstance(value, str)
        and _HEADER_NAME.fullmatch(name) is not None
        and _HEADER_VALUE.fullmatch(value) is not None
    )


# Cookie crumbs are joined with "; " (RFC 9113 8.2.3): a comma inside a
# cookie line is not a separator to any cookie parser.
_JOINERS: Final = {"cookie": "; "}


def joined_headers(lines: Iterable[tuple[str, str]]) -> dict[str, str]:
    """One value per lower-case name from the header lines as sent: lines
    of the same name joined with ``", "`` in their order (RFC 9110 5.3), as
    WSGI servers join them, so that two proxies' ``X-Forwarded-For`` lines
    read as one list, never as the last line alone."""
    headers: dict[str, str] = {}
    for name, value in lines:
        name = name.lower()
        earlier = headers.get(name)
        if earlier is None:
            headers[name] = value
        else:
            headers[name] = f"{earlier}{_JOINERS.get(name, ', ')}{value}"
    return headers


@attrs.frozen(kw_only=True)
class HttpRequest:
    """An HTTP request to make, described without doing any I/O.

    Fields: method, url, headers (name/value pairs), body (bytes),
    max_response_bytes (a transport reads at most one byte more than this of
    the answer's body, then stops: the core refuses anything longer), and
    secret: the credential the headers carry, which no message about this
    request may quote (a transport ignores it). The ``repr`` hides the
    headers and the secret.
    """

    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = attrs.field(repr=False)
    body: bytes
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    secret: str | None = attrs.field(default=None, repr=False)
    # Which upstream it goes to, for metrics and traces: "openai", "azure",
    # "elevenlabs", "jwks".
    upstream: str = "openai"


# A request id a client may send: 1 to 128 visible ASCII characters.
_REQUEST_ID: Final = re.compile(r"[\x21-\x7e]{1,128}")


def checked_request_id(value: str | None) -> str | None:
    """An incoming ``X-Request-ID``, when it is one a log line and a header
    can carry as it is (else None: navai_mw makes its own)."""
    if value is None or _REQUEST_ID.fullmatch(value) is None:
        return None
    return value


@attrs.frozen
class Credential:
    """How an upstream call authenticates: one header, and the secret in it.

    Builders put ``header`` among a request's headers and ``secret`` in its
    ``HttpRequest.secret``, so that redaction knows what to take out without
    reading it back from the headers.
    """

    name: str
    value: str = attrs.field(repr=False)
    secret: str = attrs.field(repr=False)

    @classmethod
    def bearer(cls, token: str) -> Credential:
        """``Authorization: Bearer <token>`` (OpenAI's key, an Entra ID token)."""
        return cls("Authorization", f"Bearer {token}", token)

    @classmethod
    def key_header(cls, name: str, key: str) -> Credential:
        """A key sent as it is in a header of its own (Azure's ``api-key``,
        ElevenLabs' ``xi-api-key``)."""
        return cls(name, key, key)

    @property
    def header(self) -> tuple[str, str]:
        return (self.name, self.value)


@attrs.frozen(kw_only=True)
class HttpResponse:
    """An HTTP response as received: status, headers (lower-case names), body."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


# One encoder for the package: json.dumps builds a new one per call when
# given any option. NaN and the infinities are refused: json.dumps would
# write them, and no JSON parser (OpenAI's, a browser's) reads them.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def compact_json(value: object) -> bytes:
    """``value`` as compact JSON bytes; ASCII escapes keep lone surrogates
    from a client encodable. Raises TypeError for what JSON cannot carry (a
    set, a date), ValueError for NaN, the infinities or a circular
    reference: check what the app gave before it gets here."""
    return _ENCODER.encode(value).encode("ascii")


def _read_only(headers: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(headers))


@attrs.frozen(kw_only=True)
class RequestInfo:
    """What an ``authorize`` hook sees of a request.

    Fields:
        method: the HTTP method (``"POST"``).
        route: the navai route's name (``"client_secret"``).
        path: the path below the mount point.
        headers: request headers, lower-case names, read-only.
        client: the client's address (after trusted proxies), or None.
        scope: the ASGI scope (ASGI only), for ``scope["user"]``,
            ``scope["session"]`` and other framework state.
        environ: the WSGI environ (WSGI only), for a Django or Flask session.
    """

    method: str
    route: str
    path: str
    headers: Mapping[str, str] = attrs.field(converter=_read_only)
    client: str | None = None
    scope: Mapping[str, Any] | None = attrs.field(default=None, repr=False)
    environ: Mapping[str, Any] | None = attrs.field(default=None, repr=False)
