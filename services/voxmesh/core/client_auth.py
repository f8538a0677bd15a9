"""Client authentication: a JWT on every client call (``authorization: Bearer <token>``).

HS256 with a shared secret or RS256 with a public key, from settings. The user id is the
token's ``sub``. The interceptor binds the caller to a context variable for the servicer;
it guards only the client-facing services (health, reflection and internal services are
reached on the mesh network, not through the gateway).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import structlog

from voxmesh.core.domain_errors import Unauthenticated
from voxmesh.core.ids import require_id
from voxmesh.core.rpc_interceptors import AroundInterceptor
from voxmesh.core.settings import AuthSettings

_LEEWAY_S = 30


@dataclass(frozen=True)
class Caller:
    user_id: str


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def current_caller() -> Caller:
    caller = _caller.get()
    if caller is None:  # a servicer called outside the auth interceptor: a wiring bug
        raise Unauthenticated("no authenticated caller")
    return caller


class TokenVerifier:
    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings
        if settings.algorithm == "HS256":
            self._key: str = settings.hs256_secret
        else:
            if not settings.rs256_public_key_file:
                raise ValueError("auth.algorithm RS256 needs auth.rs256_public_key_file")
            self._key = Path(settings.rs256_public_key_file).read_text()

    def verify(self, token: str) -> Caller:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._settings.algorithm],
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=_LEEWAY_S,
                options={"require": ["sub", "exp", "iat"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from exc
        return Caller(user_id=require_id(str(claims["sub"]), "token subject"))


def issue_token(settings: AuthSettings, user_id: str, ttl_s: int | None = None) -> str:
    """A token for ``user_id`` (local use and tests; production tokens come from the IdP)."""
    require_id(user_id, "user id")
    now = int(time.time())
    claims = {
        "sub": user_id,
        "iss": settings.issuer,
        "aud": settings.audience,
        "iat": now,
        "exp": now + (ttl_s if ttl_s is not None else settings.token_ttl_s),
    }
    if settings.algorithm == "HS256":
        return jwt.encode(claims, settings.hs256_secret, algorithm="HS256")
    if not settings.rs256_private_key_file:
        raise ValueError("issuing RS256 tokens needs auth.rs256_private_key_file")
    key = Path(settings.rs256_private_key_file).read_text()
    return jwt.encode(claims, key, algorithm="RS256")


class AuthInterceptor(AroundInterceptor):
    """Authenticates every call to the given services; UNAUTHENTICATED without a valid token."""

    def __init__(self, verifier: TokenVerifier, services: Collection[str]) -> None:
        self._verifier = verifier
        self._prefixes = tuple(f"/{name}/" for name in services)

    def applies_to(self, method: str) -> bool:
        return method.startswith(self._prefixes)

    @asynccontextmanager
    async def around(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        header = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = value.decode() if isinstance(value, bytes) else value
                break
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        caller = self._verifier.verify(token.strip())
        structlog.contextvars.bind_contextvars(user_id=caller.user_id)
        reset = _caller.set(caller)
        try:
            yield
        finally:
            _caller.reset(reset)
