"""What navai_mw tells an operator: Prometheus metrics, OpenTelemetry
spans, and the request id in every log line (docs/operating.md).

Metrics (``prometheus-client``, the ``metrics`` extra) are kept when it is
installed and ``metrics`` is not switched off; in multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR`` set, as ``navai-mw serve --workers N`` does)
every worker writes its own files and a scrape sums them. Spans
(``opentelemetry-api``, optional) go to whatever tracer provider the app
set up; without one they cost next to nothing. No metric label and no span
attribute ever holds an identity, an address, a key, a token or a body.

The shells call :meth:`Observer.request` around each navai request; the
drivers :meth:`Observer.attempt` around each upstream attempt; the
performers and the sidebands report functions, calls and their sidebands.
Nothing here decides anything: it counts what was decided.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import secrets
import time
from collections.abc import Mapping
from typing import Any, Final

from ..core.http import HttpRequest, HttpResponse, checked_request_id
from ..core.reports import CallReport

__all__ = ["NOOP", "Observer", "new_request_id"]

logger = logging.getLogger("navai_mw")

# The request being served on this task or thread, for the log lines.
_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "navai_request_id", default=None
)
# Seconds: a request, an upstream attempt, a function, a call.
_LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_CALL_BUCKETS: Final = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)


def new_request_id() -> str:
    """A fresh request id: 32 random hex characters."""
    return secrets.token_hex(16)


class _RequestIdFilter(logging.Filter):
    """Adds the request being served to every navai_mw log line about it."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = _REQUEST_ID.get()
        if request_id is not None and not getattr(record, "navai_request_id", None):
            record.navai_request_id = request_id
            record.msg = f"{record.msg} [request {request_id}]"
        return True


_FILTER = _RequestIdFilter()
if not any(isinstance(f, _RequestIdFilter) for f in logger.filters):
    logger.addFilter(_FILTER)


class _Metrics:
    """The Prometheus series (one set per process: prometheus-client's
    registry is the process's)."""

    _made: _Metrics | None = None

    def __init__(self) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter(
            "navai_requests", "navai requests answered, by route and status", ["route", "status"]
        )
        self.request_seconds = Histogram(
            "navai_request_duration_seconds",
            "Time to answer a navai request, by route",
            ["route"],
            buckets=_LATENCY_BUCKETS,
        )
        self.upstream = Counter(
            "navai_upstream_requests",
            "Upstream attempts, by upstream and outcome (a status, timeout, or error)",
            ["upstream", "outcome"],
        )
        self.upstream_seconds = Histogram(
            "navai_upstream_request_duration_seconds",
            "Time of an upstream attempt, by upstream and outcome",
            ["upstream", "outcome"],
            buckets=_LATENCY_BUCKETS,
        )
        self.guard = Counter(
            "navai_guard_decisions",
            "What the guard decided, by route group and outcome",
            ["group", "outcome"],
        )
        self.mints = Counter("navai_mints", "Client secrets minted, by kind", ["kind"])
        self.calls_started = Counter(
            "navai_calls_started", "Relayed calls started, by kind", ["kind"]
        )
        self.calls_active = Gauge(
            "navai_calls_active",
            "Relayed calls with their sideband held now",
            multiprocess_mode="livesum",
        )
        self.calls_ended = Counter(
            "navai_calls_ended", "Calls reported ended, by end reason", ["reason"]
        )
        self.call_seconds = Histogram(
            "navai_call_duration_seconds", "How long reported calls lasted", buckets=_CALL_BUCKETS
        )
        self.sidebands = Gauge(
            "navai_sidebands_connected",
            "Sideband WebSockets open now",
            multiprocess_mode="livesum",
        )
        self.sideband_events = Counter(
            "navai_sideband_events",
            "Events read on sidebands, by family (the type's first word)",
            ["family"],
        )
        self.reverts = Counter(
            "navai_session_reverts", "Changes to a pinned session that the server reverted"
        )
        self.tokens = Counter(
            "navai_tokens",
            "Tokens reported by calls, by direction and modality",
            ["direction", "modality"],
        )
        self.cost = Counter("navai_cost_usd", "What reported calls cost, at list prices (USD)")
        self.functions = Counter(
            "navai_function_calls",
            "Backend function calls, by function and outcome",
            ["function", "outcome"],
        )
        self.function_seconds = Histogram(
            "navai_function_duration_seconds",
            "Time of a backend function call, by function",
            ["function"],
            buckets=_LATENCY_BUCKETS,
        )
        self.webhooks = Counter(
            "navai_webhooks",
            "OpenAI webhooks received, by event type and what became of them",
            ["type", "outcome"],
        )

    def of(self, metric: Any, *labels: str) -> Any:
        """``metric``'s child for ``labels``, looked up once (prometheus-client
        checks and locks on every ``labels()``; every label here has few values)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    @classmethod
    def get(cls) -> _Metrics | None:
        """The process's series, made once (None without prometheus-client)."""
        if cls._made is None:
            try:
                cls._made = cls()
            except ImportError:
                return None
        return cls._made


