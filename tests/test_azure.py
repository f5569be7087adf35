"""Azure OpenAI (issue 12, part 4): the options and their three-way
exclusivity, the environment (AZURE_OPENAI_ENDPOINT winning over
OPENAI_API_KEY, with a warning in the log and the CLI banner), the URL and
the ``api-key`` header, a Microsoft Entra ID token provider (sync and
async, called once per request, its failure a 502 naming Azure), request
keys never forwarded, Azure's errors mapped like OpenAI's, and the
key-never-leaks canary.

FakeOpenAIRealtime answers OpenAI's path only, so a small fake of Azure's
``POST /openai/v1/realtime/client_secrets`` lives here; it is reached in
process (httpx's mock and ASGI transports) or served on loopback.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx
import pytest
import sniffio

from navai_mw import (
    Accept,
    IncomingCall,
    NavaiASGIMiddleware,
    NavaiError,
    NavaiVoiceBackendOptions,
    NavaiWSGIMiddleware,
    OptionsError,
    Refer,
    Reject,
    create_realtime_client_secret,
    create_realtime_client_secret_sync,
    create_transcription_client_secret,
    create_transcription_client_secret_sync,
    get_navai_voice_backend_options_from_env,
)
from navai_mw.config.env import AZURE_WINS_WARNING
from navai_mw.core.effects import Attempt, CallHook, HookResult, IsBlocked, SidebandRoom
from navai_mw.core.http import RequestInfo
from navai_mw.endpoint.endpoint import Endpoint
from navai_mw.endpoint.route import Call
from navai_mw.endpoint.routes.live import handle as live_handle
from navai_mw.endpoint.routes.phone_steps import answer_phone_call
from navai_mw.functions import FunctionRegistry
from navai_mw.guard.guard import Guard
from navai_mw.testing import RecordedRequest, serve_asgi
from navai_mw.transports import HttpxAsyncTransport, HttpxSyncTransport
from navai_mw.upstreams.openai_secrets import build_upstream_request

from .conftest import CANARY_KEY
from .test_servers import inner_asgi as lifespan_asgi
from .test_servers import inner_wsgi as plain_wsgi
from .test_servers import serve_waitress
from .test_sessions import (
    FUNCTION_TOOL,
    SERVER_VAD,
    TOKEN,
    TRANSCRIPTION,
    assert_openai_accepts,
    inner_wsgi,
    shells,
)


@pytest.fixture(autouse=True)
def _all_routes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Azure serves every route: the relays and the transcription route too,
    switched on through the environment as a deployment would."""
    monkeypatch.setenv("NAVAI_RELAY", "true")
    monkeypatch.setenv("NAVAI_TRANSCRIPTION", "true")


AZURE_PATH = "/openai/v1/realtime/client_secrets"
ENDPOINT = "https://my-resource.openai.azure.com"
AZURE_KEY = "azure-canary-0123456789abcdefAZURE"
TOKEN_CANARY = "eyJ-entra-canary-0123456789TOKEN"


class FakeAzure:
    """Azure OpenAI's client_secrets endpoint, as far as navai needs it:
    records every request; accepts ``api_key`` in ``api-key`` or a bearer
    token that starts with ``token_prefix``; answers a fresh secret, or
    what :meth:`fail` scripted (Azure's error shape), or after ``stall``
    seconds (ASGI only)."""

    def __init__(self, *, api_key: str | None = AZURE_KEY, token_prefix: str = TOKEN_CANARY):
        self.api_key = api_key
        self.token_prefix = token_prefix
        self.requests: list[RecordedRequest] = []
        self.stall = 0.0
        self._script: deque[tuple[int, bytes, tuple[tuple[str, str], ...]]] = deque()
        self._lock = threading.Lock()

    def fail(
        self, status: int, message: str, *, times: int = 1, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps({"error": {"code": str(status), "message": message}}).encode()
        for _ in range(times):
            self._script.append((status, body, tuple((headers or {}).items())))

    def garbage(self) -> None:
        self._script.append((200, b"<html>Azure Front Door</html>", ()))

    def answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        with self._lock:
            self.requests.append(RecordedRequest(method, path, headers, body, payload))
            scripted = self._script.popleft() if self._script else None
        json_type = [("content-type", "application/json")]
        if method != "POST" or path != AZURE_PATH:
            error = {"error": {"code": "404", "message": "Resource not found"}}
            return 404, json_type, json.dumps(error).encode()
        if scripted is not None:
            status, reply, extra = scripted
            return status, [*json_type, *extra], reply
        key = headers.get("api-key")
        bearer = headers.get("authorization", "").removeprefix("Bearer ")
        if not (
            (self.api_key is not None and key == self.api_key)
            or (key is None and bearer.startswith(self.token_prefix))
        ):
            error = {"error": {"code": "401", "message": "Access denied due to invalid key."}}
            return 401, json_type, json.dumps(error).encode()
        secret = {
            "value": f"ek_azure_{secrets.token_hex(8)}",
            "expires_at": 1_900_000_000,
            "session": {"id": "sess_azure", **payload["session"]},
        }
        return 200, json_type, json.dumps(secret).encode()

    def _handle(self, request: httpx.Request) -> httpx.Response:
        headers = {name.lower(): value for name, value in request.headers.items()}
        status, reply_headers, body = self.answer(
            request.method, request.url.path, headers, request.read()
        )
        return httpx.Response(status, headers=reply_headers, content=body)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        status, reply_headers, reply = self.answer(
            scope["method"], scope["path"], headers, bytes(body)
        )
        if self.stall:
            await anyio.sleep(self.stall)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in reply_headers],
            }
        )
        await send({"type": "http.response.body", "body": reply})

    def sync_transport(self) -> HttpxSyncTransport:
        return HttpxSyncTransport(httpx.Client(transport=httpx.MockTransport(self._handle)))

    def async_transport(self) -> HttpxAsyncTransport:
        return HttpxAsyncTransport(httpx.AsyncClient(transport=httpx.ASGITransport(app=self)))


