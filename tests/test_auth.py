"""navai_mw.auth: fixed bearer tokens, JWTs against a real JWKS server, any_of,
and the environment.

The JWKS is served on 127.0.0.1 by a real HTTP server thread that can rotate
its keys, fail, stall or stop, and counts its hits; keys are generated here.
The authorizers' steps are driven by the package's own drivers over the
default httpx transports, sync and async.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from navai_mw import NavaiError, OptionsError, UpstreamError
from navai_mw.auth import (
    MAX_JWKS_BYTES,
    AnyOf,
    BearerTokens,
    JWTBearer,
    any_of,
    authorizer_from_env,
    bearer_tokens,
    jwt_bearer,
)
from navai_mw.core.effects import Attempt, Outcome, Pause
from navai_mw.core.errors import AuthError
from navai_mw.core.http import RequestInfo
from navai_mw.guard import jwt_bearer as jwt_bearer_module
from navai_mw.guard.authorizers import Authorizer, AuthSteps
from navai_mw.guard.guard import Guard
from navai_mw.guard.jwt_bearer import FAILED_FETCH_BACKOFF_SECONDS, MAX_TOKEN_CHARS
from navai_mw.runtime.drivers import drive_async, drive_sync
from navai_mw.transports import HttpxAsyncTransport, HttpxSyncTransport

AUD = "https://api.example.test"
ISS = "https://issuer.example.test/"
NOW = 1_700_000_000.0
TOKEN_A = "tok-alpha-0123456789abcdef"
TOKEN_B = "tok-bravo-0123456789abcdef"
SECRET_IN_CONFIG = "SECRETSECRET0123456789"


# -- helpers ----------------------------------------------------------------------------


def info(authorization: str | None) -> RequestInfo:
    headers = {} if authorization is None else {"authorization": authorization}
    return RequestInfo(
        method="POST",
        route="client_secret",
        path="/navai/realtime/client-secret",
        headers=headers,
    )


class FakeMonotonic:
    """The cache's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value).encode())


@dataclass(frozen=True)
class Keys:
    rsa: RSAPrivateKey
    ec: EllipticCurvePrivateKey
    rotated: RSAPrivateKey  # the provider's next key
    stranger: RSAPrivateKey  # nobody's key
    weak: RSAPrivateKey  # 1024 bits


def jwk(key: RSAPrivateKey | EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    if isinstance(key, RSAPrivateKey):
        data = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        data = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**data, "kid": kid, "use": "sig"}


