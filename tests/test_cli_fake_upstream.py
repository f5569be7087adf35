"""``navai-mw fake-upstream``: the fakes of ``navai_mw.testing`` on loopback,
run as users run it (a real process), and reached the way an app configured
from the environment reaches them: through the URLs it prints."""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import aiohttp
import httpx
import pytest

from navai_mw import (
    NavaiVoiceBackendOptions,
    UpstreamError,
    create_realtime_client_secret_sync,
    synthesize_speech_sync,
)
from navai_mw.cli import UVICORN_MISSING, main
from navai_mw.testing import FakeElevenLabs

from .test_cli import ROOT, START_TIMEOUT, Cli, _env

_EXPORT = re.compile(r"export (?P<name>[A-Z_]+)=(?P<url>http://127\.0\.0\.1:[0-9]+(?:/v1)?)")


class FakeUpstream(Cli):
    """``python -m navai_mw fake-upstream ARGS``, until it is stopped."""

    def __init__(self, *args: str) -> None:
        super().__init__("fake-upstream", *args, env=_env())

    def exports(self) -> dict[str, str]:
        """The variables it says to export, read up to its one other line."""
        exports: dict[str, str] = {}
        while True:
            try:
                line = self._lines.get(timeout=START_TIMEOUT)
            except queue.Empty:
                pytest.fail("no export lines: " + self.output)
            if line is None:
                pytest.fail("exited before serving: " + self.output)
            if not line.startswith("export "):
                assert line.startswith("# navai-mw fake-upstream: "), line
                # The line on WebRTC comes last: read it too, so that
                # ``output`` holds it.
                webrtc = self._lines.get(timeout=START_TIMEOUT)
                assert webrtc is not None, self.output
                assert webrtc.startswith("# WebRTC: "), webrtc
                return exports
            match = _EXPORT.fullmatch(line.rstrip("\n"))
            assert match is not None, line  # shell-ready: nothing else on the line
            exports[match["name"]] = match["url"]


@pytest.fixture
def upstreams() -> Iterator[list[FakeUpstream]]:
    """Commands a test started; any still running at the end is killed."""
    started: list[FakeUpstream] = []
    yield started
    for cli in started:
        if cli.process.poll() is None:
            cli.stop(signal.SIGKILL)


def test_an_app_configured_from_its_exports_mints_and_speaks(
    upstreams: list[FakeUpstream],
) -> None:
    cli = FakeUpstream("--port", "0")
    upstreams.append(cli)
    exports = cli.exports()
    assert set(exports) == {"OPENAI_BASE_URL", "ELEVENLABS_BASE_URL"}
    assert exports["OPENAI_BASE_URL"].endswith("/v1")
    assert not exports["ELEVENLABS_BASE_URL"].endswith("/v1")
    assert "OPENAI_API_KEY=sk-anything" in cli.output  # the human line says any key works

    # Without --api-key, any key mints; the fake ElevenLabs takes any key too.
    opts = NavaiVoiceBackendOptions(
        openai_api_key="sk-anything",
        openai_base_url=exports["OPENAI_BASE_URL"],
        tts_provider="elevenlabs",
        elevenlabs_api_key="xi-anything",
        elevenlabs_voice_id="v",
        elevenlabs_base_url=exports["ELEVENLABS_BASE_URL"],
    )
    secret = create_realtime_client_secret_sync(opts)
    assert secret.value.startswith("ek_fake_")

    speech = synthesize_speech_sync(opts, {"text": "Hello"})
    assert speech.provider == "elevenlabs"
    assert speech.mime_type == "audio/mpeg"
    assert speech.audio == FakeElevenLabs().audio_for("Hello", "v")

    assert cli.stop(signal.SIGTERM) == 0
    assert cli.stderr == []


