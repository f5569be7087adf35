"""examples/stdlib_transport.py, run against the fake upstream on loopback."""

from __future__ import annotations

import importlib.util
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from navai_mw import NavaiError, NavaiVoiceBackendOptions
from navai_mw.testing import FakeOpenAIRealtime
from navai_mw.transports import SyncTransport
from navai_mw.upstreams.openai_secrets import build_upstream_request

from .conftest import CANARY_KEY, raw_server

EXAMPLE = Path(__file__).parent.parent / "examples" / "stdlib_transport.py"
TOKEN_PATH = "/navai/realtime/client-secret"


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("navai_example_stdlib_transport", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


example = _load_example()


def _opts(base_url: str, timeout: float = 5.0) -> NavaiVoiceBackendOptions:
    return NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=base_url, upstream_timeout_seconds=timeout
    )


def _client(app: object) -> httpx.Client:
    return httpx.Client(
        transport=httpx.WSGITransport(app=app),  # type: ignore[arg-type]
        base_url="http://testserver",
    )


def _post(app: object, body: dict[str, str] | None = None) -> httpx.Response:
    with _client(app) as client:
        return client.post(TOKEN_PATH, json=body or {})


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes
    it while the test runs) but never listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_it_is_a_sync_transport() -> None:
    assert isinstance(example.StdlibTransport(), SyncTransport)


def test_mint_succeeds(served_fake: str, fake: FakeOpenAIRealtime) -> None:
    secret = example.mint(_opts(served_fake))

    assert secret.value.startswith("ek_fake_")
    assert isinstance(secret.expires_at, int)
    assert secret.session is not None
    assert secret.session["model"] == "gpt-realtime"
    [sent] = fake.requests
    assert sent.method == "POST"
    assert sent.path == "/v1/realtime/client_secrets"
    assert sent.headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert sent.json["session"]["instructions"].endswith("Always reply in Spanish.")


def test_middleware_serves_a_token(served_fake: str, fake: FakeOpenAIRealtime) -> None:
    app = example.build_app(_opts(served_fake))

    with _client(app) as client:
        response = client.post(TOKEN_PATH, json={"voice": "cedar"})
        passed_on = client.get("/")

    assert response.status_code == 200
    assert response.json()["value"].startswith("ek_fake_")
    assert fake.requests[0].json["session"]["audio"]["output"]["voice"] == "cedar"
    assert passed_on.text == "hello from the wrapped app\n"


def test_upstream_500_is_retried_then_502(served_fake: str, fake: FakeOpenAIRealtime) -> None:
    fake.fail(500, "The server had an error.")

    response = _post(example.build_app(_opts(served_fake)))

    assert response.status_code == 502
    assert response.json() == {
        "error": "OpenAI client_secrets failed (500): The server had an error."
    }
    # The first attempt and two retries all reached the fake.
    assert len(fake.requests) == 3


def test_upstream_500_then_success(served_fake: str, fake: FakeOpenAIRealtime) -> None:
    fake.fail(503, times=1)

    secret = example.mint(_opts(served_fake))

    assert secret.value.startswith("ek_fake_")
    assert len(fake.requests) == 2


def test_stalled_upstream_is_504(served_fake: str, fake: FakeOpenAIRealtime) -> None:
    fake.stall(1.0)

    response = _post(example.build_app(_opts(served_fake, timeout=0.2)))

    assert response.status_code == 504
    assert response.json() == {"error": "OpenAI client_secrets timed out."}
    assert len(fake.requests) == 1


def test_stall_raises_timeout_error(served_fake: str, fake: FakeOpenAIRealtime) -> None:
    fake.stall(1.0)
    request = build_upstream_request(_opts(served_fake))

    with pytest.raises(TimeoutError):
        example.StdlibTransport().send(request, timeout=0.2)


def test_refused_connection_is_502(closed_port: int) -> None:
    base_url = f"http://127.0.0.1:{closed_port}/v1"

    with pytest.raises(NavaiError) as caught:
        example.mint(_opts(base_url))

    assert caught.value.status == 502
    assert caught.value.message == "OpenAI client_secrets could not be reached."
    assert CANARY_KEY not in str(caught.value)


def test_refused_connection_raises_os_error(closed_port: int) -> None:
    request = build_upstream_request(_opts(f"http://127.0.0.1:{closed_port}/v1"))

    with pytest.raises(OSError, match=r"[Rr]efused"):
        example.StdlibTransport().send(request, timeout=2.0)


def test_cut_off_answer_is_a_connection_error() -> None:
    def hang_up(conn: socket.socket, stop: threading.Event) -> None:
        pass  # no status line at all

    with raw_server(hang_up) as base_url, pytest.raises(ConnectionError):
        example.StdlibTransport().send(build_upstream_request(_opts(base_url)), timeout=2.0)


def test_trickling_answer_is_cut_off_at_the_deadline() -> None:
    # Each byte arrives well within a socket timeout, but all of them would
    # take three seconds: only a bound on the whole attempt stops this.
    def trickle(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n")
        for _ in range(30):
            if stop.wait(0.1):
                return
            try:
                conn.sendall(b"x")
            except OSError:
                return

    with raw_server(trickle) as base_url, pytest.raises(TimeoutError):
        example.StdlibTransport().send(build_upstream_request(_opts(base_url)), timeout=0.5)


def test_an_endless_answer_is_read_no_further_than_the_limit() -> None:
    def endless(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")  # no length: the body runs to the close
        while not stop.is_set():
            try:
                conn.sendall(b" " * 65536)
            except OSError:
                return

    with raw_server(endless) as base_url:
        request = build_upstream_request(_opts(base_url))
        response = example.StdlibTransport().send(request, timeout=5)
        with pytest.raises(NavaiError) as caught:
            example.mint(_opts(base_url))
    assert request.max_response_bytes < len(response.body) <= request.max_response_bytes + 65536
    assert caught.value.status == 502
