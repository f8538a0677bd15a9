"""The one chunk-frame rule, end to end: checked before anything is relayed live or stored.

Each test is a defect a new client could hit: a refused frame played to live listeners, a
first frame that is refused but still creates the header, a unary start whose header stays
LIVE for ever, an abandoned header that does not say what its body kept.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from tests.voxmesh_client import Device, collect_updates, uuid7, voice_chunks
from voxmesh.common.v1 import body_pb2, message_pb2, thread_pb2, update_pb2
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.stack.local_stack import LocalStack

pytestmark = pytest.mark.stack

MakeDevice = Callable[[str], Awaitable[Device]]


async def _group(owner: Device, *members: Device) -> str:
    reply = await owner.call(
        "CreateThread",
        pb.CreateThreadRequest(
            kind=thread_pb2.THREAD_KIND_GROUP, member_user_ids=[m.user_id for m in members]
        ),
    )
    return str(reply.thread.thread_id)


def _start(thread: str, message_id: str) -> message_pb2.MessageStart:
    return message_pb2.MessageStart(
        message_id=message_id,
        thread_id=thread,
        kind=message_pb2.MESSAGE_KIND_VOICE,
        content_type="audio/ogg;codecs=opus",
    )


def _copy(chunk: body_pb2.Chunk, **changes: Any) -> body_pb2.Chunk:
    changed = body_pb2.Chunk()
    changed.CopyFrom(chunk)
    for name, value in changes.items():
        setattr(changed, name, value)
    return changed


async def _until_stopped(call: Any) -> pb.SendStopped:
    while True:
        response: pb.SendResponse = await asyncio.wait_for(call.read(), 10)
        assert response is not grpc.aio.EOF  # type: ignore[attr-defined]
        if response.HasField("stopped"):
            return response.stopped
        assert not response.HasField("completed"), response


async def _message_count(device: Device, thread: str) -> int:
    page = await device.call("ListMessages", pb.ListMessagesRequest(thread_id=thread))
    return len(page.headers)


async def test_a_frame_the_body_store_would_refuse_is_never_played_live(
    devices: MakeDevice,
) -> None:
    """Offset and media-time errors were relayed live before the body store refused them,
    and the corrected resend was then never relayed."""
    alice, bob = await devices("alice"), await devices("bob")
    thread = await _group(alice, bob)
    message_id = uuid7()
    chunks = voice_chunks(6, seed="rule")
    updates = bob.updates()
    await collect_updates(updates, lambda e: e.HasField("caught_up"))
    heard: list[update_pb2.UpdateEvent] = []
    listening = asyncio.create_task(
        collect_updates(
            updates,
            lambda e: (
                e.HasField("message_state_changed")
                and e.message_state_changed.header.message_id == message_id
            ),
            sink=heard,
        )
    )
    try:
        for bad in (
            _copy(chunks[2], offset=chunks[2].offset + 1),  # not where the bytes end
            _copy(chunks[2], media_time_ms=chunks[1].media_time_ms - 1),  # time going back
            _copy(chunks[2], payload=b""),  # empty payload
        ):
            call = alice.send_call()
            await call.write(
                pb.SendRequest(
                    start=_start(thread, message_id),
                    device_id="phone",
                    chunks=chunks[:2],  # resent after the first round: dropped as stored
                )
            )
            assert (await asyncio.wait_for(call.read(), 10)).HasField("accepted")
            await call.write(pb.SendRequest(chunks=[bad]))
            stopped = await _until_stopped(call)
            assert stopped.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], stopped
            await call.done_writing()
            with pytest.raises(grpc.aio.AioRpcError):
                await asyncio.wait_for(call.read(), 10)
        # The sender corrects itself and resumes: chunk 2 on is relayed live, once each.
        call = alice.send_call()
        await call.write(
            pb.SendRequest(
                start=_start(thread, message_id),
                device_id="phone",
                chunks=chunks,
                end=message_pb2.MessageEnd(
                    chunk_count=6, size_bytes=sum(len(c.payload) for c in chunks)
                ),
            )
        )
        await call.done_writing()
        async for response in call:
            if response.HasField("completed"):
                break
        await asyncio.wait_for(listening, 20)
        live = [c for e in heard if e.HasField("live_chunks") for c in e.live_chunks.chunks]
        assert [c.index for c in live] == [0, 1, 2, 3, 4, 5]
        assert [c.payload for c in live] == [c.payload for c in chunks]
        assert [c.offset for c in live] == [c.offset for c in chunks]
    finally:
        updates.cancel()


async def test_a_refused_first_send_frame_writes_nothing(devices: MakeDevice) -> None:
    alice, bob = await devices("alice"), await devices("bob")
    thread = await _group(alice, bob)
    limits = alice.settings.limits
    chunks = voice_chunks(3, seed="first")
    for bad_first_frame in (
        [_copy(chunks[0], payload=b"x" * (limits.max_chunk_bytes + 1))],  # oversize
        chunks[1:],  # index gap: a new message starts at chunk 0
        [chunks[0], _copy(chunks[1], offset=7)],  # bad offset
    ):
        message_id = uuid7()
        call = alice.send_call()
        await call.write(
            pb.SendRequest(
                start=_start(thread, message_id), device_id="phone", chunks=bad_first_frame
            )
        )
        stopped = await _until_stopped(call)
        assert stopped.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], stopped
        await call.done_writing()
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(call.read(), 10)
        assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await bob.call(
                "GetMessage", pb.GetMessageRequest(thread_id=thread, message_id=message_id)
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert await _message_count(bob, thread) == 0  # no seq taken, nothing for members


def _config(stack: LocalStack, *args: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "voxmesh",
            "--config",
            str(stack.paths.settings_file),
            "config",
            *list(args),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


async def _state_becomes(
    device: Device, thread: str, message_id: str, state: int, timeout_s: float
) -> message_pb2.MessageHeader:
    deadline = time.monotonic() + timeout_s
    while True:
        got = await device.call(
            "GetMessage", pb.GetMessageRequest(thread_id=thread, message_id=message_id)
        )
        if got.header.state == state:
            return got.header  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"still {got.header.state} after {timeout_s} s"
        await asyncio.sleep(0.2)


async def test_unary_starts_are_checked_first_and_abandoned_when_left(
    devices: MakeDevice, local_stack: LocalStack
) -> None:
    """A unary StartMessage with a refused chunk writes nothing; one whose sender never comes
    back is abandoned (it used to stay LIVE for ever), its header stating what was kept."""
    alice, bob = await devices("alice"), await devices("bob")
    thread = await _group(alice, bob)
    limits = alice.settings.limits
    chunks = voice_chunks(4, seed="unary")
    refused_id = uuid7()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await alice.call(
            "StartMessage",
            pb.StartMessageRequest(
                start=_start(thread, refused_id),
                device_id="web",
                chunks=[chunks[0], _copy(chunks[1], payload=b"y" * (limits.max_chunk_bytes + 1))],
            ),
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await bob.call("GetMessage", pb.GetMessageRequest(thread_id=thread, message_id=refused_id))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    idle_s = 2.0
    await asyncio.to_thread(_config, local_stack, "set", "body_store.abandon_after_s", str(idle_s))
    try:
        left_id = uuid7()
        started = await alice.call(
            "StartMessage",
            pb.StartMessageRequest(
                start=_start(thread, left_id), device_id="web", chunks=chunks[:2]
            ),
        )
        assert started.ack.durable_chunk_count == 2
        await alice.call(
            "AppendChunks",
            pb.AppendChunksRequest(thread_id=thread, message_id=left_id, chunks=chunks[2:3]),
        )
        header = await _state_becomes(
            bob, thread, left_id, message_pb2.MESSAGE_STATE_ABANDONED, idle_s + 20
        )
        kept = chunks[:3]
        assert header.chunk_count == 3
        assert header.size_bytes == sum(len(c.payload) for c in kept)
        read, end = await bob.read_body(thread, left_id)
        assert b"".join(c.payload for c in read) == b"".join(c.payload for c in kept)
        assert end.end.chunk_count == header.chunk_count
        assert end.end.size_bytes == header.size_bytes
    finally:
        await asyncio.to_thread(_config, local_stack, "unset", "body_store.abandon_after_s")


async def test_an_abandoned_send_states_what_its_body_kept(
    devices: MakeDevice, local_stack: LocalStack
) -> None:
    alice, bob = await devices("alice"), await devices("bob")
    thread = await _group(alice, bob)
    chunks = voice_chunks(8, seed="kept")
    idle_s = 2.0
    await asyncio.to_thread(_config, local_stack, "set", "body_store.abandon_after_s", str(idle_s))
    try:
        message_id = uuid7()
        call = alice.send_call()
        await call.write(
            pb.SendRequest(start=_start(thread, message_id), device_id="phone", chunks=chunks[:5])
        )
        durable = 0
        while durable < 5:
            reply = await asyncio.wait_for(call.read(), 10)
            if reply.HasField("ack"):
                durable = reply.ack.durable_chunk_count
        call.cancel()  # the sender vanishes
        header = await _state_becomes(
            bob, thread, message_id, message_pb2.MESSAGE_STATE_ABANDONED, idle_s + 20
        )
        assert header.chunk_count == 5
        assert header.size_bytes == sum(len(c.payload) for c in chunks[:5])
        read, _ = await bob.read_body(thread, message_id)
        assert len(read) == header.chunk_count
    finally:
        await asyncio.to_thread(_config, local_stack, "unset", "body_store.abandon_after_s")
