"""The command line's NAVAI routes: the demo's example functions and fake
ElevenLabs (with every credential in the environment ignored), ``serve``
loading a project's function folders, and ``navai-mw functions``."""

from __future__ import annotations

import base64
import gc
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from navai_mw import NavaiASGIMiddleware
from navai_mw.cli import DEMO_VOICE_ID, main, worker_app
from navai_mw.cli.serve import GEN0_THRESHOLD
from navai_mw.testing import FakeElevenLabs
from navai_mw.upstreams.elevenlabs import NOT_ENABLED

from .conftest import CANARY_KEY
from .test_cli import Cli, _env, _free_port
from .test_cli import started as started  # a fixture

FOLDER = "src/ai/functions-modules"


def _project(root: Path) -> Path:
    tools = root / FOLDER
    tools.mkdir(parents=True)
    (tools / "weather.py").write_text(
        "def getWeather(city):\n    '''Tell the weather.'''\n    return {'city': city}\n"
    )
    (tools / "broken.py").write_text("raise RuntimeError('no database')\n")
    return root


def test_demo_serves_example_functions_and_fake_speech_offline(started: list[Cli]) -> None:
    port = _free_port()
    # Real-looking credentials and upstreams: none may be used or printed.
    env = _env(
        OPENAI_API_KEY=CANARY_KEY,
        ELEVENLABS_API_KEY=CANARY_KEY,
        ELEVENLABS_BASE_URL="http://127.0.0.1:9",
        AZURE_OPENAI_API_KEY=CANARY_KEY,
        NAVAI_FUNCTIONS_FOLDERS="nowhere",
        OPENAI_REALTIME_VOICE="cedar",  # the session's settings still apply
    )
    cli = Cli("demo", "--port", str(port), "--speech", env=env)
    started.append(cli)
    banner = cli.banner()
    assert "add_numbers" in banner
    assert "spell_word" in banner
    assert "ElevenLabs (a fake ElevenLabs on loopback)" in banner
    assert "voice           cedar" in banner
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=10) as client:
        listed = client.get("/navai/functions").json()
        assert [item["name"] for item in listed["items"]] == [
            "add_numbers",
            "get_server_time",
            "spell_word",
        ]
        assert listed["warnings"] == []
        ran = client.post(
            "/navai/functions/execute",
            json={"function_name": "add_numbers", "payload": {"a": 2, "b": 3}},
        )
        assert ran.json()["result"] == 5
        spelled = client.post(
            "/navai/functions/execute",
            json={"function_name": "spell_word", "payload": {"value": " "}},
        )
        assert spelled.json() == {
            "ok": False,
            "error": "Give a word to spell.",
            "details": "Give a word to spell.",
        }
        speech = client.post("/navai/speech/synthesize", json={"text": "hello"}).json()
        assert speech["provider"] == "elevenlabs"
        assert speech["mimeType"] == "audio/mpeg"
        expected = FakeElevenLabs().audio_for("hello", DEMO_VOICE_ID)
        assert base64.b64decode(speech["audioBase64"]) == expected
        secret = client.post("/navai/realtime/client-secret", json={}).json()
        assert secret["speech"] == {"provider": "elevenlabs"}
        assert secret["value"].startswith("ek_fake_")
    assert cli.stop(signal.SIGINT) == 0
    assert CANARY_KEY not in cli.output
    assert "Traceback" not in cli.output


def test_demo_without_speech_says_so(started: list[Cli]) -> None:
    port = _free_port()
    cli = Cli("demo", "--port", str(port), env=_env(NAVAI_TTS_PROVIDER="elevenlabs"))
    started.append(cli)
    banner = cli.banner()
    assert "OpenAI voices the session" in banner
    answer = httpx.post(
        f"http://127.0.0.1:{port}/navai/speech/synthesize", json={"text": "hi"}, timeout=10
    )
    assert answer.status_code == 404
    assert answer.json() == {"error": NOT_ENABLED}
    assert cli.stop(signal.SIGTERM) == 0


def test_serve_loads_the_projects_functions_and_lists_what_failed(
    started: list[Cli], served_fake: str, tmp_path: Path
) -> None:
    project = _project(tmp_path)
    port = _free_port()
    env = _env(
        OPENAI_API_KEY=CANARY_KEY,
        OPENAI_BASE_URL=served_fake,
        NAVAI_FUNCTIONS_BASE_DIR=str(project),
    )
    cli = Cli("serve", "--port", str(port), env=env)
    started.append(cli)
    banner = cli.banner()
    assert "1 backend function" in banner
    assert f"get_weather              Tell the weather.  ({FOLDER}/weather.py#getWeather)" in banner
    failed = f"[navai] Failed to load {FOLDER}/broken.py: RuntimeError (see the server log)"
    assert failed in banner
    assert "no database" in cli.output  # the reason, in the log
    ran = httpx.post(
        f"http://127.0.0.1:{port}/navai/functions/execute",
        json={"function_name": "get_weather", "payload": {"city": "Lima"}},
        timeout=10,
    )
    assert ran.json()["result"] == {"city": "Lima"}
    assert cli.stop(signal.SIGINT) == 0
    assert CANARY_KEY not in cli.output


