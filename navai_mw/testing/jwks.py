"""A fake identity provider: a JWKS with one signing key, and the tokens it
signs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from ..auth import JWTBearer, jwt_bearer
from .scripted import RecordedRequest, _Behaviour, _json_reply, _Reply, _ScriptedUpstream

JWKS_PATH = "/.well-known/jwks.json"

_JWT_MISSING = "FakeJWKS needs PyJWT with cryptography, which is not installed: " + (
    "pip install 'navai-mw[jwt]'"
)


class FakeJWKS(_ScriptedUpstream):
    """An identity provider's JWKS, for testing :func:`navai_mw.auth.jwt_bearer`
    offline: an ASGI app that answers ``GET /.well-known/jwks.json`` with the
    public half of one EC P-256 key made when it is created, and signs the
    tokens a test needs with the private half (:meth:`token`)::

        idp = FakeJWKS(audience="https://api.example.test")
        authorize = idp.authorizer()      # jwt_bearer at idp.jwks_url
        token = idp.token("alice")        # ES256, iss, aud, iat and exp set

    It needs the ``jwt`` extra (PyJWT with cryptography). ``fail``,
    ``rate_limit`` and ``stall`` script its next answers as for the other
    fakes; ``requests`` records every fetch. Reach it with
    ``sync_transport()``, ``async_transport()``, ``serve()``, or with every
    other fake through :class:`~navai_mw.testing.FakeUpstreams`.
    """

    def __init__(
        self,
        *,
        audience: str = "https://api.example.test",
        issuer: str = "https://fake-idp.invalid/",
        key_id: str = "fake-key-1",
        clock: Callable[[], float] = time.time,
        base_url: str = "https://fake-idp.invalid",
    ) -> None:
        try:
            from cryptography.hazmat.primitives.asymmetric import ec
            from jwt.algorithms import ECAlgorithm
        except ImportError as exc:
            raise ImportError(_JWT_MISSING) from exc
        super().__init__(base_url)
        self.audience = audience
        self.issuer = issuer
        self.key_id = key_id
        self.clock = clock
        self._key = ec.generate_private_key(ec.SECP256R1())
        public = ECAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        self._jwk = {**public, "kid": key_id, "use": "sig", "alg": "ES256"}

    @property
    def jwks_url(self) -> str:
        """Where the keys are: ``{base_url}/.well-known/jwks.json``."""
        return f"{self.base_url}{JWKS_PATH}"

    def token(
        self,
        subject: str,
        *,
        expires_in: float = 300,
        audience: str | None = None,
        issuer: str | None = None,
        **claims: Any,
    ) -> str:
        """A token for ``subject`` signed with the served key (ES256, its
        ``kid`` in the header): ``iss``, ``aud``, ``iat`` and ``exp``
        (``expires_in`` seconds from the clock) set, and ``claims`` on top
        (a claim given as None is left out)."""
        import jwt

        now = self.clock()
        payload: dict[str, Any] = {
            "sub": subject,
            "iss": issuer or self.issuer,
            "aud": audience or self.audience,
            "iat": int(now),
            "exp": int(now + expires_in),
            **claims,
        }
        payload = {name: value for name, value in payload.items() if value is not None}
        return jwt.encode(payload, self._key, algorithm="ES256", headers={"kid": self.key_id})

    def authorizer(self, **keywords: Any) -> JWTBearer:
        """:func:`~navai_mw.auth.jwt_bearer` at :attr:`jwks_url`, with this
        provider's audience and issuer (``keywords`` go to it too)."""
        keywords.setdefault("audience", self.audience)
        keywords.setdefault("issuer", self.issuer)
        algorithms: Iterable[str] = keywords.pop("algorithms", ("ES256",))
        return jwt_bearer(self.jwks_url, algorithms=algorithms, **keywords)

    # -- telling it what to do ------------------------------------------------

    def fail(self, status: int = 500, *, times: int | None = None) -> None:
        """Answer ``status`` (every time, or ``times`` times)."""
        self._set(_Behaviour("fail", status=status), times)

    def rate_limit(self, retry_after: str = "20", *, times: int | None = None) -> None:
        """Answer 429 with ``Retry-After``."""
        self._set(_Behaviour("rate_limit", retry_after=retry_after), times)

    # -- answering --------------------------------------------------------------

    def _answer(self, request: RecordedRequest, raw_path: str) -> _Reply:
        if request.method != "GET" or request.path != JWKS_PATH:
            return _json_reply(404, {"error": "not_found"})
        behaviour = self._next()
        if behaviour.kind == "fail":
            return _json_reply(behaviour.status, {"error": "server_error"})
        if behaviour.kind == "rate_limit":
            return _json_reply(429, {"error": "rate_limited"}, retry_after=behaviour.retry_after)
        body = json.dumps({"keys": [self._jwk]}).encode()
        reply = _Reply(0.0, 200, [("content-type", "application/json")], body)
        return attrs.evolve(reply, delay=behaviour.seconds)

    # -- ways to reach it ---------------------------------------------------------

    @contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve the fake with uvicorn on ``host``; yields its base URL
        (``http://127.0.0.1:PORT``; :attr:`jwks_url` follows it)."""
        with self._serving(host, port, "") as url:
            yield url
