"""Client authentication: a JWT on every client call (``authorization: Bearer <token>``).

Where tokens come from is ``auth.provider``:

- ``oidc``: an OpenID Connect issuer (Firebase Authentication / Identity Platform, or any):
  RS256 or ES256 tokens, verified with the issuer's published keys (``OidcKeySet``: discovery,
  ``kid`` lookup, cached and refreshed key sets, so a key rotation needs no restart);
- ``local``: the development issuer, HS256 with a shared secret (``voxmesh token issue``),
  allowed only with ``environment = "local"``.

Either way ``iss``, ``aud``, ``exp`` (and ``nbf`` if present) are checked with a small leeway,
only the provider's algorithms are accepted (so ``alg: none`` and an HS256 token "signed"
with an issuer's public key are refused), and the user id is the token's ``sub``. The
interceptor binds the caller to a context variable for the servicer; it guards only the
client-facing services.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import jwt
import structlog

from voxmesh.core.domain_errors import InvalidArgument, Unauthenticated, Unavailable
from voxmesh.core.ids import require_id
from voxmesh.core.oidc_key_set import KeysUnavailable, OidcKeySet
from voxmesh.core.rpc_interceptors import AroundInterceptor, restore
from voxmesh.core.settings import AuthSettings

_REQUIRED_CLAIMS = ["sub", "exp", "iat", "iss", "aud"]


@dataclass(frozen=True)
class Caller:
    user_id: str


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def current_caller() -> Caller:
    caller = _caller.get()
    if caller is None:  # a servicer called outside the auth interceptor: a wiring bug
        raise Unauthenticated("no authenticated caller")
    return caller


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Caller: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def _decode(token: str, key: Any, algorithm: str, settings: AuthSettings) -> Caller:
    """Check the signature and the claims (raises jwt errors), return the caller."""
    claims = jwt.decode(
        token,
        key,
        algorithms=[algorithm],
        audience=settings.audience,
        issuer=settings.issuer,
        leeway=settings.leeway_s,
        options={"require": _REQUIRED_CLAIMS},
    )
    try:
        return Caller(user_id=require_id(str(claims["sub"]), "token subject"))
    except InvalidArgument as exc:
        raise jwt.InvalidTokenError(str(exc)) from exc


def _refusal(exc: jwt.InvalidTokenError) -> Unauthenticated:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return Unauthenticated("token expired")
    return Unauthenticated(f"invalid token: {exc}")


def _header(token: str, algorithms: Collection[str]) -> tuple[str, str | None]:
    """The token's (alg, kid), refusing any algorithm the provider does not sign with."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise _refusal(exc) from exc
    algorithm = header.get("alg")
    if algorithm not in algorithms:
        raise Unauthenticated(
            f"invalid token: algorithm {str(algorithm)[:16]!r} is not accepted "
            f"(accepted: {', '.join(algorithms)})"
        )
    kid = header.get("kid")
    return str(algorithm), (str(kid) if kid is not None else None)


class LocalTokenVerifier:
    """The development issuer's HS256 tokens (``environment = "local"`` only)."""

    def __init__(self, settings: AuthSettings) -> None:
        self._settings = settings

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def verify(self, token: str) -> Caller:
        algorithm, _ = _header(token, ("HS256",))
        try:
            return _decode(token, self._settings.hs256_secret, algorithm, self._settings)
        except jwt.InvalidTokenError as exc:
            raise _refusal(exc) from exc


class OidcTokenVerifier:
    """Tokens of an OIDC issuer, verified with the keys it publishes (RS256, ES256)."""

    def __init__(self, settings: AuthSettings, keys: OidcKeySet | None = None) -> None:
        self._settings = settings
        self.keys = keys or OidcKeySet(settings)

    async def start(self) -> None:
        await self.keys.prefetch()

    async def close(self) -> None:
        await self.keys.close()

    async def verify(self, token: str) -> Caller:
        algorithm, kid = _header(token, self._settings.oidc_algorithms)
        for attempt in range(2):
            try:
                candidates = await self.keys.candidates(kid, algorithm)
            except KeysUnavailable as exc:
                raise Unavailable(f"the identity provider's keys are unavailable: {exc}") from exc
            if not candidates:
                raise Unauthenticated(
                    f"invalid token: no {algorithm} signing key"
                    + (f" with kid {kid[:64]!r}" if kid is not None else "")
                    + " is published by the issuer"
                )
            for key in candidates:
                try:
                    return _decode(token, key.key, algorithm, self._settings)
                except jwt.InvalidSignatureError:
                    continue  # without a kid, the next key of the set may have signed it
                except jwt.InvalidTokenError as exc:
                    raise _refusal(exc) from exc
            # No key verified the signature. Without a kid, the issuer may have rotated to a
            # key we have not fetched yet: fetch again once (rate-limited), then give up.
            if kid is not None or attempt or not await self.keys.refetch():
                break
        raise Unauthenticated("invalid token: Signature verification failed")


def token_verifier(settings: AuthSettings) -> TokenVerifier:
    if settings.provider == "oidc":
        return OidcTokenVerifier(settings)
    return LocalTokenVerifier(settings)


def issue_token(settings: AuthSettings, user_id: str, ttl_s: int | None = None) -> str:
    """A development token for ``user_id`` (production tokens come from the OIDC issuer)."""
    if settings.provider != "local":
        raise ValueError(
            "auth.provider is 'oidc': client tokens come from the identity provider, "
            "not from voxmesh"
        )
    require_id(user_id, "user id")
    now = int(time.time())
    claims = {
        "sub": user_id,
        "iss": settings.issuer,
        "aud": settings.audience,
        "iat": now,
        "exp": now + (ttl_s if ttl_s is not None else settings.token_ttl_s),
    }
    return jwt.encode(claims, settings.hs256_secret, algorithm="HS256")


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
        caller = await self._verifier.verify(token.strip())
        structlog.contextvars.bind_contextvars(user_id=caller.user_id)
        reset = _caller.set(caller)
        try:
            yield
        finally:
            restore(_caller, reset, None)
