"""The ``navai-mw`` command.

Run as users run it: a real process (``python -m navai_mw``) on loopback,
reached with httpx and with the ``curl`` line it prints. Argument and
configuration errors, which never start a server, run ``main()`` in-process.
"""

from __future__ import annotations

import base64
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from navai_mw.cli import DEMO_API_KEY, main
from navai_mw.testing import FakeOpenAIRealtime

from .conftest import CANARY_KEY

ROOT = Path(__file__).resolve().parent.parent
TOKEN_PATH = "/navai/realtime/client-secret"
# Hang guards only: a healthy run takes a fraction of these.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def _env(**extra: str) -> dict[str, str]:
    """The test's environment without any navai setting, plus ``extra``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OPENAI_", "NAVAI_")) and name != "PORT"
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class Cli:
    """``python -m navai_mw ARGS`` in the background, its output collected."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "navai_mw", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.stdout, True)),
            threading.Thread(target=self._read, args=(self.process.stderr, self.stderr, False)),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], sink: list[str], announce: bool) -> None:
        with stream:
            for line in stream:
                sink.append(line)
                if announce:
                    self._lines.put(line)
        if announce:
            self._lines.put(None)

    def banner(self) -> str:
        """Stdout up to the curl line, printed once the port is listening."""
        lines = []
        while True:
            try:
                line = self._lines.get(timeout=START_TIMEOUT)
            except queue.Empty:
                pytest.fail("no curl line: " + "".join(self.stdout + self.stderr))
            if line is None:
                pytest.fail("exited before listening: " + "".join(self.stdout + self.stderr))
            lines.append(line)
            if line.strip().startswith("curl "):
                return "".join(lines)

    def stop(self, sig: signal.Signals) -> int:
        self.process.send_signal(sig)
        try:
            status = self.process.wait(STOP_TIMEOUT)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            for reader in self._readers:
                reader.join(STOP_TIMEOUT)
        return status

    @property
    def output(self) -> str:
        return "".join(self.stdout + self.stderr)


