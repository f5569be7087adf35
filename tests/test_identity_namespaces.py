"""Identities are told apart by the authority that proved them: with
``any_of(bearer_tokens({"ops": ...}), jwt_bearer(...))``, a JWT whose
``sub`` is ``ops`` is another caller than the service token named ``ops``.
It cannot hang up the service's call, spends none of its rate-limit budget,
and gets another safety identifier; both shells."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

from navai_mw import NavaiVoiceBackendOptions
from navai_mw.auth import any_of, bearer_tokens
from navai_mw.core.http import HttpRequest, HttpResponse
from navai_mw.core.identity import Identity, identity_key
from navai_mw.guard.guard import Guard
from navai_mw.testing import FakeJWKS

from .conftest import CANARY_KEY
from .test_relay import CALLS, OFFER, SDP, Upstream, both_shells

OPS_TOKEN = "ops-service-token-0123456789"


class WithJWKS(Upstream):
    """OpenAI's calls API, and the identity provider's keys."""

    def __init__(self, jwks: FakeJWKS) -> None:
        super().__init__()
        self.jwks = jwks

    def reply(self, request: HttpRequest) -> HttpResponse:
        if request.url.startswith(self.jwks.base_url):
            with self.jwks.sync_transport() as keys:
                return keys.send(request, timeout=5)
        return super().reply(request)


@pytest.fixture(autouse=True)
def _relay_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAVAI_RELAY", "true")


def safety_ids(upstream: Upstream) -> list[str | None]:
    return [dict(r.headers).get("OpenAI-Safety-Identifier") for r in upstream.offers()]


def test_a_jwt_named_like_a_service_token_is_another_caller() -> None:
    jwks = FakeJWKS()
    upstream = WithJWKS(jwks)
    authorize = any_of(bearer_tokens({"ops": OPS_TOKEN}), jwks.authorizer())
    service = {"Authorization": f"Bearer {OPS_TOKEN}"}
    impostor = {"Authorization": f"Bearer {jwks.token('ops')}"}
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY)
    # Calls count with mints: the service may start its call and mint once.
    with both_shells(upstream, opts, authorize=authorize, rate_limit="2/minute") as shells:
        for _, request, _ in shells:
            made = request("POST", CALLS, content=OFFER, headers={**SDP, **service})
            assert made.status_code == 201, made.text
            location = made.headers["location"].removeprefix("/app")
            # The JWT's "ops" cannot end the service's call...
            assert request("DELETE", location, headers=impostor).status_code == 404
            # ...and has a rate-limit budget of its own: once the service has
            # spent its budget, the JWT's caller still has theirs.
            mint = "/navai/realtime/client-secret"
            first = request("POST", mint, json={}, headers=service)
            assert first.status_code != 429, first.text
            assert request("POST", mint, json={}, headers=service).status_code == 429
            assert request("POST", mint, json={}, headers=impostor).status_code != 429
            assert request("DELETE", location, headers=service).status_code == 204


def test_the_key_names_the_scheme_the_safety_identifier_follows_it() -> None:
    guard = Guard(safety_secret=b"k")
    service, user = Identity("ops", "token"), Identity("ops", "jwt:https://idp.test/")
    assert service == user == "ops"  # the same name, as a function sees it
    assert identity_key(service) == "token:ops"
    assert identity_key(user) == "jwt:https://idp.test/:ops"
    assert identity_key("alice") == "app:alice"  # an authorize hook's, a view's
    assert identity_key(None) is None
    assert guard.safety_identifier(service) != guard.safety_identifier(user)
    assert guard.safety_identifier("ops") not in (
        guard.safety_identifier(service),
        guard.safety_identifier(user),
    )


def test_the_built_in_authorizers_say_which_scheme_proved_the_name() -> None:
    from navai_mw.core.http import RequestInfo

    def proved(authorizer: Any, token: str) -> Any:
        info = RequestInfo(
            method="POST", route="calls", path="/", headers={"authorization": f"Bearer {token}"}
        )
        steps = authorizer.steps(info)
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        raise AssertionError("no JWKS fetch expected")

    identity = proved(bearer_tokens({"ops": OPS_TOKEN}), OPS_TOKEN)
    assert identity == "ops"
    assert identity_key(identity) == "token:ops"


def test_an_identity_keeps_its_scheme_when_copied_or_pickled() -> None:
    """A report or a function's context may be copied or sent to another
    process (a task queue, a multiprocessing pool): the identity still
    names the authority that proved it."""
    identity = Identity("ops", "jwt:https://issuer.example")
    for copied in (
        copy.copy(identity),
        copy.deepcopy(identity),
        pickle.loads(pickle.dumps(identity)),  # noqa: S301 - our own bytes
    ):
        assert type(copied) is Identity
        assert copied == "ops"
        assert identity_key(copied) == "jwt:https://issuer.example:ops"
