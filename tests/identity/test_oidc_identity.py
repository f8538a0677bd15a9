"""Client identity from a real OIDC issuer: a JWKS server on 127.0.0.1 that rotates its keys,
and a real OpenID Connect provider (oidc-provider-mock) running the authorization-code flow;
verified by the router's own verifier and through a real router over gRPC."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import jwt
import pytest

from tests.identity.oidc_servers import (
    AUDIENCE,
    JwksServer,
    SigningKey,
    hs256_with_key,
    serve_jwks,
    unsigned_token,
)
from tests.mesh_pki import client_port_channel, tls_overrides
from voxmesh.core.client_auth import OidcTokenVerifier, issue_token
from voxmesh.core.domain_errors import Unauthenticated, Unavailable
from voxmesh.core.service_runner import ServiceRunner
from voxmesh.core.settings import Settings, SettingsError, load_settings
from voxmesh.router.v1 import router_service_pb2 as router_pb
from voxmesh.router.v1 import router_service_pb2_grpc as router_grpc
from voxmesh.service_registry import build_runner

# oidc-provider-mock imports authlib APIs that authlib itself marks deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning")

_RSA_1 = SigningKey.rsa("rsa-1")
_RSA_2 = SigningKey.rsa("rsa-2")
_EC_1 = SigningKey.ec("ec-1")


def _settings(issuer: str, **auth: Any) -> Settings:
    overrides = {
        "auth": {
            "provider": "oidc",
            "issuer": issuer,
            "audience": AUDIENCE,
            "jwks_min_refetch_s": 1.0,
            **auth,
        },
        **tls_overrides(),
    }
    return load_settings(environ={}, overrides=overrides)


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    with serve_jwks([_RSA_1, _EC_1]) as server:
        yield server


@pytest.fixture
async def verifier(jwks: JwksServer) -> AsyncIterator[OidcTokenVerifier]:
    verifier = OidcTokenVerifier(_settings(jwks.issuer).auth)
    yield verifier
    await verifier.close()


async def _refused(verifier: OidcTokenVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as refused:
        await verifier.verify(token)
    return str(refused.value)


async def test_rs256_and_es256_tokens_verify_through_discovery(
    jwks: JwksServer, verifier: OidcTokenVerifier
) -> None:
    assert (await verifier.verify(jwks.token(_RSA_1, "alice"))).user_id == "alice"
    assert (await verifier.verify(jwks.token(_EC_1, "bob"))).user_id == "bob"
    assert jwks.jwks_requests == 1  # cached: one fetch for both


async def test_claims_are_checked_with_a_small_leeway(
    jwks: JwksServer, verifier: OidcTokenVerifier
) -> None:
    now = int(time.time())
    assert "token expired" in await _refused(verifier, jwks.token(_RSA_1, exp=now - 120))
    assert "audience" in (await _refused(verifier, jwks.token(_RSA_1, aud="another-app"))).lower()
    assert "issuer" in (await _refused(verifier, jwks.token(_RSA_1, iss="https://evil"))).lower()
    assert "not yet valid" in await _refused(verifier, jwks.token(_RSA_1, nbf=now + 600))
    # Within the leeway (30 s): clock skew between the issuer and the router is tolerated.
    assert (await verifier.verify(jwks.token(_RSA_1, exp=now - 10, nbf=now + 10))).user_id
    no_sub = jwt.encode(
        {"iss": jwks.issuer, "aud": AUDIENCE, "iat": now, "exp": now + 60},
        _RSA_1.private,
        algorithm="RS256",
        headers={"kid": "rsa-1"},
    )
    assert 'missing the "sub" claim' in await _refused(verifier, no_sub)
    assert "malformed" in await _refused(verifier, jwks.token(_RSA_1, "a b"))


async def test_alg_none_and_hs256_with_the_public_key_are_refused(
    jwks: JwksServer, verifier: OidcTokenVerifier
) -> None:
    now = int(time.time())
    claims = {"sub": "alice", "iss": jwks.issuer, "aud": AUDIENCE, "iat": now, "exp": now + 60}
    assert "'none' is not accepted" in await _refused(verifier, unsigned_token(claims))
    for secret in (_RSA_1.public_pem(), _EC_1.public_pem()):
        confused = hs256_with_key(claims, secret, kid="rsa-1")
        assert "'HS256' is not accepted" in await _refused(verifier, confused)
    # A token signed by a key the issuer never published.
    stranger = SigningKey.rsa("rsa-1")
    assert "Signature verification failed" in await _refused(verifier, jwks.token(stranger))
    for garbage in ("", "x", "a.b.c", "Bearer"):
        await _refused(verifier, garbage)


async def test_rotation_without_restart_and_refetch_is_rate_limited(
    jwks: JwksServer, verifier: OidcTokenVerifier
) -> None:
    assert (await verifier.verify(jwks.token(_RSA_1))).user_id == "alice"
    assert jwks.jwks_requests == 1
    jwks.rotate([_RSA_2, _EC_1])  # the issuer rotates: rsa-1 retired, rsa-2 new
    await asyncio.sleep(1.0)  # past jwks_min_refetch_s
    assert (await verifier.verify(jwks.token(_RSA_2, "carol"))).user_id == "carol"
    assert jwks.jwks_requests == 2  # the unknown kid fetched the new set once
    assert "no RS256 signing key with kid 'rsa-1'" in await _refused(verifier, jwks.token(_RSA_1))
    # A flood of tokens with made-up kids costs the issuer at most one fetch per interval.
    before = jwks.jwks_requests
    forged = [jwks.token(SigningKey(f"kid-{i}", "RS256", _RSA_2.private)) for i in range(50)]
    results = await asyncio.gather(*(verifier.verify(t) for t in forged), return_exceptions=True)
    assert all(isinstance(r, Unauthenticated) for r in results)
    assert jwks.jwks_requests - before <= 1


async def test_tokens_without_kid_and_a_rotation_of_them(
    jwks: JwksServer, verifier: OidcTokenVerifier
) -> None:
    first, second = SigningKey.rsa(None), SigningKey.rsa(None)
    jwks.rotate([first])
    assert (await verifier.verify(jwks.token(first))).user_id == "alice"
    jwks.rotate([second])
    await asyncio.sleep(1.0)
    # The cached key does not verify it: one refetch, then the new key does.
    assert (await verifier.verify(jwks.token(second))).user_id == "alice"
    assert "Signature verification failed" in await _refused(verifier, jwks.token(first))


async def test_key_set_refreshes_when_stale_without_waiting(jwks: JwksServer) -> None:
    verifier = OidcTokenVerifier(
        _settings(jwks.issuer, jwks_refresh_s=0.5, jwks_min_refetch_s=0.1).auth
    )
    try:
        await verifier.verify(jwks.token(_RSA_1))
        await asyncio.sleep(0.6)
        await verifier.verify(jwks.token(_RSA_1))  # stale: served from cache, refreshed behind
        for _ in range(50):
            if jwks.jwks_requests == 2:
                break
            await asyncio.sleep(0.02)
        assert jwks.jwks_requests == 2
    finally:
        await verifier.close()


async def test_key_fetch_does_not_block_the_event_loop(jwks: JwksServer) -> None:
    jwks.delay_s = 0.6
    verifier = OidcTokenVerifier(_settings(jwks.issuer).auth)
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    try:
        assert (await verifier.verify(jwks.token(_RSA_1))).user_id == "alice"
    finally:
        task.cancel()
        await verifier.close()
    assert len(gaps) > 20  # the loop kept turning during the 0.6 s fetch
    assert max(gaps) < 0.3


async def test_unreachable_or_wrong_issuer_is_unavailable_not_a_crash(
    jwks: JwksServer,
) -> None:
    jwks.down = True
    verifier = OidcTokenVerifier(_settings(jwks.issuer).auth)
    try:
        with pytest.raises(Unavailable, match="HTTP 503"):
            await verifier.verify(jwks.token(_RSA_1))
        jwks.down = False
        jwks.discovery_issuer = "https://someone-else"
        await asyncio.sleep(1.0)
        with pytest.raises(Unavailable, match="names issuer 'https://someone-else'"):
            await verifier.verify(jwks.token(_RSA_1))
        jwks.discovery_issuer = None
        await asyncio.sleep(1.0)
        assert (await verifier.verify(jwks.token(_RSA_1))).user_id == "alice"
    finally:
        await verifier.close()


def test_the_local_issuer_is_for_environment_local_only() -> None:
    # "staging" has no config/<environment>.toml: only the defaults and the environment count.
    with pytest.raises(SettingsError, match="cannot use the local development token issuer"):
        load_settings(environ={"VOXMESH__ENVIRONMENT": "staging"})
    with pytest.raises(SettingsError, match="must be an https URL"):
        load_settings(
            environ={
                "VOXMESH__ENVIRONMENT": "staging",
                "VOXMESH__AUTH__PROVIDER": "oidc",
                "VOXMESH__AUTH__ISSUER": "http://issuer.example",
            }
        )
    firebase = load_settings(
        environ={
            "VOXMESH__ENVIRONMENT": "staging",
            "VOXMESH__AUTH__PROVIDER": "oidc",
            "VOXMESH__AUTH__ISSUER": "https://securetoken.google.com/voxmesh-prod",
            "VOXMESH__AUTH__AUDIENCE": "voxmesh-prod",
        }
    )
    assert firebase.auth.provider == "oidc"
    with pytest.raises(ValueError, match="come from the identity provider"):
        issue_token(firebase.auth, "alice")


# -- through a real router ---------------------------------------------------------------


@pytest.fixture
async def oidc_router(jwks: JwksServer) -> AsyncIterator[ServiceRunner]:
    runner = build_runner("router", _settings(jwks.issuer), port=0, metrics_port=0)
    await runner.start()
    yield runner
    await runner.drain(grace_s=0)


async def _discover(router: ServiceRunner, token: str) -> grpc.StatusCode:
    async with client_port_channel(router.settings, router.address) as channel:
        stub = router_grpc.RouterServiceStub(channel)
        try:
            await stub.Discover(
                router_pb.DiscoverRequest(user_id="alice"),
                metadata=(("authorization", f"Bearer {token}"),),
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


async def test_router_accepts_the_issuer_and_follows_its_rotation(
    jwks: JwksServer, oidc_router: ServiceRunner
) -> None:
    assert await _discover(oidc_router, jwks.token(_RSA_1)) == grpc.StatusCode.OK
    assert await _discover(oidc_router, jwks.token(_EC_1)) == grpc.StatusCode.OK
    jwks.rotate([_RSA_2])  # mid-test, the running router is not restarted
    await asyncio.sleep(1.0)
    assert await _discover(oidc_router, jwks.token(_RSA_2)) == grpc.StatusCode.OK
    refused = grpc.StatusCode.UNAUTHENTICATED
    assert await _discover(oidc_router, jwks.token(_RSA_1)) == refused
    assert await _discover(oidc_router, jwks.token(_EC_1)) == refused
    local = load_settings(environ={}).auth
    assert await _discover(oidc_router, issue_token(local, "alice")) == refused  # HS256
    now = int(time.time())
    claims = {"sub": "alice", "iss": jwks.issuer, "aud": AUDIENCE, "iat": now, "exp": now + 60}
    assert await _discover(oidc_router, unsigned_token(claims)) == refused
    assert await _discover(oidc_router, hs256_with_key(claims, _RSA_2.public_pem())) == refused


# -- a real OpenID Connect provider ------------------------------------------------------


@pytest.fixture(scope="module")
def oidc_provider() -> Iterator[str]:
    from oidc_provider_mock import run_server_in_thread

    with run_server_in_thread(port=0) as server:
        yield f"http://localhost:{server.server_port}"


async def _id_token(provider: str, user: str) -> str:
    """The authorization-code flow as an app runs it: authorize as ``user``, swap the code."""
    redirect = "http://127.0.0.1/callback"
    async with httpx.AsyncClient(base_url=provider) as http:
        authorized = await http.post(
            "/oauth2/authorize",
            params={
                "client_id": AUDIENCE,
                "redirect_uri": redirect,
                "response_type": "code",
                "scope": "openid",
                "state": uuid.uuid4().hex,
            },
            data={"sub": user},
        )
        assert authorized.status_code == 302, authorized.text
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(authorized.headers["location"]).query)
        tokens = await http.post(
            "/oauth2/token",
            data={
                "grant_type": "authorization_code",
                "code": query["code"][0],
                "redirect_uri": redirect,
                "client_id": AUDIENCE,
                "client_secret": "app-secret",
            },
        )
        assert tokens.status_code == 200, tokens.text
        id_token: str = tokens.json()["id_token"]
        return id_token


async def test_id_tokens_of_a_real_oidc_provider(oidc_provider: str) -> None:
    settings = _settings(oidc_provider)
    verifier = OidcTokenVerifier(settings.auth)
    try:
        token = await _id_token(oidc_provider, "dana")
        assert (await verifier.verify(token)).user_id == "dana"
        tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        await _refused(verifier, tampered)
        other_app = OidcTokenVerifier(_settings(oidc_provider, audience="another-app").auth)
        try:
            with pytest.raises(Unauthenticated, match="Audience"):
                await other_app.verify(token)
        finally:
            await other_app.close()
    finally:
        await verifier.close()
    runner = build_runner("router", settings, port=0, metrics_port=0)
    await runner.start()
    try:
        assert await _discover(runner, await _id_token(oidc_provider, "erin")) == (
            grpc.StatusCode.OK
        )
        assert await _discover(runner, "not-a-token") == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await runner.drain(grace_s=0)
