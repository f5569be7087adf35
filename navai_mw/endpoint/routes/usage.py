"""``GET /navai/usage``: the caller's own budgets in the current period
(used, reserved by calls in progress, remaining, when each is whole again)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from ..budget_steps import counts_payload, read_counts
from ..route import Call, Reply, Settings


def handle(settings: Settings, call: Call) -> Generator[Any, Any, Reply]:
    counts = yield from read_counts(settings.budgets, call)
    return Reply(200, counts_payload(counts))
