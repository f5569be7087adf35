"""The published front-end client's four calls against both middlewares.

``tests/js/backend_client.mjs`` calls one method of
``createNavaiBackendClient(...)`` from ``@navai/voice-frontend`` 0.1.7,
unchanged: ``createClientSecret``, ``listFunctions``, ``executeFunction`` and
``synthesizeSpeech``. Here it runs under Node against the ASGI middleware
(uvicorn) and the WSGI middleware (waitress), both minting from the fake
OpenAI and speaking through the fake ElevenLabs, each on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from navai_mw import (
    NavaiASGIMiddleware,
    NavaiFunctionError,
    NavaiVoiceBackendOptions,
    NavaiWSGIMiddleware,
)
from navai_mw.functions import FunctionSource
from navai_mw.testing import FakeElevenLabs, FakeOpenAIRealtime, serve_asgi

from .conftest import CANARY_KEY
from .test_frontend_client import JS, _node
from .test_servers import inner_asgi, inner_wsgi, serve_waitress

ELEVENLABS_KEY = "xi-canary-ELEVENLABS-9876543210fedcba"
SECRET_DETAIL = "db password is hunter2"
SPEECH_OFF = 'Speech synthesis is only available when NAVAI_TTS_PROVIDER is set to "elevenlabs".'


# -- the backend functions -------------------------------------------------------------


def add_numbers(a: int, b: int) -> int:
    """Add two numbers.

    Called with positional ``args``.
    """
    return a + b


def shout(text: str) -> str:
    return text.upper()


def describe_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """Describe the payload it was given whole."""
    return {"keys": sorted(payload), "size": len(payload)}


def get_weather(city: str, unit: str = "C") -> dict[str, Any]:
    """Tell the weather in a city."""
    return {"city": city, "unit": unit, "temperature": 21}


class Counter:
    """A counter."""

    def __init__(self, start: int = 0) -> None:
        self.total = start

    def increment(self, amount: int) -> int:
        """Add to the counter and tell the total."""
        self.total += amount
        return self.total

    def describe(self, label: str) -> str:
        return f"{label}={self.total}"


async def fetch_later(value: str) -> dict[str, str]:
    """Answer after yielding to the event loop."""
    await asyncio.sleep(0)
    return {"echo": value, "kind": "async"}


def refuse_order(item: str) -> None:
    """Refuse an order, saying why."""
    raise NavaiFunctionError(f"Cannot order {item}: out of stock.")


def crash() -> None:
    """Fail with an error of the app's own."""
    raise RuntimeError(SECRET_DETAIL)


FUNCTIONS: list[FunctionSource] = [
    add_numbers,
    shout,
    describe_payload,
    get_weather,
    Counter,
    fetch_later,
    refuse_order,
    crash,
]
MODULE = __name__
LISTED = [
    {
        "name": "add_numbers",
        "description": "Add two numbers.",
        "source": f"{MODULE}#add_numbers",
    },
    {
        "name": "shout",
        "description": "Call exported function shout.",
        "source": f"{MODULE}#shout",
    },
    {
        "name": "describe_payload",
        "description": "Describe the payload it was given whole.",
        "source": f"{MODULE}#describe_payload",
    },
    {
        "name": "get_weather",
        "description": "Tell the weather in a city.",
        "source": f"{MODULE}#get_weather",
    },
    {
        "name": "counter_increment",
        "description": "Add to the counter and tell the total.",
        "source": f"{MODULE}#Counter.increment",
    },
    {
        "name": "counter_describe",
        "description": "Call class method Counter.describe().",
        "source": f"{MODULE}#Counter.describe",
    },
    {
        "name": "fetch_later",
        "description": "Answer after yielding to the event loop.",
        "source": f"{MODULE}#fetch_later",
    },
    {
        "name": "refuse_order",
        "description": "Refuse an order, saying why.",
        "source": f"{MODULE}#refuse_order",
    },
    {
        "name": "crash",
        "description": "Fail with an error of the app's own.",
        "source": f"{MODULE}#crash",
    },
]


# -- the client -------------------------------------------------------------------------


