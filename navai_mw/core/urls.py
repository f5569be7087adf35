"""What an upstream base URL may be: http(s), a host, no credentials, and
parsable by both default transports."""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import httpx
import yarl

from .errors import OptionsError
from .http import is_header_safe


def _clean_base_url(value: str) -> str:
    return value.strip().rstrip("/") if isinstance(value, str) else value


def _clean_optional_url(value: str | None) -> str | None:
    return None if value is None else _clean_base_url(value)


def _check_base_url(_: object, field: attrs.Attribute[Any], value: str) -> None:
    # Checked here, not on the first request: a URL a transport cannot use
    # would otherwise fail every request instead of the deployment. Both
    # default transports' parsers must accept it (httpx's for the sync side,
    # yarl's under aiohttp for the async one).
    # The value is never echoed: a URL may carry credentials.
    invalid = OptionsError(
        f"{field.name} must be an http(s) URL with a host and no query or fragment."
    )
    if not isinstance(value, str) or not is_header_safe(value):
        raise invalid
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
        # Both parse lazily: the host is where a bad name or address shows.
        _ = httpx.URL(value).host, yarl.URL(value).host
    except (ValueError, httpx.InvalidURL):  # "http://[::1", "http://a:port", "http://xn--a"
        raise invalid from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not port_ok
        or "?" in value  # a query or fragment would land in the middle of the
        or "#" in value  # URL once /realtime/client_secrets is appended
    ):
        raise invalid
    if "@" in parts.netloc:
        # httpx would turn it into Basic auth that replaces the Bearer key,
        # aiohttp refuses it beside an Authorization header, and clients log
        # URLs: the key is the only credential sent upstream.
        raise OptionsError(
            f"{field.name} must not carry credentials (user:password@); "
            f"the API key is the credential sent to {_UPSTREAMS[field.name]}."
        )


_UPSTREAMS: Final = {
    "openai_base_url": "OpenAI",
    "elevenlabs_base_url": "ElevenLabs",
    "azure_endpoint": "Azure OpenAI",
}


def websocket_url(url: str) -> str:
    """``url`` with its scheme turned into a WebSocket's: https → wss,
    http → ws (a sideband lives beside the HTTP API it belongs to)."""
    scheme, _, rest = url.partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}"