@pytest.fixture
def started() -> Iterator[list[Cli]]:
    """Processes a test started; any still running at the end is killed."""
    processes: list[Cli] = []
    yield processes
    for cli in processes:
        if cli.process.poll() is None:
            cli.stop(signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _listening_url(banner: str) -> str:
    match = re.search(r"listening on (http://\S+)", banner)
    assert match is not None, banner
    return match.group(1)


def _curl_line(banner: str) -> list[str]:
    return shlex.split(next(line for line in banner.splitlines() if "curl " in line))


def _as_httpx(argv: list[str]) -> httpx.Response:
    """Send the request a ``curl`` command line describes, with httpx."""
    assert argv[0] == "curl"
    method, url, headers, body = "GET", "", {}, None
    args = iter(argv[1:])
    for arg in args:
        if arg == "-X":
            method = next(args)
        elif arg == "-H":
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            body = next(args)
            method = "POST" if method == "GET" else method
        elif arg.startswith("-"):
            assert arg == "-sS", f"unexpected curl option {arg}"
        else:
            url = arg
    return httpx.request(method, url, headers=headers, content=body, timeout=10)


def test_demo_mints_fake_tokens_offline_with_the_printed_curl_line(started: list[Cli]) -> None:
    port = _free_port()
    # A real key in the environment must be neither used nor printed.
    cli = Cli("demo", "--port", str(port), env=_env(OPENAI_API_KEY=CANARY_KEY))
    started.append(cli)
    banner = cli.banner()
    base_url = f"http://127.0.0.1:{port}"
    assert _listening_url(banner) == base_url
    assert "ek_fake_" in banner  # its tokens are marked as fake
    # The demo switches on what its page uses (the relay), and nothing else.
    assert f"POST {base_url}/navai/realtime/calls (Realtime" in banner
    assert "transcription   off (NAVAI_TRANSCRIPTION=true)" in banner

    curl = _curl_line(banner)
    assert f"{base_url}{TOKEN_PATH}" in curl
    minted = _as_httpx(curl)
    assert minted.status_code == 200, minted.text
    assert minted.json()["value"].startswith("ek_fake_")
    if shutil.which("curl"):  # the very line, as a user pastes it
        pasted = subprocess.run(curl, capture_output=True, text=True, timeout=STOP_TIMEOUT)
        assert pasted.returncode == 0, pasted.stderr
        assert httpx.Response(200, content=pasted.stdout).json()["value"].startswith("ek_fake_")

    health = httpx.get(f"{base_url}/health", timeout=10)
    assert (health.status_code, health.json()) == (200, {"ok": True})
    missing = httpx.get(f"{base_url}/nope", timeout=10)
    assert missing.status_code == 404
    assert TOKEN_PATH in missing.json()["error"]
    assert httpx.post(f"{base_url}/health", timeout=10).status_code == 405

    assert cli.stop(signal.SIGINT) == 0
    for secret in (CANARY_KEY, DEMO_API_KEY):
        assert secret not in cli.output
    assert "Traceback" not in cli.output


def test_serve_mints_with_the_environment_and_never_prints_the_key(
    started: list[Cli], fake: FakeOpenAIRealtime, served_fake: str
) -> None:
    env = _env(
        OPENAI_API_KEY=CANARY_KEY,
        OPENAI_BASE_URL=served_fake,
        OPENAI_REALTIME_MODEL="gpt-realtime-mini",
        OPENAI_REALTIME_CLIENT_SECRET_TTL="120",
    )
    cli = Cli("serve", "--port", "0", "--path", "/token", env=env)
    started.append(cli)
    banner = cli.banner()
    for shown in ("server key set", "gpt-realtime-mini", "120 s", served_fake, "/token"):
        assert shown in banner
    base_url = _listening_url(banner)

    minted = _as_httpx(_curl_line(banner))
    assert minted.status_code == 200, minted.text
    assert minted.json()["value"].startswith("ek_fake_")
    sent = fake.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert sent.json["session"]["model"] == "gpt-realtime-mini"
    assert sent.json["expires_after"]["seconds"] == 120

    # An upstream that quotes the key back: the failure is logged, redacted.
    fake.fail(401, f"Incorrect API key provided: {CANARY_KEY}", times=1)
    failed = httpx.post(base_url + "/token", timeout=10)
    assert failed.status_code == 502
    assert CANARY_KEY not in failed.text

    assert cli.stop(signal.SIGTERM) == 0
    assert "minting a client secret failed" in cli.output
    assert CANARY_KEY not in cli.output
    assert "Traceback" not in cli.output


def test_serve_without_a_server_key_takes_keys_from_requests(
    started: list[Cli], fake: FakeOpenAIRealtime, served_fake: str
) -> None:
    cli = Cli("serve", "--port", "0", env=_env(OPENAI_BASE_URL=served_fake))
    started.append(cli)
    banner = cli.banner()
    assert "keys from requests: required" in banner
    curl = _curl_line(banner)
    assert '{"apiKey": "YOUR_OPENAI_API_KEY"}' in curl

    # The printed line, with the placeholder filled in as it says.
    filled = [arg.replace("YOUR_OPENAI_API_KEY", CANARY_KEY) for arg in curl]
    minted = _as_httpx(filled)
    assert minted.status_code == 200, minted.text
    assert fake.requests[-1].headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert cli.stop(signal.SIGINT) == 0


def test_cors_flags_override_the_environment(started: list[Cli], served_fake: str) -> None:
    env = _env(
        OPENAI_API_KEY=CANARY_KEY,
        OPENAI_BASE_URL=served_fake,
        NAVAI_CORS_ORIGIN="https://env.example",
    )
    cli = Cli(
        "serve",
        "--port",
        "0",
        "--cors-origin",
        "https://a.example, https://b.example",
        "--cors-origin",
        "https://c.example",
        env=env,
    )
    started.append(cli)
    banner = cli.banner()
    assert "https://a.example, https://b.example, https://c.example" in banner
    assert "env.example" not in banner
    url = _listening_url(banner) + TOKEN_PATH

    preflight = httpx.options(
        url,
        headers={"Origin": "https://c.example", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://c.example"
    refused = httpx.post(url, headers={"Origin": "https://env.example"}, timeout=10)
    assert refused.status_code == 403
    assert cli.stop(signal.SIGINT) == 0


def test_a_base_url_with_credentials_is_refused_without_echoing_them() -> None:
    base_url = f"http://navai:{CANARY_KEY}@127.0.0.1:9/v1"
    result = subprocess.run(
        [sys.executable, "-m", "navai_mw", "serve", "--port", "0"],
        cwd=ROOT,
        env=_env(OPENAI_API_KEY="sk-x", OPENAI_BASE_URL=base_url),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "navai-mw: error: openai_base_url must not carry credentials (user:password@); "
        "the API key is the credential sent to OpenAI.\n"
    )
    assert CANARY_KEY not in result.stdout + result.stderr


def test_a_base_url_with_a_query_is_refused_without_echoing_it() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "navai_mw", "serve"],
        cwd=ROOT,
        env=_env(
            OPENAI_API_KEY="sk-x", OPENAI_BASE_URL=f"http://127.0.0.1:9/v1?api-key={CANARY_KEY}"
        ),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert result.returncode == 2
    assert "openai_base_url must be an http(s) URL" in result.stderr
    assert CANARY_KEY not in result.stderr + result.stdout


def test_bad_ttl_is_one_line_on_stderr_and_status_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "navai_mw", "serve"],
        cwd=ROOT,
        env=_env(OPENAI_API_KEY=CANARY_KEY, OPENAI_REALTIME_CLIENT_SECRET_TTL="abc"),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "OPENAI_REALTIME_CLIENT_SECRET_TTL" in result.stderr
    assert "Traceback" not in result.stderr
    assert CANARY_KEY not in result.stderr


# -- errors that stop it before any server starts (in-process) --------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "NAVAI_")) or name == "PORT":
            monkeypatch.delenv(name)
    return monkeypatch


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("navai-mw: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("env", "shown"),
    [
        pytest.param({"OPENAI_REALTIME_CLIENT_SECRET_TTL": "9000"}, "7200", id="ttl-range"),
        pytest.param({"OPENAI_REALTIME_CLIENT_SECRET_TTL": "600.5"}, "600.5", id="ttl-float"),
        pytest.param({"OPENAI_BASE_URL": "ftp://x"}, "openai_base_url", id="base-url"),
        pytest.param({"OPENAI_API_KEY": f"{CANARY_KEY} x"}, "openai_api_key", id="key"),
        pytest.param({"PORT": "http"}, "PORT", id="port-env"),
    ],
)
def test_bad_environment_is_one_line_and_status_2(
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    shown: str,
) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert main(["serve"]) == 2
    line = _one_error_line(capsys)
    assert shown in line
    assert CANARY_KEY not in line


def test_port_in_use_is_one_line_and_status_2(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    assert f"127.0.0.1:{port}" in _one_error_line(capsys)


def test_missing_uvicorn_gives_the_install_hint(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setitem(sys.modules, "uvicorn", None)  # makes `import uvicorn` fail
    assert main(["demo"]) == 2
    line = _one_error_line(capsys)
    # navai-mw is not on the package index: a clone or a built wheel.
    assert "pip install -e '.[server]'" in line
    assert "pip install 'navai_mw-<version>-py3-none-any.whl[server]'" in line
    assert "'navai-mw[server]'" not in line


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-command"),
        pytest.param(["run"], id="unknown-command"),
        pytest.param(["serve", "--port", "70000"], id="port-range"),
        pytest.param(["serve", "--port", "http"], id="port-text"),
        pytest.param(["demo", "--path", "token"], id="relative-path"),
        pytest.param(["serve", "--verbose"], id="unknown-flag"),
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "usage: navai-mw" in captured.err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--path", "--cors-origin"):
        assert flag in out


def test_console_script_runs_main() -> None:
    script = Path(sysconfig.get_path("scripts")) / "navai-mw"
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=START_TIMEOUT
    )
    assert result.returncode == 0
    assert result.stdout.startswith("usage: navai-mw")


def test_serve_warns_loudly_when_a_real_key_is_unguarded(
    started: list[Cli], served_fake: str
) -> None:
    cli = Cli("serve", "--port", "0", env=_env(OPENAI_API_KEY="sk-x", OPENAI_BASE_URL=served_fake))
    started.append(cli)
    banner = cli.banner()
    assert "  authorization   none (anyone who reaches the endpoint may mint)\n" in banner
    assert "  rate limit      none\n" in banner
    assert "WARNING: a real OpenAI key is served with no authorization and no rate limit" in banner
    assert httpx.get(_listening_url(banner) + "/health", timeout=10).status_code == 200
    assert cli.stop(signal.SIGINT) == 0
    assert "navai-mw: a real OpenAI key is served with no authorization" in "".join(cli.stderr)


def test_serve_states_its_guard_and_ignores_forwarding_headers(
    started: list[Cli], served_fake: str
) -> None:
    env = _env(
        OPENAI_API_KEY=CANARY_KEY,
        OPENAI_BASE_URL=served_fake,
        NAVAI_RATE_LIMIT="1/minute",
        NAVAI_RATE_LIMIT_STORAGE="memory://",
    )
    cli = Cli("serve", "--port", "0", env=env)
    started.append(cli)
    banner = cli.banner()
    assert (
        "  rate limit      mint 1/minute; functions 1/minute; speech 1/minute; usage 1/minute "
        "(storage memory://, fails closed)\n"
    ) in banner
    assert "  trusted proxies none\n" in banner
    assert "WARNING" not in banner
    url = _listening_url(banner) + "/navai/realtime/client-secret"
    # A loopback peer: uvicorn's own proxy-header rewriting would make these
    # two clients; the CLI turns it off, so they share one budget.
    first = httpx.post(url, json={}, headers={"X-Forwarded-For": "1.1.1.1"}, timeout=10)
    second = httpx.post(url, json={}, headers={"X-Forwarded-For": "2.2.2.2"}, timeout=10)
    assert (first.status_code, second.status_code) == (200, 429)
    assert cli.stop(signal.SIGINT) == 0, cli.output


def test_the_banner_never_shows_the_storage_password(started: list[Cli], served_fake: str) -> None:
    env = _env(
        OPENAI_API_KEY="sk-x",
        OPENAI_BASE_URL=served_fake,
        NAVAI_RATE_LIMIT="5/minute",
        NAVAI_RATE_LIMIT_STORAGE=f"redis://:{CANARY_KEY}@127.0.0.1:1/0",
    )
    cli = Cli("serve", "--port", "0", env=env)
    started.append(cli)
    banner = cli.banner()
    assert "(storage redis://127.0.0.1:1/0, fails closed)" in banner
    assert httpx.get(_listening_url(banner) + "/health", timeout=10).status_code == 200
    assert cli.stop(signal.SIGINT) == 0
    assert CANARY_KEY not in cli.output


def test_the_banner_names_the_budget_the_usage_and_the_webhook_routes(
    started: list[Cli], served_fake: str
) -> None:
    secret = "whsec_" + base64.b64encode(b"the banner's webhook signing key").decode()
    env = _env(
        OPENAI_API_KEY="sk-x",
        OPENAI_BASE_URL=served_fake,
        NAVAI_RELAY="true",
        NAVAI_BUDGET="10 minutes/day; 5 USD/month",
        OPENAI_WEBHOOK_SECRET=secret,
    )
    cli = Cli("serve", "--port", "0", env=env)
    started.append(cli)
    banner = cli.banner()
    base = _listening_url(banner)
    lines = {
        line.split(maxsplit=1)[0]: line
        for line in banner.splitlines()
        if line.startswith("  ") and line.strip()
    }
    assert (
        "10 minutes/day; 5 USD/month per caller (the storage down: refuses calls)"
        in lines["budget"]
    )
    assert "/navai/usage" in lines["usage"]
    assert "/navai/webhooks/openai" in lines["webhooks"]
    assert httpx.get(f"{base}/navai/usage", timeout=10).json()["budgets"][0]["limit"] == (
        "10 minutes/day"
    )
    assert cli.stop(signal.SIGINT) == 0
    assert secret not in cli.output


def test_the_banner_says_how_to_turn_webhooks_on(started: list[Cli], served_fake: str) -> None:
    cli = Cli("serve", "--port", "0", env=_env(OPENAI_API_KEY="sk-x", OPENAI_BASE_URL=served_fake))
    started.append(cli)
    banner = cli.banner()
    assert "webhooks        off (OPENAI_WEBHOOK_SECRET)" in banner
    assert "budget" not in banner  # no relay: no calls to budget
    assert cli.stop(signal.SIGINT) == 0