def call(base_url: str, method: str, data: Any = None) -> dict[str, Any]:
    """Run ``backend_client.mjs``: ``{"ok": True, "result": ...}`` or
    ``{"ok": False, "error": message}``. No key ever shows in its output."""
    argv = [_node(), "backend_client.mjs", base_url, method]
    if data is not None:
        argv.append(json.dumps(data))
    done = subprocess.run(argv, cwd=JS, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    for key in (CANARY_KEY, ELEVENLABS_KEY):
        assert key not in done.stdout + done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def result_of(base_url: str, method: str, data: Any = None) -> Any:
    answer = call(base_url, method, data)
    assert answer["ok"] is True, answer
    return answer["result"]


def error_of(base_url: str, method: str, data: Any = None) -> str:
    answer = call(base_url, method, data)
    assert answer["ok"] is False, answer
    message: str = answer["error"]
    return message


# -- the servers ------------------------------------------------------------------------


@pytest.fixture
def elevenlabs() -> FakeElevenLabs:
    return FakeElevenLabs(api_key=ELEVENLABS_KEY)


@pytest.fixture
def served_elevenlabs(elevenlabs: FakeElevenLabs) -> Iterator[str]:
    """The fake ElevenLabs on a real loopback port; yields its base URL."""
    with elevenlabs.serve() as base_url:
        yield base_url


@pytest.fixture(params=["uvicorn-asgi", "waitress-wsgi"])
def server(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@contextlib.contextmanager
def serve(server: str, opts: NavaiVoiceBackendOptions) -> Iterator[str]:
    """The middleware with ``opts`` and :data:`FUNCTIONS` on loopback under
    ``server``; yields its base URL."""
    with contextlib.ExitStack() as stack:
        if server == "uvicorn-asgi":
            # The middleware closes its own client at lifespan shutdown.
            asgi_app = NavaiASGIMiddleware(inner_asgi, opts, functions=FUNCTIONS)
            yield stack.enter_context(serve_asgi(asgi_app, lifespan="on"))
        else:
            wsgi_app = NavaiWSGIMiddleware(inner_wsgi, opts, functions=FUNCTIONS)
            stack.callback(wsgi_app.close)
            yield stack.enter_context(serve_waitress(wsgi_app))


@pytest.fixture
def base_url(server: str, served_fake: str, served_elevenlabs: str) -> Iterator[str]:
    """Speech by ElevenLabs."""
    opts = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY,
        openai_base_url=served_fake,
        upstream_timeout_seconds=5,
        tts_provider="elevenlabs",
        elevenlabs_api_key=ELEVENLABS_KEY,
        elevenlabs_voice_id="voice-1",
        elevenlabs_base_url=served_elevenlabs,
    )
    with serve(server, opts) as url:
        yield url


@pytest.fixture
def openai_base_url(server: str, served_fake: str) -> Iterator[str]:
    """The default options: the session speaks."""
    opts = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=served_fake, upstream_timeout_seconds=5
    )
    with serve(server, opts) as url:
        yield url


# -- listFunctions ------------------------------------------------------------------------


def test_list_functions(base_url: str) -> None:
    assert result_of(base_url, "listFunctions") == {"functions": LISTED, "warnings": []}


# -- executeFunction ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "payload", "expected"),
    [
        pytest.param("add_numbers", {"args": [2, 3]}, 5, id="args"),
        pytest.param("shout", {"value": "hello"}, "HELLO", id="value"),
        pytest.param(
            "describe_payload",
            {"colour": "red", "size": 3},
            {"keys": ["colour", "size"], "size": 2},
            id="whole-payload",
        ),
        pytest.param(
            "get_weather",
            {"city": "Paris"},
            {"city": "Paris", "unit": "C", "temperature": 21},
            id="keywords",
        ),
        pytest.param(
            "Counter_Increment",
            {"constructorArgs": [10], "methodArgs": [5]},
            15,
            id="class-method",
        ),
        pytest.param(
            "counter_describe",
            {"constructorArgs": [7], "methodArgs": ["total"]},
            "total=7",
            id="class-method-no-docstring",
        ),
        pytest.param("fetch_later", {"value": "hi"}, {"echo": "hi", "kind": "async"}, id="async"),
    ],
)
def test_execute_function(base_url: str, name: str, payload: Any, expected: Any) -> None:
    sent = {"functionName": name, "payload": payload}
    assert result_of(base_url, "executeFunction", sent) == expected


