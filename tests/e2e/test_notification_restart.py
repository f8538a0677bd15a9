"""A real notification process killed with SIGKILL in the middle of a burst of pushes.

Its own Redis, its own etcd prefix (a ring of its own), a router in this process; the header
and body stores are the session stack's. The design allows at-least-once: no push may be
lost, and a push may repeat only if it was in flight when the node died (the provider had it,
the node had not recorded it), so at most ``max_in_flight_pushes`` repeats, each with the
same idempotency key (see voxmesh.notification.push_queue).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pydantic
import pytest

from tests.ports import free_port
from tests.voxmesh_client import Device, uuid7
from voxmesh.common.v1 import device_pb2, thread_pb2
from voxmesh.core.mesh_tls import client_ca_file
from voxmesh.core.settings import Settings, load_settings
from voxmesh.notification.webhook_receiver import ReceivedPush, WebhookReceiver
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.service_registry import build_runner
from voxmesh.stack import binaries, readiness
from voxmesh.stack.local_stack import LocalStack

pytestmark = pytest.mark.stack

IN_FLIGHT = 4
BURST = 30


def _wait_ready(probe: object, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()  # type: ignore[operator]
        if result.ready:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready: {result.detail}")
        time.sleep(0.05)  # readiness polling of a starting process


@pytest.fixture
def isolated_settings(local_stack: LocalStack, tmp_path: Path) -> Iterator[tuple[Settings, Path]]:
    """The stack's settings with a private Redis, ring prefix and notification port."""
    redis_port = free_port()
    redis = subprocess.Popen(
        [
            str(binaries.redis_server()),
            *("--bind", "127.0.0.1", "--port", str(redis_port)),
            *("--save", "", "--appendonly", "no"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(lambda: readiness.redis_ping("127.0.0.1", redis_port), "redis")
        data = pydantic.TypeAdapter(Settings).dump_python(local_stack.settings, mode="json")
        data["redis"]["port"] = redis_port
        data["etcd"]["prefix"] = f"/voxmesh-restart-{uuid.uuid4().hex[:8]}"
        data["notification"].update(
            port=free_port(), internal_port=free_port(), metrics_port=free_port(), drain_grace_s=1
        )
        data["notification_sender"]["max_in_flight_pushes"] = IN_FLIGHT
        path = tmp_path / "settings.json"
        path.write_text(json.dumps(data))
        yield load_settings(config_file=path, environ={}), path
    finally:
        redis.terminate()
        redis.wait(10)


class NotificationProcess:
    def __init__(self, settings: Settings, config: Path, log: Path) -> None:
        self._settings = settings
        self._config = config
        self._log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "voxmesh", "--config", str(self._config)),
                    *("serve", "notification"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        port = self._settings.notification.port
        _wait_ready(
            lambda: readiness.grpc_health(
                "127.0.0.1",
                port,
                "voxmesh.notification.v1.NotificationService",
                ca_file=client_ca_file(self._settings),
            ),
            "notification",
        )

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)


@pytest.fixture
async def notification_node(
    isolated_settings: tuple[Settings, Path], tmp_path: Path
) -> AsyncIterator[NotificationProcess]:
    settings, config = isolated_settings
    node = NotificationProcess(settings, config, tmp_path / "notification.log")
    await asyncio.to_thread(node.start)
    yield node
    await asyncio.to_thread(node.stop)


async def test_killed_notification_node_loses_no_push_and_repeats_only_in_flight_ones(
    isolated_settings: tuple[Settings, Path], notification_node: NotificationProcess
) -> None:
    settings, _ = isolated_settings
    receiver = await WebhookReceiver(delay_s=0.05).start()  # a slow endpoint: pushes in flight
    router = build_runner("router", settings, port=0, metrics_port=0)
    await router.start()
    alice = Device(settings, f"alice-{uuid.uuid4().hex[:6]}", "phone", router.address)
    bob = Device(settings, f"bob-{uuid.uuid4().hex[:6]}", "phone", router.address)
    try:
        created = await alice.call(
            "CreateThread",
            pb.CreateThreadRequest(
                kind=thread_pb2.THREAD_KIND_GROUP, title="burst", member_user_ids=[bob.user_id]
            ),
        )
        thread = created.thread.thread_id
        await bob.call(
            "RegisterDevice",
            pb.RegisterDeviceRequest(
                device=device_pb2.Device(
                    device_id="phone",
                    platform=device_pb2.PLATFORM_WEBHOOK,
                    push_token=receiver.url("/bob"),
                )
            ),
        )
        sent: list[str] = []

        async def burst() -> None:
            for i in range(BURST):
                reply = await alice.call(
                    "SendText",
                    pb.SendTextRequest(
                        message_id=uuid7(), thread_id=thread, device_id="phone", text=f"#{i}"
                    ),
                )
                sent.append(reply.header.message_id)

        talking = asyncio.create_task(burst())
        await receiver.wait_for(lambda got: len(got) >= 8, timeout_s=30)
        await asyncio.to_thread(notification_node.kill)  # mid-burst, pushes in flight
        killed_after = len(receiver.requests)
        await asyncio.to_thread(notification_node.start)  # same node id: resumes its jobs
        await asyncio.wait_for(talking, 60)
        assert killed_after < BURST  # the kill really was mid-burst

        def all_pushed(got: list[ReceivedPush]) -> bool:
            ids = {r.body.get("message_id") for r in got}
            return set(sent) <= ids

        await receiver.wait_for(all_pushed, timeout_s=40)
        per_push = Counter(r.push_id for r in receiver.requests)
        repeats = sum(n - 1 for n in per_push.values())
        print(
            f"\nkill -9 mid-burst: {len(sent)} messages, {len(per_push)} distinct pushes, "
            f"{repeats} repeated (in flight at the kill, limit {IN_FLIGHT}); "
            f"{killed_after} requests before the kill"
        )
        assert len(per_push) == BURST  # none lost, one push id per message
        assert repeats <= IN_FLIGHT
    finally:
        await alice.close()
        await bob.close()
        await router.drain(grace_s=0)
        await receiver.close()
