"""What ``navai-mw serve`` and ``demo`` print: where they listen, the
configuration in effect (never a key), the functions, a ``curl`` line."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final

from ..backend_functions.registry import FunctionRegistry
from ..config.env import AZURE_WINS_WARNING
from ..core.options import (
    DEFAULT_INSTRUCTIONS,
    DEFAULT_MODEL,
    DEFAULT_VOICE,
    NavaiVoiceBackendOptions,
)
from ..core.storage import shown_url
from ..endpoint.route import SidebandSettings
from ..guard.guard import Guard
from .site import HEALTH_PATH

# Instructions can run to paragraphs; the banner shows their start.
_SHOWN_CHARS: Final = 60

WEBRTC_MISSING: Final = (
    "aiortc is missing, so the voice page's calls get no answer from the fake (client "
    "secrets still work): pip install -e '.[demo]'"
)

_FAILED: Final = "[navai] Failed to load "


def _describe_functions(registry: FunctionRegistry) -> str:
    count = len(registry.ordered)
    lines = [f"{count} backend function{'' if count == 1 else 's'}"]
    lines += [
        f"  {item.name:<24} {_short(item.description)}  ({item.source})"
        for item in registry.ordered
    ]
    if registry.warnings:
        lines += ["", "warnings:", *(f"  {warning}" for warning in registry.warnings)]
    return "\n".join(lines)


def _functions_banner(base: str, registry: FunctionRegistry) -> str:
    return "\n".join(
        [
            f"Backend functions (GET {base}/navai/functions, POST {base}/navai/functions/execute):",
            *(f"  {line}" for line in _describe_functions(registry).splitlines()),
            "",
        ]
    )


def _origin(host: str, port: int, *, local: bool) -> str:
    # `local` gives an address a client on this machine can use, also when
    # the server listens on every interface.
    if local and host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif local and host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _key_policy(opts: NavaiVoiceBackendOptions, *, demo: bool) -> str:
    if opts.uses_azure:
        how = "api-key" if opts.azure_api_key is not None else "an Entra ID token provider"
        return f"Azure OpenAI with {how}; keys from requests: never sent to Azure"
    if demo:
        return "a made-up demo key, accepted only by the fake; keys from requests: ignored"
    if opts.openai_api_key is not None:
        return "server key set; keys from requests: ignored (the server key always wins)"
    return "no server key; keys from requests: required (each request sends apiKey)"


def _with_default(value: str | None, default: str) -> str:
    return value if value is not None else f"{default} (built-in default)"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _session_policy(opts: NavaiVoiceBackendOptions) -> str:
    if not opts.session:
        return "navai's fields only (set OPENAI_REALTIME_SESSION for tools, VAD...)"
    return "template with " + ", ".join(sorted(opts.session))


def _speech_policy(base: str, opts: NavaiVoiceBackendOptions, *, demo: bool) -> str:
    if opts.tts_provider != "elevenlabs":
        return "OpenAI voices the session (set NAVAI_TTS_PROVIDER=elevenlabs for ElevenLabs)"
    where = "a fake ElevenLabs on loopback" if demo else opts.elevenlabs_base_url
    return f"ElevenLabs ({where}): POST {base}/navai/speech/synthesize"


def _cors_policy(origins: Sequence[str] | None) -> str:
    if origins is None:
        return "off (no CORS headers: same-origin pages and non-browser clients only)"
    if "*" in origins:
        return "any origin (*)"
    return ", ".join(origins) if origins else "none (cross-origin requests refused)"


UNGUARDED_WARNING: Final = (
    "a real OpenAI key is served with no authorization and no rate limit: anyone who "
    "can reach this port mints secrets and starts calls on your account. Set "
    "NAVAI_AUTH_TOKENS or NAVAI_AUTH_JWKS_URL, and NAVAI_RATE_LIMIT."
)


def _unguarded(opts: NavaiVoiceBackendOptions, guard: Guard, *, demo: bool) -> bool:
    has_credential = opts.openai_api_key is not None or opts.uses_azure
    return not demo and has_credential and not guard.active


def _auth_policy(guard: Guard) -> str:
    if guard.authorize is None:
        return "none (anyone who reaches the endpoint may mint)"
    return type(guard.authorize).__name__


def _limit_policy(guard: Guard) -> str:
    if not guard.limits:
        return "none"
    limits = "; ".join(f"{group} {policy.text}" for group, policy in guard.limits.items())
    storage = shown_url(guard.storage_uri)
    fail = "open" if guard.fail_open else "closed"
    return f"{limits} (storage {storage}, fails {fail})"


def _budget_policy(budgets: Any) -> str:
    """The calls' budget, as the banner says it."""
    if budgets is None:
        return "none (NAVAI_BUDGET, e.g. 10 minutes/day)"
    policy = budgets.policy
    if policy.hook is not None:
        said = "the app's hook decides per caller"
    elif policy.default is not None:
        said = "; ".join(limit.text for limit in policy.default) + " per caller"
    else:
        said = "per caller, as listed"
    store = "lets calls start" if budgets.fail_open else "refuses calls"
    return f"{said} (the storage down: {store})"


