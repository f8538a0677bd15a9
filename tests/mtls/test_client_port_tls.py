"""The client port in-process: TLS by default (plaintext refused), plaintext only when
``tls.client_plaintext`` is set (environment local); never the internal services."""

from __future__ import annotations

import grpc
import pytest

from tests.mesh_pki import client_port_channel, pki_dir, tls_overrides
from voxmesh.core.client_auth import issue_token
from voxmesh.core.settings import Settings, load_settings
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.router.v1 import router_service_pb2_grpc as pb_grpc
from voxmesh.service_registry import build_runner


async def _discover(settings: Settings, channel: grpc.aio.Channel) -> grpc.StatusCode:
    token = issue_token(settings.auth, "alice")
    async with channel:
        try:
            await pb_grpc.RouterServiceStub(channel).Discover(
                pb.DiscoverRequest(user_id="alice"),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("plaintext", [False, True], ids=["tls", "plaintext"])
async def test_client_port_speaks_what_the_settings_say(plaintext: bool) -> None:
    overrides = tls_overrides()
    overrides["tls"]["client_plaintext"] = plaintext
    settings = load_settings(environ={}, overrides=overrides)
    runner = build_runner("router", settings, port=0, metrics_port=0)
    await runner.start()
    try:
        tls = grpc.ssl_channel_credentials(root_certificates=(pki_dir() / "ca.pem").read_bytes())
        over_tls = await _discover(settings, grpc.aio.secure_channel(runner.address, tls))
        over_plaintext = await _discover(settings, grpc.aio.insecure_channel(runner.address))
        assert await _discover(settings, client_port_channel(settings, runner.address)) == (
            grpc.StatusCode.OK
        )
    finally:
        await runner.drain(grace_s=0)
    if plaintext:
        assert (over_tls, over_plaintext) == (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK)
    else:
        assert (over_tls, over_plaintext) == (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
