"""The router's token buckets, in-process with a fake clock; and RetryInfo on a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from tests.mesh_pki import client_port_channel, tls_overrides
from voxmesh.common.v1 import presence_pb2
from voxmesh.core.client_auth import issue_token
from voxmesh.core.domain_errors import ResourceExhausted
from voxmesh.core.dynamic_config import apply_overrides, check_key
from voxmesh.core.mesh_tls import client_channel
from voxmesh.core.rpc_interceptors import RPC_IN_FLIGHT
from voxmesh.core.service_runner import ServiceRunner
from voxmesh.core.settings import RateLimitSettings, Settings, load_settings
from voxmesh.router.rate_limits import LimitKind, RateLimiter
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.router.v1 import router_service_pb2_grpc as pb_grpc
from voxmesh.service_registry import build_runner

_BUCKET = {"user_per_s": 10.0, "user_burst": 5, "device_per_s": 2.0, "device_burst": 3}


def _limits(**overrides: object) -> RateLimitSettings:
    tables = {k: dict(_BUCKET) for k in ("calls", "message_starts", "chunks", "texts")}
    return load_settings(environ={}, overrides={"rate_limits": {**tables, **overrides}}).rate_limits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _refused(limiter: RateLimiter, *args: object) -> ResourceExhausted:
    with pytest.raises(ResourceExhausted) as refused:
        limiter.check(*args)  # type: ignore[arg-type]
    return refused.value


def test_device_and_user_buckets_with_a_retry_delay() -> None:
    clock = Clock()
    limiter = RateLimiter(_limits(), clock)
    for _ in range(3):
        limiter.check(LimitKind.MESSAGE_STARTS, "alice", "phone")
    refused = _refused(limiter, LimitKind.MESSAGE_STARTS, "alice", "phone")
    assert "device phone of user alice" in str(refused)
    assert refused.retry_after_s == pytest.approx(0.5)  # 1 token at 2 per second
    # The user's other device still has its own tokens, up to the user's burst of 5.
    limiter.check(LimitKind.MESSAGE_STARTS, "alice", "tablet")
    limiter.check(LimitKind.MESSAGE_STARTS, "alice", "tablet")
    refused = _refused(limiter, LimitKind.MESSAGE_STARTS, "alice", "laptop")
    assert "from alice" in str(refused)
    assert refused.retry_after_s == pytest.approx(0.1)  # 1 token at 10 per second
    # Another user and another kind are untouched.
    limiter.check(LimitKind.MESSAGE_STARTS, "bob", "phone")
    limiter.check(LimitKind.TEXTS, "alice", "phone")
    clock.now += 0.5
    limiter.check(LimitKind.MESSAGE_STARTS, "alice", "phone")  # refilled


def test_a_refused_check_takes_no_tokens_and_counts_are_bulk() -> None:
    clock = Clock()
    limiter = RateLimiter(_limits(), clock)
    limiter.check(LimitKind.CHUNKS, "alice", "phone", 3)
    for _ in range(5):
        _refused(limiter, LimitKind.CHUNKS, "alice", "phone")
    clock.now += 0.5
    limiter.check(LimitKind.CHUNKS, "alice", "phone")  # the refusals cost nothing
    assert _refused(limiter, LimitKind.CHUNKS, "alice", "phone", 2).retry_after_s == (
        pytest.approx(1.0)
    )


def test_reconfigure_and_disable_apply_at_once() -> None:
    clock = Clock()
    limiter = RateLimiter(_limits(), clock)
    for _ in range(5):
        limiter.check(LimitKind.CALLS, "alice")
    _refused(limiter, LimitKind.CALLS, "alice")
    roomy = dict(_BUCKET, user_per_s=1000.0, user_burst=1000)
    limiter.reconfigure(_limits(calls=roomy))
    clock.now += 0.01
    for _ in range(9):
        limiter.check(LimitKind.CALLS, "alice")
    limiter.reconfigure(_limits(enabled=False))
    for _ in range(100):
        limiter.check(LimitKind.CALLS, "alice")


def test_buckets_kept_are_bounded() -> None:
    limiter = RateLimiter(_limits(max_tracked_buckets=100), Clock())
    for i in range(1000):
        limiter.check(LimitKind.CALLS, f"user-{i}", "phone")
    assert len(limiter._buckets) <= 100


def test_rate_limits_are_dynamic_settings() -> None:
    base = load_settings(environ={})
    check_key("rate_limits.chunks")
    check_key("rate_limits.enabled")
    changed = apply_overrides(base, {"rate_limits.chunks": _BUCKET})
    assert changed.rate_limits.chunks.device_burst == 3
    with pytest.raises(ValueError, match="user_per_s"):
        apply_overrides(base, {"rate_limits.chunks": dict(_BUCKET, user_per_s=0)})


# -- on a real router --------------------------------------------------------------------


@pytest.fixture
async def limited_router() -> AsyncIterator[tuple[ServiceRunner, Settings]]:
    settings = load_settings(
        environ={},
        overrides={
            "rate_limits": {
                "calls": {
                    "user_per_s": 1.0,
                    "user_burst": 4,
                    "device_per_s": 1.0,
                    "device_burst": 2,
                }
            },
            **tls_overrides(),
        },
    )
    runner = build_runner("router", settings, port=0, metrics_port=0)
    await runner.start()
    yield runner, settings
    await runner.drain(grace_s=0)


def _retry_delay(error: grpc.aio.AioRpcError) -> float:
    trailers: dict[str, Any] = dict(error.trailing_metadata() or ())  # type: ignore[arg-type]
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert "x-request-id" in trailers  # the call's own trailers are kept
    return float(info.retry_delay.ToNanoseconds()) / 1e9


async def test_limited_calls_answer_resource_exhausted_with_retry_info(
    limited_router: tuple[ServiceRunner, Settings],
) -> None:
    runner, settings = limited_router
    async with client_port_channel(settings, runner.address) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        alice = (("authorization", f"Bearer {issue_token(settings.auth, 'alice')}"),)
        bob = (("authorization", f"Bearer {issue_token(settings.auth, 'bob')}"),)
        # Per device: 2 calls naming device "phone", then refused.
        online = presence_pb2.PRESENCE_STATE_ONLINE
        presence = pb.SetPresenceRequest(device_id="phone", state=online)
        for _ in range(2):
            await stub.SetPresence(presence, metadata=alice)
        with pytest.raises(grpc.aio.AioRpcError) as device_limited:
            await stub.SetPresence(presence, metadata=alice)
        assert device_limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "device phone of user alice" in (device_limited.value.details() or "")
        assert 0.5 < _retry_delay(device_limited.value) <= 1.0
        # Per user: 2 more calls (the user's burst is 4), then refused whatever the device.
        for _ in range(2):
            await stub.Discover(pb.DiscoverRequest(user_id="alice"), metadata=alice)
        with pytest.raises(grpc.aio.AioRpcError) as user_limited:
            await stub.Discover(pb.DiscoverRequest(user_id="alice"), metadata=alice)
        assert user_limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert 0.5 < _retry_delay(user_limited.value) <= 1.0
        # Streams count too, and another user is not affected.
        updates = stub.Updates(pb.UpdatesRequest(device_id="tablet"), metadata=alice)
        with pytest.raises(grpc.aio.AioRpcError) as stream_limited:
            await updates.read()
        assert stream_limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await stub.Discover(pb.DiscoverRequest(user_id="bob"), metadata=bob)


async def test_streams_per_connection_are_bounded() -> None:
    settings = load_settings(
        environ={},
        overrides={
            "router": {"max_streams_per_connection": 4},
            "rate_limits": {"enabled": False},
            **tls_overrides(),
        },
    )
    runner = build_runner("router", settings, port=0, metrics_port=0)
    await runner.start()
    metadata = (("authorization", f"Bearer {issue_token(settings.auth, 'alice')}"),)
    in_flight = RPC_IN_FLIGHT.labels("router")
    before = in_flight._value.get()
    own_pool = [("grpc.use_local_subchannel_pool", 1)]
    try:
        async with (
            client_channel(settings, runner.address, own_pool) as greedy,
            client_channel(settings, runner.address, own_pool) as other,
        ):
            # Send streams that never write: each one holds a handler waiting for its start.
            send = pb_grpc.RouterServiceStub(greedy).Send
            held = [send(metadata=metadata) for _ in range(10)]  # type: ignore[call-arg]
            for _ in range(50):
                await asyncio.sleep(0.05)
                if in_flight._value.get() - before >= 4:
                    break
            await asyncio.sleep(0.3)
            assert in_flight._value.get() - before == 4  # the other 6 wait in the client
            # Another connection is not affected by the greedy one.
            reply = await pb_grpc.RouterServiceStub(other).Discover(
                pb.DiscoverRequest(user_id="alice"), metadata=metadata
            )
            assert reply.routers
            for call in held:
                call.cancel()
    finally:
        await runner.drain(grace_s=0)