def _curl_command(url: str, *, needs_api_key: bool) -> str:
    """A shell line that mints a token at ``url``."""
    body = '{"apiKey": "YOUR_OPENAI_API_KEY"}' if needs_api_key else "{}"
    return shlex.join(
        ["curl", "-sS", "-X", "POST", url, "-H", "Content-Type: application/json", "-d", body]
    )


def _banner(
    host: str,
    port: int,
    token_path: str,
    opts: NavaiVoiceBackendOptions,
    cors: Sequence[str] | None,
    guard: Guard,
    functions: FunctionRegistry,
    *,
    demo: bool,
    page: bool = False,
    webrtc: bool = True,
    routes: Mapping[str, str] | None = None,
    sideband: SidebandSettings | None = None,
    budgets: Any = None,
) -> str:
    base = _origin(host, port, local=True)
    routes = routes or {}
    # The relays, when the middleware has them: an SDP offer in, an answer out.
    calls, live = routes.get("calls"), routes.get("live")
    transcription = routes.get("transcription_secret")
    usage, webhook = routes.get("usage"), routes.get("openai_webhook")
    settings = [
        ("voice page", f"{base}/ (open it in a browser, press Start)" if page else None),
        ("token endpoint", f"POST {base}{token_path}"),
        (
            "WebRTC calls",
            f"POST {base}{calls} (Realtime; DELETE its Location)"
            if calls
            else "off (NAVAI_RELAY=true, or serve --page)",
        ),
        ("GPT-Live", f"POST {base}{live} (over WebRTC; DELETE its Location)" if live else None),
        ("sideband", _sideband_policy(sideband) if calls or live else None),
        (
            "transcription",
            f"POST {base}{transcription}" if transcription else "off (NAVAI_TRANSCRIPTION=true)",
        ),
        ("budget", _budget_policy(budgets) if calls or live else None),
        ("usage", f"GET {base}{usage} (the caller's own budget)" if usage else None),
        (
            "webhooks",
            f"POST {base}{webhook} (OpenAI's, signed: phone calls, blocked users)"
            if webhook
            else "off (OPENAI_WEBHOOK_SECRET)",
        ),
        ("health", f"GET {base}{HEALTH_PATH}"),
        # Never credentials: the options refuse them in either URL.
        ("upstream", opts.azure_endpoint or opts.openai_base_url),
        ("API key", _key_policy(opts, demo=demo)),
        ("model", _with_default(opts.default_model, DEFAULT_MODEL)),
        ("voice", _with_default(opts.default_voice, DEFAULT_VOICE)),
        ("instructions", _short(_with_default(opts.default_instructions, DEFAULT_INSTRUCTIONS))),
        ("language", opts.default_language),
        ("voice accent", opts.default_voice_accent),
        ("voice tone", opts.default_voice_tone),
        ("secret TTL", f"{opts.client_secret_ttl_seconds} s"),
        ("session", _session_policy(opts)),
        ("speech", _speech_policy(base, opts, demo=demo)),
        ("CORS origins", _cors_policy(cors)),
        ("authorization", _auth_policy(guard)),
        ("rate limit", _limit_policy(guard)),
        ("trusted proxies", ", ".join(map(str, guard.trusted_proxies)) or "none"),
    ]
    needs_api_key = opts.openai_api_key is None
    lines = [
        f"{PROG} {'demo' if demo else 'serve'}: listening on {_origin(host, port, local=False)}"
    ]
    if demo:
        lines += [
            "",
            "DEMO MODE: the upstream is a fake OpenAI on loopback. Its tokens start with",
            "ek_fake_ and work nowhere, and its calls answer with silence. For real ones,",
            "and a real conversation on the page: OPENAI_API_KEY=... navai-mw serve --page",
        ]
        if not webrtc:
            lines += ["", f"NOTE: {WEBRTC_MISSING}."]
    lines += ["", *(f"  {name:<15} {value}" for name, value in settings if value is not None)]
    if _unguarded(opts, guard, demo=demo):
        lines += ["", f"WARNING: {UNGUARDED_WARNING}"]
    if not demo and opts.uses_azure and os.environ.get("OPENAI_API_KEY", "").strip():
        lines += ["", f"NOTE: {AZURE_WINS_WARNING}."]
    lines += ["", _functions_banner(base, functions)]
    lines += [
        "Mint a token:",
        "  " + _curl_command(f"{base}{token_path}", needs_api_key=needs_api_key),
    ]
    if needs_api_key:
        lines.append("  (put your OpenAI API key in place of YOUR_OPENAI_API_KEY)")
    lines += ["", "Press Ctrl-C to stop."]
    return "\n".join(lines)


def _sideband_policy(sideband: SidebandSettings | None) -> str:
    if sideband is None:
        return "off: the server does not see its calls (NAVAI_SIDEBAND=true)"
    parts = ["on: every call is reported when it ends"]
    if sideband.server_functions:
        parts.append("the model's function calls run here")
    if sideband.pin_session:
        parts.append("the session is pinned")
    if sideband.required:
        parts.append("required")
    return "; ".join(parts)


PROG: Final = "navai-mw"


def _fail(message: str) -> int:
    print(f"{PROG}: error: {' '.join(message.splitlines())}", file=sys.stderr)
    return 2
