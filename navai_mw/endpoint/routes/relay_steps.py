"""What the WebRTC relays share: the SDP offer and its query overrides,
remembering a relayed call, and asking who owns one."""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qsl

from ...core.client_requests import WIRE_NAMES
from ...core.errors import RequestError

# A browser's offer is a few KiB; 32 KiB leaves room for many candidates.
DEFAULT_MAX_OFFER_SIZE: Final = 32 * 1024


_QUERY_FIELDS: Final = frozenset(WIRE_NAMES.values()) - {"apiKey"}


def check_offer(body: bytes) -> str:
    """The body as an SDP offer's text, or a 400: SDP starts with ``v=0``
    and describes at least one media section."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError("Request body is not an SDP offer: it is not UTF-8 text.") from None
    lines = text.replace("\r\n", "\n").split("\n")
    if lines[0].strip() != "v=0" or not any(line.startswith("m=") for line in lines):
        raise RequestError("Request body is not an SDP offer (v=0 and an m= line).")
    return text


def overrides_from_query(query: str) -> dict[str, str]:
    """The per-request overrides (``?language=Spanish&voice=marin``, wire
    names). ``apiKey`` is refused: URLs end up in access logs."""
    fields: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "apiKey":
            raise RequestError(
                "apiKey is not allowed in a URL (URLs end up in access logs); "
                "the relay uses the server's key."
            )
        if name not in _QUERY_FIELDS:
            raise RequestError(
                f"Unknown query parameter {name[:64]!r}. Allowed: "
                f"{', '.join(sorted(_QUERY_FIELDS))}."
            )
        fields[name] = value
    return fields
