"""How bytes reach OpenAI: two one-method protocols and their defaults.

A transport sends an :class:`~navai_mw.HttpRequest` and returns an
:class:`~navai_mw.HttpResponse`. It makes no decisions: retries, the time
budget and the reading of the answer live in the sans-IO core. It reports
failure with built-in exceptions only, so that a transport written on the
standard library needs no navai_mw import to be correct:

* :class:`TimeoutError` when the attempt ran out of time;
* :class:`OSError` (:class:`ConnectionError` and friends) when no answer came.

Each transport holds one pooled client for its lifetime. Close it with
``close()``/``aclose()`` or use it as a context manager. The async default,
:class:`AiohttpTransport`, speaks aiohttp directly (httpx on trio); the sync
one is httpx's. :class:`HttpxAsyncTransport` stays for an ``httpx.AsyncClient``
of one's own (and respx in tests).
"""

from __future__ import annotations

from .core.faces import publish
from .runtime.async_transports import AiohttpTransport, HttpxAsyncTransport
from .runtime.sync_transport import HttpxSyncTransport
from .runtime.transports import DEFAULT_MAX_CONNECTIONS, AsyncTransport, SyncTransport
from .runtime.transports import upstream_connections as upstream_connections

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "AiohttpTransport",
    "AsyncTransport",
    "HttpxAsyncTransport",
    "HttpxSyncTransport",
    "SyncTransport",
]

publish(__name__, globals(), __all__)
