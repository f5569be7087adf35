"""``DELETE /navai/realtime/calls/{call_id}``: hang up a call this server
relayed, for the identity that started it (204)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from ..route import Call, Reply, Settings
from .relay_steps import end_relayed, owned


def handle(settings: Settings, call: Call) -> Generator[Any, Any, Reply]:
    call_id = call.info.path.rsplit("/", 1)[-1]
    yield from owned(call_id, call.identity, "call")
    yield from end_relayed(settings, call_id, "hangup")
    return Reply(204, None, raw=b"", content_type=None)
