"""The router's one link per body node, with the only body node killed for real (kill -9).

The stack here has a single body node and no automatic restart: the test starts it again
itself, as supervisord would. The sender must see nothing: its Send completes with no error
and the body is byte for byte what it sent (the router resends what was not acked once the
node is back, within body_store.failover_wait_s).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable

import pytest

from tests.voxmesh_client import Device, send_voice, uuid7, voice_chunks
from voxmesh.common.v1 import message_pb2, thread_pb2
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.stack.local_stack import LocalStack

pytestmark = pytest.mark.stack

MakeDevice = Callable[[str], Awaitable[Device]]


def _restart(stack: LocalStack, name: str, killed_pid: int) -> float:
    """Start a killed component again; returns when it serves (seconds it took)."""
    began = time.monotonic()
    rpc = stack._rpc()
    while True:  # until supervisord has seen the death
        info = rpc.supervisor.getProcessInfo(name)
        if info["statename"] != "RUNNING" or int(info["pid"]) != killed_pid:
            break
        assert time.monotonic() - began < 20, f"{name} still RUNNING as {killed_pid}"
        time.sleep(0.02)
    if info["statename"] != "RUNNING":
        rpc.supervisor.startProcess(name, True)
    component = next(c for c in stack.components if c.name == name)
    while not component.probe().ready:
        assert time.monotonic() - began < 60, f"{name} did not come back"
        time.sleep(0.05)
    return time.monotonic() - began


async def test_killing_the_only_body_node_mid_message_is_invisible_to_the_sender(
    devices: MakeDevice, local_stack: LocalStack
) -> None:
    alice, bob = await devices("alice"), await devices("bob")
    reply = await alice.call(
        "CreateThread",
        pb.CreateThreadRequest(kind=thread_pb2.THREAD_KIND_GROUP, member_user_ids=[bob.user_id]),
    )
    thread = reply.thread.thread_id
    message_id = uuid7()
    chunks = voice_chunks(300, seed="only-body-kill")
    pid = int(local_stack._rpc().supervisor.getProcessInfo("body")["pid"])
    restarted: list[asyncio.Task[float]] = []

    def kill_at(index: int) -> None:
        if index == 100:
            os.kill(pid, signal.SIGKILL)
            back = asyncio.to_thread(_restart, local_stack, "body", pid)
            restarted.append(asyncio.create_task(back))

    acked: dict[int, float] = {}
    try:
        responses = await asyncio.wait_for(
            send_voice(
                alice, thread, message_id, chunks, pace_s=0.01, acked_at=acked, on_sent=kill_at
            ),
            90,
        )
    finally:
        if restarted:
            back_in_s = await restarted[0]
        else:
            back_in_s = _restart(local_stack, "body", pid)
    print(f"\nonly body node killed at chunk 100: serving again after {back_in_s:.2f} s")
    assert restarted, "the body node was never killed"
    ack_counts = [r.ack.durable_chunk_count for r in responses if r.HasField("ack")]
    assert ack_counts == sorted(ack_counts) and ack_counts[-1] == 300  # never backwards
    assert responses[-1].completed.header.chunk_count == 300
    assert responses[-1].completed.header.state == message_pb2.MESSAGE_STATE_COMPLETE
    read, end = await bob.read_body(thread, message_id)
    assert [c.index for c in read] == list(range(300))
    assert b"".join(c.payload for c in read) == b"".join(c.payload for c in chunks)
    assert end.end.state == message_pb2.MESSAGE_STATE_COMPLETE
    ranged = await bob.call(
        "ReadBodyRange", pb.ReadBodyRangeRequest(thread_id=thread, message_id=message_id)
    )
    assert ranged.data == b"".join(c.payload for c in chunks)
