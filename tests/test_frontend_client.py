"""The published front-end client, unchanged, against both middlewares.

``tests/js`` pins ``@navai/voice-frontend`` 0.1.7 (``scripts/test`` runs
``npm ci`` there); ``tests/js/mint.mjs`` calls its
``createNavaiBackendClient(...).createClientSecret(...)``. Here it runs under
Node against the ASGI middleware (uvicorn) and the WSGI middleware
(waitress), both minting from the fake upstream on loopback.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from navai_mw import NavaiASGIMiddleware, NavaiVoiceBackendOptions, NavaiWSGIMiddleware
from navai_mw.testing import FakeOpenAIRealtime, serve_asgi

from .conftest import CANARY_KEY
from .test_servers import inner_asgi, inner_wsgi, serve_waitress

JS = Path(__file__).parent / "js"
PINNED = "0.1.7"


def node_with(name: str, pinned: str) -> str:
    """The node binary, once ``@navai/{name}`` is installed in tests/js at
    the pinned version; a clear failure (never a skip) otherwise."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the tests of the published packages need Node.js 18+")
    package = JS / "node_modules" / "@navai" / name / "package.json"
    if not package.is_file():
        pytest.fail(
            f"tests/js/node_modules/@navai/{name} is missing: run "
            "`cd tests/js && NAVAI_SKIP_AUTO_SETUP=1 npm ci` (scripts/test does it)"
        )
    installed = json.loads(package.read_text())["version"]
    assert installed == pinned, f"tests/js has @navai/{name} {installed}, not {pinned}"
    return node


def _node() -> str:
    return node_with("voice-frontend", PINNED)


def run_client(base_url: str, request: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_node(), "mint.mjs", base_url, json.dumps(request)],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(params=["uvicorn-asgi", "waitress-wsgi"])
def base_url(request: pytest.FixtureRequest, served_fake: str) -> Iterator[str]:
    opts = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=served_fake, upstream_timeout_seconds=5
    )
    with contextlib.ExitStack() as stack:
        if request.param == "uvicorn-asgi":
            asgi_app = NavaiASGIMiddleware(inner_asgi, opts)
            yield stack.enter_context(serve_asgi(asgi_app, lifespan="on"))
        else:
            wsgi_app = NavaiWSGIMiddleware(inner_wsgi, opts)
            stack.callback(wsgi_app.close)
            yield stack.enter_context(serve_waitress(wsgi_app))


def test_published_client_mints_a_secret(base_url: str, fake: FakeOpenAIRealtime) -> None:
    sent = {
        "model": "gpt-realtime-mini",
        "voice": "cedar",
        "language": "Spanish",
        "voiceAccent": "Mexican",
        "voiceTone": "friendly",
    }
    done = run_client(base_url, sent)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["value"].startswith("ek_fake_")
    assert type(result["expires_at"]) is int
    assert result["speech"] == {"provider": "openai"}
    (recorded,) = fake.requests
    assert recorded.json["session"] == {
        "type": "realtime",
        "model": "gpt-realtime-mini",
        "instructions": "You are a helpful assistant.\nAlways reply in Spanish.\n"
        "Use a Mexican accent while speaking.\nUse a friendly tone while speaking.",
        "audio": {"output": {"voice": "cedar"}},
    }


def test_published_client_reports_our_error(base_url: str, fake: FakeOpenAIRealtime) -> None:
    done = run_client(base_url, {"language": "Spanish", "voiceAccent": 5})
    assert done.returncode == 1, done.stdout + done.stderr
    # The client throws with the response text: our JSON error, verbatim.
    assert json.loads(done.stdout) == {
        "error": "Invalid request field voiceAccent: expected a string."
    }
    assert fake.requests == []


@pytest.mark.parametrize("shell", ["uvicorn-asgi", "waitress-wsgi"])
def test_published_client_shows_a_spent_budget(shell: str, served_fake: str) -> None:
    """Under a budget each secret is charged; once it is spent, the
    published client throws with our refusal, which says so and when the
    budget is whole again."""
    opts = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=served_fake, upstream_timeout_seconds=5
    )
    keywords: dict[str, Any] = {
        "relay": True, "budget": "1 minutes/day", "budget_secret_seconds": 40,
    }  # fmt: skip
    with contextlib.ExitStack() as stack:
        if shell == "uvicorn-asgi":
            url = stack.enter_context(
                serve_asgi(NavaiASGIMiddleware(inner_asgi, opts, **keywords), lifespan="on")
            )
        else:
            wsgi_app = NavaiWSGIMiddleware(inner_wsgi, opts, **keywords)
            stack.callback(wsgi_app.close)
            url = stack.enter_context(serve_waitress(wsgi_app))
        for _ in range(2):  # 40 seconds charged, then the 20 left
            minted = run_client(url, {})
            assert minted.returncode == 0, minted.stdout + minted.stderr
            assert json.loads(minted.stdout)["value"].startswith("ek_fake_")
        spent = run_client(url, {})
    assert spent.returncode == 1, spent.stdout + spent.stderr
    assert json.loads(spent.stdout) == {
        "error": "Your budget of 1 minutes/day is spent; it is whole again at the next period.",
        "code": "budget_exhausted",
    }