class Tokens:
    """A token provider that counts its calls and hands out a new token
    each time (as a refresh would), recording where it ran."""

    def __init__(self) -> None:
        self.calls = 0
        self.given: list[str] = []
        self.async_library: list[str | None] = []
        self.threads: list[int] = []
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            self.calls += 1
            token = f"{TOKEN_CANARY}-{self.calls}"
            self.given.append(token)
            self.threads.append(threading.get_ident())
            try:
                self.async_library.append(sniffio.current_async_library())
            except sniffio.AsyncLibraryNotFoundError:
                self.async_library.append(None)
        return token


class AsyncTokens(Tokens):
    async def __call__(self) -> str:  # type: ignore[override]
        await anyio.sleep(0)
        return super().__call__()


def azure(**kw: Any) -> NavaiVoiceBackendOptions:
    kw.setdefault("azure_endpoint", ENDPOINT + "/")
    if "azure_ad_token_provider" not in kw:
        kw.setdefault("azure_api_key", AZURE_KEY)
    kw.setdefault("upstream_timeout_seconds", 5)
    return NavaiVoiceBackendOptions(**kw)


Outcome = tuple[int, "str | None", dict[str, str]]
Try = Callable[[Any], Outcome]


@contextmanager
def four_ways(
    opts: NavaiVoiceBackendOptions, fake: FakeAzure, *, kind: str = "realtime", **keywords: Any
) -> Iterator[list[tuple[str, Try]]]:
    """``attempt(body) -> (status, error message or None, headers)`` through
    both middlewares (route ``kind``) and both client functions."""
    path = TOKEN if kind == "realtime" else TRANSCRIPTION
    sync_function = (
        create_realtime_client_secret_sync
        if kind == "realtime"
        else create_transcription_client_secret_sync
    )
    async_function = (
        create_realtime_client_secret if kind == "realtime" else create_transcription_client_secret
    )

    def failed(exc: NavaiError) -> Outcome:
        return exc.status, exc.message, {k.lower(): v for k, v in exc.headers}

    def sync_attempt(body: Any) -> Outcome:
        with fake.sync_transport() as transport:
            try:
                secret = sync_function(opts, body, transport=transport)
            except NavaiError as exc:
                return failed(exc)
        assert secret.value.startswith("ek_azure_")
        return 200, None, {}

    def async_attempt(body: Any) -> Outcome:
        async def attempt() -> Outcome:
            async with fake.async_transport() as transport:
                try:
                    secret = await async_function(opts, body, transport=transport)
                except NavaiError as exc:
                    return failed(exc)
            assert secret.value.startswith("ek_azure_")
            return 200, None, {}

        return anyio.run(attempt)

    def over_http(post: Any) -> Try:
        def attempt(body: Any) -> Outcome:
            response = post(path, json=body)
            headers = dict(response.headers)
            if response.status_code == 200:
                assert response.json()["value"].startswith("ek_azure_")
                return 200, None, headers
            return response.status_code, response.json()["error"], headers

        return attempt

    with shells(opts, fake, **keywords) as both:
        yield [
            *((name, over_http(post)) for name, post in both),
            ("sync function", sync_attempt),
            ("async function", async_attempt),
        ]


