"""A WebRTC talker's router is killed mid-talk: nothing acknowledged is lost, and the message
ends ABANDONED with what was durable (live audio is not resent, so it is never resumed)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import require_spanner_emulator
from tests.ports import stack_overrides
from tests.voxmesh_client import Device, uuid7
from tests.webrtc.tone_audio import decode, dominant_frequency, opus_packets
from tests.webrtc.webrtc_client import start_talk
from voxmesh.common.v1 import message_pb2, thread_pb2
from voxmesh.core.settings import load_settings
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.stack.local_stack import LocalStack

pytestmark = pytest.mark.stack
IDLE_S = 2.0


@pytest.fixture(scope="module")
def two_routers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    require_spanner_emulator()
    overrides: dict[str, Any] = stack_overrides(str(tmp_path_factory.mktemp("webrtc-kill")))
    overrides["rings"] = {"lease_ttl_s": 2}
    overrides["router"]["instances"] = 2
    overrides["body_store"] = {"abandon_after_s": IDLE_S}
    with LocalStack(load_settings(overrides=overrides)) as stack:
        yield stack


async def test_killing_a_webrtc_talkers_router_keeps_every_acknowledged_chunk(
    two_routers: LocalStack,
) -> None:
    settings = two_routers.settings
    victim_port, survivor_port = (settings.router.instance_ports(i)[0] for i in (0, 1))
    alice = Device(settings, "rtc-alice", "browser", f"{settings.host}:{victim_port}")
    bob = Device(settings, "rtc-bob", "phone", f"{settings.host}:{survivor_port}")
    try:
        created = await alice.call(
            "CreateThread",
            pb.CreateThreadRequest(
                kind=thread_pb2.THREAD_KIND_GROUP, member_user_ids=[bob.user_id]
            ),
        )
        thread = created.thread.thread_id
        message_id = uuid7()
        talk = await start_talk(alice, thread, message_id, opus_packets(5.0))
        await talk.wait_for(lambda t: t.durable >= 50)
        victim = next(c.name for c in two_routers.components if ("grpc", victim_port) in c.ports)
        os.kill(int(two_routers._rpc().supervisor.getProcessInfo(victim)["pid"]), signal.SIGKILL)
        acked = talk.durable
        await talk.close()

        deadline = time.monotonic() + IDLE_S + 30
        while True:
            got = await bob.call(
                "GetMessage", pb.GetMessageRequest(thread_id=thread, message_id=message_id)
            )
            if got.header.state == message_pb2.MESSAGE_STATE_ABANDONED:
                break
            assert time.monotonic() < deadline, "the message never ended after its router died"
            await asyncio.sleep(0.2)
        chunks, end = await bob.read_body(thread, message_id)
        assert end.end.state == message_pb2.MESSAGE_STATE_ABANDONED
        indexes = [c.index for c in chunks]
        assert indexes == list(range(len(chunks))), "chunks lost or duplicated"
        assert len(chunks) >= acked, f"{acked} chunks were acknowledged, {len(chunks)} kept"
        assert got.header.chunk_count == len(chunks)  # the header states what was kept
        samples, rate = decode(b"".join(c.payload for c in chunks))
        assert abs(len(samples) / rate - len(chunks) * 0.02) < 0.05
        assert abs(dominant_frequency(samples, rate) - 440) < 5
        print(f"\nrouter killed after {acked} acked chunks; {len(chunks)} kept, ABANDONED")
    finally:
        await alice.close()
        await bob.close()
