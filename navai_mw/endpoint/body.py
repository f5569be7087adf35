"""A request body's framing and parse: its declared length, the JSON media
type and SDP's, and one JSON object with no duplicate keys, no NaN and a
bounded nesting."""

from __future__ import annotations

import json
import re
from typing import Any, Final

from ..core.client_requests import NOT_AN_OBJECT
from ..core.errors import RequestError

# The request is one flat object; anything nested this deep is an attack on
# the parser, refused before json.loads can recurse into RecursionError.
MAX_JSON_DEPTH: Final = 32

# A JSON string; an unterminated one runs to the end of the text, so that no
# quote is ever rescanned (a body of backslash-quotes would be quadratic).
_JSON_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"?', re.DOTALL)

_BRACKET: Final = re.compile(r"[\[\]{}]")

_DIGITS: Final = re.compile(r"[0-9]{1,19}")


def declared_length(value: str | None) -> int | None:
    """The Content-Length a client declared: None when it sent none; raises
    a 400 for anything but a plain number."""
    raw = (value or "").strip()
    if not raw:
        return None
    if _DIGITS.fullmatch(raw) is None:
        raise RequestError("Invalid Content-Length.")
    return int(raw)


def json_type_ok(content_type: str | None) -> bool:
    """Whether a body of this type can be JSON: ``application/json`` or
    ``application/<subtype>+json``, in UTF-8."""
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
    """Whether the JSON text nests deeper than :data:`MAX_JSON_DEPTH` (the
    brackets inside strings do not count)."""
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


# One decoder for every request (json.loads with options makes a new one each call).
_DECODER: Final = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constants)


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
        if text.startswith("\ufeff"):  # json.loads' own check, which decode() lacks
            raise ValueError(
                "Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)"
            )
        data = _DECODER.decode(text)
    except ValueError as exc:
        raise RequestError(f"Request body is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise RequestError(NOT_AN_OBJECT)
    return data


def sdp_type_ok(content_type: str | None) -> bool:
    """Whether a body of this type can be an SDP offer."""
    if content_type is None:
        return False
    return content_type.partition(";")[0].strip().lower() == "application/sdp"