# -- the options -----------------------------------------------------------------------------

EXACTLY_ONE = "Azure OpenAI needs exactly one of azure_api_key and azure_ad_token_provider."
BESIDE = (
    "openai_api_key is set beside azure_endpoint: Azure OpenAI uses azure_api_key "
    "or azure_ad_token_provider. Remove one of them."
)
NEEDS_ENDPOINT = (
    "azure_api_key and azure_ad_token_provider need azure_endpoint "
    "(https://<resource>.openai.azure.com)."
)

INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "endpoint_alone": ({"azure_endpoint": ENDPOINT}, EXACTLY_ONE),
    "key_and_provider": (
        {
            "azure_endpoint": ENDPOINT,
            "azure_api_key": AZURE_KEY,
            "azure_ad_token_provider": Tokens(),
        },
        EXACTLY_ONE,
    ),
    "openai_key_beside_azure_key": (
        {"azure_endpoint": ENDPOINT, "azure_api_key": AZURE_KEY, "openai_api_key": CANARY_KEY},
        BESIDE,
    ),
    "openai_key_beside_provider": (
        {
            "azure_endpoint": ENDPOINT,
            "azure_ad_token_provider": Tokens(),
            "openai_api_key": CANARY_KEY,
        },
        BESIDE,
    ),
    "all_three": (
        {
            "azure_endpoint": ENDPOINT,
            "azure_api_key": AZURE_KEY,
            "azure_ad_token_provider": Tokens(),
            "openai_api_key": CANARY_KEY,
        },
        EXACTLY_ONE,
    ),
    "key_without_endpoint": (
        {"azure_api_key": AZURE_KEY, "openai_api_key": "sk-x"},
        NEEDS_ENDPOINT,
    ),
    "provider_without_endpoint": (
        {"azure_ad_token_provider": Tokens(), "openai_api_key": "sk-x"},
        NEEDS_ENDPOINT,
    ),
    "provider_not_callable": (
        {"azure_endpoint": ENDPOINT, "azure_ad_token_provider": TOKEN_CANARY},
        "azure_ad_token_provider must be a callable returning a token.",
    ),
    "key_with_a_space": (
        {"azure_endpoint": ENDPOINT, "azure_api_key": f"{AZURE_KEY} x"},
        "azure_api_key must be printable ASCII without spaces.",
    ),
    "endpoint_with_credentials": (
        {
            "azure_endpoint": f"https://user:{AZURE_KEY}@my-resource.openai.azure.com",
            "azure_api_key": AZURE_KEY,
        },
        "azure_endpoint must not carry credentials",
    ),
    "endpoint_with_a_query": (
        {"azure_endpoint": ENDPOINT + "?api-version=1", "azure_api_key": AZURE_KEY},
        "azure_endpoint must be an http(s) URL with a host and no query or fragment.",
    ),
    "endpoint_not_a_url": (
        {"azure_endpoint": "my-resource", "azure_api_key": AZURE_KEY},
        "azure_endpoint must be an http(s) URL with a host and no query or fragment.",
    ),
}


@pytest.mark.parametrize(("kw", "message"), list(INVALID.values()), ids=list(INVALID))
def test_invalid_azure_options_are_options_errors(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionsError) as caught:
        NavaiVoiceBackendOptions(**kw)
    if message.endswith("."):  # the whole message
        assert caught.value.message == message
    else:
        assert message in caught.value.message
    for secret in (AZURE_KEY, TOKEN_CANARY, CANARY_KEY):
        assert secret not in str(caught.value)


@pytest.mark.parametrize(
    "credential",
    [
        {"azure_api_key": AZURE_KEY},
        {"azure_ad_token_provider": Tokens()},
        {"azure_ad_token_provider": AsyncTokens()},
    ],
    ids=["api_key", "sync_provider", "async_provider"],
)
def test_valid_azure_options(credential: dict[str, Any]) -> None:
    opts = NavaiVoiceBackendOptions(azure_endpoint=ENDPOINT + "/", **credential)
    assert opts.uses_azure
    assert opts.azure_endpoint == ENDPOINT  # the trailing slash dropped
    assert opts.openai_api_key is None
    for secret in (AZURE_KEY, TOKEN_CANARY):
        assert secret not in repr(opts)
    provider = credential.get("azure_ad_token_provider")
    if provider is not None:
        assert provider.calls == 0  # asked per request, never at start-up
    # Allowing request keys is no error: they are never sent to Azure.
    assert NavaiVoiceBackendOptions(
        azure_endpoint=ENDPOINT, allow_api_key_from_request=True, **credential
    ).uses_azure


