"""A Live session's sideband goes the way the transport goes: through the
proxy (``HTTPS_PROXY``), trusting the certificates the transport trusts
(``SSL_CERT_FILE``), on both shells, for a ``DELETE`` and at the time cap.

The fake GPT-Live (``FakeRealtimeWebRTC``) is served over TLS under a name
that resolves nowhere (``gpt-live.invalid``), with a certificate from a
test authority: it can only be reached through the CONNECT proxy below,
which maps that name to loopback and counts the tunnels it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from navai_mw import NavaiASGIMiddleware, NavaiVoiceBackendOptions, NavaiWSGIMiddleware
from navai_mw.runtime.sideband import SidebandConnector
from navai_mw.testing import FakeRealtimeWebRTC, serve_asgi

from .conftest import CANARY_KEY
from .test_fake_webrtc import Browser
from .test_relay import SDP, app_asgi, app_wsgi
from .test_servers import serve_waitress

LIVE = "/navai/live/sessions"
HOST = "gpt-live.invalid"
BOUND = 20.0  # a bound, never a measurement


# -- a test certificate authority ---------------------------------------------------------------


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for :data:`HOST` signed by it: (CA
    file, certificate file, key file)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("navai test CA"))
        .issuer_name(_name("navai test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(HOST))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(HOST), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_file, cert_file, key_file


# -- a forward proxy that tunnels (CONNECT) -------------------------------------------------------


class TunnellingProxy:
    """A CONNECT proxy on loopback: ``*.invalid`` names reach 127.0.0.1;
    :attr:`tunnels` lists each ``host:port`` a client asked for."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> TunnellingProxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._listener.close()

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._spawn(self._tunnel, client)

    def _tunnel(self, client: socket.socket) -> None:
        with contextlib.ExitStack() as stack:
            stack.enter_context(client)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            self.tunnels.append(target)
            host, _, port = target.rpartition(":")
            address = "127.0.0.1" if host.endswith(".invalid") else host
            upstream = stack.enter_context(socket.create_connection((address, int(port)), 5))
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            done = threading.Event()
            self._spawn(self._pipe, upstream, client, done)
            self._pipe(client, upstream, done)
            done.wait(5)

    def _pipe(self, source: socket.socket, sink: socket.socket, done: threading.Event) -> None:
        source.settimeout(0.2)
        # As a proxy does: a frame relayed alone is not held back for the
        # ACK of the one before it (Nagle's wait, up to a delayed ACK's 40 ms).
        sink.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while not self._stop.is_set():
                try:
                    data = source.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
            done.set()


# -- the relay through it, on both shells ----------------------------------------------------


@pytest.fixture
def live_behind_a_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FakeRealtimeWebRTC, TunnellingProxy, str]]:
    """The fake GPT-Live over TLS at ``gpt-live.invalid``, reachable only
    through the proxy; the environment names the proxy and the CA."""
    ca_file, cert_file, key_file = make_certificates(tmp_path)
    fake = FakeRealtimeWebRTC(api_key=CANARY_KEY)
    with (
        serve_asgi(
            fake, lifespan="on", ssl_certfile=str(cert_file), ssl_keyfile=str(key_file)
        ) as url,
        TunnellingProxy() as proxy,
    ):
        port = url.rsplit(":", 1)[1]
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        yield fake, proxy, f"https://{HOST}:{port}/v1"


@contextlib.contextmanager
def serve_shell(shell: str, base_url: str, **keywords: Any) -> Iterator[str]:
    opts = NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=base_url, upstream_timeout_seconds=10
    )
    if shell == "uvicorn":
        app = NavaiASGIMiddleware(app_asgi, opts, functions=[], relay=True, **keywords)
        with serve_asgi(app, lifespan="on") as url:
            yield url
        return
    wsgi = NavaiWSGIMiddleware(app_wsgi, opts, functions=[], relay=True, **keywords)
    try:
        with serve_waitress(wsgi) as url:
            yield url
    finally:
        wsgi.close()


async def _start_session(client: httpx.AsyncClient, browser: Browser) -> str:
    made = await client.post(LIVE, content=await browser.offer(), headers=SDP)
    assert made.status_code == 201, made.text
    location: str = made.headers["location"]
    return location


async def _until(check: Any) -> bool:
    for _ in range(int(BOUND / 0.02)):
        if check():
            return True
        await asyncio.sleep(0.02)
    return bool(check())


@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
def test_a_live_sessions_close_goes_through_the_proxy(
    shell: str, live_behind_a_proxy: tuple[FakeRealtimeWebRTC, TunnellingProxy, str]
) -> None:
    fake, proxy, base_url = live_behind_a_proxy
    with serve_shell(shell, base_url) as url:

        async def steps() -> None:
            browser = Browser()
            try:
                async with httpx.AsyncClient(base_url=url, timeout=BOUND, trust_env=False) as c:
                    location = await _start_session(c, browser)
                    session_id = location.rsplit("/", 1)[-1]
                    ended = await c.delete(location)
                    assert ended.status_code == 204, ended.text
                    # The fake records the close as its app reads it.
                    assert await _until(lambda: fake.closes == [session_id])
            finally:
                await browser.close()

        asyncio.run(steps())
    # The session's start and its sideband went through the proxy (the name
    # resolves nowhere else), on one tunnel or on two.
    assert set(proxy.tunnels) == {f"{HOST}:{base_url.rsplit(':', 1)[1].split('/')[0]}"}


@pytest.mark.parametrize("shell", ["uvicorn", "waitress"])
def test_a_live_sessions_time_cap_goes_through_the_proxy(
    shell: str, live_behind_a_proxy: tuple[FakeRealtimeWebRTC, TunnellingProxy, str]
) -> None:
    fake, proxy, base_url = live_behind_a_proxy
    with serve_shell(shell, base_url, max_call_seconds=0.5) as url:

        async def steps() -> None:
            browser = Browser()
            try:
                async with httpx.AsyncClient(base_url=url, timeout=BOUND, trust_env=False) as c:
                    location = await _start_session(c, browser)
                    session_id = location.rsplit("/", 1)[-1]
                    # Nobody asks: the cap closes it, over the proxy.
                    assert await _until(lambda: session_id in fake.closes)
                    assert (await c.delete(location)).status_code == 404
            finally:
                await browser.close()

        asyncio.run(steps())
    assert proxy.tunnels


# -- the connector's choice -------------------------------------------------------------------


class OwnSockets:
    """A transport of one's own that also opens WebSockets."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, float]] = []

    async def send(self, request: Any, *, timeout: float) -> Any:
        raise ConnectionError("not used here")

    @contextlib.asynccontextmanager
    async def connect_websocket(self, url: str, headers: Any, *, timeout: float) -> Any:
        self.opened.append((url, timeout))
        sent: list[str] = []

        class Socket:
            async def send_text(self, text: str) -> None:
                sent.append(text)

            async def receive_text(self) -> str | None:
                return None

        yield Socket()
        assert sent == ['{"type": "session.close"}']


def test_a_transport_that_opens_websockets_is_used_for_the_sideband() -> None:
    from navai_mw.core.effects import CloseLive
    from navai_mw.runtime.sideband import close_live_session

    transport = OwnSockets()
    connector = SidebandConnector(transport)
    effect = CloseLive("wss://x.invalid/v1/live/sessions/live_1/attach", (("a", "b"),), 3.0)
    assert asyncio.run(close_live_session(connector, effect)) is None
    assert transport.opened == [("wss://x.invalid/v1/live/sessions/live_1/attach", 3.0)]
