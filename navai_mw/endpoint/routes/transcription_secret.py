"""``POST /navai/realtime/transcription-secret``: a client secret for a
transcription session (``language`` and ``prompt`` from the request)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from ...upstreams.mint import mint_transcription_secret
from ..budget_steps import charge_secret
from ..route import Call, Reply, Settings, mint_for


def handle(settings: Settings, call: Call) -> Generator[Any, Any, Reply]:
    yield from charge_secret(settings.budgets, call)
    secret = yield from mint_for(mint_transcription_secret, settings, call)
    return Reply(200, {"value": secret.value, "expires_at": secret.expires_at})