def test_build_upstream_request_names_azure_url_and_api_key() -> None:
    request = build_upstream_request(azure(default_model="my-realtime-deployment"), {})
    assert request.url == f"{ENDPOINT}{AZURE_PATH}"
    headers = dict(request.headers)
    assert headers["api-key"] == AZURE_KEY
    assert "Authorization" not in headers
    assert json.loads(request.body)["session"]["model"] == "my-realtime-deployment"
    assert AZURE_KEY not in repr(request)
    # A token provider is asked on every mint; there is nothing to build before.
    with pytest.raises(OptionsError) as caught:
        build_upstream_request(azure(azure_ad_token_provider=Tokens()), {})
    assert caught.value.message == (
        "azure_ad_token_provider is asked for a token on every request: mint with "
        "create_realtime_client_secret or the middleware."
    )


# -- the environment -----------------------------------------------------------------------------


def test_the_environment_selects_azure_with_a_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="navai_mw")
    opts = get_navai_voice_backend_options_from_env(
        {
            "AZURE_OPENAI_ENDPOINT": ENDPOINT,
            "AZURE_OPENAI_API_KEY": AZURE_KEY,
            "NAVAI_ALLOW_FRONTEND_API_KEY": "true",
        }
    )
    assert opts.azure_endpoint == ENDPOINT
    assert opts.azure_api_key == AZURE_KEY
    assert opts.openai_api_key is None
    assert opts.allow_api_key_from_request is False
    assert caplog.records == []


def test_azure_wins_over_openai_api_key_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="navai_mw")
    opts = get_navai_voice_backend_options_from_env(
        {
            "AZURE_OPENAI_ENDPOINT": ENDPOINT,
            "AZURE_OPENAI_API_KEY": AZURE_KEY,
            "OPENAI_API_KEY": CANARY_KEY,
        }
    )
    assert opts.uses_azure
    assert opts.openai_api_key is None
    assert [record.getMessage() for record in caplog.records] == [AZURE_WINS_WARNING]
    assert caplog.records[0].levelno == logging.WARNING
    assert "OPENAI_API_KEY is ignored" in AZURE_WINS_WARNING
    assert CANARY_KEY not in caplog.text
    assert AZURE_KEY not in caplog.text


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AZURE_OPENAI_ENDPOINT": ENDPOINT}, EXACTLY_ONE),
        ({"AZURE_OPENAI_ENDPOINT": ENDPOINT, "OPENAI_API_KEY": CANARY_KEY}, EXACTLY_ONE),
        ({"AZURE_OPENAI_API_KEY": AZURE_KEY, "OPENAI_API_KEY": CANARY_KEY}, NEEDS_ENDPOINT),
    ],
    ids=["endpoint_alone", "endpoint_and_openai_key", "key_without_endpoint"],
)
def test_incomplete_azure_environments_are_options_errors(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(OptionsError) as caught:
        get_navai_voice_backend_options_from_env(env)
    assert caught.value.message == message


def test_a_middleware_from_the_environment_mints_with_azure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="navai_mw")
    for name, value in {
        "AZURE_OPENAI_ENDPOINT": ENDPOINT,
        "AZURE_OPENAI_API_KEY": AZURE_KEY,
        "OPENAI_API_KEY": CANARY_KEY,
        "OPENAI_REALTIME_MODEL": "my-realtime-deployment",
    }.items():
        monkeypatch.setenv(name, value)
    fake = FakeAzure()
    with fake.sync_transport() as transport:
        wsgi = NavaiWSGIMiddleware(inner_wsgi, transport=transport)
        with httpx.Client(transport=httpx.WSGITransport(app=wsgi), base_url="http://api.test") as c:
            response = c.post(TOKEN, json={"apiKey": "sk-from-the-page"})
    assert response.status_code == 200, response.text
    assert AZURE_WINS_WARNING in [record.getMessage() for record in caplog.records]
    sent = fake.requests[0]
    assert sent.path == AZURE_PATH
    assert sent.headers["api-key"] == AZURE_KEY
    assert "authorization" not in sent.headers
    assert sent.json["session"]["model"] == "my-realtime-deployment"