def test_it_answers_webrtc_calls_and_says_so(upstreams: list[FakeUpstream]) -> None:
    """The fake OpenAI also serves /v1/realtime/calls (aiortc is installed
    with the test extra): an offer gets a real peer's answer, and a hangup
    closes it."""
    import asyncio

    from .test_fake_webrtc import Browser, _post_call

    cli = FakeUpstream("--api-key", "sk-webrtc-0123456789")
    upstreams.append(cli)
    base_url = cli.exports()["OPENAI_BASE_URL"]
    root = base_url.removesuffix("/v1")
    ws_root = root.replace("http", "ws", 1)
    assert (
        f"# WebRTC: the fake OpenAI also answers POST {root}/v1/realtime/calls and "
        f"POST {root}/v1/live/sessions with a real peer (aiortc), and their sidebands "
        f"(WebSocket {ws_root}/v1/realtime?call_id=... and "
        f"{ws_root}/v1/live/sessions/{{id}}/attach)"
    ) in cli.output
    auth = {"Authorization": "Bearer sk-webrtc-0123456789"}

    async def call() -> tuple[int, int, str, int, int]:
        browser = Browser()
        try:
            async with httpx.AsyncClient(timeout=START_TIMEOUT) as client:
                offer = await browser.offer()
                wrong = await _post_call(client, base_url, offer, key="sk-other-key")
                made = await _post_call(client, base_url, offer, key="sk-webrtc-0123456789")
                await browser.answer(made.text)
                event = await browser.next_event()
                assert event["type"] == "session.created"
                call_id = made.headers["location"].rpartition("/")[2]
                # The call's sideband, at the URL the line gives.
                async with (
                    aiohttp.ClientSession() as http,
                    http.ws_connect(f"{ws_root}/v1/realtime?call_id={call_id}", headers=auth) as ws,
                ):
                    greeting = await ws.receive_json(timeout=START_TIMEOUT)
                    hangup = await client.post(
                        f"{root}{made.headers['location']}/hangup", headers=auth
                    )
                    closed = await ws.receive(timeout=START_TIMEOUT)
            return (
                wrong.status_code,
                made.status_code,
                greeting["type"],
                hangup.status_code,
                closed.data,
            )
        finally:
            await browser.close()

    assert asyncio.run(call()) == (401, 201, "session.created", 200, 1000)
    assert cli.stop(signal.SIGTERM) == 0


def test_the_export_lines_run_in_a_shell(upstreams: list[FakeUpstream]) -> None:
    cli = FakeUpstream()
    upstreams.append(cli)
    exports = cli.exports()
    lines = [line for line in cli.stdout if line.startswith("export ")]
    script = "".join(lines) + 'printf "%s %s" "$OPENAI_BASE_URL" "$ELEVENLABS_BASE_URL"'
    shell = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=START_TIMEOUT, check=True
    )
    assert shell.stdout == f"{exports['OPENAI_BASE_URL']} {exports['ELEVENLABS_BASE_URL']}"
    assert cli.stop(signal.SIGINT) == 0


def test_sigint_stops_it_also_when_it_starts_ignored(upstreams: list[FakeUpstream]) -> None:
    """A script's background job (``navai-mw fake-upstream &``) starts with
    SIGINT ignored; the fakes serve from threads, so the CLI takes it itself."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the child
    try:
        cli = FakeUpstream()
    finally:
        signal.signal(signal.SIGINT, previous)
    upstreams.append(cli)
    assert "OPENAI_BASE_URL" in cli.exports()
    assert cli.stop(signal.SIGINT) == 0


def test_api_key_makes_another_key_a_502(upstreams: list[FakeUpstream]) -> None:
    cli = FakeUpstream("--api-key", "sk-the-only-one")
    upstreams.append(cli)
    base_url = cli.exports()["OPENAI_BASE_URL"]
    assert "only the key given with --api-key" in cli.output
    assert "sk-the-only-one" not in cli.output  # a key is never printed, even a fake one

    wrong = NavaiVoiceBackendOptions(openai_api_key="sk-anything", openai_base_url=base_url)
    with pytest.raises(UpstreamError) as refused:
        create_realtime_client_secret_sync(wrong)
    assert refused.value.status == 502  # the upstream's 401 is the server's failure
    assert "(401)" in refused.value.message

    right = NavaiVoiceBackendOptions(openai_api_key="sk-the-only-one", openai_base_url=base_url)
    assert create_realtime_client_secret_sync(right).value.startswith("ek_fake_")
    assert cli.stop(signal.SIGTERM) == 0


def test_a_busy_port_is_one_line_and_status_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "navai_mw", "fake-upstream", "--port", str(port)],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
        )
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"navai-mw: error: cannot listen on 127.0.0.1:{port}: ")


def test_missing_uvicorn_is_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # makes `import uvicorn` fail
    assert main(["fake-upstream"]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"navai-mw: error: {UVICORN_MISSING}\n")


def test_help_names_its_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fake-upstream", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--api-key", "sk-anything"):
        assert flag in out
    assert main(["--help"]) == 0
    assert "fake-upstream" in capsys.readouterr().out
