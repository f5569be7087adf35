"""``DELETE /navai/live/sessions/{session_id}``: end a Live session this
server relayed, for the identity that started it (204)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from ..route import Call, Reply, Settings
from .relay_steps import LIVE_PREFIX, end_relayed, owned


def handle(settings: Settings, call: Call) -> Generator[Any, Any, Reply]:
    key = LIVE_PREFIX + call.info.path.rsplit("/", 1)[-1]
    yield from owned(key, call.identity, "session")
    yield from end_relayed(settings, key, "hangup")
    return Reply(204, None, raw=b"", content_type=None)