def test_the_cli_banner_notes_that_azure_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from navai_mw.cli import banner as cli_banner

    env = {"AZURE_OPENAI_ENDPOINT": ENDPOINT, "AZURE_OPENAI_API_KEY": AZURE_KEY}
    opts = get_navai_voice_backend_options_from_env(env)

    def banner() -> str:
        return cli_banner._banner(
            "127.0.0.1", 8000, TOKEN, opts, None, Guard(), FunctionRegistry(), demo=False
        )

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    quiet = banner()
    monkeypatch.setenv("OPENAI_API_KEY", CANARY_KEY)
    noted = banner()
    assert f"NOTE: {AZURE_WINS_WARNING}." in noted
    assert "NOTE:" not in quiet
    for text in (quiet, noted):
        assert ENDPOINT in text  # the upstream line
        assert "Azure OpenAI with api-key; keys from requests: never sent to Azure" in text
        assert AZURE_KEY not in text
        assert CANARY_KEY not in text


# -- minting through Azure -------------------------------------------------------------------------


def test_the_url_api_key_and_deployment_four_ways() -> None:
    fake = FakeAzure()
    template = {"audio": {"input": {"turn_detection": SERVER_VAD}}, "tools": [FUNCTION_TOOL]}
    opts = azure(
        default_model="my-realtime-deployment",
        allowed_models=["my-realtime-deployment", "my-mini-deployment"],
        session=template,
    )
    with four_ways(opts, fake) as ways:
        for name, attempt in ways:
            assert attempt({})[0] == 200, name
            assert attempt({"model": "my-mini-deployment"})[0] == 200, name
            assert attempt({"model": "gpt-realtime"})[0] == 403, name
    assert len(fake.requests) == 8
    for index, request in enumerate(fake.requests):
        assert request.method == "POST"
        assert request.path == AZURE_PATH
        assert request.headers["host"] == "my-resource.openai.azure.com"
        assert request.headers["api-key"] == AZURE_KEY
        assert "authorization" not in request.headers
        session = request.json["session"]
        assert session["model"] == ("my-realtime-deployment", "my-mini-deployment")[index % 2]
        assert session["tools"] == [FUNCTION_TOOL]
        assert_openai_accepts(session)
        assert request.json["expires_after"] == {"anchor": "created_at", "seconds": 600}


def test_transcription_secrets_through_azure_four_ways() -> None:
    fake = FakeAzure()
    opts = azure(transcription_model="my-transcribe-deployment", transcription_language="es")
    with four_ways(opts, fake, kind="transcription") as ways:
        for name, attempt in ways:
            assert attempt({"prompt": "Tapas"})[0] == 200, name
    assert len(fake.requests) == 4
    for request in fake.requests:
        assert request.path == AZURE_PATH
        assert request.headers["api-key"] == AZURE_KEY
        session = request.json["session"]
        assert session == {
            "type": "transcription",
            "audio": {
                "input": {
                    "transcription": {
                        "model": "my-transcribe-deployment",
                        "language": "es",
                        "prompt": "Tapas",
                    }
                }
            },
        }
        assert_openai_accepts(session)


@pytest.mark.parametrize("provider_kind", [Tokens, AsyncTokens], ids=["sync", "async"])
@pytest.mark.parametrize("kind", ["realtime", "transcription"])
def test_an_entra_token_provider_is_called_once_per_request(
    provider_kind: type[Tokens], kind: str
) -> None:
    fake = FakeAzure(api_key=None)
    provider = provider_kind()
    opts = azure(azure_ad_token_provider=provider)
    with four_ways(opts, fake, kind=kind) as ways:
        assert provider.calls == 0  # building the middlewares asked nothing
        for name, attempt in ways:
            for _ in range(2):
                before = provider.calls
                assert attempt({})[0] == 200, name
                assert provider.calls == before + 1, name
    assert provider.calls == len(fake.requests) == 8
    # Each request carried the token the provider had just handed out.
    assert [r.headers["authorization"] for r in fake.requests] == [
        f"Bearer {token}" for token in provider.given
    ]
    assert all("api-key" not in r.headers for r in fake.requests)


def test_where_the_shells_run_a_token_provider() -> None:
    fake = FakeAzure(api_key=None)
    sync_provider, async_provider = Tokens(), AsyncTokens()
    with shells(azure(azure_ad_token_provider=sync_provider), fake) as both:
        for name, post in both:
            assert post(TOKEN, json={}).status_code == 200, name
    # Both shells: a sync provider in a worker thread, which the request
    # stops waiting for when the upstream budget runs out.
    assert sync_provider.async_library == [None, None]
    assert sync_provider.threads[0] != threading.get_ident()
    assert sync_provider.threads[1] != threading.get_ident()
    with shells(azure(azure_ad_token_provider=async_provider), fake) as both:
        for name, post in both:
            assert post(TOKEN, json={}).status_code == 200, name
    # Both on an event loop: ASGI's own; WSGI's loop thread.
    assert async_provider.async_library == ["asyncio", "asyncio"]
    assert async_provider.threads[1] != threading.get_ident()


