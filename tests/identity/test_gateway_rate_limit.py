"""Per-IP limits at the real Envoy gateway (local_ratelimit), in front of a real router."""

from __future__ import annotations

import asyncio
import base64
import struct
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2

from tests.grpc_web import gateway_url, tls_context
from tests.mesh_pki import client_port_channel, tls_overrides
from tests.ports import free_port
from voxmesh.core.client_auth import issue_token
from voxmesh.core.service_runner import ServiceRunner
from voxmesh.core.settings import Settings, load_settings
from voxmesh.gateway.envoy_config import render_envoy_yaml
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.router.v1 import router_service_pb2_grpc as pb_grpc
from voxmesh.service_registry import build_runner
from voxmesh.stack import binaries

_DISCOVER = "voxmesh.router.v1.RouterService/Discover"


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[str, Settings]]:
    settings = load_settings(
        environ={},
        overrides={
            "envoy": {
                "port": free_port(),
                "admin_port": free_port(),
                "requests_per_ip_per_s": 1,
                "requests_per_ip_burst": 5,
            },
            "rate_limits": {"enabled": False},  # only the gateway limits here
            **tls_overrides(),
        },
    )
    router: ServiceRunner = build_runner("router", settings, port=0, metrics_port=0)
    await router.start()
    config = tmp_path / "envoy.yaml"
    config.write_text(render_envoy_yaml(settings, routers=[("127.0.0.1", router.bound_port)]))
    envoy = await asyncio.create_subprocess_exec(
        str(binaries.envoy()),
        "-c",
        str(config),
        "--log-level",
        "warning",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = gateway_url(settings)  # https: the listener speaks TLS
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(100):  # ready, and the router healthy behind it
                try:
                    ready = await http.get(f"http://127.0.0.1:{settings.envoy.admin_port}/ready")
                    clusters = await http.get(
                        f"http://127.0.0.1:{settings.envoy.admin_port}/clusters"
                    )
                    if ready.text.strip() == "LIVE" and "health_flags::healthy" in clusters.text:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        yield base, settings
    finally:
        envoy.terminate()
        await asyncio.wait_for(envoy.wait(), 10)
        await router.drain(grace_s=0)


def _retry_delay(details: bytes) -> float:
    status = status_pb2.Status.FromString(details)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    return float(info.retry_delay.ToNanoseconds()) / 1e9


async def _grpc_web(http: httpx.AsyncClient, base: str, token: str) -> tuple[int, dict[str, str]]:
    payload = pb.DiscoverRequest(user_id="alice").SerializeToString()
    response = await http.post(
        f"{base}/{_DISCOVER}",
        content=b"\x00" + struct.pack(">I", len(payload)) + payload,
        headers={
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "authorization": f"Bearer {token}",
        },
    )
    headers = {k.lower(): v for k, v in response.headers.items()}
    body, trailers = response.content, dict(headers)
    offset = 0
    while offset < len(body):
        flags, length = body[offset], struct.unpack(">I", body[offset + 1 : offset + 5])[0]
        if flags & 0x80:
            for line in body[offset + 5 : offset + 5 + length].decode().split("\r\n"):
                key, _, value = line.partition(":")
                if key:
                    trailers[key.strip().lower()] = value.strip()
        offset += 5 + length
    return int(trailers.get("grpc-status", "-1")), trailers


async def test_each_client_address_has_its_own_bucket_with_retry_info(
    gateway: tuple[str, Settings],
) -> None:
    base, settings = gateway
    token = issue_token(settings.auth, "alice")
    tls = tls_context(settings) or False
    flooding = httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(local_address="127.0.0.1", verify=tls)
    )
    other = httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2", verify=tls)
    )
    async with flooding, other:
        codes = [(await _grpc_web(flooding, base, token))[0] for _ in range(12)]
        assert codes[:5] == [0] * 5  # the burst
        # Then refused: gRPC-web's status for Envoy's local reply is UNAVAILABLE (14), with the
        # RESOURCE_EXHAUSTED status and its RetryInfo in the details.
        assert set(codes[5:]) <= {0, 14} and codes[5:].count(14) >= 5  # (a refill may come)
        code, trailers = await _grpc_web(flooding, base, token)
        assert code == 14
        details = trailers["grpc-status-details-bin"]
        assert _retry_delay(base64.b64decode(details + "=" * (-len(details) % 4))) == 1.0
        # Another address is served meanwhile.
        assert (await _grpc_web(other, base, token))[0] == 0
        # And the flooding address again after its bucket refills.
        await asyncio.sleep(1.1)
        assert (await _grpc_web(flooding, base, token))[0] == 0


async def test_native_grpc_through_the_gateway_is_resource_exhausted(
    gateway: tuple[str, Settings],
) -> None:
    _base, settings = gateway
    metadata = (("authorization", f"Bearer {issue_token(settings.auth, 'alice')}"),)
    async with client_port_channel(settings, f"127.0.0.1:{settings.envoy.port}") as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        for _ in range(5):
            await stub.Discover(pb.DiscoverRequest(user_id="alice"), metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Discover(pb.DiscoverRequest(user_id="alice"), metadata=metadata)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers: dict[str, Any] = dict(refused.value.trailing_metadata() or ())  # type: ignore[arg-type]
    assert _retry_delay(trailers["grpc-status-details-bin"]) == 1.0
