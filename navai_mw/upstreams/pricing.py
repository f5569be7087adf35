"""What a call cost, at OpenAI's list prices, by the ``genai-prices`` data
bundled with that package (never fetched: navai_mw starts no price update).

A model the data does not know, or usage in a unit a model has no price
for, gives None: a report says "unknown" rather than a guess. Without the
``sideband`` extra (``genai-prices`` is not installed), every cost is None.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ..core.reports import CallUsage

__all__ = ["call_cost"]

_PROVIDER = "openai"


def _price(model: str, **usage: int | float) -> Decimal | None:
    try:
        from genai_prices import Usage, calc_price
    except ImportError:  # the sideband extra: without it, no prices
        return None
    try:
        return calc_price(Usage(**usage), model, provider_id=_PROVIDER).total_price
    except (LookupError, ValueError):
        return None


def call_cost(
    kind: str, model: str, usage: CallUsage, *, transcription_model: str | None = None
) -> float | None:
    """The price of a call's usage in US dollars, or None when any part of
    it cannot be priced (an unknown model, a unit without a price)."""
    parts: list[Decimal | None] = []
    if kind == "live":
        parts.append(_price(model, audio_seconds=usage.seconds) if usage.seconds else Decimal(0))
    else:
        tokens = {
            "input_tokens": usage.input_tokens,
            "input_audio_tokens": usage.input_audio_tokens,
            "cache_read_tokens": usage.input_cached_tokens,
            "cache_audio_read_tokens": usage.input_cached_audio_tokens,
            "output_tokens": usage.output_tokens,
            "output_audio_tokens": usage.output_audio_tokens,
        }
        parts.append(_price(model, **tokens) if any(tokens.values()) else Decimal(0))
        parts.append(_transcription(usage, transcription_model))
    if any(part is None for part in parts):
        return None
    return float(sum(part for part in parts if part is not None))


def _transcription(usage: CallUsage, model: str | None) -> Decimal | None:
    by_tokens: dict[str, Any] = {
        "input_tokens": usage.transcription_input_tokens,
        "input_audio_tokens": usage.transcription_input_tokens,
        "output_tokens": usage.transcription_output_tokens,
    }
    if not usage.transcription_seconds and not any(by_tokens.values()):
        return Decimal(0)
    if model is None:
        return None
    total = Decimal(0)
    if usage.transcription_seconds:
        price = _price(model, audio_seconds=usage.transcription_seconds)
        if price is None:
            return None
        total += price
    if any(by_tokens.values()):
        price = _price(model, **by_tokens)
        if price is None:
            return None
        total += price
    return total