def test_the_functions_command_lists_and_fails_on_a_broken_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _project(tmp_path)
    monkeypatch.chdir(project)
    for name in ("NAVAI_FUNCTIONS_FOLDERS", "NAVAI_FUNCTIONS_BASE_DIR", "NAVAI_AGENTS_FOLDERS"):
        monkeypatch.delenv(name, raising=False)
    assert main(["functions"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("1 backend function\n")
    assert "get_weather" in out
    assert "Failed to load" in out

    (project / FOLDER / "broken.py").unlink()
    assert main(["functions", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "items": [
            {
                "name": "get_weather",
                "description": "Tell the weather.",
                "source": f"{FOLDER}/weather.py#getWeather",
            }
        ],
        "warnings": [],
    }
    # Flags choose where to look; a folder that holds nothing says so.
    assert main(["functions", "--base-dir", str(project), "--folders", "src/other"]) == 0
    assert "NAVAI_FUNCTIONS_FOLDERS did not match any module" in capsys.readouterr().out


def test_serve_with_workers_mints_and_warns_of_per_process_state(
    started: list[Cli], served_fake: str
) -> None:
    port = _free_port()
    env = _env(
        OPENAI_API_KEY=CANARY_KEY,
        OPENAI_BASE_URL=served_fake,
        NAVAI_RATE_LIMIT="1000/minute",
        NAVAI_AUTH_TOKENS="ops:tok-0123456789abcdef",
        NAVAI_RELAY="true",
    )
    cli = Cli("serve", "--port", str(port), "--workers", "2", env=env)
    started.append(cli)
    cli.banner()
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": "Bearer tok-0123456789abcdef"}
    for _ in range(4):  # served by the workers, whichever takes each
        answer = httpx.post(
            f"{base}/navai/realtime/client-secret", json={}, headers=headers, timeout=30
        )
        assert answer.status_code == 200, answer.text
    assert cli.stop(signal.SIGTERM) == 0
    output = cli.output
    assert "2 workers: rate limits count per process on memory://" in output
    assert "2 workers: relayed calls' owners and time caps live in one process" in output
    assert CANARY_KEY not in output


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_a_bad_worker_count_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    assert main(["serve", "--workers", value]) == 2
    assert "expected a number of workers 1..64" in capsys.readouterr().err


# A child that serves with `navai-mw serve`, and once the port answers says
# how its garbage collector is set, then interrupts itself as Ctrl-C would.
_SERVE_AND_TELL_GC = """
import gc, http.client, os, signal, sys, threading, time
from navai_mw.cli import main

port = int(sys.argv[1])

def tell() -> None:
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/navai/functions")
            connection.getresponse().read()
            break
        except OSError:
            time.sleep(0.05)
    print("gc", gc.get_threshold(), gc.get_freeze_count() > 0, flush=True)
    os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=tell, daemon=True).start()
sys.exit(main(["serve", "--port", str(port)]))
"""


def test_serve_tunes_the_garbage_collector_of_its_process() -> None:
    defaults = gc.get_threshold()
    done = subprocess.run(
        [sys.executable, "-c", _SERVE_AND_TELL_GC, str(_free_port())],
        env=_env(OPENAI_API_KEY=CANARY_KEY),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # The youngest generation collected ten times less often, the older two
    # as Python sets them; what the app was built of frozen.
    told = f"gc {(GEN0_THRESHOLD, *defaults[1:])} True"
    assert told in done.stdout.splitlines()


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """The collector's settings of this test process, as they were."""
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_each_worker_tunes_its_collector_once_its_app_is_built(
    restored_gc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY_KEY)
    monkeypatch.setenv(
        "NAVAI_CLI_WORKER", json.dumps({"path": "/navai", "page": False, "cors": []})
    )
    assert gc.get_threshold()[0] != GEN0_THRESHOLD
    frozen_before = gc.get_freeze_count()
    app = worker_app()
    assert isinstance(app, NavaiASGIMiddleware)
    assert gc.get_threshold()[0] == GEN0_THRESHOLD
    # The app is among what was frozen: tracked, but in no generation that
    # a collection scans.
    assert gc.get_freeze_count() > frozen_before
    assert gc.is_tracked(app)
    assert not any(seen is app for seen in gc.get_objects())
