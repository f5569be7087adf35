"""The callers OpenAI blocked, from your own code (docs/phone.md): list
them, unblock one (a support ticket settled), or block one yourself.

navai_mw sends OpenAI a safety identifier per caller, a keyed hash of the
caller's identity; when OpenAI blocks one, its ``safety_identifier.blocked``
webhook names that identifier, and navai_mw refuses that caller (403,
``code: "suspended"``) on every route that spends money. The blocked set
holds identifiers only: find a caller's with :func:`identifier_of`::

    from navai_mw.safety import blocked, identifier_of, unblock

    blocked(app)                                  # [BlockedIdentifier(...), ...]
    unblock(app, identifier_of(app, "alice"))     # alice may call again

Each function takes the app navai_mw serves (a middleware, or a view
handler) with OpenAI's webhooks on (``openai_webhook_secret``).
``ablocked``, ``aunblock`` and ``ablock`` are the same, awaited. The set
lives where the app's storage is (``memory://``: that process; Redis:
shared by every worker).
"""

from __future__ import annotations

import time
from typing import Any

from .core.effects import BlockIdentifier
from .core.errors import OptionsError
from .core.faces import publish
from .core.identity import APP_SCHEME, Identity
from .endpoint.endpoint import Endpoint
from .endpoint.webhook_steps import WebhookSettings
from .runtime.webhook_store import BlockedIdentifier, WebhookKeeper

__all__ = [
    "BlockedIdentifier",
    "ablock",
    "ablocked",
    "aunblock",
    "block",
    "blocked",
    "identifier_of",
    "unblock",
]


def _parts(app: Any) -> tuple[Endpoint, WebhookSettings, WebhookKeeper]:
    handler = getattr(app, "handler", app)
    endpoint = getattr(handler, "endpoint", None)
    effects = getattr(handler, "effects", None)
    webhooks = getattr(getattr(endpoint, "settings", None), "webhooks", None)
    if not isinstance(endpoint, Endpoint) or effects is None or webhooks is None:
        raise OptionsError(
            "navai_mw.safety takes a navai_mw middleware or view handler with OpenAI's "
            "webhooks on (openai_webhook_secret)."
        )
    return endpoint, webhooks, effects.webhooks


def identifier_of(app: Any, identity: str, *, scheme: str = APP_SCHEME) -> str:
    """The safety identifier navai_mw sends OpenAI for the caller
    ``identity``, proved by ``scheme`` (``"app"`` for an ``authorize`` hook
    of yours or a view's identity, ``"token"`` for ``bearer_tokens``,
    ``"jwt:{issuer}"`` for ``jwt_bearer``)."""
    endpoint, _, _ = _parts(app)
    identifier = endpoint.guard.safety_identifier(Identity(identity, scheme))
    if identifier is None:
        raise OptionsError(
            "No safety identifier is sent: the server has no key to derive it from "
            "(set openai_api_key, or safety_id_secret)."
        )
    return identifier


def blocked(app: Any) -> list[BlockedIdentifier]:
    """Every identifier blocked now (blocking)."""
    _, _, keeper = _parts(app)
    return keeper.blocked_sync()


async def ablocked(app: Any) -> list[BlockedIdentifier]:
    """:func:`blocked`, awaited."""
    _, _, keeper = _parts(app)
    return await keeper.blocked()


def unblock(app: Any, identifier: str) -> bool:
    """Let the caller behind ``identifier`` in again (blocking); whether it
    was blocked. OpenAI may block them again."""
    _, _, keeper = _parts(app)
    return keeper.unblock_sync(identifier)


async def aunblock(app: Any, identifier: str) -> bool:
    """:func:`unblock`, awaited."""
    _, _, keeper = _parts(app)
    return await keeper.unblock(identifier)


def _blocking(settings: WebhookSettings, identifier: str, category: str) -> BlockIdentifier:
    return BlockIdentifier(identifier, category, time.time(), settings.block_seconds)


def block(app: Any, identifier: str, *, category: str = "manual") -> None:
    """Refuse the caller behind ``identifier`` as if OpenAI had blocked them
    (blocking), for ``block_seconds`` (else until unblocked)."""
    _, settings, keeper = _parts(app)
    keeper.block_sync(_blocking(settings, identifier, category))


async def ablock(app: Any, identifier: str, *, category: str = "manual") -> None:
    """:func:`block`, awaited."""
    _, settings, keeper = _parts(app)
    await keeper.block(_blocking(settings, identifier, category))


publish(__name__, globals(), __all__)
