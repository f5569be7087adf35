"""Regression tests for the second adversarial review, on what an upstream
or the server's own Azure token provider does: each ran on both shells
under real servers (uvicorn and waitress) where it applies, and failed
before its fix."""

from __future__ import annotations

import httpx
import pytest

from navai_mw import NavaiVoiceBackendOptions
from navai_mw.core.exchange import redact
from navai_mw.testing import FakeElevenLabs, FakeOpenAIRealtime

from .conftest import CANARY_KEY
from .shells import SHELLS, serve_shell

pytestmark = pytest.mark.anyio

PATH = "/navai/realtime/client-secret"
SPEECH = "/navai/speech/synthesize"
XI_KEY = "xi-canary-0123456789abcdefXI"


# -- 11: every spelling of the key, always ---------------------------------------------


def _percent(text: str) -> str:
    return "".join(f"%{ord(c):02X}" for c in text)


def _unicode(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def _spellings(key: str) -> list[str]:
    """The copies of ``key`` that must not survive redaction."""
    return [key, _percent(key), _unicode(key), key[3:], _percent(key[3:])]


@pytest.mark.parametrize("shell", SHELLS)
def test_raw_and_percent_encoded_copies_are_both_redacted_openai(
    shell: str, fake: FakeOpenAIRealtime, served_fake: str
) -> None:
    fake.fail(401, f"Incorrect API key {CANARY_KEY} (sent as key={_percent(CANARY_KEY)}).")
    opts = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=served_fake, upstream_timeout_seconds=5
    )
    with serve_shell(shell, opts) as base:
        answer = httpx.post(f"{base}{PATH}", json={})
    assert answer.status_code == 502
    assert answer.json() == {
        "error": "OpenAI client_secrets failed (401): "
        "Incorrect API key [redacted] (sent as key=[redacted])."
    }


@pytest.mark.parametrize("shell", SHELLS)
def test_raw_and_percent_encoded_copies_are_both_redacted_elevenlabs(shell: str) -> None:
    voice = FakeElevenLabs(api_key=XI_KEY)
    voice.fail(400, f"Key {XI_KEY} refused; see /keys?k={_percent(XI_KEY)}")
    with voice.serve() as xi:
        opts = NavaiVoiceBackendOptions(
            openai_api_key=CANARY_KEY,
            tts_provider="elevenlabs",
            elevenlabs_api_key=XI_KEY,
            elevenlabs_voice_id="voice-1",
            elevenlabs_base_url=xi,
            upstream_timeout_seconds=5,
        )
        with serve_shell(shell, opts) as base:
            answer = httpx.post(f"{base}{SPEECH}", json={"text": "Hello"})
    assert answer.status_code == 502
    assert answer.json() == {
        "error": "ElevenLabs synthesize failed (400): Key [redacted] refused; "
        "see /keys?k=[redacted]"
    }


SLASHED = 'sk-canary/0123"4567\\89abcdefCANARY'  # visible ASCII: a key may hold / " \


def _json_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("/", "\\/")


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        pytest.param(
            f"key {_json_escaped(SLASHED)} refused", "key [redacted] refused", id="json-escapes"
        ),
        pytest.param(
            f"{SLASHED} and {_json_escaped(SLASHED)}",
            "[redacted] and [redacted]",
            id="raw-and-json-escaped",
        ),
        pytest.param(
            f"{CANARY_KEY} / {_unicode(CANARY_KEY)} / {_percent(_percent(CANARY_KEY))}",
            "[redacted] / [redacted] / [redacted]",
            id="raw-unicode-and-twice-percent-encoded",
        ),
        pytest.param(
            "&#115;&#107;" + _percent(CANARY_KEY[2:]) + f" {CANARY_KEY}",
            "[redacted] [redacted]",
            id="half-html-half-percent",
        ),
        pytest.param(
            _json_escaped(_percent(CANARY_KEY)) + " 100% sure",
            "[redacted] 100% sure",
            id="nothing-else-decoded-when-percent-is-not-an-escape",
        ),
    ],
)
def test_every_decoded_spelling_is_redacted(text: str, quoted: str) -> None:
    secret = SLASHED if SLASHED in text or _json_escaped(SLASHED) in text else CANARY_KEY
    redacted = redact(text, secret)
    assert redacted == quoted
    for spelling in (*_spellings(secret), _json_escaped(secret)):
        assert spelling not in redacted


def test_a_key_that_looks_encoded_is_redacted_as_it_is() -> None:
    key = "sk-x%41y&amp;z\\u0041"
    assert redact(f"bad key {key}", key) == "bad key [redacted]"


def test_text_without_the_key_keeps_its_escapes() -> None:
    text = 'a%20b &amp; \\u0041 \\" \\/'
    assert redact(text, CANARY_KEY) == text
