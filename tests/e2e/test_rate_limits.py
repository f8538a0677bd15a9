"""Rate limits on the real stack: set through etcd (dynamic), a flooding client in its own
process refused with RetryInfo, and a live speaker beside it whose latency does not suffer."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import aetcd
import grpc
import pytest

from tests.voxmesh_client import Device, collect_updates, send_voice, uuid7, voice_chunks
from voxmesh.common.v1 import thread_pb2
from voxmesh.core.client_auth import issue_token
from voxmesh.core.mesh_tls import client_ca_file
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.stack.local_stack import LocalStack

MakeDevice = Callable[[str], Awaitable[Device]]
GROUP = thread_pb2.THREAD_KIND_GROUP
_LIMITS = {
    "rate_limits.calls": {
        "user_per_s": 20.0,
        "user_burst": 20,
        "device_per_s": 20.0,
        "device_burst": 20,
    },
    "rate_limits.chunks": {
        "user_per_s": 200.0,
        "user_burst": 200,
        "device_per_s": 200.0,
        "device_burst": 200,
    },
}


@pytest.fixture
async def low_limits(local_stack: LocalStack) -> AsyncIterator[None]:
    settings = local_stack.settings
    prefix = f"{settings.etcd.prefix}/config/"
    async with aetcd.Client(host=settings.host, port=settings.etcd.client_port) as etcd:
        for key, value in _LIMITS.items():
            await etcd.put(f"{prefix}{key}".encode(), json.dumps(value).encode())
        try:
            yield
        finally:
            for key in _LIMITS:
                await etcd.delete(f"{prefix}{key}".encode())


async def _until_limited(probe: Device) -> int:
    """Calls a fresh user gets before RESOURCE_EXHAUSTED: the router adopted the etcd limits."""
    for _ in range(100):
        for made in range(1, 40):
            try:
                await probe.call("Discover", pb.DiscoverRequest(user_id=probe.user_id))
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return made
        await asyncio.sleep(0.1)
    raise AssertionError("the router never adopted the dynamic rate limits")


def _live_latencies(
    sent_at: dict[int, float], received_at: dict[tuple[str, int], float], message_id: str
) -> list[float]:
    return [
        (received_at[(message_id, index)] - sent) * 1000
        for index, sent in sent_at.items()
        if (message_id, index) in received_at
    ]


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def test_a_flooding_client_is_limited_and_live_audio_does_not_suffer(
    local_stack: LocalStack, devices: MakeDevice, low_limits: None
) -> None:
    settings = local_stack.settings
    alice, bob, mallory, probe = [await devices(n) for n in ("alice", "bob", "mallory", "probe")]
    # Dynamic through etcd: the defaults allow a burst of 200 calls; now 20.
    assert await _until_limited(probe) <= 30

    reply = await alice.call(
        "CreateThread",
        pb.CreateThreadRequest(kind=GROUP, title="live", member_user_ids=[bob.user_id]),
    )
    thread = reply.thread.thread_id
    flood_thread = (
        await mallory.call(
            "CreateThread",
            pb.CreateThreadRequest(kind=GROUP, title="spam", member_user_ids=[bob.user_id]),
        )
    ).thread.thread_id

    updates = bob.updates()
    await collect_updates(updates, lambda e: e.HasField("caught_up"))
    received_at: dict[tuple[str, int], float] = {}
    listening = asyncio.create_task(collect_updates(updates, lambda e: False, received_at))

    async def speak(count: int) -> list[float]:
        message_id = uuid7()
        sent_at: dict[int, float] = {}
        await send_voice(alice, thread, message_id, voice_chunks(count), 0.02, sent_at=sent_at)
        await asyncio.sleep(0.2)
        return _live_latencies(sent_at, received_at, message_id)

    try:
        quiet = await speak(150)  # 3 s of live voice, nobody flooding
        flooder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.identity.flood_client",
            f"{settings.host}:{settings.router.port}",
            issue_token(settings.auth, mallory.user_id),
            flood_thread,
            "mallory-phone",
            "5",
            "" if settings.tls.client_plaintext else str(client_ca_file(settings)),
            stdout=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(1.0)  # the flood is running
        flooded = await speak(150)
        out, _ = await asyncio.wait_for(flooder.communicate(), 30)
    finally:
        listening.cancel()
    report = json.loads(out)
    codes: dict[str, int] = report["codes"]
    print(
        f"\nlive latency ms, quiet: p50 {statistics.median(quiet):.1f}"
        f" p95 {_p(quiet, 0.95):.1f} p99 {_p(quiet, 0.99):.1f}"
        f" | beside the flood: p50 {statistics.median(flooded):.1f}"
        f" p95 {_p(flooded, 0.95):.1f} p99 {_p(flooded, 0.99):.1f}"
        f"; flooder got {codes} {report['examples']}"
    )
    # Every chunk heard live, both times.
    assert len(quiet) == 150 and len(flooded) == 150
    # The flooder got what the buckets allow (a burst of 20, then 20 a second for the ~5 s
    # it ran, plus slack) and was refused the rest, with a retry delay.
    refused_calls = codes.get("call:RESOURCE_EXHAUSTED", 0)
    assert 0 < codes.get("call:OK", 0) <= 20 + 20 * 5.5
    assert refused_calls > codes.get("call:OK", 0)
    assert codes.get("send:RESOURCE_EXHAUSTED", 0) >= 1
    assert report["retry_info"] >= refused_calls
    # The router refused; it never failed (the flooder writes without reading, so its own
    # writes after the server ended a Send show up client-side as "Internal error from Core").
    router_log = (settings.run_dir / "logs" / "router.log").read_text()
    assert '"rpc failed"' not in router_log and "Traceback" not in router_log
    # The speaker beside it: live latency stays in the same range (a 2-core machine shared
    # with other work is noisy, hence the margins; the printed p99 is for the record).
    assert statistics.median(flooded) < statistics.median(quiet) + 20
    assert _p(flooded, 0.95) < max(3 * _p(quiet, 0.95), _p(quiet, 0.95) + 60)
