"""Built-in authorizers for the guard's ``authorize=``.

Each is sans-IO: it reads the request's ``Authorization`` header, yields
the HTTP attempts it needs (a JWKS fetch, nothing else), and returns the
caller's identity, or None when no bearer credentials came (the guard then
answers 401). Bad credentials raise :class:`~navai_mw.AuthError` (401);
an identity provider that cannot be reached is a 503.

Fixed tokens, for server-to-server callers; the identity is the token's
name, never the token::

    from navai_mw.auth import bearer_tokens

    authorize = bearer_tokens({"billing": "s3cr3t-token-of-16+chars"})
    # or bearer_tokens("billing:s3cr3t...,reports:an0ther..."), as in the env

Provider-issued JWTs (Auth0, Clerk, Supabase, Firebase, Cognito, Entra),
verified against the provider's JWKS; the identity is the ``sub`` claim
(needs ``pip install 'navai-mw[jwt]'``)::

    from navai_mw.auth import jwt_bearer

    authorize = jwt_bearer(
        "https://example.eu.auth0.com/.well-known/jwks.json",
        audience="https://api.example.com",
        issuer="https://example.eu.auth0.com/",
    )

Either one: ``any_of(bearer_tokens(...), jwt_bearer(...))``. From the
environment: :func:`authorizer_from_env` reads ``NAVAI_AUTH_TOKENS``
(``name:token,name:token``), ``NAVAI_AUTH_JWKS_URL``,
``NAVAI_AUTH_AUDIENCE`` and ``NAVAI_AUTH_ISSUER``.

Pass the result as ``authorize=`` to the ASGI or WSGI middleware. The
``Bearer`` scheme is matched in any case (RFC 9110); another scheme
(``Basic ...``) counts as no credentials.

What :func:`jwt_bearer` refuses (401, ``Invalid token: <reason>.``): a
malformed token, an algorithm outside ``algorithms`` (``none`` and ``HS*``
can never be allowed: an HMAC "signed" with the public key is the
algorithm-confusion attack), a key id the JWKS does not hold even after a
refetch, a bad signature, a token without ``exp``, expired or not yet valid
(``leeway`` seconds of clock skew allowed), the wrong ``aud`` or ``iss``,
and a missing or empty ``sub``. No message or log line holds a token.
"""

from __future__ import annotations

from .config.env import authorizer_from_env
from .core.faces import publish
from .guard.authorizers import AnyOf, BearerTokens, any_of, bearer_tokens
from .guard.jwt_bearer import MAX_JWKS_BYTES as MAX_JWKS_BYTES
from .guard.jwt_bearer import JWTBearer, jwt_bearer

__all__ = [
    "AnyOf",
    "BearerTokens",
    "JWTBearer",
    "any_of",
    "authorizer_from_env",
    "bearer_tokens",
    "jwt_bearer",
]

publish(__name__, globals(), __all__)
