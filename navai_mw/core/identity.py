"""Who a caller is, and which authority says so.

An identity is the name an authorizer proved (a bearer token's name, a
JWT's ``sub``, what an ``authorize`` hook returned) *and* the scheme that
proved it. Two authorities may hand out the same name: a service token
named ``ops`` and a user whose JWT says ``sub: ops`` are two callers. So
wherever navai_mw tells callers apart (rate-limit keys, a relayed call's
owner, OpenAI's safety identifier, the budgets), it uses :func:`identity_key`,
``"{scheme}:{name}"``; wherever it shows who called (``FunctionContext``,
a ``CallReport``, a log line), the name alone.

The schemes: ``token`` (:func:`~navai_mw.auth.bearer_tokens`), ``jwt`` or
``jwt:{issuer}`` (:func:`~navai_mw.auth.jwt_bearer`), ``app`` (an
``authorize`` hook of the app's, or an identity a view hands over).
"""

from __future__ import annotations

from typing import Final

__all__ = ["APP_SCHEME", "Identity", "identity_key", "scheme_of"]

# The app's own identities: an authorize hook's, or a view's.
APP_SCHEME: Final = "app"


class Identity(str):
    """A name (this string itself, so that it reads and compares as the
    name) proved by ``scheme``."""

    scheme: str

    def __new__(cls, name: str, scheme: str) -> Identity:
        self = super().__new__(cls, name)
        self.scheme = scheme
        return self

    def __reduce__(self) -> tuple[type[Identity], tuple[str, str]]:
        return (Identity, (str(self), self.scheme))


def scheme_of(identity: str) -> str:
    """The scheme that proved ``identity`` (``app`` for a plain string)."""
    return identity.scheme if isinstance(identity, Identity) else APP_SCHEME


def identity_key(identity: str | None) -> str | None:
    """``"{scheme}:{name}"``: the identity as navai_mw tells callers apart."""
    if identity is None:
        return None
    return f"{scheme_of(identity)}:{identity}"
