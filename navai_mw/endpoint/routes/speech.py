"""``POST /navai/speech/synthesize``: text to audio through ElevenLabs, as
``{"provider", "mimeType", "audioBase64"}``."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from ...upstreams.elevenlabs import synthesize
from ..route import Call, Reply, Settings


def handle(settings: Settings, call: Call) -> Generator[Any, Any, Reply]:
    speech = yield from synthesize(settings.opts, call.body)
    return Reply(200, speech.to_wire())
