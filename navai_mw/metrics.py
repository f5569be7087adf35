"""navai_mw's Prometheus metrics, for your scraper (docs/operating.md).

Mount :func:`asgi_app` or :func:`wsgi_app` where you like, for instance on
an internal port or path (never beside your public routes unless you mean
it)::

    from starlette.routing import Mount
    from navai_mw.metrics import asgi_app

    routes = [Mount("/metrics", app=asgi_app())]

With several worker processes (``PROMETHEUS_MULTIPROC_DIR`` set, as
``navai-mw serve --workers N --metrics-port P`` does), either app sums the
series of every worker. Needs the ``metrics`` extra (``prometheus-client``).
"""

from __future__ import annotations

import os
from typing import Any

from .core.errors import OptionsError

__all__ = ["asgi_app", "registry", "wsgi_app"]


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise OptionsError(
            "navai_mw.metrics needs prometheus-client: pip install 'navai-mw[metrics]'"
        ) from None
    return prometheus_client


def registry() -> Any:
    """The registry to expose: every worker's series summed in multiprocess
    mode, else this process's."""
    prometheus = _prometheus()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        summed = prometheus.CollectorRegistry()
        multiprocess.MultiProcessCollector(summed)  # type: ignore[no-untyped-call]
        return summed
    return prometheus.REGISTRY


def asgi_app() -> Any:
    """An ASGI app answering with the metrics (the text exposition format)."""
    return _prometheus().make_asgi_app(registry=registry())


def wsgi_app() -> Any:
    """A WSGI app answering with the metrics."""
    return _prometheus().make_wsgi_app(registry=registry())
