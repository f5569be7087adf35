"""Routes beyond the reference's four are off until switched on: the WebRTC
relays (``relay=True``, ``NAVAI_RELAY``) and the transcription-secret route
(``transcription=True``, ``NAVAI_TRANSCRIPTION``). Off, their paths are not
navai's: the request reaches the app as any other would, on both shells."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio.from_thread
import httpx
import pytest

from navai_mw import (
    NavaiASGIMiddleware,
    NavaiHandler,
    NavaiVoiceBackendOptions,
    NavaiWSGIMiddleware,
    OptionsError,
)
from navai_mw.cli.banner import _banner
from navai_mw.endpoint.endpoint import Endpoint
from navai_mw.functions import FunctionRegistry
from navai_mw.guard.guard import Guard

OPTS = NavaiVoiceBackendOptions(openai_api_key="sk-switches")
REFERENCE = ["client_secret", "speech_synthesize", "functions_list", "functions_execute"]
RELAY = ["calls", "call_hangup", "live", "live_close", "usage"]
# (method, path): a request only the route itself would answer with a 405.
PROBES = {
    "relay": [
        ("GET", "/navai/realtime/calls"),
        ("GET", "/navai/live/sessions"),
        ("POST", "/navai/usage"),
    ],
    "transcription": [("GET", "/navai/realtime/transcription-secret")],
}


async def app_asgi(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b"the app's own 404"})


def app_wsgi(environ: Any, start_response: Any) -> Iterable[bytes]:
    start_response("404 Not Found", [])
    return [b"the app's own 404"]


@contextmanager
def both_shells(**keywords: Any) -> Iterator[list[tuple[str, Any]]]:
    with anyio.from_thread.start_blocking_portal() as portal:
        asgi = NavaiASGIMiddleware(app_asgi, OPTS, functions=[], **keywords)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://t")
        wsgi = NavaiWSGIMiddleware(app_wsgi, OPTS, functions=[], **keywords)
        with httpx.Client(transport=httpx.WSGITransport(app=wsgi), base_url="http://t") as sync:

            def asgi_request(method: str, path: str) -> httpx.Response:
                return portal.call(lambda: client.request(method, path))

            try:
                yield [("asgi", asgi_request), ("wsgi", sync.request)]
            finally:
                portal.call(client.aclose)
                wsgi.close()


def test_by_default_only_the_reference_routes_are_served() -> None:
    assert [route.name for route in Endpoint(OPTS).routes] == REFERENCE


@pytest.mark.parametrize("feature", ["relay", "transcription"])
def test_a_route_switched_off_is_the_apps_path(
    feature: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NAVAI_RELAY", raising=False)
    monkeypatch.delenv("NAVAI_TRANSCRIPTION", raising=False)
    with both_shells() as shells:
        for name, request in shells:
            for method, path in PROBES[feature]:
                response = request(method, path)
                assert (response.status_code, response.text) == (404, "the app's own 404"), name


@pytest.mark.parametrize("how", ["keyword", "environment"])
@pytest.mark.parametrize("feature", ["relay", "transcription"])
def test_a_route_switched_on_is_navais(
    feature: str, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keywords: dict[str, Any] = {}
    if how == "keyword":
        keywords[feature] = True
    else:
        monkeypatch.setenv(f"NAVAI_{feature.upper()}", "yes")
    with both_shells(**keywords) as shells:
        for name, request in shells:
            for method, path in PROBES[feature]:
                response = request(method, path)
                assert response.status_code == 405, name  # navai's: it takes POST
                assert response.json()["error"].startswith("Method not allowed"), name


def test_a_keyword_given_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAVAI_RELAY", "true")
    handler = NavaiHandler(OPTS, functions=[], relay=False)
    try:
        assert [route.name for route in handler.endpoint.routes] == REFERENCE
    finally:
        handler.close()


@pytest.mark.parametrize("variable", ["NAVAI_RELAY", "NAVAI_TRANSCRIPTION"])
def test_a_switch_that_is_not_yes_or_no_fails_at_start_up(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, "sometimes")
    with pytest.raises(OptionsError, match=variable):
        NavaiHandler(OPTS, functions=[])


def test_relay_brings_its_routes() -> None:
    names = [route.name for route in Endpoint(OPTS, relay=True).routes]
    assert names == [*REFERENCE, *RELAY]
    assert Endpoint(OPTS, relay=True).relays
    assert not Endpoint(OPTS).relays


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_switch_in_code_must_be_true_or_false(value: object) -> None:
    with pytest.raises(OptionsError, match="relay must be True or False"):
        Endpoint(OPTS, relay=value)  # type: ignore[arg-type]


def test_the_banner_says_which_routes_are_off() -> None:
    endpoint = Endpoint(OPTS)
    text = _banner(
        "127.0.0.1",
        3000,
        "/navai/realtime/client-secret",
        OPTS,
        None,
        Guard(),
        FunctionRegistry(),
        demo=False,
        routes={route.name: route.path for route in endpoint.routes},
    )
    assert "WebRTC calls    off (NAVAI_RELAY=true, or serve --page)" in text
    assert "transcription   off (NAVAI_TRANSCRIPTION=true)" in text
    relayed = Endpoint(OPTS, relay=True, transcription=True)
    text = _banner(
        "127.0.0.1",
        3000,
        "/navai/realtime/client-secret",
        OPTS,
        None,
        Guard(),
        FunctionRegistry(),
        demo=False,
        routes={route.name: route.path for route in relayed.routes},
    )
    assert "POST http://127.0.0.1:3000/navai/realtime/calls" in text
    assert "POST http://127.0.0.1:3000/navai/realtime/transcription-secret" in text
