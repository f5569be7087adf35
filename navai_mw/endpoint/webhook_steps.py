"""OpenAI's webhooks in the routes' steps: their settings, made once from
the keywords (docs/phone.md). A caller OpenAI blocked is refused by the
guard (``Guard.suspended``).

The route itself is ``routes/openai_webhook.py``; a ringing phone call's
answer is ``routes/phone_steps.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final, Literal

import attrs

from ..core.errors import OptionsError
from ..core.values import seconds
from ..upstreams.openai_webhooks import signing_key

__all__ = [
    "DEFAULT_DEDUP_SECONDS",
    "WebhookSettings",
    "webhook_settings",
]

# OpenAI redelivers a webhook it did not see answered for up to 72 hours,
# each time signed anew: a delivery is remembered that long by default.
DEFAULT_DEDUP_SECONDS: Final = 72 * 3600.0
# A year bounds every expiry (Redis keeps an expiry in milliseconds).
_MOST_SECONDS: Final = 366 * 86_400.0
Surface = Literal["realtime", "live"]
_SURFACES: Final = ("realtime", "live")


@attrs.frozen(kw_only=True)
class WebhookSettings:
    """The webhook route's configuration.

    Fields: key (the HMAC key of the signing secret), clock (UNIX seconds,
    read through an effect), dedup_seconds (how long a delivery is
    remembered), block_seconds (how long a blocked identifier stays
    blocked; None: until unblocked), accept_call (the app's hook, or None),
    sip_accept (the surface phone calls are answered on when no hook
    decides, or None), on_event (the app's hook for other events, or None).
    """

    key: bytes = attrs.field(repr=False)
    clock: Callable[[], float] = attrs.field(repr=False)
    dedup_seconds: float = DEFAULT_DEDUP_SECONDS
    block_seconds: float | None = None
    accept_call: Callable[..., Any] | None = None
    sip_accept: Surface | None = None
    on_event: Callable[..., Any] | None = None

    @property
    def surface(self) -> Surface:
        """The surface a ringing call is answered on: ``sip_accept``, else
        Realtime's (the other one's event for the call is acknowledged and
        left alone, so that one call is answered once)."""
        return self.sip_accept or "realtime"

    @property
    def answers_calls(self) -> bool:
        """Whether a ringing call may be accepted (else each is refused)."""
        return self.accept_call is not None or self.sip_accept is not None


def _hook(value: object, name: str) -> Callable[..., Any] | None:
    if value is not None and not callable(value):
        raise OptionsError(f"{name} must be a function (or None).")
    return value


def webhook_settings(
    secret: object,
    *,
    dedup_seconds: object,
    block_seconds: object,
    accept_call: object,
    sip_accept: object,
    on_openai_event: object,
    clock: Callable[[], float] | None,
) -> WebhookSettings | None:
    """The webhook route's settings (None: no signing secret, no route).
    Every other keyword needs the secret: a hook that could never be
    called is a deployment mistake, said at start-up."""
    if secret is None:
        given = [
            name
            for name, value in (
                ("accept_call", accept_call),
                ("sip_accept", sip_accept),
                ("on_openai_event", on_openai_event),
            )
            if value is not None
        ]
        if given:
            raise OptionsError(
                f"{', '.join(given)} needs OpenAI's webhooks: set openai_webhook_secret "
                "(OPENAI_WEBHOOK_SECRET), the signing secret of the project's webhook."
            )
        return None
    if not isinstance(secret, str):
        raise OptionsError("openai_webhook_secret must be a string.")
    if sip_accept is not None and sip_accept not in _SURFACES:
        raise OptionsError(
            f"sip_accept must be 'realtime' or 'live' (or None). Received: {sip_accept!r}"
        )
    if clock is None:
        raise OptionsError("the webhook route needs a clock (UNIX seconds).")
    return WebhookSettings(
        key=signing_key(secret.strip()),
        clock=clock,
        dedup_seconds=seconds(
            DEFAULT_DEDUP_SECONDS if dedup_seconds is None else dedup_seconds,
            "webhook_dedup_seconds",
            most=_MOST_SECONDS,
            most_text="a year",
        ),
        block_seconds=None
        if block_seconds is None or (isinstance(block_seconds, float) and math.isinf(block_seconds))
        else seconds(block_seconds, "block_seconds", most=_MOST_SECONDS, most_text="a year"),
        accept_call=_hook(accept_call, "accept_call"),
        sip_accept=sip_accept,
        on_event=_hook(on_openai_event, "on_openai_event"),
    )
