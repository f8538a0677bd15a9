"""Bytes that are not the method's request type: INVALID_ARGUMENT on every method of every
service, one rate-limited log line, never grpc's UNKNOWN and a traceback per request."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import grpc
import pytest
import structlog
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor

from tests.mesh_pki import client_port_channel, mesh_channel, tls_overrides
from voxmesh.core.client_auth import issue_token
from voxmesh.core.service_runner import Exposure, ServiceRunner
from voxmesh.core.settings import SERVICE_KINDS, ServiceKind, Settings, load_settings
from voxmesh.service_registry import build_runner

JUNK = b"\xff\xff\xff\x07junk"  # an invalid tag: no message type decodes it
FLOOD = 300


@pytest.fixture(scope="module")
def settings() -> Settings:
    # The flood below is about log lines; the per-user call limit would cut it short first
    # (rate limits have their own tests).
    return load_settings(
        environ={}, overrides={"rate_limits": {"enabled": False}, **tls_overrides()}
    )


def _methods(runner: ServiceRunner) -> list[MethodDescriptor]:
    pool = descriptor_pool.Default()
    names = [*runner.service_names, "grpc.health.v1.Health"]
    return [m for name in names for m in pool.FindServiceByName(name).methods]


def _internal(runner: ServiceRunner) -> set[str]:
    """Services on the runner's internal port (called there as a router)."""
    return {r.service_name for r in runner.registrations if r.exposure is Exposure.INTERNAL}


async def _call_raw(
    channel: grpc.aio.Channel, method: MethodDescriptor, payload: bytes, metadata: Any
) -> grpc.StatusCode:
    """Send ``payload`` as the request (identity serializers), in the method's call shape."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.client_streaming:
            stream = channel.stream_stream(path, None, None)(
                iter([payload]), metadata=metadata, timeout=10
            )
            async for _ in stream:
                pass
        elif method.server_streaming:
            async for _ in channel.unary_stream(path, None, None)(
                payload, metadata=metadata, timeout=10
            ):
                pass
        else:
            await channel.unary_unary(path, None, None)(payload, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as exc:
        assert "does not decode as" in (exc.details() or ""), (path, exc.details())
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("kind", SERVICE_KINDS)
async def test_every_method_refuses_undecodable_bytes_with_invalid_argument(
    kind: ServiceKind, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    runner = build_runner(kind, settings, port=0, metrics_port=0)
    await runner.start()
    metadata = (("authorization", f"Bearer {issue_token(settings.auth, 'alice')}"),)
    try:
        internal = mesh_channel(settings, runner.internal_address, kind, "router")
        async with client_port_channel(settings, runner.address) as channel, internal:
            with caplog.at_level(logging.WARNING), structlog.testing.capture_logs() as lines:
                methods = _methods(runner)
                started = time.monotonic()
                for method in methods:
                    port = (
                        internal
                        if method.containing_service.full_name in _internal(runner)
                        else channel
                    )
                    code = await _call_raw(port, method, JUNK, metadata)
                    assert code == grpc.StatusCode.INVALID_ARGUMENT, method.full_name
                # A flood on one method: a few lines, not one per request.
                unary = next(
                    m for m in methods if not m.client_streaming and not m.server_streaming
                )
                port = (
                    internal if unary.containing_service.full_name in _internal(runner) else channel
                )
                flood_started = time.monotonic()
                for _ in range(FLOOD):
                    code = await _call_raw(port, unary, JUNK, metadata)
                    assert code == grpc.StatusCode.INVALID_ARGUMENT
                flood_s = time.monotonic() - flood_started
                total_s = time.monotonic() - started
    finally:
        await runner.drain(grace_s=0)
    refusals = [line for line in lines if line["event"] == "rpc refused"]
    assert all(line["code"] == "INVALID_ARGUMENT" for line in refusals)
    request_type = unary.input_type.full_name
    flood = [line for line in refusals if f"decode as {request_type}:" in line["reason"]]
    # At most 10 lines per second per method and status, whatever the number of requests.
    assert 1 <= len(flood) <= 10 * (math.ceil(flood_s) + 1), (len(flood), flood_s)
    assert len(flood) < FLOOD / 2
    # Every method refused at once: still 10 lines a second in all (keyed by status alone).
    assert len(refusals) <= 10 * (math.ceil(total_s) + 1), (len(refusals), total_s)
    # Nothing from grpc itself (its "Unexpected DecodeError" came with a traceback).
    assert not [r for r in caplog.records if r.name.startswith("grpc")], caplog.text


async def test_a_bad_frame_mid_stream_ends_the_stream_with_invalid_argument(
    settings: Settings,
) -> None:
    from voxmesh.router.v1 import router_service_pb2 as pb

    runner = build_runner("router", settings, port=0, metrics_port=0)
    await runner.start()
    metadata = (("authorization", f"Bearer {issue_token(settings.auth, 'alice')}"),)
    try:
        async with client_port_channel(settings, runner.address) as channel:
            # No start frame is accepted without a header store; a junk second frame never
            # gets that far, and a junk first frame is refused as such.
            call = channel.stream_stream("/voxmesh.router.v1.RouterService/Send", None, None)(
                iter([JUNK, pb.SendRequest().SerializeToString()]), metadata=metadata, timeout=10
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in call:
                    pass
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "does not decode as voxmesh.router.v1.SendRequest" in (
                refused.value.details() or ""
            )
    finally:
        await runner.drain(grace_s=0)


async def test_undecodable_bytes_without_a_token_are_unauthenticated(settings: Settings) -> None:
    runner = build_runner("router", settings, port=0, metrics_port=0)
    await runner.start()
    try:
        async with client_port_channel(settings, runner.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await channel.unary_unary("/voxmesh.router.v1.RouterService/Discover", None, None)(
                    JUNK
                )
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await runner.drain(grace_s=0)