def test_a_request_key_is_never_sent_to_azure() -> None:
    fake = FakeAzure()
    opts = azure(allow_api_key_from_request=True)
    for kind in ("realtime", "transcription"):
        with four_ways(opts, fake, kind=kind) as ways:
            for name, attempt in ways:
                assert attempt({"apiKey": CANARY_KEY})[0] == 200, name
    assert len(fake.requests) == 8
    for request in fake.requests:
        assert request.headers["api-key"] == AZURE_KEY
        assert CANARY_KEY not in json.dumps(request.headers)
        assert CANARY_KEY.encode() not in request.body


PROVIDER_FAILURES: dict[str, tuple[Callable[[], Any], str]] = {
    "raises": (
        lambda: (_ for _ in ()).throw(RuntimeError(f"login failed for {TOKEN_CANARY}")),
        "Azure OpenAI token provider failed; no token to send.",
    ),
    "returns_none": (lambda: None, "Azure OpenAI token provider returned no usable token."),
    "returns_empty": (lambda: "", "Azure OpenAI token provider returned no usable token."),
    "returns_blank": (lambda: "   ", "Azure OpenAI token provider returned no usable token."),
    "returns_bytes": (
        lambda: TOKEN_CANARY.encode(),
        "Azure OpenAI token provider returned no usable token.",
    ),
    "returns_non_ascii": (
        lambda: "tøken",
        "Azure OpenAI token provider returned no usable token.",
    ),
    "returns_a_header_break": (
        lambda: f"{TOKEN_CANARY}\r\nX-Injected: 1",
        "Azure OpenAI token provider returned no usable token.",
    ),
}


def _async_of(function: Callable[[], Any]) -> Callable[[], Any]:
    async def provider() -> Any:
        await anyio.sleep(0)
        return function()

    return provider


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("provider", "message"), list(PROVIDER_FAILURES.values()), ids=list(PROVIDER_FAILURES)
)
def test_a_failing_token_provider_is_a_502_naming_azure(
    provider: Callable[[], Any], message: str, sync: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="navai_mw")
    fake = FakeAzure(api_key=None)
    opts = azure(azure_ad_token_provider=provider if sync else _async_of(provider))
    with four_ways(opts, fake) as ways:
        for name, attempt in ways:
            caplog.clear()
            status, error, headers = attempt({})
            assert (status, error) == (502, message), name
            assert TOKEN_CANARY not in json.dumps(headers)
            assert any(
                "the Azure token provider" in record.getMessage() for record in caplog.records
            ), name
    assert fake.requests == []  # nothing was sent without a token


def test_azure_errors_map_like_openais_and_keys_are_redacted() -> None:
    fake = FakeAzure()
    with four_ways(azure(), fake) as ways:
        for name, attempt in ways:
            fake.fail(401, f"Access denied due to invalid subscription key {AZURE_KEY}.")
            status, error, _ = attempt({})
            assert status == 502, name
            assert error == (
                "Azure OpenAI client_secrets failed (401): "
                "Access denied due to invalid subscription key [redacted]."
            )
            fake.fail(
                429,
                "Requests to the deployment exceeded the rate limit.",
                headers={"Retry-After": "7"},
            )
            status, error, headers = attempt({})
            assert (status, headers["retry-after"]) == (429, "7"), name
            assert error is not None
            assert error.startswith("Azure OpenAI client_secrets failed (429): ")
            fake.fail(500, "Internal server error", times=3)
            before = len(fake.requests)
            status, error, _ = attempt({})
            assert status == 502, name
            assert error == "Azure OpenAI client_secrets failed (500): Internal server error"
            assert len(fake.requests) - before == 3  # two retries, as with OpenAI
            fake.garbage()
            status, error, _ = attempt({})
            assert (status, error) == (
                502,
                "Azure OpenAI client_secrets returned a body that is not a JSON object.",
            ), name


def test_a_bearer_token_echoed_by_azure_is_redacted() -> None:
    fake = FakeAzure(api_key=None)
    provider = Tokens()
    with four_ways(azure(azure_ad_token_provider=provider), fake) as ways:
        for name, attempt in ways:
            fake.fail(401, f"Token {TOKEN_CANARY}-{provider.calls + 1} has expired.")
            status, error, _ = attempt({})
            assert status == 502, name
            assert (
                error == "Azure OpenAI client_secrets failed (401): Token [redacted] has expired."
            )


