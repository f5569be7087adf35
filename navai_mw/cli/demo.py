"""What ``navai-mw demo`` runs against: the fakes, its made-up keys, and the
environment it ignores."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

from ..testing.openai import FakeOpenAIRealtime
from ..testing.upstreams import openai_app
from ..testing.webrtc import FakeRealtimeWebRTC

# The demo's fake upstream accepts this key and no other. It is not a secret
# (it opens nothing), but it is still never printed, like any key.
DEMO_API_KEY: Final = "sk-navai-demo-made-up-key"

DEMO_ELEVENLABS_KEY: Final = "xi-navai-demo-made-up-key"

DEMO_VOICE_ID: Final = "demo-voice"

# What the demo drops from the environment: every credential and every
# upstream's address, so that offline means offline (the session's model,
# voice and instructions still apply).
_DEMO_DROPPED_PREFIXES: Final = ("AZURE_",)

_DEMO_DROPPED: Final = frozenset(
    {
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ELEVENLABS_API_KEY",
        "ELEVENLABS_BASE_URL",
        "NAVAI_TTS_PROVIDER",
    }
)


def demo_model(text: str, tools: Sequence[str]) -> tuple[str, dict[str, Any]] | str | None:
    """The demo's model, typed to from the voice page: it calls the
    server's functions when asked ("what time is it", "spell navai", "add 2
    and 3"), and otherwise says what it heard."""
    words = re.findall(r"[\w.-]+", text.lower())
    numbers = re.findall(r"-?\d+(?:\.\d+)?", text)
    if "time" in words and "get_server_time" in tools:
        return "get_server_time", {}
    if "spell" in words and words[-1] != "spell" and "spell_word" in tools:
        return "spell_word", {"word": text.split()[-1]}
    if len(numbers) >= 2 and "add_numbers" in tools:
        return "add_numbers", {"a": float(numbers[0]), "b": float(numbers[1])}
    return f"(a fake model) I heard: {text}" if text else None


def _demo_fakes() -> tuple[FakeOpenAIRealtime, FakeRealtimeWebRTC | None]:
    """The demo's fakes; no WebRTC one without aiortc (the ``webrtc`` extra)."""
    secrets = FakeOpenAIRealtime(api_key=DEMO_API_KEY)
    try:
        # Any key: the relay sends the demo's, a browser never reaches it.
        return secrets, FakeRealtimeWebRTC(model=demo_model)
    except ImportError:
        return secrets, None


# One home for OpenAI's one host as one app: navai_mw.testing's.
_demo_upstream = openai_app
