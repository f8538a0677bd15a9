"""Bad credentials, one kind per way a token can be wrong, for the authorization matrix.

Each kind makes the ``authorization`` metadata for a user: a caller claiming to be the
victim itself, so any bypass would get everything. A new issuer (an OIDC provider, another
key type) adds its kinds to ``bad_token_kinds``; the matrix runs every kind on every method.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from voxmesh.core.client_auth import issue_token
from voxmesh.core.settings import AuthSettings

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TokenKind:
    name: str
    metadata: Callable[[AuthSettings, str], Metadata]


def _bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def _claims(settings: AuthSettings, user: str, **changes: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": user,
        "iss": settings.issuer,
        "aud": settings.audience,
        "iat": now,
        "exp": now + 600,
    }
    claims.update(changes)
    return claims


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _alg_none(settings: AuthSettings, user: str) -> Metadata:
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(settings, user))}."
    return _bearer(unsigned)


def _signed(settings: AuthSettings, user: str, **changes: object) -> Metadata:
    return _bearer(jwt.encode(_claims(settings, user, **changes), settings.hs256_secret, "HS256"))


def local_issuer_kinds() -> list[TokenKind]:
    """Against the local HS256 issuer (environment local, the test stacks)."""
    return [
        TokenKind("no token", lambda settings, user: ()),
        TokenKind("not a bearer token", lambda settings, user: (("authorization", "Basic a"),)),
        TokenKind(
            "forged signature",
            lambda settings, user: _bearer(
                jwt.encode(_claims(settings, user), "another-secret-long-enough-for-hs256", "HS256")
            ),
        ),
        TokenKind("alg none", _alg_none),
        TokenKind(
            "expired", lambda settings, user: _bearer(issue_token(settings, user, ttl_s=-3600))
        ),
        TokenKind("wrong audience", lambda s, user: _signed(s, user, aud="someone-else")),
        TokenKind("wrong issuer", lambda s, user: _signed(s, user, iss="https://evil.example")),
        TokenKind(
            "not yet valid",
            lambda s, user: _signed(s, user, nbf=int(time.time()) + 3600),
        ),
    ]


def bad_token_kinds(settings: AuthSettings) -> list[TokenKind]:
    """Every way of being unauthenticated that applies to this stack's issuer."""
    if settings.provider == "local":
        return local_issuer_kinds()
    raise NotImplementedError(f"no bad-token kinds for auth.provider {settings.provider!r} yet")