def claims(**changes: Any) -> dict[str, Any]:
    """Valid claims, with ``changes``; a change to None drops the claim."""
    base: dict[str, Any] = {
        "sub": "user-1",
        "aud": AUD,
        "iss": ISS,
        "iat": NOW - 10,
        "exp": NOW + 300,
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def sign(
    key: RSAPrivateKey | EllipticCurvePrivateKey,
    kid: str | None,
    alg: str = "RS256",
    **changes: Any,
) -> str:
    headers = {} if kid is None else {"kid": kid}
    return jwt.encode(claims(**changes), key, algorithm=alg, headers=headers)


def forged(header: dict[str, Any], secret: bytes | None) -> str:
    """A token assembled by hand: HMAC-SHA256 over it with ``secret``, or no
    signature at all."""
    signing_input = f"{b64json(header)}.{b64json(claims())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


class JWKSServer:
    """A JWKS on a real loopback HTTP server: ``keys`` are served as a JWKS
    unless ``status`` or ``body`` say otherwise; ``stall`` holds each
    request unanswered; ``hits`` counts requests."""

    def __init__(self, keys: list[Any]) -> None:
        self.keys = keys
        self.status = 200
        self.body: bytes | None = None
        self.stall = False
        self.hold = False  # answer only once ``release`` is set
        self.hits = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with outer._lock:
                    outer.hits += 1
                if outer.stall:
                    outer.release.wait(10)
                    return
                if outer.hold:
                    outer.release.wait(10)
                body = outer.body
                if body is None:
                    body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self._stopped = False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def keys() -> Keys:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 1024 bits: on purpose
        weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    return Keys(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec=ec.generate_private_key(ec.SECP256R1()),
        rotated=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        stranger=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        weak=weak,
    )


@pytest.fixture
def server(keys: Keys) -> Iterator[JWKSServer]:
    served = JWKSServer([jwk(keys.rsa, "rsa-1"), jwk(keys.ec, "ec-1")])
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def transport() -> Iterator[HttpxSyncTransport]:
    with HttpxSyncTransport() as own:
        yield own


@pytest.fixture
def mono() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens PyJWT is asked to verify, in order."""
    seen: list[str] = []
    real_decode = jwt.decode

    def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    return seen


@pytest.fixture
def make(server: JWKSServer, mono: FakeMonotonic) -> Callable[..., JWTBearer]:
    def build(**options: Any) -> JWTBearer:
        return jwt_bearer(
            server.url, audience=AUD, issuer=ISS, clock=lambda: NOW, monotonic=mono, **options
        )

    return build


def run(authorizer: Authorizer, transport: HttpxSyncTransport, authorization: str | None) -> Any:
    return drive_sync(authorizer.steps(info(authorization)), transport)


def refused(
    authorizer: Authorizer, transport: HttpxSyncTransport, authorization: str | None
) -> AuthError:
    with pytest.raises(AuthError) as caught:
        run(authorizer, transport, authorization)
    error = caught.value
    assert error.status == 401
    # RFC 6750: a token that came and was refused is named invalid_token.
    assert error.error == "invalid_token"
    assert error.headers == (
        (
            "WWW-Authenticate",
            f'Bearer error="invalid_token", error_description="{error.message}"',
        ),
    )
    return error


# -- bearer_tokens ----------------------------------------------------------------------

TOKENS = {"alpha": TOKEN_A, "bravo": TOKEN_B}


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        (f"Bearer {TOKEN_A}", "alpha"),
        (f"Bearer {TOKEN_B}", "bravo"),
        (f"bearer {TOKEN_A}", "alpha"),  # the scheme is case-insensitive (RFC 9110)
        (f"BEARER {TOKEN_B}", "bravo"),
        (f"  Bearer   {TOKEN_A}  ", "alpha"),
        (None, None),  # no header: the guard answers 401
        ("Basic dXNlcjpwYXNz", None),  # another scheme: no bearer credentials
        (f"Token {TOKEN_A}", None),
        ("Bearer", AuthError),
        ("Bearer    ", AuthError),
        ("", None),
        ("Bearer tok-alpha-0123456789abcdeX", AuthError),
        (f"Bearer {TOKEN_A[:-1]}", AuthError),  # a prefix of a token
        (f"Bearer {TOKEN_A}x", AuthError),  # a token plus more
        (f"Bearer {TOKEN_A} {TOKEN_B}", AuthError),
        (f"Bearer {TOKEN_A.upper()}", AuthError),  # tokens are case-sensitive
        ("Bearer alpha", AuthError),  # the name is not the token
        ("Bearer t\u00f6k-alpha-0123456789abcdef", AuthError),  # non-ASCII is just wrong
        ("Bearer \ud800-lone-surrogate-0123456789", AuthError),
    ],
)
def test_bearer_tokens_table(
    transport: HttpxSyncTransport, authorization: str | None, expected: object
) -> None:
    authorizer = bearer_tokens(TOKENS)
    if expected is AuthError:
        error = refused(authorizer, transport, authorization)
        assert error.message == "Invalid bearer token."
        assert TOKEN_A not in repr(error)
        assert TOKEN_B not in repr(error)
    else:
        assert run(authorizer, transport, authorization) == expected


@pytest.mark.parametrize(
    "tokens",
    [
        {"alpha": TOKEN_A, "bravo": TOKEN_B},
        [f"alpha:{TOKEN_A}", f" bravo : {TOKEN_B} "],
        (f"alpha:{TOKEN_A}", f"bravo:{TOKEN_B}"),
        f"alpha:{TOKEN_A},bravo:{TOKEN_B}",
        f" alpha:{TOKEN_A} , bravo:{TOKEN_B} ,",
    ],
)
def test_bearer_tokens_forms(transport: HttpxSyncTransport, tokens: Any) -> None:
    authorizer = bearer_tokens(tokens)
    assert authorizer.names == ("alpha", "bravo")
    assert run(authorizer, transport, f"Bearer {TOKEN_A}") == "alpha"
    assert run(authorizer, transport, f"Bearer {TOKEN_B}") == "bravo"


def test_bearer_tokens_token_may_hold_a_colon(transport: HttpxSyncTransport) -> None:
    authorizer = bearer_tokens("svc:part-one:part-two-0123")
    assert run(authorizer, transport, "Bearer part-one:part-two-0123") == "svc"


def test_bearer_tokens_compares_against_every_token(
    transport: HttpxSyncTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    authorizer = bearer_tokens({"alpha": TOKEN_A, "bravo": TOKEN_B, "charlie": "c" * 20})
    assert run(authorizer, transport, f"Bearer {TOKEN_A}") == "alpha"  # the first matches
    assert len(calls) == 3  # and the others were compared anyway


def test_bearer_tokens_repr_and_memory_hold_no_token() -> None:
    authorizer = bearer_tokens(TOKENS)
    assert repr(authorizer) == "BearerTokens(names=('alpha', 'bravo'))"
    held = repr([getattr(authorizer, slot) for slot in BearerTokens.__slots__])
    assert TOKEN_A not in held
    assert TOKEN_B not in held
    assert isinstance(authorizer, Authorizer)


@pytest.mark.parametrize(
    ("tokens", "fragment"),
    [
        ({}, "at least one"),
        ("", "at least one"),
        (" , ", "at least one"),
        ([], "at least one"),
        (SECRET_IN_CONFIG, "entry 1 is not of the form"),  # a bare token, not quoted back
        (f"alpha:{TOKEN_A},{SECRET_IN_CONFIG}", "entry 2 is not of the form"),
        ([f"alpha:{TOKEN_A}", 5], "entry 2 is not of the form"),
        ({"": SECRET_IN_CONFIG}, "names must be"),
        ({"bad name": SECRET_IN_CONFIG}, "names must be"),
        ({"a/b": SECRET_IN_CONFIG}, "names must be"),
        ({"n" * 65: SECRET_IN_CONFIG}, "names must be"),
        ({5: SECRET_IN_CONFIG}, "names must be"),
        ([f"alpha:{SECRET_IN_CONFIG}", f"alpha:{TOKEN_A}"], "unique: 'alpha' appears twice"),
        ({"alpha": ""}, "is empty"),
        ({"alpha": 12345678901234567890}, "is empty or not a string"),
        ({"alpha": "SECRET with spaces 0123"}, "visible ASCII"),
        ({"alpha": "SECRET\u00e9-0123456789ab"}, "visible ASCII"),
        ({"alpha": "SECRET\t0123456789abc"}, "visible ASCII"),
        ({"alpha": "SECRET-short"}, "shorter than 16"),
        ({"alpha": SECRET_IN_CONFIG, "bravo": SECRET_IN_CONFIG}, "tokens must be unique"),
        (b"alpha:SECRETSECRET0123456789", "takes a mapping"),
        (42, "takes a mapping"),
    ],
)
def test_bearer_tokens_construction_errors(tokens: Any, fragment: str) -> None:
    with pytest.raises(OptionsError) as caught:
        bearer_tokens(tokens)
    assert fragment in caught.value.message
    assert "SECRET" not in caught.value.message


def test_bearer_tokens_construction_messages_whole() -> None:
    def message(tokens: Any) -> str:
        with pytest.raises(OptionsError) as caught:
            bearer_tokens(tokens)
        return caught.value.message

    assert message([]) == "bearer_tokens needs at least one name:token."
    assert message(42) == (
        "bearer_tokens takes a mapping of name to token, 'name:token' strings, "
        "or one 'name:token,name:token' string."
    )
    long_name = "bad name " + "n" * 100
    assert message({long_name: TOKEN_A}) == (
        f"bearer_tokens names must be 1 to 64 of A-Z a-z 0-9 _ . - Received: {repr(long_name)[:80]}"
    )
    assert message({5: TOKEN_A}) == (
        "bearer_tokens names must be 1 to 64 of A-Z a-z 0-9 _ . - Received: int"
    )
    assert message({"alpha": TOKEN_A, "bravo": TOKEN_A}) == (
        "bearer_tokens tokens must be unique: 'alpha' and 'bravo' "
        "share one, so their callers could not be told apart."
    )


def test_a_bearer_token_of_sixteen_characters_is_long_enough(
    transport: HttpxSyncTransport,
) -> None:
    authorizer = bearer_tokens({"alpha": "0123456789abcdef"})
    assert run(authorizer, transport, "Bearer 0123456789abcdef") == "alpha"


def test_bearer_tokens_under_the_guard(transport: HttpxSyncTransport) -> None:
    guard = Guard(authorize=bearer_tokens(TOKENS))
    assert drive_sync(guard.check(info(f"Bearer {TOKEN_B}"), "mint"), transport) == ("bravo", ())
    with pytest.raises(AuthError) as caught:
        drive_sync(guard.check(info(None), "mint"), transport)
    assert caught.value.message == "Authentication required."
    with pytest.raises(AuthError, match=r"^Invalid bearer token\.$"):
        drive_sync(guard.check(info("Bearer nope-nope-nope-nope"), "mint"), transport)


# -- jwt_bearer: what it accepts and refuses ---------------------------------------------


@pytest.mark.parametrize(
    ("build", "subject"),
    [
        (lambda k: sign(k.rsa, "rsa-1"), "user-1"),
        (lambda k: sign(k.ec, "ec-1", "ES256", sub="ec-user"), "ec-user"),
        (lambda k: sign(k.rsa, "rsa-1", exp=NOW - 29), "user-1"),  # within the leeway
        (lambda k: sign(k.rsa, "rsa-1", nbf=NOW + 29), "user-1"),
        (lambda k: sign(k.rsa, "rsa-1", iat=NOW + 29), "user-1"),
        (lambda k: sign(k.rsa, "rsa-1", iat=None), "user-1"),  # iat is optional
        (lambda k: sign(k.rsa, "rsa-1", aud=["other", AUD]), "user-1"),
        (lambda k: sign(k.rsa, "rsa-1", exp=NOW + 300.5), "user-1"),  # NumericDate may be a float
    ],
)
def test_jwt_accepted(
    make: Callable[..., JWTBearer],
    transport: HttpxSyncTransport,
    keys: Keys,
    build: Callable[[Keys], str],
    subject: str,
) -> None:
    proved = run(make(), transport, f"Bearer {build(keys)}")
    assert proved == subject
    assert proved.scheme == f"jwt:{ISS}"  # another issuer's "user-1" is another caller


def test_jwt_bearer_scheme_in_any_case(
    make: Callable[..., JWTBearer], transport: HttpxSyncTransport, keys: Keys
) -> None:
    token = sign(keys.rsa, "rsa-1")
    authorizer = make()
    assert run(authorizer, transport, f"bearer {token}") == "user-1"
    assert run(authorizer, transport, f"BEARER  {token} ") == "user-1"
    assert run(authorizer, transport, None) is None
    assert run(authorizer, transport, f"Basic {token}") is None


def _hs256_with_public_pem(k: Keys) -> str:
    pem = k.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return forged({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, pem)


def _tampered(k: Keys) -> str:
    header, _, signature = sign(k.rsa, "rsa-1").split(".")
    return f"{header}.{b64json(claims(sub='admin'))}.{signature}"


REFUSALS: list[tuple[str, Callable[[Keys], str], str]] = [
    ("expired", lambda k: sign(k.rsa, "rsa-1", exp=NOW - 31), "expired"),
    ("expired at the leeway's edge", lambda k: sign(k.rsa, "rsa-1", exp=NOW - 30), "expired"),
    ("nbf in the future", lambda k: sign(k.rsa, "rsa-1", nbf=NOW + 31), "not yet valid"),
    ("iat in the future", lambda k: sign(k.rsa, "rsa-1", iat=NOW + 31), "not yet valid"),
    ("no exp", lambda k: sign(k.rsa, "rsa-1", exp=None), "no expiry"),
    ("exp NaN", lambda k: sign(k.rsa, "rsa-1", exp=float("nan")), "malformed"),
    ("exp a string", lambda k: sign(k.rsa, "rsa-1", exp=str(NOW + 300)), "malformed"),
    ("exp a boolean", lambda k: sign(k.rsa, "rsa-1", exp=True), "malformed"),
    ("nbf a string", lambda k: sign(k.rsa, "rsa-1", nbf="0"), "malformed"),
    ("iat a string", lambda k: sign(k.rsa, "rsa-1", iat="0"), "malformed"),
    ("wrong aud", lambda k: sign(k.rsa, "rsa-1", aud="https://other.test"), "wrong audience"),
    ("aud list without ours", lambda k: sign(k.rsa, "rsa-1", aud=["a", "b"]), "wrong audience"),
    ("no aud", lambda k: sign(k.rsa, "rsa-1", aud=None), "wrong audience"),
    ("wrong iss", lambda k: sign(k.rsa, "rsa-1", iss="https://evil.test/"), "wrong issuer"),
    ("no iss", lambda k: sign(k.rsa, "rsa-1", iss=None), "wrong issuer"),
    ("no sub", lambda k: sign(k.rsa, "rsa-1", sub=None), "no subject"),
    ("empty sub", lambda k: sign(k.rsa, "rsa-1", sub=""), "no subject"),
    ("blank sub", lambda k: sign(k.rsa, "rsa-1", sub="  "), "no subject"),
    ("sub a number", lambda k: sign(k.rsa, "rsa-1", sub=42), "no subject"),
    (
        "alg none",
        lambda k: forged({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, None),
        "algorithm not allowed",
    ),
    (
        "alg None spelled otherwise",
        lambda k: forged({"alg": "None", "kid": "rsa-1"}, None),
        "algorithm not allowed",
    ),
    ("HS256 signed with the RSA public key PEM", _hs256_with_public_pem, "algorithm not allowed"),
    (
        "HS256 with an empty secret",
        lambda k: forged({"alg": "HS256", "kid": "rsa-1"}, b""),
        "algorithm not allowed",
    ),
    (
        "an allowed alg but not configured (RS384)",
        lambda k: sign(k.rsa, "rsa-1", "RS384"),
        "algorithm not allowed",
    ),
    (
        "RS256 against the EC key's kid",
        lambda k: sign(k.rsa, "ec-1", "RS256"),
        "algorithm does not match the signing key",
    ),
    ("signed by a stranger's key", lambda k: sign(k.stranger, "rsa-1"), "bad signature"),
    ("payload changed after signing", _tampered, "bad signature"),
    ("no kid", lambda k: sign(k.rsa, None), "no key id"),
    ("empty kid", lambda k: sign(k.rsa, ""), "no key id"),
    ("not a JWT", lambda k: "not-a-jwt", "malformed"),
    ("three garbage parts", lambda k: "a.b.c", "malformed"),
    ("two parts", lambda k: sign(k.rsa, "rsa-1").rsplit(".", 1)[0], "malformed"),
    ("dots only", lambda k: "...", "malformed"),
    ("header not an object", lambda k: f"{b64json([1])}.{b64json(claims())}.x", "malformed"),
    ("header not base64", lambda k: "!!!!.e30.e30", "malformed"),
    ("kid not a string", lambda k: forged({"alg": "RS256", "kid": 7}, b"x"), "malformed"),
    (
        "payload not JSON",
        lambda k: f"{b64json({'alg': 'RS256', 'kid': 'rsa-1'})}.{b64(b'{')}.AAAA",
        "bad signature",  # the signature is checked before the payload is read
    ),
    (
        "payload signed but not JSON",
        lambda k: jwt.PyJWS().encode(b"{", k.rsa, algorithm="RS256", headers={"kid": "rsa-1"}),
        "malformed",
    ),
    (
        "payload signed but a JSON list",
        lambda k: jwt.PyJWS().encode(b"[]", k.rsa, algorithm="RS256", headers={"kid": "rsa-1"}),
        "malformed",
    ),
    ("non-ASCII", lambda k: "\u00e9" + sign(k.rsa, "rsa-1"), "malformed"),
    ("far too long", lambda k: "a" * 20_000, "malformed"),
    ("empty", lambda k: "", "malformed"),
]


@pytest.mark.parametrize(
    ("build", "reason"),
    [pytest.param(build, reason, id=name) for name, build, reason in REFUSALS],
)
def test_jwt_refused(
    make: Callable[..., JWTBearer],
    transport: HttpxSyncTransport,
    keys: Keys,
    build: Callable[[Keys], str],
    reason: str,
) -> None:
    token = build(keys)
    error = refused(make(), transport, f"Bearer {token}")
    assert error.message == f"Invalid token: {reason}."
    if token:
        assert token not in repr(error)
        assert all(part not in error.message for part in token.split(".") if len(part) > 3)


def test_token_never_reaches_a_log_line_or_message(
    make: Callable[..., JWTBearer],
    transport: HttpxSyncTransport,
    keys: Keys,
    server: JWKSServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    authorizer = make(refetch_interval=0)
    tokens = [build(keys) for _, build, _ in REFUSALS if build(keys)]
    messages = []
    for token in tokens:
        with pytest.raises(NavaiError) as caught:
            run(authorizer, transport, f"Bearer {token}")
        messages.append(repr(caught.value))
    unknown = sign(keys.rotated, "nobody")
    with pytest.raises(AuthError) as caught:
        run(authorizer, transport, f"Bearer {unknown}")
    messages.append(repr(caught.value))
    server.stop()
    down = sign(keys.rsa, "fresh-kid")
    with pytest.raises(NavaiError) as caught:
        run(authorizer, transport, f"Bearer {down}")
    messages.append(repr(caught.value))
    assert any("could not be fetched" in record.getMessage() for record in caplog.records)
    logged = caplog.text + "".join(str(record.args) for record in caplog.records)
    for token in [*tokens, unknown, down]:
        for part in token.split("."):
            if len(part) > 8:
                assert part not in logged
                assert all(part not in message for message in messages)


# -- jwt_bearer: keys, rotation and the cache --------------------------------------------


def test_unknown_kid_refetches_once_then_401(
    make: Callable[..., JWTBearer], transport: HttpxSyncTransport, keys: Keys, server: JWKSServer
) -> None:
    authorizer = make()
    error = refused(authorizer, transport, f"Bearer {sign(keys.rotated, 'nobody')}")
    assert error.message == "Invalid token: unknown signing key."
    assert server.hits == 1  # the first use's fetch; no second one straight after it


def test_rotation_refetch_and_its_interval(
    make: Callable[..., JWTBearer],
    transport: HttpxSyncTransport,
    keys: Keys,
    server: JWKSServer,
    mono: FakeMonotonic,
) -> None:
    authorizer = make(refetch_interval=60)
    assert run(authorizer, transport, f"Bearer {sign(keys.rsa, 'rsa-1')}") == "user-1"
    assert server.hits == 1
    assert run(authorizer, transport, f"Bearer {sign(keys.ec, 'ec-1', 'ES256')}") == "user-1"
    assert server.hits == 1  # cached

    mono.advance(61)
    server.keys = [jwk(keys.rotated, "rsa-2")]  # the provider rotates
    rotated = sign(keys.rotated, "rsa-2", sub="after-rotation")
    assert run(authorizer, transport, f"Bearer {rotated}") == "after-rotation"
    assert server.hits == 2  # the new kid was picked up by a refetch

    # A second unknown kid within the interval: no refetch, a 401.
    mono.advance(59)
    error = refused(authorizer, transport, f"Bearer {sign(keys.stranger, 'rsa-3')}")
    assert error.message == "Invalid token: unknown signing key."
    assert server.hits == 2
    # The retired key is gone with the refetch: its tokens no longer pass.
    error = refused(authorizer, transport, f"Bearer {sign(keys.rsa, 'rsa-1')}")
    assert error.message == "Invalid token: unknown signing key."
    assert server.hits == 2

    # Once the interval has passed, an unknown kid may refetch again.
    mono.advance(2)
    server.keys = [jwk(keys.rotated, "rsa-2"), jwk(keys.stranger, "rsa-3")]
    assert run(authorizer, transport, f"Bearer {sign(keys.stranger, 'rsa-3')}") == "user-1"
    assert server.hits == 3


def test_cache_expires_after_cache_seconds(
    make: Callable[..., JWTBearer],
    transport: HttpxSyncTransport,
    keys: Keys,
    server: JWKSServer,
    mono: FakeMonotonic,
) -> None:
    authorizer = make(cache_seconds=100)
    token = f"Bearer {sign(keys.rsa, 'rsa-1')}"
    assert run(authorizer, transport, token) == "user-1"
    mono.advance(99)
    assert run(authorizer, transport, token) == "user-1"
    assert server.hits == 1
    # Exactly cache_seconds after the fetch neither the keys nor the token
    # remembered with them serve any longer.
    mono.advance(1)
    assert run(authorizer, transport, token) == "user-1"
    assert server.hits == 2
    # An expired set is refreshed, so a key removed meanwhile stops working.
    mono.advance(101)
    server.keys = [jwk(keys.ec, "ec-1")]
    error = refused(authorizer, transport, token)
    assert error.message == "Invalid token: unknown signing key."
    assert server.hits == 3


def test_expired_keys_serve_while_one_request_refreshes_them(
    make: Callable[..., JWTBearer],
    transport: HttpxSyncTransport,
    keys: Keys,
    server: JWKSServer,
    mono: FakeMonotonic,
) -> None:
    authorizer = make(cache_seconds=100)
    token = f"Bearer {sign(keys.rsa, 'rsa-1')}"
    assert run(authorizer, transport, token) == "user-1"
    mono.advance(101)

    refreshing = authorizer.steps(info(token))
    attempt = next(refreshing)
    assert isinstance(attempt, Attempt)
    assert attempt.request.method == "GET"
    assert attempt.request.url == server.url
    assert attempt.request.max_response_bytes == MAX_JWKS_BYTES
    # Meanwhile another request verifies with the expired set, fetching nothing.
    assert run(authorizer, transport, token) == "user-1"
    assert server.hits == 1
    response = transport.send(attempt.request, timeout=attempt.timeout)
    with pytest.raises(StopIteration) as done:
        refreshing.send(Outcome(response))
    assert done.value.value == "user-1"
    assert server.hits == 2

    # A refresh abandoned mid-way (a client gone) does not block the next one.
    mono.advance(101)
    abandoned = authorizer.steps(info(token))
    next(abandoned)
    abandoned.close()
    assert run(authorizer, transport, token) == "user-1"
    assert server.hits == 3


def test_a_request_for_a_kid_being_fetched_waits_for_that_fetch(
    make: Callable[..., JWTBearer], transport: HttpxSyncTransport, keys: Keys, server: JWKSServer
) -> None:
    authorizer = make(refetch_interval=0)
    assert run(authorizer, transport, f"Bearer {sign(keys.rsa, 'rsa-1')}") == "user-1"
    server.keys = [jwk(keys.rsa, "rsa-1"), jwk(keys.rotated, "rsa-2")]  # the provider rotates
    fetching = authorizer.steps(info(f"Bearer {sign(keys.rotated, 'rsa-2')}"))
    attempt = next(fetching)
    assert isinstance(attempt, Attempt)
    assert attempt.request.body == b""  # a GET, without a body
    # Another request for the new kid waits for that fetch: the fresh keys
    # at hand do not hold its kid, and they do not refuse it meanwhile.
    waiting = authorizer.steps(info(f"Bearer {sign(keys.rotated, 'rsa-2', sub='user-2')}"))
    assert isinstance(next(waiting), Pause)
    assert isinstance(waiting.send(None), Pause)
    response = transport.send(attempt.request, timeout=attempt.timeout)
    with pytest.raises(StopIteration) as fetched:
        fetching.send(Outcome(response))
    assert fetched.value.value == "user-1"
    # The fetch over, the waiting request verifies with its keys, fetching nothing more.
    with pytest.raises(StopIteration) as waited:
        waiting.send(None)
    assert waited.value.value == "user-2"
    assert server.hits == 2


def test_a_fetch_in_flight_for_the_whole_timeout_is_no_longer_waited_for(
    make: Callable[..., JWTBearer], keys: Keys, mono: FakeMonotonic
) -> None:
    authorizer = make(timeout=5)
    token = f"Bearer {sign(keys.rsa, 'rsa-1')}"
    first = authorizer.steps(info(token))
    assert isinstance(next(first), Attempt)
    mono.advance(4.5)
    within = authorizer.steps(info(token))
    assert isinstance(next(within), Pause)  # the fetch may still bring the keys
    within.close()
    mono.advance(0.5)
    # Five seconds on, that fetch has timed out: the next request fetches itself.
    after = authorizer.steps(info(token))
    assert isinstance(next(after), Attempt)
    after.close()
    first.close()


def _signed_of_length(keys: Keys, length: int) -> str:
    """A valid RS256 token of exactly ``length`` characters (padded by a claim)."""
    for extra in range(4):  # a header field of 0 to 3 characters reaches every length
        headers = {"kid": "rsa-1", "x": "x" * extra}
        bare = len(jwt.encode(claims(pad=""), keys.rsa, algorithm="RS256", headers=headers))
        for pad in range(max(0, (length - bare) * 3 // 4 - 4), (length - bare) * 3 // 4 + 4):
            token = jwt.encode(claims(pad="p" * pad), keys.rsa, algorithm="RS256", headers=headers)
            if len(token) == length:
                return token
    raise AssertionError(f"no token of {length} characters")


def test_a_token_of_16_kib_is_read_and_a_longer_one_is_malformed_without_a_fetch(
    make: Callable[..., JWTBearer], transport: HttpxSyncTransport, keys: Keys, server: JWKSServer
) -> None:
    authorizer = make()
    longer = _signed_of_length(keys, MAX_TOKEN_CHARS + 1)
    assert refused(authorizer, transport, f"Bearer {longer}").message == "Invalid token: malformed."
    assert server.hits == 0
    longest = _signed_of_length(keys, MAX_TOKEN_CHARS)
    assert run(authorizer, transport, f"Bearer {longest}") == "user-1"
    assert server.hits == 1


def test_weak_and_unusable_keys_are_ignored(
    make: Callable[..., JWTBearer],
    transport: HttpxSyncTransport,
    keys: Keys,
    server: JWKSServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.keys = [
        jwk(keys.weak, "weak"),
        {**jwk(keys.rotated, "for-encryption"), "use": "enc"},
        {**jwk(keys.stranger, "for-ps256"), "alg": "PS256"},
        {"kty": "oct", "kid": "symmetric", "k": b64(b"0123456789abcdef0123456789abcdef")},
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
        "not a key",
        {name: value for name, value in jwk(keys.stranger, "x").items() if name != "kid"},
        jwk(keys.rsa, "rsa-1"),
    ]
    authorizer = make(refetch_interval=0)
    with caplog.at_level(logging.WARNING, logger="navai_mw"):
        assert run(authorizer, transport, f"Bearer {sign(keys.rsa, 'rsa-1')}") == "user-1"
    assert any("too short to trust" in record.getMessage() for record in caplog.records)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns about signing with 1024 bits
        weak = sign(keys.weak, "weak")
    for token in (
        weak,
        sign(keys.rotated, "for-encryption"),
        sign(keys.stranger, "for-ps256"),  # RS256 against a key published for PS256
        forged({"alg": "HS256", "kid": "symmetric"}, b"0123456789abcdef0123456789abcdef"),
    ):
        error = refused(authorizer, transport, f"Bearer {token}")
        assert error.message in (
            "Invalid token: unknown signing key.",
            "Invalid token: algorithm not allowed.",
        )


def test_the_warning_of_a_short_key_names_it_and_where_it_was(
    make: Callable[..., JWTBearer],
    transport: HttpxSyncTransport,
    keys: Keys,
    server: JWKSServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kid = "w" * 100
    server.keys = [jwk(keys.weak, kid), jwk(keys.rsa, "rsa-1")]
    with caplog.at_level(logging.WARNING, logger="navai_mw"):
        assert run(make(), transport, f"Bearer {sign(keys.rsa, 'rsa-1')}") == "user-1"
    assert [record.getMessage() for record in caplog.records] == [
        "navai_mw: the JWKS at 127.0.0.1/.well-known/jwks.json holds a key "
        f"(kid {'w' * 64}) too short to trust; it is ignored"
    ]


def test_a_key_without_use_or_alg_serves_each_algorithm_its_type_allows(
    make: Callable[..., JWTBearer], transport: HttpxSyncTransport, keys: Keys, server: JWKSServer
) -> None:
    bare = {name: value for name, value in jwk(keys.rsa, "rsa-1").items() if name != "use"}
    assert "alg" not in bare
    server.keys = [bare]
    assert run(make(), transport, f"Bearer {sign(keys.rsa, 'rsa-1')}") == "user-1"
    ps256 = make(algorithms=["PS256"])
    assert run(ps256, transport, f"Bearer {sign(keys.rsa, 'rsa-1', 'PS256')}") == "user-1"


def test_a_key_published_for_one_algorithm_serves_that_one_of_several(
    make: Callable[..., JWTBearer], transport: HttpxSyncTransport, keys: Keys, server: JWKSServer
) -> None:
    server.keys = [{**jwk(keys.rsa, "rsa-1"), "alg": "PS256"}]
    authorizer = make(algorithms=["RS256", "PS256"])
    assert run(authorizer, transport, f"Bearer {sign(keys.rsa, 'rsa-1', 'PS256')}") == "user-1"
    error = refused(authorizer, transport, f"Bearer {sign(keys.rsa, 'rsa-1', 'RS256')}")
    assert error.message == "Invalid token: algorithm does not match the signing key."


def test_keys_without_a_usable_kid_are_not_keys(
    make: Callable[..., JWTBearer],
    transport: HttpxSyncTransport,
    keys: Keys,
    server: JWKSServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    nameless = {name: value for name, value in jwk(keys.rsa, "x").items() if name != "kid"}
    server.keys = [nameless, {**nameless, "kid": ""}, {**nameless, "kid": 7}]
    token = f"Bearer {sign(keys.rsa, 'rsa-1')}"
    warnings_kept = caplog.at_level(logging.WARNING, logger="navai_mw")
    with warnings_kept, pytest.raises(UpstreamError) as caught:
        run(make(), transport, token)
    assert caught.value.status == 503
    assert _NO_USABLE_KEY in caplog.text


def _es256_signed_by(key: EllipticCurvePrivateKey, kid: str) -> str:
    """A token whose header says ES256, signed with SHA-256 by ``key`` on
    whatever curve it is."""
    signing_input = f"{b64json({'alg': 'ES256', 'kid': kid})}.{b64json(claims())}"
    der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    size = (key.curve.key_size + 7) // 8
    return f"{signing_input}.{b64(r.to_bytes(size, 'big') + s.to_bytes(size, 'big'))}"


def test_an_ec_key_on_another_curve_is_no_es256_key(
    make: Callable[..., JWTBearer], transport: HttpxSyncTransport, keys: Keys, server: JWKSServer
) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    server.keys = [jwk(p384, "ec-384"), jwk(keys.ec, "ec-1")]
    authorizer = make()
    assert run(authorizer, transport, f"Bearer {_es256_signed_by(keys.ec, 'ec-1')}") == "user-1"
    error = refused(authorizer, transport, f"Bearer {_es256_signed_by(p384, 'ec-384')}")
    assert error.message == "Invalid token: unknown signing key."


def test_ps256_and_several_audiences_and_issuers(
    server: JWKSServer, transport: HttpxSyncTransport, keys: Keys, mono: FakeMonotonic
) -> None:
    server.keys = [{**jwk(keys.rsa, "rsa-1"), "alg": "PS256"}]
    authorizer = jwt_bearer(
        server.url,
        audience=["first", AUD],
        issuer=["https://old-issuer.test/", ISS],
        algorithms=["PS256"],
        clock=lambda: NOW,
        monotonic=mono,
    )
    assert run(authorizer, transport, f"Bearer {sign(keys.rsa, 'rsa-1', 'PS256')}") == "user-1"
    error = refused(authorizer, transport, f"Bearer {sign(keys.rsa, 'rsa-1', 'RS256')}")
    assert error.message == "Invalid token: algorithm not allowed."


def test_leeway_is_configurable(
    make: Callable[..., JWTBearer], transport: HttpxSyncTransport, keys: Keys
) -> None:
    token = f"Bearer {sign(keys.rsa, 'rsa-1', exp=NOW - 5)}"
    assert run(make(leeway=10), transport, token) == "user-1"
    assert refused(make(leeway=0), transport, token).message == "Invalid token: expired."


def test_not_before_and_issued_at_are_read_on_the_injected_clock_only(
    server: JWKSServer, transport: HttpxSyncTransport, keys: Keys, mono: FakeMonotonic
) -> None:
    # The injected clock runs a day ahead of the machine's: a token valid
    # from then on is valid for it, whatever the machine's clock says.
    later = time.time() + 86_400
    authorizer = jwt_bearer(
        server.url, audience=AUD, issuer=ISS, clock=lambda: later, monotonic=mono, leeway=0
    )
    token = sign(keys.rsa, "rsa-1", nbf=later, iat=later, exp=later + 300)
    assert run(authorizer, transport, f"Bearer {token}") == "user-1"


def test_times_come_from_the_injected_clock(
    server: JWKSServer, transport: HttpxSyncTransport, keys: Keys, mono: FakeMonotonic
) -> None:
    now = [NOW]
    authorizer = jwt_bearer(
        server.url, audience=AUD, issuer=ISS, clock=lambda: now[0], monotonic=mono
    )
    token = f"Bearer {sign(keys.rsa, 'rsa-1', exp=NOW + 60)}"
    assert run(authorizer, transport, token) == "user-1"
    now[0] = NOW + 91
    assert refused(authorizer, transport, token).message == "Invalid token: expired."


# -- jwt_bearer: the JWKS unavailable ---------------------------------------------------


def _stop(server: JWKSServer) -> None:
    server.stop()


def _status(status: int) -> Callable[[JWKSServer], None]:
    def apply(server: JWKSServer) -> None:
        server.status = status

    return apply


def _body(body: bytes) -> Callable[[JWKSServer], None]:
    def apply(server: JWKSServer) -> None:
        server.body = body

    return apply


def _stall(server: JWKSServer) -> None:
    server.stall = True


_NOT_A_JWKS = ': its answer is not a JWKS (no "keys" list);'
_NO_USABLE_KEY = ": it holds no usable key for RS256, ES256;"

UNAVAILABLE: list[tuple[str, Callable[[JWKSServer], None], str, int]] = [
    ("stopped", _stop, ": it could not be reached; answering 503", 0),
    ("500, retried once", _status(500), "HTTP 500", 2),
    ("503, retried once", _status(503), "HTTP 503", 2),
    ("404, not retried", _status(404), "HTTP 404", 1),
    ("401 from the provider", _status(401), "HTTP 401", 1),
    ("not JSON", _body(b"<html>maintenance</html>"), ": its answer is not JSON;", 1),
    ("JSON but no keys", _body(b'{"issuer": "x"}'), _NOT_A_JWKS, 1),
    ("keys not a list", _body(b'{"keys": "x"}'), _NOT_A_JWKS, 1),
    ("a JSON list", _body(b"[]"), _NOT_A_JWKS, 1),
    (
        "no usable key",
        _body(b'{"keys": [{"kty": "oct", "kid": "k", "k": "AAAA"}]}'),
        _NO_USABLE_KEY,
        1,
    ),
    ("empty key list", _body(b'{"keys": []}'), _NO_USABLE_KEY, 1),
    (
        "too large",
        _body(b'{"keys": []' + b" " * MAX_JWKS_BYTES + b"}"),
        ": it answered with more than 65536 bytes; answering 503",
        1,
    ),
    ("stalled", _stall, ": it timed out; answering 503", 1),
]


@pytest.mark.parametrize(
    ("breaks", "reason", "hits"),
    [pytest.param(breaks, reason, hits, id=name) for name, breaks, reason, hits in UNAVAILABLE],
)
def test_jwks_unavailable_is_503_never_401(
    make: Callable[..., JWTBearer],
    transport: HttpxSyncTransport,
    keys: Keys,
    server: JWKSServer,
    caplog: pytest.LogCaptureFixture,
    breaks: Callable[[JWKSServer], None],
    reason: str,
    hits: int,
) -> None:
    breaks(server)
    authorizer = make(timeout=0.8)
    token = sign(keys.rsa, "rsa-1")
    with caplog.at_level(logging.WARNING, logger="navai_mw"), pytest.raises(NavaiError) as caught:
        run(authorizer, transport, f"Bearer {token}")
    error = caught.value
    assert not isinstance(error, AuthError)
    assert isinstance(error, UpstreamError)
    assert error.status == 503
    assert error.message == "Authorization is unavailable; try again shortly."
    assert ("Retry-After", "5") in error.headers
    warned = [r for r in caplog.records if r.name == "navai_mw" and r.levelno == logging.WARNING]
    assert len(warned) == 1
    line = warned[0].getMessage()
    assert line.startswith("navai_mw: the JWKS at 127.0.0.1/.well-known/jwks.json could not be ")
    assert line.endswith("; answering 503")
    assert reason in line
    assert token not in caplog.text
    assert server.hits == hits


def test_failed_fetch_backs_off_then_recovers(
    make: Callable[..., JWTBearer],
    transport: HttpxSyncTransport,
    keys: Keys,
    server: JWKSServer,
    mono: FakeMonotonic,
) -> None:
    authorizer = make()
    token = f"Bearer {sign(keys.rsa, 'rsa-1')}"
    server.status = 500
    with pytest.raises(UpstreamError):
        run(authorizer, transport, token)
    assert server.hits == 2
    server.status = 200
    # Within the backoff: 503 at once, the provider left alone.
    mono.advance(4.5)
    with pytest.raises(UpstreamError) as caught:
        run(authorizer, transport, token)
    assert caught.value.status == 503
    assert caught.value.message == "Authorization is unavailable; try again shortly."
    assert caught.value.headers == (("Retry-After", "5"),)
    assert server.hits == 2
    # Once it is over (5 s after the failure): fetched, and accepted.
    mono.advance(0.5)
    assert run(authorizer, transport, token) == "user-1"
    assert server.hits == 3


def test_a_refetch_interval_under_a_second_is_retried_after_one_second(
    make: Callable[..., JWTBearer], transport: HttpxSyncTransport, keys: Keys, server: JWKSServer
) -> None:
    server.status = 404
    with pytest.raises(UpstreamError) as caught:
        run(make(refetch_interval=0.5), transport, f"Bearer {sign(keys.rsa, 'rsa-1')}")
    assert caught.value.status == 503
    assert caught.value.headers == (("Retry-After", "1"),)


def test_a_known_key_is_not_fetched_again_while_the_keys_are_fresh(
    make: Callable[..., JWTBearer], transport: HttpxSyncTransport, keys: Keys, server: JWKSServer
) -> None:
    authorizer = make(refetch_interval=0)  # an unknown kid would be fetched at once
    for subject in ("user-1", "user-2", "user-3"):
        token = f"Bearer {sign(keys.rsa, 'rsa-1', sub=subject)}"
        assert run(authorizer, transport, token) == subject
    assert server.hits == 1


def test_the_oldest_remembered_token_gives_way_past_the_bound(
    make: Callable[..., JWTBearer],
    transport: HttpxSyncTransport,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    decoded: list[str],
) -> None:
    monkeypatch.setattr(jwt_bearer_module, "MAX_REMEMBERED_TOKENS", 2)
    authorizer = make()
    tokens = [f"Bearer {sign(keys.rsa, 'rsa-1', sub=f'user-{n}')}" for n in range(3)]
    for token in tokens:  # the third makes the first give way
        run(authorizer, transport, token)
    assert len(decoded) == 3
    assert run(authorizer, transport, tokens[2]) == "user-2"  # remembered
    assert len(decoded) == 3
    assert run(authorizer, transport, tokens[0]) == "user-0"  # checked again
    assert len(decoded) == 4


def test_refetch_failure_for_an_unknown_kid_is_503(
    make: Callable[..., JWTBearer],
    transport: HttpxSyncTransport,
    keys: Keys,
    server: JWKSServer,
    mono: FakeMonotonic,
) -> None:
    authorizer = make()
    assert run(authorizer, transport, f"Bearer {sign(keys.rsa, 'rsa-1')}") == "user-1"
    mono.advance(61)
    server.status = 502
    with pytest.raises(UpstreamError) as caught:
        run(authorizer, transport, f"Bearer {sign(keys.rotated, 'rsa-2')}")
    assert caught.value.status == 503
    # Known keys still verify from the cache.
    assert run(authorizer, transport, f"Bearer {sign(keys.rsa, 'rsa-1')}") == "user-1"


def test_malformed_token_needs_no_jwks(
    make: Callable[..., JWTBearer], transport: HttpxSyncTransport, server: JWKSServer
) -> None:
    server.stop()
    error = refused(make(), transport, "Bearer garbage")
    assert error.message == "Invalid token: malformed."
    assert server.hits == 0


# -- any_of ------------------------------------------------------------------------------


class Fixed:
    """An authorizer with a set answer, that records its calls."""

    def __init__(self, answer: str | NavaiError | None) -> None:
        self.answer = answer
        self.calls = 0

    def steps(self, info: RequestInfo) -> AuthSteps:
        self.calls += 1
        yield from ()
        if isinstance(self.answer, NavaiError):
            raise self.answer
        return self.answer


def test_any_of_static_token_passes_while_jwks_is_down(
    make: Callable[..., JWTBearer], transport: HttpxSyncTransport, keys: Keys, server: JWKSServer
) -> None:
    server.stop()
    jwt_first = any_of(make(), bearer_tokens(TOKENS))
    assert run(jwt_first, transport, f"Bearer {TOKEN_A}") == "alpha"
    with pytest.raises(NavaiError) as caught:
        run(jwt_first, transport, f"Bearer {sign(keys.rsa, 'rsa-1')}")
    assert caught.value.status == 503
    assert not isinstance(caught.value, AuthError)
    error = refused(jwt_first, transport, "Bearer not-a-token-at-all")
    assert error.message == "Invalid token: malformed."  # the first refusal
    assert run(jwt_first, transport, None) is None


def test_any_of_a_503_does_not_hide_a_valid_credential(transport: HttpxSyncTransport) -> None:
    down = Fixed(UpstreamError("down", status=503))
    assert run(any_of(down, bearer_tokens(TOKENS)), transport, f"Bearer {TOKEN_B}") == "bravo"
    assert down.calls == 1


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["first", "second"], "first"),
        ([None, "second"], "second"),
        ([AuthError("bad one"), "second"], "second"),
        ([None, None], None),
        ([AuthError("first refusal"), AuthError("second refusal")], "first refusal"),
        ([None, AuthError("only refusal")], "only refusal"),
        ([AuthError("refusal"), UpstreamError("down", status=503)], "down"),
        ([UpstreamError("down", status=503), AuthError("refusal")], "down"),
        ([UpstreamError("down", status=503), None], "down"),
        ([AuthError("known, refused", status=403), None], "known, refused"),
    ],
)
def test_any_of_table(
    transport: HttpxSyncTransport, answers: list[str | NavaiError | None], expected: str | None
) -> None:
    authorizers = [Fixed(answer) for answer in answers]
    combined = any_of(*authorizers)
    errors = [answer for answer in answers if isinstance(answer, NavaiError)]
    accepted = any(isinstance(answer, str) for answer in answers)
    if accepted or not errors:
        assert run(combined, transport, "Bearer x") == expected
    else:
        with pytest.raises(NavaiError) as caught:
            run(combined, transport, "Bearer x")
        assert caught.value.message == expected
    if answers[0] == "first":
        assert authorizers[1].calls == 0  # the first identity ends the search


def test_any_of_construction() -> None:
    with pytest.raises(OptionsError) as nothing:
        any_of()
    assert str(nothing.value) == "any_of needs at least one authorizer."
    with pytest.raises(OptionsError) as no_authorizer:
        any_of(lambda info: "x")  # type: ignore[arg-type]
    assert str(no_authorizer.value) == (
        "any_of takes authorizers such as those of navai_mw.auth (objects with steps()). "
        "Received: function"
    )
    combined = any_of(bearer_tokens(TOKENS))
    assert isinstance(combined, Authorizer)
    assert TOKEN_A not in repr(combined)
    assert "alpha" in repr(combined)


# -- jwt_bearer: construction --------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"algorithms": ["HS256"]}, "never allowed"),
        ({"algorithms": ["RS256", "HS512"]}, "Received: ['HS512']"),
        ({"algorithms": ["none"]}, "never allowed"),
        ({"algorithms": []}, "one or more"),
        ({"algorithms": ["XYZ"]}, "Received: ['XYZ']"),
        ({"jwks_url": "http://example.com/jwks.json"}, "https URL"),
        ({"jwks_url": "ftp://127.0.0.1/jwks.json"}, "https URL"),
        ({"jwks_url": "https://user:SECRET@example.com/jwks"}, "no credentials"),
        ({"jwks_url": "http://example.com/jwks?key=SECRET"}, "https URL"),
        ({"jwks_url": "https:///jwks.json"}, "https URL"),
        ({"jwks_url": "https://example.com:0/jwks"}, "https URL"),
        ({"jwks_url": "https://example.com:99999/jwks"}, "https URL"),
        ({"jwks_url": "https://example.com/jwks#frag"}, "https URL"),
        ({"jwks_url": "https://exa mple.com/jwks"}, "https URL"),
        ({"jwks_url": "not a url"}, "https URL"),
        ({"jwks_url": 5}, "https URL"),
        ({"audience": ""}, "audience must be"),
        ({"audience": []}, "audience must be"),
        ({"audience": ["ok", " "]}, "audience must be"),
        ({"issuer": ""}, "issuer must be"),
        ({"leeway": -1}, "leeway must be"),
        ({"leeway": float("nan")}, "leeway must be"),
        ({"leeway": True}, "leeway must be"),
        ({"timeout": 0}, "timeout must be a number of seconds above 0 and at most 3600"),
        ({"timeout": 10_000}, "timeout must be"),
        ({"cache_seconds": 0}, "cache_seconds must be"),
        ({"refetch_interval": -5}, "refetch_interval must be"),
        ({"refetch_interval": "60"}, "refetch_interval must be"),
    ],
)
def test_jwt_bearer_construction_errors(changes: dict[str, Any], fragment: str) -> None:
    arguments: dict[str, Any] = {
        "jwks_url": "https://issuer.example.test/.well-known/jwks.json",
        "audience": AUD,
        "issuer": ISS,
        **changes,
    }
    with pytest.raises(OptionsError) as caught:
        jwt_bearer(arguments.pop("jwks_url"), **arguments)
    assert fragment in caught.value.message
    assert "SECRET" not in caught.value.message


@pytest.mark.parametrize(
    "url",
    [
        "https://issuer.example.test/.well-known/jwks.json",
        "https://issuer.example.test/jwks?tenant=a",
        "http://127.0.0.1:8080/jwks",
        "http://localhost/jwks",
        "http://[::1]:9000/jwks",
        "https://issuer.example.test:1/jwks",  # any port from 1
    ],
)
def test_jwt_bearer_accepted_urls(url: str) -> None:
    authorizer = jwt_bearer(url, audience=AUD, issuer=ISS, algorithms="ES256")
    assert isinstance(authorizer, Authorizer)
    assert "tenant" not in repr(authorizer)  # a query may carry a secret: never shown
    assert "ES256" in repr(authorizer)
    assert AUD in repr(authorizer)


def test_jwt_bearer_needs_pyjwt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jwt", None)
    monkeypatch.setitem(sys.modules, "jwt.algorithms", None)
    with pytest.raises(OptionsError) as caught:
        jwt_bearer("https://issuer.example.test/jwks", audience=AUD, issuer=ISS)
    assert caught.value.message == "jwt_bearer needs PyJWT: pip install 'navai-mw[jwt]'"


def test_jwt_bearer_needs_pyjwt_with_cryptography(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jwt.algorithms, "has_crypto", False)
    with pytest.raises(OptionsError) as caught:
        jwt_bearer("https://issuer.example.test/jwks", audience=AUD, issuer=ISS)
    assert caught.value.message == (
        "jwt_bearer needs PyJWT with cryptography: pip install 'navai-mw[jwt]'"
    )


def test_jwt_bearer_construction_errors_say_what_is_allowed() -> None:
    with pytest.raises(OptionsError) as url:
        jwt_bearer("http://example.com/jwks", audience=AUD, issuer=ISS)
    assert url.value.message == (
        "jwt_bearer jwks_url must be an https URL with a host, no credentials and no "
        "fragment (http only on a loopback host)."
    )
    many = ["HS256", "X" * 300]
    with pytest.raises(OptionsError) as algorithms:
        jwt_bearer("https://issuer.example.test/jwks", audience=AUD, issuer=ISS, algorithms=many)
    assert algorithms.value.message == (
        "jwt_bearer algorithms must be one or more of RS256, RS384, RS512, PS256, PS384, "
        "PS512, ES256, ES384, ES512, EdDSA (none and HS* are never allowed). "
        f"Received: {repr(many)[:200]}"
    )


# -- authorizer_from_env -----------------------------------------------------------------


def test_env_nothing_set() -> None:
    assert authorizer_from_env({}) is None
    assert authorizer_from_env({"NAVAI_AUTH_TOKENS": "  ", "NAVAI_AUTH_JWKS_URL": ""}) is None
    assert authorizer_from_env({"NAVAI_AUTH_TOKENS": None}) is None


def test_env_tokens(transport: HttpxSyncTransport) -> None:
    authorizer = authorizer_from_env({"NAVAI_AUTH_TOKENS": f"alpha:{TOKEN_A}, bravo:{TOKEN_B}"})
    assert isinstance(authorizer, BearerTokens)
    assert run(authorizer, transport, f"Bearer {TOKEN_B}") == "bravo"


def test_env_bad_tokens_never_echoed() -> None:
    with pytest.raises(OptionsError) as caught:
        authorizer_from_env({"NAVAI_AUTH_TOKENS": f"alpha:{TOKEN_A},{SECRET_IN_CONFIG}"})
    assert caught.value.message.startswith("NAVAI_AUTH_TOKENS: bearer_tokens entry 2")
    assert SECRET_IN_CONFIG not in caught.value.message
    assert TOKEN_A not in caught.value.message


def test_env_jwks_verifies_with_the_real_clock(
    server: JWKSServer, transport: HttpxSyncTransport, keys: Keys
) -> None:
    import time

    authorizer = authorizer_from_env(
        {
            "NAVAI_AUTH_JWKS_URL": f" {server.url} ",
            "NAVAI_AUTH_AUDIENCE": f"other, {AUD}",
            "NAVAI_AUTH_ISSUER": ISS,
        }
    )
    assert isinstance(authorizer, JWTBearer)
    now = time.time()
    token = sign(keys.ec, "ec-1", "ES256", iat=now, exp=now + 60, sub="env-user")
    assert run(authorizer, transport, f"Bearer {token}") == "env-user"
    stale = sign(keys.ec, "ec-1", "ES256", iat=now - 600, exp=now - 300)
    assert refused(authorizer, transport, f"Bearer {stale}").message == "Invalid token: expired."


def test_env_both(server: JWKSServer, transport: HttpxSyncTransport) -> None:
    authorizer = authorizer_from_env(
        {
            "NAVAI_AUTH_TOKENS": f"alpha:{TOKEN_A}",
            "NAVAI_AUTH_JWKS_URL": server.url,
            "NAVAI_AUTH_AUDIENCE": AUD,
            "NAVAI_AUTH_ISSUER": ISS,
        }
    )
    assert isinstance(authorizer, AnyOf)
    assert [type(one) for one in authorizer.authorizers] == [BearerTokens, JWTBearer]
    assert run(authorizer, transport, f"Bearer {TOKEN_A}") == "alpha"
    assert server.hits == 0  # the fixed token went first, and needed no fetch


NEEDS_BOTH = "JWT bearer auth needs both NAVAI_AUTH_AUDIENCE and NAVAI_AUTH_ISSUER."
NEEDS_URL = "JWT bearer auth needs the provider's JWKS URL."


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"NAVAI_AUTH_JWKS_URL": "https://a.test/jwks", "NAVAI_AUTH_ISSUER": ISS},
            f"NAVAI_AUTH_JWKS_URL is set but NAVAI_AUTH_AUDIENCE is not: {NEEDS_BOTH}",
        ),
        (
            {
                "NAVAI_AUTH_JWKS_URL": "https://a.test/jwks",
                "NAVAI_AUTH_AUDIENCE": " ",
                "NAVAI_AUTH_ISSUER": ISS,
            },
            f"NAVAI_AUTH_JWKS_URL is set but NAVAI_AUTH_AUDIENCE is not: {NEEDS_BOTH}",
        ),
        (
            {"NAVAI_AUTH_JWKS_URL": "https://a.test/jwks", "NAVAI_AUTH_AUDIENCE": AUD},
            f"NAVAI_AUTH_JWKS_URL is set but NAVAI_AUTH_ISSUER is not: {NEEDS_BOTH}",
        ),
        (
            {"NAVAI_AUTH_AUDIENCE": AUD},
            f"NAVAI_AUTH_AUDIENCE is set but NAVAI_AUTH_JWKS_URL is not: {NEEDS_URL}",
        ),
        (
            {"NAVAI_AUTH_ISSUER": ISS, "NAVAI_AUTH_TOKENS": f"a:{TOKEN_A}"},
            f"NAVAI_AUTH_ISSUER is set but NAVAI_AUTH_JWKS_URL is not: {NEEDS_URL}",
        ),
    ],
)
def test_env_half_configured_jwt_is_an_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(OptionsError) as caught:
        authorizer_from_env(env)
    assert caught.value.message == message


def test_env_lists_of_audiences_and_issuers_are_comma_separated() -> None:
    authorizer = authorizer_from_env(
        {
            "NAVAI_AUTH_JWKS_URL": "https://a.test/jwks",
            "NAVAI_AUTH_AUDIENCE": f" {AUD} , other aud,, ",
            "NAVAI_AUTH_ISSUER": ISS,
        }
    )
    assert isinstance(authorizer, JWTBearer)
    assert f"audience=({AUD!r}, 'other aud')" in repr(authorizer)


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NAVAI_AUTH_JWKS_URL", "NAVAI_AUTH_AUDIENCE", "NAVAI_AUTH_ISSUER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NAVAI_AUTH_TOKENS", f"from-env:{TOKEN_A}")
    authorizer = authorizer_from_env()
    assert isinstance(authorizer, BearerTokens)
    assert authorizer.names == ("from-env",)


# -- threads and async -------------------------------------------------------------------


def test_many_threads_share_one_cache(
    make: Callable[..., JWTBearer],
    transport: HttpxSyncTransport,
    keys: Keys,
    server: JWKSServer,
    mono: FakeMonotonic,
) -> None:
    authorizer = make(cache_seconds=100)
    tokens = {
        f"user-{n}": sign(
            keys.rsa if n % 2 else keys.ec,
            "rsa-1" if n % 2 else "ec-1",
            "RS256" if n % 2 else "ES256",
            sub=f"user-{n}",
        )
        for n in range(64)
    }

    def verify(item: tuple[str, str]) -> bool:
        subject, token = item
        return bool(run(authorizer, transport, f"Bearer {token}") == subject)

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert all(pool.map(verify, tokens.items()))
        cold = server.hits
        assert cold == 1  # a cold start fetches once: the other threads wait for it
        assert all(pool.map(verify, tokens.items()))
        assert server.hits == cold  # warm: nothing fetched
        mono.advance(101)
        assert all(pool.map(verify, tokens.items()))
        assert server.hits == cold + 1  # expired: one refresh, the rest served meanwhile


def test_concurrent_first_requests_share_one_fetch_also_after_a_failure(
    make: Callable[..., JWTBearer],
    transport: HttpxSyncTransport,
    keys: Keys,
    server: JWKSServer,
    mono: FakeMonotonic,
) -> None:
    """24 requests at once, with no keys yet: one fetch, the others wait for
    it. When that fetch fails, all of them get the 503; after the backoff,
    24 more at once make one fetch again."""
    authorizer = make()
    token = f"Bearer {sign(keys.rsa, 'rsa-1')}"

    def attempt(_: int) -> object:
        try:
            return run(authorizer, transport, token)
        except NavaiError as exc:
            return exc.status

    def burst() -> list[object]:
        with ThreadPoolExecutor(max_workers=24) as pool:
            futures = [pool.submit(attempt, n) for n in range(24)]
            assert _until(lambda: server.hits >= 1)
            time.sleep(0.2)  # the others have found the fetch in flight
            server.release.set()
            return [future.result() for future in futures]

    server.hold, server.status = True, 404  # not retried: one fetch is one request
    assert burst() == [503] * 24
    assert server.hits == 1
    server.release.clear()
    server.status = 200
    mono.advance(FAILED_FETCH_BACKOFF_SECONDS + 0.1)
    assert burst() == ["user-1"] * 24
    assert server.hits == 2


def _until(check: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.anyio
async def test_concurrent_first_requests_on_one_event_loop_share_one_fetch(
    make: Callable[..., JWTBearer], keys: Keys, server: JWKSServer
) -> None:
    import anyio

    authorizer = make()
    token = f"Bearer {sign(keys.rsa, 'rsa-1')}"
    server.hold = True
    results: list[object] = []
    async with HttpxAsyncTransport() as transport:

        async def attempt() -> None:
            results.append(await _run_async(authorizer, transport, token))

        async with anyio.create_task_group() as group:
            for _ in range(24):
                group.start_soon(attempt)
            while server.hits < 1:
                await anyio.sleep(0.01)
            await anyio.sleep(0.2)
            server.release.set()
    assert results == ["user-1"] * 24
    assert server.hits == 1


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


async def _run_async(
    authorizer: Authorizer, transport: HttpxAsyncTransport, authorization: str
) -> Any:
    return await drive_async(authorizer.steps(info(authorization)), transport)


@pytest.mark.anyio
async def test_async_accepts_rotates_and_refuses(
    make: Callable[..., JWTBearer], keys: Keys, server: JWKSServer, mono: FakeMonotonic
) -> None:
    authorizer = make()
    async with HttpxAsyncTransport() as transport:
        assert await _run_async(authorizer, transport, f"Bearer {sign(keys.rsa, 'rsa-1')}") == (
            "user-1"
        )
        ec_token = sign(keys.ec, "ec-1", "ES256", sub="ec-user")
        assert await _run_async(authorizer, transport, f"Bearer {ec_token}") == "ec-user"
        assert server.hits == 1
        mono.advance(61)
        server.keys = [jwk(keys.rotated, "rsa-2")]
        rotated = sign(keys.rotated, "rsa-2")
        assert await _run_async(authorizer, transport, f"Bearer {rotated}") == "user-1"
        assert server.hits == 2
        with pytest.raises(AuthError) as caught:
            await _run_async(authorizer, transport, f"Bearer {sign(keys.stranger, 'rsa-3')}")
        assert caught.value.message == "Invalid token: unknown signing key."
        assert server.hits == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("breaks", "reason"),
    [(_stop, "could not be reached"), (_status(500), "HTTP 500"), (_stall, "timed out")],
)
async def test_async_jwks_unavailable_is_503(
    make: Callable[..., JWTBearer],
    keys: Keys,
    server: JWKSServer,
    caplog: pytest.LogCaptureFixture,
    breaks: Callable[[JWKSServer], None],
    reason: str,
) -> None:
    breaks(server)
    authorizer = make(timeout=0.8)
    caplog.set_level(logging.WARNING, logger="navai_mw")
    async with HttpxAsyncTransport() as transport:
        with pytest.raises(NavaiError) as caught:
            await _run_async(authorizer, transport, f"Bearer {sign(keys.rsa, 'rsa-1')}")
        assert caught.value.status == 503
        assert not isinstance(caught.value, AuthError)
        static = any_of(authorizer, bearer_tokens(TOKENS))
        assert await _run_async(static, transport, f"Bearer {TOKEN_A}") == "alpha"
    assert any(reason in record.getMessage() for record in caplog.records)


def test_steps_are_generators_that_yield_only_attempts(
    make: Callable[..., JWTBearer], keys: Keys, transport: HttpxSyncTransport
) -> None:
    steps: Generator[Any, Any, Any] = make().steps(info(f"Bearer {sign(keys.rsa, 'rsa-1')}"))
    effect = next(steps)
    assert isinstance(effect, Attempt)
    assert effect.first
    assert effect.timeout == 5.0
    assert effect.request.headers == (("Accept", "application/json"),)
    with pytest.raises(StopIteration) as done:
        steps.send(Outcome(transport.send(effect.request, timeout=effect.timeout)))
    assert done.value.value == "user-1"


# -- verified tokens are remembered while they are valid -------------------------------------


def test_a_verified_token_is_remembered_until_it_expires(
    server: JWKSServer,
    mono: FakeMonotonic,
    transport: HttpxSyncTransport,
    keys: Keys,
    decoded: list[str],
) -> None:
    now = [NOW]
    authorizer = jwt_bearer(
        server.url, audience=AUD, issuer=ISS, clock=lambda: now[0], monotonic=mono, leeway=30
    )
    token = f"Bearer {sign(keys.rsa, 'rsa-1', exp=NOW + 100)}"
    for _ in range(3):
        assert run(authorizer, transport, token) == "user-1"
    assert len(decoded) == 1  # verified once, then remembered
    other = f"Bearer {sign(keys.rsa, 'rsa-1', sub='user-2')}"
    assert run(authorizer, transport, other) == "user-2"
    assert len(decoded) == 2  # another token is checked on its own
    now[0] = NOW + 129  # within the leeway past exp: still remembered
    assert run(authorizer, transport, token) == "user-1"
    assert len(decoded) == 2
    now[0] = NOW + 131  # past it: checked again, and refused
    assert refused(authorizer, transport, token).message == "Invalid token: expired."
    assert len(decoded) == 3


def test_a_remembered_token_stops_with_its_key(
    make: Callable[..., JWTBearer],
    transport: HttpxSyncTransport,
    keys: Keys,
    server: JWKSServer,
    mono: FakeMonotonic,
) -> None:
    authorizer = make(cache_seconds=100, refetch_interval=0)
    token = f"Bearer {sign(keys.rsa, 'rsa-1')}"
    assert run(authorizer, transport, token) == "user-1"
    server.keys = [jwk(keys.ec, "ec-1")]  # the provider drops the key
    mono.advance(101)  # the keys are stale: a remembered token is checked again
    assert refused(authorizer, transport, token).message == "Invalid token: unknown signing key."


def test_tokens_not_yet_valid_are_not_remembered_early(
    server: JWKSServer, mono: FakeMonotonic, transport: HttpxSyncTransport, keys: Keys
) -> None:
    now = [NOW]
    authorizer = jwt_bearer(
        server.url, audience=AUD, issuer=ISS, clock=lambda: now[0], monotonic=mono, leeway=0
    )
    # Valid from the later of nbf and iat, whichever the token has.
    for changes in ({"nbf": NOW, "iat": NOW - 100}, {"nbf": NOW - 100, "iat": NOW}, {"iat": NOW}):
        now[0] = NOW
        token = f"Bearer {sign(keys.rsa, 'rsa-1', **changes)}"
        assert run(authorizer, transport, token) == "user-1"
        now[0] = NOW - 1  # the clock stepped back: the remembered entry is not valid yet
        error = refused(authorizer, transport, token)
        assert error.message == "Invalid token: not yet valid.", changes


def test_a_token_is_remembered_from_its_first_valid_instant_to_just_before_its_expiry(
    server: JWKSServer,
    mono: FakeMonotonic,
    transport: HttpxSyncTransport,
    keys: Keys,
    decoded: list[str],
) -> None:
    now = [NOW - 30]  # nbf less the leeway: the first instant it is valid
    authorizer = jwt_bearer(
        server.url, audience=AUD, issuer=ISS, clock=lambda: now[0], monotonic=mono, leeway=30
    )
    token = f"Bearer {sign(keys.rsa, 'rsa-1', nbf=NOW, iat=NOW, exp=NOW + 100)}"
    assert run(authorizer, transport, token) == "user-1"
    assert run(authorizer, transport, token) == "user-1"
    assert len(decoded) == 1  # remembered at once
    now[0] = NOW + 130  # exp plus the leeway: expired, remembered or not
    assert refused(authorizer, transport, token).message == "Invalid token: expired."
    assert len(decoded) == 2
