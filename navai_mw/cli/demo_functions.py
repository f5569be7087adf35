"""The backend functions ``navai-mw demo`` serves, so that a voice page's
tools work offline. Each is a small, deterministic example of one payload
convention."""

from __future__ import annotations

import datetime

from ..backend_functions.registry import FunctionContext, NavaiFunctionError

__all__ = [
    "add_numbers",
    "get_server_time",
    "spell_word",
]


def add_numbers(a: float, b: float) -> float:
    """Add two numbers: payload {"a": 2, "b": 3} or {"args": [2, 3]}."""
    return a + b


def get_server_time(context: FunctionContext) -> dict[str, str | None]:
    """Tell the server's time (UTC) and who asked."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return {"utc": now.isoformat(), "caller": context.identity or context.client}


def spell_word(word: str) -> str:
    """Spell a word letter by letter: payload {"value": "navai"}."""
    if not isinstance(word, str) or not word.strip():
        raise NavaiFunctionError("Give a word to spell.")
    return "-".join(word.strip().upper())
