"""``GET /navai/usage``: the caller's own budgets in the current period
(used, reserved by calls in progress, remaining, when each is whole again);
none without a budget. It comes with the relay, whose calls budgets meter."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from ..budget_steps import counts_payload, read_counts
from ..route import Call, Reply, Settings


def handle(settings: Settings, call: Call) -> Generator[Any, Any, Reply]:
    if settings.budgets is None:
        return Reply(200, {"budgets": []})
    counts = yield from read_counts(settings.budgets, call)
    return Reply(200, counts_payload(counts))
