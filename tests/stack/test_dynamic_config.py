"""Dynamic settings in etcd, through the real `voxmesh config` command and running services."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from tests.voxmesh_client import Device, uuid7
from voxmesh.common.v1 import body_pb2, message_pb2, thread_pb2
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.stack.local_stack import LocalStack

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[2]


def _cli(stack: LocalStack, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voxmesh", "--config", str(stack.paths.settings_file), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def _start_with_chunk(alice: Device, thread: str, size: int) -> grpc.StatusCode:
    chunk = body_pb2.Chunk(index=0, offset=0, payload=b"x" * size)
    start = message_pb2.MessageStart(
        message_id=uuid7(),
        thread_id=thread,
        kind=message_pb2.MESSAGE_KIND_VOICE,
        content_type="audio/ogg",
    )
    try:
        await alice.call(
            "StartMessage", pb.StartMessageRequest(start=start, device_id="d", chunks=[chunk])
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "the running services did not adopt the setting"
        await asyncio.sleep(0.1)


async def test_a_limit_set_in_etcd_takes_effect_without_restart(local_stack: LocalStack) -> None:
    settings = local_stack.settings
    address = f"{settings.host}:{settings.router.port}"
    alice = Device(settings, f"dyn-alice-{uuid7()[-6:]}", "d", address)
    try:
        created = await alice.call(
            "CreateThread",
            pb.CreateThreadRequest(kind=thread_pb2.THREAD_KIND_GROUP, member_user_ids=["dyn-bob"]),
        )
        thread = created.thread.thread_id
        assert await _start_with_chunk(alice, thread, 150) == grpc.StatusCode.OK
        pids_before = local_stack.recorded_pids()

        result = _cli(local_stack, "config", "set", "limits.max_chunk_bytes", "100")
        assert result.returncode == 0, result.stderr
        try:

            async def refused() -> bool:
                return (
                    await _start_with_chunk(alice, thread, 150) == grpc.StatusCode.INVALID_ARGUMENT
                )

            await _eventually(refused)
            got = _cli(local_stack, "config", "get", "limits.max_chunk_bytes")
            assert "limits.max_chunk_bytes = 100  (etcd)" in got.stdout
            assert "limits.max_chunk_bytes = 100" in _cli(local_stack, "config", "list").stdout
        finally:
            assert _cli(local_stack, "config", "unset", "limits.max_chunk_bytes").returncode == 0

        async def accepted() -> bool:
            return await _start_with_chunk(alice, thread, 150) == grpc.StatusCode.OK

        await _eventually(accepted)
        assert local_stack.recorded_pids() == pids_before  # no process was restarted
    finally:
        await alice.close()


def test_restart_only_and_invalid_settings_are_refused(local_stack: LocalStack) -> None:
    restart = _cli(local_stack, "config", "set", "router.port", "1234")
    assert restart.returncode == 1 and "needs a restart" in restart.stderr
    invalid = _cli(local_stack, "config", "set", "--", "limits.max_chunk_bytes", "-5")
    assert invalid.returncode == 1 and "max_chunk_bytes" in invalid.stderr
    unknown = _cli(local_stack, "config", "set", "limits.nope", "1")
    assert unknown.returncode == 1 and "unknown setting" in unknown.stderr
    assert "limits.max_chunk_bytes" not in _cli(local_stack, "config", "list").stdout


async def test_watch_prints_changes_and_a_legacy_cluster_file_imports(
    local_stack: LocalStack,
) -> None:
    import aetcd

    watcher = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voxmesh",
        "--config",
        str(local_stack.paths.settings_file),
        "config",
        "watch",
        "--count",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert watcher.stdout is not None
        assert b"watching" in await asyncio.wait_for(watcher.stdout.readline(), 30)
        example = str(REPO / "config/legacy-cluster.example.json")
        imported = await asyncio.to_thread(_cli, local_stack, "config", "import", example)
        assert imported.returncode == 0, imported.stderr
        assert "4 settings, hosts: 3 router, 2 header, 2 body, 1 notification" in imported.stdout
        out, _ = await asyncio.wait_for(watcher.communicate(), 30)
        assert b" = " in out
    finally:
        if watcher.returncode is None:
            watcher.kill()
            await watcher.wait()
    listed = _cli(local_stack, "config", "list").stdout
    assert "limits.max_members_per_thread = 500" in listed and "rings.vnodes = 128" in listed
    settings = local_stack.settings
    async with aetcd.Client(host=settings.host, port=settings.etcd.client_port) as etcd:
        legacy = await etcd.get_prefix(f"{settings.etcd.prefix}/legacy/".encode())
        records = {kv.key.decode().split("/legacy/")[1]: json.loads(kv.value) for kv in legacy}
    assert records["router/10.0.1.11:5000"] == {
        "weight": 2,
        "zone": "us-east1-b",
        "cluster": "voxer-prod-us-east",
    }
    assert len(records) == 8
    for key in (
        "limits.max_chunk_bytes",
        "limits.max_members_per_thread",
        "body_store.abandon_after_s",
        "rings.vnodes",
    ):
        assert _cli(local_stack, "config", "unset", key).returncode == 0