def _tracer() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace.get_tracer("navai_mw")


def _tracing_on() -> bool:
    """Whether the app installed a tracer provider (an SDK): with the API
    alone every span is a no-op, and not starting one saves its cost.
    Once installed, a provider stays (OpenTelemetry sets it once)."""
    global _TRACING
    if _TRACING:
        return True
    if _otel_trace is None:
        return False
    # The API's own global, read without get_tracer_provider()'s look into
    # the environment on every request; that look only when it is needed.
    if getattr(_otel_trace, "_TRACER_PROVIDER", None) is None and not _PROVIDER_FROM_ENV:
        return False
    _TRACING = not isinstance(_otel_trace.get_tracer_provider(), _NO_PROVIDERS)
    return _TRACING


_TRACING = False
try:
    from opentelemetry import trace as _otel_trace
    from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider

    _NO_PROVIDERS: tuple[type, ...] = (NoOpTracerProvider, ProxyTracerProvider)
except ImportError:
    _otel_trace = None  # type: ignore[assignment]
    _NO_PROVIDERS = ()
# A provider named by the environment is made on first use.
_PROVIDER_FROM_ENV: Final = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


# A webhook refused before its signature held: why, by status.
_REFUSED: Final = {400: "malformed", 401: "unsigned", 413: "too_large"}