def test_function_error_is_shown(base_url: str) -> None:
    sent = {"functionName": "refuse_order", "payload": {"item": "tea"}}
    # A 200 ok:false answer: the client throws with its details.
    assert error_of(base_url, "executeFunction", sent) == "Cannot order tea: out of stock."


def test_app_error_is_hidden(base_url: str) -> None:
    message = error_of(base_url, "executeFunction", {"functionName": "crash", "payload": {}})
    # A 500: the client throws with the body's text, which keeps the
    # exception's text to the log.
    assert message == '{"ok":false,"error":"Backend function failed."}'
    assert SECRET_DETAIL not in message


def test_unknown_function(base_url: str) -> None:
    sent = {"functionName": "launch_rockets", "payload": {}}
    message = error_of(base_url, "executeFunction", sent)
    assert "Unknown or disallowed function." in message
    assert json.loads(message)["available_functions"] == [item["name"] for item in LISTED]


# -- synthesizeSpeech ---------------------------------------------------------------------


def test_synthesize_speech(base_url: str, elevenlabs: FakeElevenLabs) -> None:
    result = result_of(base_url, "synthesizeSpeech", {"text": "hello"})
    assert set(result) == {"provider", "mimeType", "audioBase64"}
    assert result["provider"] == "elevenlabs"
    assert result["mimeType"] == "audio/mpeg"
    assert base64.b64decode(result["audioBase64"]) == elevenlabs.audio_for("hello", "voice-1")
    (recorded,) = elevenlabs.requests
    assert recorded.headers["xi-api-key"] == ELEVENLABS_KEY
    assert recorded.path == "/v1/text-to-speech/voice-1"
    assert recorded.query == {"output_format": "mp3_44100_128"}
    assert recorded.json == {"text": "hello"}


def test_synthesize_speech_voice_and_format(base_url: str, elevenlabs: FakeElevenLabs) -> None:
    sent = {"text": "hello", "voiceId": "voice-2", "outputFormat": "pcm_16000"}
    result = result_of(base_url, "synthesizeSpeech", sent)
    assert result["provider"] == "elevenlabs"
    assert result["mimeType"] == "audio/pcm"
    audio = base64.b64decode(result["audioBase64"])
    assert audio == elevenlabs.audio_for("hello", "voice-2", output_format="pcm_16000")
    (recorded,) = elevenlabs.requests
    assert recorded.headers["xi-api-key"] == ELEVENLABS_KEY
    assert recorded.path == "/v1/text-to-speech/voice-2"
    assert recorded.query == {"output_format": "pcm_16000"}


# -- createClientSecret -------------------------------------------------------------------


def test_client_secret_with_elevenlabs(
    base_url: str, fake: FakeOpenAIRealtime, elevenlabs: FakeElevenLabs
) -> None:
    result = result_of(base_url, "createClientSecret", {})
    assert result["speech"] == {"provider": "elevenlabs"}
    assert result["value"].startswith("ek_fake_")
    assert type(result["expires_at"]) is int
    (recorded,) = fake.requests
    assert recorded.headers["authorization"] == f"Bearer {CANARY_KEY}"
    session = recorded.json["session"]
    assert session["output_modalities"] == ["text"]
    assert "audio" not in session
    assert elevenlabs.requests == []


# -- the default options: the session speaks ----------------------------------------------


def test_client_secret_with_openai(openai_base_url: str, fake: FakeOpenAIRealtime) -> None:
    result = result_of(openai_base_url, "createClientSecret", {})
    assert result["speech"] == {"provider": "openai"}
    assert result["value"].startswith("ek_fake_")
    (recorded,) = fake.requests
    assert "output_modalities" not in recorded.json["session"]
    assert recorded.json["session"]["audio"] == {"output": {"voice": "marin"}}


def test_speech_is_off_with_openai(openai_base_url: str, fake: FakeOpenAIRealtime) -> None:
    message = error_of(openai_base_url, "synthesizeSpeech", {"text": "hello"})
    # The client throws with the body's text: our JSON error, verbatim.
    assert json.loads(message) == {"error": SPEECH_OFF}
    assert fake.requests == []
