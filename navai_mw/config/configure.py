"""The middlewares' and view handlers' keywords, and the endpoint they make.

:func:`configure_endpoint` is the one place where configuration becomes an
:class:`~navai_mw.endpoint.endpoint.Endpoint`: options from the environment
when none are given, every other navai keyword from its variable when not
given in code, and the backend functions loaded (from their folders unless
given), all at start-up.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from typing_extensions import TypedDict, Unpack

from ..backend_functions.loading import FunctionSource, load_navai_functions
from ..backend_functions.registry import FunctionRegistry
from ..core.envvars import Env, read, read_bool, read_int, read_seconds
from ..core.errors import OptionsError
from ..core.http import RequestInfo
from ..core.options import (
    DEFAULT_MAX_SIDEBANDS,
    NavaiVoiceBackendOptions,
    max_upstream_connections,
)
from ..core.reports import CallReport
from ..core.sip import IncomingCall
from ..core.values import flag, outside
from ..endpoint.endpoint import DEFAULT_FUNCTION_TIMEOUT_SECONDS, Endpoint
from ..guard.authorizers import Authorizer
from ..upstreams.live import DEFAULT_LIVE_MODEL
from ..upstreams.mint import SessionHook
from .env import get_cors_origins_from_env, get_navai_voice_backend_options_from_env, guard_from_env

__all__ = ["RouteOptions", "configure_endpoint", "environment", "upstream_connections_from"]

logger = logging.getLogger("navai_mw")

_GUARD_KEYWORDS = (
    "authorize",
    "rate_limit",
    "rate_limit_storage",
    "rate_limit_fail_open",
    "trusted_proxies",
    "safety_id_secret",
)


class RouteOptions(TypedDict, total=False):
    """The keywords of the middlewares and the view handlers, listed once
    (docs/configuration.md gives each with its default and variable).

    Routes: ``prefix``; ``client_secret_path`` (``path`` is its alias),
    ``transcription_secret_path``, ``calls_path``, ``live_path``,
    ``functions_list_path``, ``functions_execute_path``,
    ``speech_synthesize_path`` (None switches a route off);
    ``include_functions_routes``; ``relay`` (the WebRTC relays, Realtime and
    GPT-Live, with their DELETEs) and ``transcription`` (the
    transcription-secret route), both off unless switched on. Limits: ``max_body_size``,
    ``max_offer_size``, ``max_call_seconds``, ``function_timeout_seconds``.
    Behaviour: ``functions``, ``customize_session``. Browsers:
    ``cors_origins``, ``cors_allow_credentials``. The guard: ``authorize``,
    ``rate_limit``, ``rate_limit_storage``, ``rate_limit_fail_open``,
    ``trusted_proxies``, ``safety_id_secret``. Relayed calls' sideband
    (docs/calls.md): ``sideband``, ``server_functions``, ``pin_session``,
    ``sideband_required``, ``on_call_end``, ``max_sidebands``. Budgets
    (docs/budgets.md): ``budget``, ``budget_fail_open``,
    ``budget_secret_seconds``, ``usage_path``, ``budget_clock`` (UNIX
    seconds, for tests). OpenAI's webhooks (docs/phone.md):
    ``openai_webhook_secret``, ``webhook_path``, ``webhook_dedup_seconds``,
    ``block_seconds``, ``accept_call``, ``sip_accept``, ``on_openai_event``,
    ``webhook_clock`` (UNIX seconds, for tests). ``env``: a mapping read
    instead of ``os.environ`` for every navai variable.
    """

    prefix: str
    client_secret_path: str | None
    path: str | None
    transcription_secret_path: str | None
    calls_path: str | None
    live_path: str | None
    functions_list_path: str | None
    functions_execute_path: str | None
    speech_synthesize_path: str | None
    include_functions_routes: bool
    relay: bool | None
    transcription: bool | None
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
    sideband: bool | None
    server_functions: bool | None
    pin_session: bool | None
    sideband_required: bool | None
    on_call_end: Callable[[CallReport], Any] | None
    max_sidebands: int | None
    budget: str | Mapping[str, str | None] | Callable[[str | None, RequestInfo], str | None] | None
    budget_fail_open: bool | None
    budget_secret_seconds: float | None
    budget_clock: Callable[[], float] | None
    usage_path: str | None
    metrics: bool | None
    openai_webhook_secret: str | None
    webhook_path: str | None
    webhook_dedup_seconds: float | None
    block_seconds: float | None
    accept_call: Callable[[IncomingCall], Any] | None
    sip_accept: str | None
    on_openai_event: Callable[[dict[str, Any]], Any] | None
    webhook_clock: Callable[[], float] | None
    env: Mapping[str, str | None] | None


def environment(env: Env | None) -> Env:
    """Where navai's variables are read: ``env`` when given (it replaces
    ``os.environ`` for every one of them), else ``os.environ``."""
    return os.environ if env is None else env


def upstream_connections_from(env: Env | None, value: int | None) -> int:
    """The transports' connection bound: ``value`` when given, else
    ``NAVAI_MAX_UPSTREAM_CONNECTIONS`` from ``env``, else the default."""
    return max_upstream_connections(value, env=environment(env))


def metrics_from(keywords: Mapping[str, Any]) -> bool:
    """Whether to keep Prometheus metrics: ``metrics``, else
    ``NAVAI_METRICS``, else yes (when prometheus-client is installed)."""
    given = keywords.get("metrics")
    if given is not None:
        return flag(given, "metrics")
    return read_bool(environment(keywords.get("env")), "NAVAI_METRICS", True)


def runtime_options(keywords: Mapping[str, Any]) -> tuple[Callable[[CallReport], Any] | None, int]:
    """What the runtime takes from the keywords: ``on_call_end`` (checked
    callable) and ``max_sidebands`` (else ``NAVAI_MAX_SIDEBANDS``, else
    :data:`DEFAULT_MAX_SIDEBANDS`)."""
    hook = keywords.get("on_call_end")
    if hook is not None and not callable(hook):
        raise OptionsError("on_call_end must be a function taking a CallReport (or None).")
    limit = keywords.get("max_sidebands")
    source = "max_sidebands"
    if limit is None:
        source = "NAVAI_MAX_SIDEBANDS"
        limit = read_int(environment(keywords.get("env")), source, option="max_sidebands")
    if limit is None:
        return hook, DEFAULT_MAX_SIDEBANDS
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise OptionsError(f"{source} must be a positive integer. Received: {limit!r}")
    return hook, limit


def configure_endpoint(
    opts: NavaiVoiceBackendOptions | None, **keywords: Unpack[RouteOptions]
) -> Endpoint:
    """The endpoint for the middlewares' keywords, by one rule: a keyword
    given in code wins; every other navai keyword is read from its
    environment variable, whether or not ``opts`` is given (``opts`` covers
    the options' own fields: ``opts=None`` reads those too); an ``env``
    mapping stands for ``os.environ`` for all of them. Backend functions are
    loaded now (from the module folders unless ``functions`` names them),
    when their routes are on."""
    given: dict[str, Any] = dict(keywords)
    env = environment(given.pop("env", None))
    guard_keywords = {name: given.pop(name) for name in _GUARD_KEYWORDS if name in given}
    if opts is None:
        opts = get_navai_voice_backend_options_from_env(env)
    if given.get("cors_origins") is None:
        given["cors_origins"] = get_cors_origins_from_env(env)
    for keyword, variable in (
        ("relay", "NAVAI_RELAY"),
        ("transcription", "NAVAI_TRANSCRIPTION"),
        ("cors_allow_credentials", "NAVAI_CORS_ALLOW_CREDENTIALS"),
        ("sideband", "NAVAI_SIDEBAND"),
        ("server_functions", "NAVAI_SERVER_FUNCTIONS"),
        ("pin_session", "NAVAI_PIN_SESSION"),
        ("sideband_required", "NAVAI_SIDEBAND_REQUIRED"),
        ("budget_fail_open", "NAVAI_BUDGET_FAIL_OPEN"),
    ):
        if given.get(keyword) is None:
            given[keyword] = read_bool(env, variable, False)
    if given.get("budget") is None:
        given["budget"] = read(env, "NAVAI_BUDGET")
    if given.get("budget_secret_seconds") is None:
        secret_seconds = read_seconds(env, "NAVAI_BUDGET_SECRET_SECONDS", 0.0)
        given["budget_secret_seconds"] = secret_seconds or None
    if given.get("budget") is not None:
        given["budget_clock"] = given.get("budget_clock") or time.time
    _webhooks_from_env(given, env)
    if given.get("max_call_seconds") is None:
        given["max_call_seconds"] = read_seconds(env, "NAVAI_MAX_CALL_SECONDS", 0.0) or None
    if given.get("function_timeout_seconds") is None:
        given["function_timeout_seconds"] = read_seconds(
            env, "NAVAI_FUNCTION_TIMEOUT_SECONDS", DEFAULT_FUNCTION_TIMEOUT_SECONDS
        )
    # The runtime's, not the routes': the views read them.
    given.pop("on_call_end", None)
    given.pop("max_sidebands", None)
    given.pop("metrics", None)
    functions = given.pop("functions", None)
    registry = None
    browser_routes = given.get("include_functions_routes", True) and (
        given.get("functions_list_path", "") is not None
        or given.get("functions_execute_path", "") is not None
    )
    if browser_routes or given["server_functions"]:
        registry = (
            functions
            if isinstance(functions, FunctionRegistry)
            else load_navai_functions(functions, env=env)
        )
    if opts.tts_provider == "elevenlabs" and opts.elevenlabs_api_key is None:
        logger.warning(
            "navai_mw: speech is voiced by ElevenLabs but no ElevenLabs API key is set "
            "(ELEVENLABS_API_KEY): the speech route will answer 400"
        )
    # The safety identifier's secret derives from the server's key.
    guard = guard_from_env(env, api_key=opts.openai_api_key or opts.azure_api_key, **guard_keywords)
    if given.get("budget") is not None and guard.authorize is None:
        logger.warning(
            "navai_mw: budgets are on without authorization: they count per client address, "
            "so callers behind one proxy or NAT share one budget"
        )
    endpoint = Endpoint(opts, guard=guard, functions=registry, **given)
    _warn_of_a_refused_live_model(opts, endpoint)
    return endpoint


def _webhooks_from_env(given: dict[str, Any], env: Env) -> None:
    """OpenAI's webhooks' keywords, each from its variable when not given:
    the signing secret from ``OPENAI_WEBHOOK_SECRET`` (the variable
    openai-python reads), ``NAVAI_SIP_ACCEPT``, ``NAVAI_WEBHOOK_DEDUP_SECONDS``,
    ``NAVAI_BLOCK_SECONDS``."""
    if given.get("openai_webhook_secret") is None:
        given["openai_webhook_secret"] = read(env, "OPENAI_WEBHOOK_SECRET")
    if given.get("sip_accept") is None:
        surface = read(env, "NAVAI_SIP_ACCEPT")
        given["sip_accept"] = surface.lower() if surface is not None else None
    for keyword, variable in (
        ("webhook_dedup_seconds", "NAVAI_WEBHOOK_DEDUP_SECONDS"),
        ("block_seconds", "NAVAI_BLOCK_SECONDS"),
    ):
        if given.get(keyword) is None:
            given[keyword] = read_seconds(env, variable, 0.0) or None
    if given.get("openai_webhook_secret") is not None:
        given["webhook_clock"] = given.get("webhook_clock") or time.time


def _warn_of_a_refused_live_model(opts: NavaiVoiceBackendOptions, endpoint: Endpoint) -> None:
    """A GPT-Live relay whose own model is outside ``allowed_models`` starts
    (a deployment may never use Live), but refuses every request that names
    no allowed model: said once, now."""
    if not any(route.name == "live" for route in endpoint.routes):
        return
    model = opts.live_model or DEFAULT_LIVE_MODEL
    if outside(model, opts.allowed_models):
        logger.warning(
            "navai_mw: live_model %r is not in allowed_models (%s): the GPT-Live relay will "
            "answer 403 unless a request names an allowed model with ?model=",
            model,
            ", ".join(opts.allowed_models or ()),
        )
