"""Device registrations and do-not-disturb survive a restart of the real Redis (Valkey), and a
kill -9 of it: the local stack runs it with an fsynced append-only file (``redis_command``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from tests.mesh_pki import mesh_channel, tls_overrides
from tests.ports import free_port
from voxmesh.common.v1 import device_pb2
from voxmesh.core.service_runner import ServiceRunner
from voxmesh.core.settings import Settings, load_settings
from voxmesh.notification.device_registry import DeviceRegistry
from voxmesh.notification.v1 import notification_service_pb2 as pb
from voxmesh.notification.v1 import notification_service_pb2_grpc as pb_grpc
from voxmesh.notification.webhook_targets import WebhookTargets
from voxmesh.service_registry import build_runner
from voxmesh.stack import readiness
from voxmesh.stack.components import redis_command


class RedisServer:
    """The real Redis binary, started with the stack's own command line."""

    def __init__(self, settings: Settings, data: Path) -> None:
        self.command = redis_command(settings, data)
        self.port = settings.redis.port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while not readiness.redis_ping("127.0.0.1", self.port).ready:
            assert time.monotonic() < deadline, "redis did not start"
            time.sleep(0.05)  # readiness polling of a starting process

    def stop(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)
        self.process.wait(10)


@pytest.fixture
def settings() -> Settings:
    return load_settings(environ={}, overrides={"redis": {"port": free_port()}, **tls_overrides()})


@pytest.fixture
def redis_server(settings: Settings, tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(settings, tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.stop(signal.SIGTERM)


@pytest.fixture
async def notifier(settings: Settings, redis_server: RedisServer) -> AsyncIterator[ServiceRunner]:
    runner = build_runner("notification", settings, port=0, metrics_port=0)
    await runner.start()
    yield runner
    await runner.drain(grace_s=0)


def _as_router(runner: ServiceRunner) -> grpc.aio.Channel:
    """The notification service's internal port, called as a router is (mutual TLS)."""
    return mesh_channel(runner.settings, runner.internal_address, "notification", "router")


async def _listed(runner: ServiceRunner, user: str) -> list[str]:
    async with _as_router(runner) as channel:
        stub = pb_grpc.NotificationServiceStub(channel)
        for _ in range(100):  # the service's Redis connection comes back after the restart
            try:
                reply = await stub.ListDevices(pb.ListDevicesRequest(user_id=user))
                return sorted(d.device_id for d in reply.devices)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                await asyncio.sleep(0.1)
    raise AssertionError("the notification service did not get its Redis back")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["restart", "kill-9"])
async def test_registrations_and_dnd_survive_a_redis_restart(
    how: int, settings: Settings, redis_server: RedisServer, notifier: ServiceRunner
) -> None:
    user = f"bob-{how}"
    async with _as_router(notifier) as channel:
        stub = pb_grpc.NotificationServiceStub(channel)
        for device_id in ("phone", "tablet"):
            await stub.RegisterDevice(
                pb.RegisterDeviceRequest(
                    device=device_pb2.Device(
                        user_id=user,
                        device_id=device_id,
                        platform=device_pb2.PLATFORM_WEBHOOK,
                        push_token=f"http://127.0.0.1:9/{device_id}",
                    )
                )
            )
        await stub.SetDoNotDisturb(pb.SetDoNotDisturbRequest(user_id=user, enabled=True))
    assert await _listed(notifier, user) == ["phone", "tablet"]

    redis_server.stop(how)  # kill -9 right after the acknowledged writes: nothing buffered
    redis_server.start()

    assert await _listed(notifier, user) == ["phone", "tablet"]
    client = aioredis.Redis(host="127.0.0.1", port=settings.redis.port)
    try:
        registry = DeviceRegistry(client, WebhookTargets(require_https=False, allow_private=True))
        assert await registry.dnd(user, int(time.time() * 1000))
        assert await client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        await client.aclose()


def test_the_stack_runs_redis_with_an_fsynced_append_only_file(settings: Settings) -> None:
    command = redis_command(settings, Path("/data"))
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"
    assert command[command.index("--dir") + 1] == "/data"