@pytest.mark.anyio
async def test_a_slow_azure_is_a_504_naming_azure() -> None:
    fake = FakeAzure()
    fake.stall = 5.0
    async with fake.async_transport() as transport:
        with pytest.raises(NavaiError) as caught:
            await create_realtime_client_secret(
                azure(upstream_timeout_seconds=0.3), transport=transport
            )
    assert caught.value.status == 504
    assert caught.value.message == "Azure OpenAI client_secrets timed out."


def test_azure_keys_and_tokens_never_leak(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    provider = Tokens()
    for opts, fake, next_secret in (
        (azure(), FakeAzure(), lambda: AZURE_KEY),
        (
            azure(azure_ad_token_provider=provider),
            FakeAzure(api_key=None),
            lambda: f"{TOKEN_CANARY}-{provider.calls + 1}",
        ),
    ):
        seen.append(repr(opts))
        with four_ways(opts, fake) as ways:
            for _, attempt in ways:
                seen.append(repr(attempt({})))
                # Azure quotes back the credential it was sent.
                fake.fail(403, f"Credential {next_secret()} is not allowed here")
                seen.append(repr(attempt({})))
                seen.append(repr(attempt({"apiKey": CANARY_KEY})))
    with shells(azure(azure_ad_token_provider=PROVIDER_FAILURES["raises"][0]), FakeAzure()) as both:
        for _, post in both:
            response = post(TOKEN, json={})
            assert response.status_code == 502
            seen.append(response.text + repr(response.headers))
    text = "\n".join(seen) + "\n".join(record.getMessage() for record in caplog.records)
    # Eight answers, and the shells' four log lines: each with the echo removed.
    assert text.count("Credential [redacted] is not allowed here") == 12
    for secret in (AZURE_KEY, TOKEN_CANARY, CANARY_KEY):
        assert secret not in text


# -- under real servers, with the middlewares' own upstream clients ------------------------------


@pytest.fixture
def served_azure() -> Iterator[tuple[FakeAzure, str]]:
    fake = FakeAzure()
    with serve_asgi(fake) as url:
        yield fake, url


@pytest.fixture(params=["uvicorn", "waitress"])
def serve(request: pytest.FixtureRequest) -> Callable[[NavaiVoiceBackendOptions], Any]:
    @contextmanager
    def run(opts: NavaiVoiceBackendOptions) -> Iterator[str]:
        if request.param == "uvicorn":
            with serve_asgi(NavaiASGIMiddleware(lifespan_asgi, opts)) as url:
                yield url
        else:
            wsgi = NavaiWSGIMiddleware(plain_wsgi, opts)
            try:
                with serve_waitress(wsgi) as url:
                    yield url
            finally:
                wsgi.close()

    return run


def test_azure_under_a_real_server(
    served_azure: tuple[FakeAzure, str], serve: Callable[[NavaiVoiceBackendOptions], Any]
) -> None:
    fake, endpoint = served_azure
    provider = AsyncTokens()
    broken = itertools.count()

    def header_break() -> str:
        next(broken)
        return f"{TOKEN_CANARY}\r\nX-Injected: 1"

    cases = [
        (azure(azure_endpoint=endpoint, upstream_timeout_seconds=10), 200),
        (azure(azure_endpoint=endpoint, azure_ad_token_provider=provider), 200),
        (azure(azure_endpoint=endpoint, azure_ad_token_provider=header_break), 502),
    ]
    for opts, status in cases:
        with serve(opts) as url, httpx.Client(base_url=url, timeout=20) as client:
            for path in (TOKEN, TRANSCRIPTION):
                response = client.post(path, json={"apiKey": CANARY_KEY})
                assert response.status_code == status, (path, response.text)
                if status == 200:
                    assert response.json()["value"].startswith("ek_azure_")
                else:
                    assert "Azure" in response.json()["error"]
                for secret in (AZURE_KEY, TOKEN_CANARY, CANARY_KEY):
                    assert secret not in response.text
    assert provider.calls == 2
    assert next(broken) == 2
    assert len(fake.requests) == 4
    assert [r.headers.get("api-key") for r in fake.requests] == [AZURE_KEY, AZURE_KEY, None, None]
    assert [r.headers.get("authorization") for r in fake.requests[2:]] == [
        f"Bearer {token}" for token in provider.given
    ]
    assert all(r.path == AZURE_PATH for r in fake.requests)
    assert all("x-injected" not in r.headers for r in fake.requests)
    assert [r.json["session"]["type"] for r in fake.requests] == [
        "realtime",
        "transcription",
    ] * 2


# -- the token provider's time comes out of every exchange's budget ----------------------


def _attempt_after_the_provider(steps: Any, provider: object, elapsed: float) -> Any:
    """Drive ``steps`` by hand: the token provider took ``elapsed`` seconds,
    another hook (accept_call) answers at once; the first upstream attempt."""
    effect = next(steps)
    while not isinstance(effect, Attempt):
        assert isinstance(effect, CallHook), effect
        if effect.hook is provider:
            effect = steps.send(HookResult(value="entra-token", elapsed=elapsed))
        else:
            effect = steps.send(HookResult(value=effect.hook(*effect.args)))
    return effect


@pytest.mark.parametrize(
    "route", ["live relay", "phone refusal", "phone transfer", "phone acceptance"]
)
def test_what_the_token_provider_took_is_not_given_to_the_exchange_again(route: str) -> None:
    tokens = Tokens()
    opts = azure(azure_ad_token_provider=tokens, upstream_timeout_seconds=7)
    if route == "live relay":
        settings = Endpoint(opts, relay=True).settings
        info = RequestInfo(method="POST", route="live", path="/navai/live/sessions", headers={})
        steps = live_handle(
            settings, Call({}, info, None, raw=b"v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n")
        )
    else:
        answer = {"refusal": Reject(486), "transfer": Refer("tel:+14155550199")}.get(
            route.removeprefix("phone "), Accept()
        )
        settings = Endpoint(
            opts,
            openai_webhook_secret="whsec_c2lnbmluZyBrZXk=",
            accept_call=lambda call: answer,
            webhook_clock=lambda: 1_700_000_000.0,
        ).settings
        info = RequestInfo(
            method="POST", route="openai_webhook", path="/navai/webhooks/openai", headers={}
        )
        ringing = IncomingCall(call_id="rtc_0123456789abcdef", kind="realtime")
        steps = answer_phone_call(settings, ringing, info)
    attempt = _attempt_after_the_provider(steps, tokens, elapsed=4.0)
    assert dict(attempt.request.headers)["Authorization"] == "Bearer entra-token"
    assert attempt.timeout == pytest.approx(3.0)  # 7 s, less the provider's 4


# What a ringing call is answered with, and what the store and the
# process say on its way: the blocked set (None: it cannot be read) and
# room for its sideband.
PHONE_ANSWERS: dict[str, tuple[Any, bool | None, bool, str, dict[str, Any] | None]] = {
    "refusal": (Reject(486), False, True, "reject", {"status_code": 486}),
    "transfer": (Refer("tel:+14155550199"), False, True, "refer", None),
    "acceptance": (Accept(identity="alice"), False, True, "accept", None),
    "blocked caller": (Accept(identity="alice"), True, True, "reject", {"status_code": 403}),
    "blocked set unread": (Accept(identity="alice"), None, True, "reject", {"status_code": 503}),
    "session not sendable": (
        Accept(identity="alice", session={"instructions": 42}),
        False,
        True,
        "reject",
        {"status_code": 500},
    ),
    "no room": (Accept(identity="alice"), False, False, "reject", {"status_code": 503}),
}


@pytest.mark.parametrize("kind", ["realtime", "live"])
@pytest.mark.parametrize("answer", list(PHONE_ANSWERS))
def test_a_phone_calls_answer_has_what_the_token_provider_left_of_the_budget(
    kind: str, answer: str
) -> None:
    hooked, blocked, room, action, body = PHONE_ANSWERS[answer]
    tokens = Tokens()
    opts = azure(azure_ad_token_provider=tokens, upstream_timeout_seconds=7)
    settings = Endpoint(
        opts,
        openai_webhook_secret="whsec_c2lnbmluZyBrZXk=",
        accept_call=lambda call: hooked,
        webhook_clock=lambda: 1_700_000_000.0,
        sideband=True,
        sideband_required=True,
        guard=Guard(safety_secret=b"the Azure tests' safety secret"),
    ).settings
    info = RequestInfo(
        method="POST", route="openai_webhook", path="/navai/webhooks/openai", headers={}
    )
    ringing = IncomingCall(call_id="rtc_0123456789abcdef", kind=kind)
    steps = answer_phone_call(settings, ringing, info)
    effect = next(steps)
    while not isinstance(effect, Attempt):
        if isinstance(effect, IsBlocked):
            effect = steps.send(blocked)
        elif isinstance(effect, SidebandRoom):
            effect = steps.send(room)
        elif effect.hook is tokens:
            effect = steps.send(HookResult(value="entra-token", elapsed=4.0))
        else:
            effect = steps.send(HookResult(value=effect.hook(*effect.args)))
    assert effect.request.url.endswith(f"/{action}")
    if body is not None:
        assert json.loads(effect.request.body) == body
    assert effect.timeout == pytest.approx(3.0)  # 7 s, less the provider's 4
