"""``GET /navai/functions``: the backend functions loaded at start-up, and
what went wrong loading them."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from ..route import Call, Reply, Settings


def handle(settings: Settings, call: Call) -> Generator[Any, Any, Reply]:
    registry = settings.functions
    items = [
        {"name": item.name, "description": item.description, "source": item.source}
        for item in registry.ordered
    ]
    return Reply(200, {"items": items, "warnings": list(registry.warnings)})
    yield  # a generator, as every handler is  # pragma: no cover