class Observer:
    """One handler's metrics and traces (``metrics=False``: no metrics)."""

    def __init__(self, *, metrics: bool = True) -> None:
        self.metrics = _Metrics.get() if metrics else None
        self.tracer = _tracer()

    # -- a navai request --------------------------------------------------------------

    def request(self, method: str, headers: object) -> _Seen:
        """Around one navai request (a context manager): its id (the
        client's ``X-Request-ID`` when it is one to keep, else a new one)
        in the log lines, its span (a child of the caller's trace, when one
        came), its time."""
        incoming = None
        if isinstance(headers, Mapping):
            incoming = headers.get("x-request-id") or headers.get("X-Request-ID")
        span_scope = None
        if self.tracer is not None and _tracing_on():
            span_scope = self._request_span(method, headers)
        return _Seen(checked_request_id(incoming) or new_request_id(), span_scope)

    def _request_span(self, method: str, headers: object) -> Any:
        from opentelemetry import context, propagate, trace

        parent = None
        if not trace.get_current_span().get_span_context().is_valid:
            # The caller's trace, from its headers (any case, any shape).
            pairs = headers.items() if isinstance(headers, Mapping) else headers
            carrier = {str(k).lower(): str(v) for k, v in pairs}  # type: ignore[attr-defined]
            parent = propagate.extract(carrier)
        return self.tracer.start_as_current_span(
            f"navai {method}",
            context=parent if parent is not None else context.get_current(),
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method},
        )

    def answered(self, seen: _Seen, answer: Any) -> None:
        """The request's answer (a navai :class:`Answer`): counted, and set
        on its span."""
        seconds = time.perf_counter() - seen.started
        route = answer.route or "unknown"
        status = str(answer.status)
        span = seen.span
        if span is not None:
            span.update_name(f"navai {route}")
            span.set_attribute("http.response.status_code", answer.status)
            span.set_attribute("navai.route", route)
            span.set_attribute("navai.request_id", seen.request_id)
            if answer.status >= 500:
                from opentelemetry.trace import Status, StatusCode

                span.set_status(Status(StatusCode.ERROR))
        metrics = self.metrics
        if metrics is None:
            return
        metrics.of(metrics.requests, route, status).inc()
        metrics.of(metrics.request_seconds, route).observe(seconds)
        if answer.guard:
            metrics.of(metrics.guard, answer.group, answer.guard).inc()
        if answer.status == 200 and route in ("client_secret", "transcription_secret"):
            metrics.of(
                metrics.mints, "realtime" if route == "client_secret" else "transcription"
            ).inc()
        if answer.status == 201 and route in ("calls", "live"):
            metrics.of(metrics.calls_started, "realtime" if route == "calls" else "live").inc()
        if route == "openai_webhook":
            kind, outcome = answer.webhook or ("unknown", _REFUSED.get(answer.status, "refused"))
            metrics.of(metrics.webhooks, kind, outcome).inc()

    # -- an upstream attempt ------------------------------------------------------------

    def attempt(self, request: HttpRequest) -> _Attempt:
        """Around one upstream attempt (a context manager): its span (HTTP
        client conventions: the method, the URL without its query, the
        status) and its time."""
        span_scope = None
        if self.tracer is not None and _tracing_on():
            from opentelemetry import trace

            span_scope = self.tracer.start_as_current_span(
                request.method,
                kind=trace.SpanKind.CLIENT,
                attributes={
                    "http.request.method": request.method,
                    "url.full": request.url.split("?", 1)[0],
                    "navai.upstream": request.upstream,
                },
            )
        return _Attempt(self, request, span_scope)

    def _attempted(
        self, request: HttpRequest, attempt: _Attempt, seconds: float, span: Any
    ) -> None:
        response = attempt.response
        outcome = (
            str(response.status)
            if response is not None
            else ("timeout" if attempt.timed_out else "error")
        )
        upstream_id = _upstream_request_id(response)
        if span is not None:
            if response is not None:
                span.set_attribute("http.response.status_code", response.status)
            else:
                span.set_attribute("error.type", outcome)
            if upstream_id is not None:
                span.set_attribute("openai.request_id", upstream_id)
        if response is not None and response.status >= 400:
            logger.info(
                "navai_mw: %s %s answered %s%s",
                request.upstream,
                request.method,
                response.status,
                f" (its request id {upstream_id})" if upstream_id else "",
            )
        if self.metrics is not None:
            self.metrics.of(self.metrics.upstream, request.upstream, outcome).inc()
            self.metrics.of(self.metrics.upstream_seconds, request.upstream, outcome).observe(
                seconds
            )

    # -- functions, calls, sidebands ---------------------------------------------------

    def span(self, name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
        """A span around some work of navai_mw's (None without a tracer)."""
        if self.tracer is None or not _tracing_on():
            return contextlib.nullcontext()
        return self.tracer.start_as_current_span(name, attributes=attributes)  # type: ignore[no-any-return]

    def function_span(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """The span of one backend function call."""
        return self.span(f"navai function {name}", **{"navai.function": name})

    def function(self, name: str, outcome: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.of(self.metrics.functions, name, outcome).inc()
            self.metrics.of(self.metrics.function_seconds, name).observe(seconds)

    def sideband(self, change: int) -> None:
        """A sideband opened (+1) or closed (-1)."""
        if self.metrics is not None:
            self.metrics.sidebands.inc(change)

    def call_held(self, change: int) -> None:
        """A call's sideband began (+1) or its call was reported (-1)."""
        if self.metrics is not None:
            self.metrics.calls_active.inc(change)

    def sideband_event(self, data: str | bytes) -> None:
        if self.metrics is None:
            return
        text = data if isinstance(data, str) else data[:64].decode("utf-8", "replace")
        at = text.find('"type"')
        family = "other"
        if 0 <= at < 200:
            start = text.find('"', text.find(":", at) + 1)
            end = text.find('"', start + 1)
            if start != -1 and end != -1:
                family = text[start + 1 : end].split(".", 1)[0][:32] or "other"
        if family not in _FAMILIES:
            family = "other"
        self.metrics.of(self.metrics.sideband_events, family).inc()

    def reverts(self, count: int) -> None:
        if self.metrics is not None and count:
            self.metrics.reverts.inc(count)

    def call_reported(self, report: CallReport, span: Any = None) -> None:
        """A call is over: its end, length, tokens and cost (on its span too,
        in GenAI's conventions)."""
        if span is not None:
            span.set_attribute("gen_ai.usage.input_tokens", report.usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", report.usage.output_tokens)
            span.set_attribute("navai.end_reason", report.end_reason)
            span.set_attribute("navai.metered", report.metered)
        if self.metrics is None:
            return
        metrics = self.metrics
        metrics.of(metrics.calls_ended, report.end_reason).inc()
        metrics.call_seconds.observe(report.seconds)
        usage = report.usage
        for direction, modality, value in (
            ("input", "text", usage.input_text_tokens),
            ("input", "audio", usage.input_audio_tokens),
            ("output", "text", usage.output_text_tokens),
            ("output", "audio", usage.output_audio_tokens),
            ("input", "transcription", usage.transcription_input_tokens),
            ("output", "transcription", usage.transcription_output_tokens),
        ):
            if value:
                metrics.of(metrics.tokens, direction, modality).inc(value)
        if report.cost_usd:
            metrics.cost.inc(report.cost_usd)

    def close(self) -> None:
        """This process is stopping: in multiprocess mode, its live gauges
        leave the sums."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if self.metrics is not None and directory:
            from prometheus_client import multiprocess

            with contextlib.suppress(OSError):
                multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


# The event families a sideband carries (anything else counts as "other":
# a label's values stay few whatever an upstream sends).
_FAMILIES: Final = frozenset(
    {"session", "response", "conversation", "input_audio_buffer", "error", "rate_limits", "other"}
)


class _Seen:
    """One request as the observer sees it: a context manager (a class, not
    a generator: it runs on every request)."""

    __slots__ = ("_scope", "_token", "request_id", "span", "started")

    def __init__(self, request_id: str, span_scope: Any = None) -> None:
        self.request_id = request_id
        self.started = time.perf_counter()
        self.span: Any = None
        self._scope = span_scope
        self._token: Any = None

    def __enter__(self) -> _Seen:
        self._token = _REQUEST_ID.set(self.request_id)
        if self._scope is not None:
            try:
                self.span = self._scope.__enter__()
            except BaseException:
                _REQUEST_ID.reset(self._token)
                raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._scope is not None:
                self._scope.__exit__(*exc)
        finally:
            _REQUEST_ID.reset(self._token)


class _Attempt:
    """One upstream attempt as the observer sees it (a context manager;
    with no observer, one that records nothing)."""

    __slots__ = ("_observer", "_request", "_scope", "_span", "_started", "response", "timed_out")

    def __init__(
        self,
        observer: Observer | None = None,
        request: HttpRequest | None = None,
        span_scope: Any = None,
    ) -> None:
        self.response: HttpResponse | None = None
        self.timed_out = False
        self._observer = observer
        self._request = request
        self._scope = span_scope
        self._span: Any = None
        self._started = 0.0

    def __enter__(self) -> _Attempt:
        if self._scope is not None:
            self._span = self._scope.__enter__()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        observer, request = self._observer, self._request
        try:
            if observer is not None and request is not None:
                seconds = time.perf_counter() - self._started
                observer._attempted(request, self, seconds, self._span)
        finally:
            if self._scope is not None:
                self._scope.__exit__(*exc)


def _upstream_request_id(response: HttpResponse | None) -> str | None:
    """OpenAI's own id of the request (``x-request-id``), to quote to its support."""
    if response is None:
        return None
    for name, value in response.headers:
        if name.lower() == "x-request-id" and 0 < len(value) <= 128 and value.isprintable():
            return value
    return None


# An observer that records nothing: for code given none.
NOOP: Final = Observer(metrics=False)
