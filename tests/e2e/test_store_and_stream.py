"""Store and stream, end to end over the real local stack (Spanner and GCS emulators).

Chunks are streamed faster than real time (the test would otherwise take 30 s per message);
latency figures printed here are measured at that pace.
"""

from __future__ import annotations

import asyncio
import os
import statistics
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from tests.voxmesh_client import Device, collect_updates, send_voice, uuid7, voice_chunks
from voxmesh.common.v1 import body_pb2, message_pb2, thread_pb2, update_pb2
from voxmesh.router.v1 import router_service_pb2 as pb

pytestmark = pytest.mark.stack

MakeDevice = Callable[[str], Awaitable[Device]]
THIRTY_SECONDS = 1500  # 20 ms chunks
# Seconds between chunks: faster than real time by default; VOXMESH_E2E_PACE_S=0.02 streams
# the 30 s message in real time (the latency figures printed are then the real-time ones).
PACE_S = float(os.environ.get("VOXMESH_E2E_PACE_S", "0.002"))


async def _group(owner: Device, *members: Device, title: str = "walkie") -> str:
    reply = await owner.call(
        "CreateThread",
        pb.CreateThreadRequest(
            kind=thread_pb2.THREAD_KIND_GROUP,
            title=title,
            member_user_ids=[m.user_id for m in members],
        ),
    )
    return str(reply.thread.thread_id)


def _audio(chunks: list[body_pb2.Chunk]) -> bytes:
    return b"".join(c.payload for c in chunks)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _wait_caught_up(updates: object) -> None:
    await collect_updates(updates, lambda e: e.HasField("caught_up"))


async def test_talk_listen_live_catch_up_and_time_shift(devices: MakeDevice) -> None:
    alice, bob, carol, dave = [await devices(n) for n in ("alice", "bob", "carol", "dave")]
    thread = await _group(alice, bob, carol, dave)
    chunks = voice_chunks(THIRTY_SECONDS, seed="thirty-seconds")
    message_id = uuid7()

    # Bob listens live on his updates stream.
    bob_updates = bob.updates()
    await _wait_caught_up(bob_updates)
    received_at: dict[tuple[str, int], float] = {}
    bob_events = asyncio.create_task(
        collect_updates(
            bob_updates,
            lambda e: (
                e.HasField("message_state_changed")
                and e.message_state_changed.header.message_id == message_id
                and e.message_state_changed.header.state == message_pb2.MESSAGE_STATE_COMPLETE
            ),
            received_at,
        )
    )

    # Carol starts listening when the message is 15 s in, from chunk 0, and catches up.
    sent_at: dict[int, float] = {}
    acked_at: dict[int, float] = {}
    halfway = asyncio.Event()

    def on_sent(index: int) -> None:
        if index >= THIRTY_SECONDS // 2:
            halfway.set()

    sender = asyncio.create_task(
        send_voice(
            alice,
            thread,
            message_id,
            chunks,
            pace_s=PACE_S,
            sent_at=sent_at,
            acked_at=acked_at,
            on_sent=on_sent,
        )
    )
    await asyncio.wait_for(halfway.wait(), 60)
    carol_read = asyncio.create_task(carol.read_body(thread, message_id, from_index=0))

    responses = await asyncio.wait_for(sender, 120 + THIRTY_SECONDS * PACE_S)
    events = await asyncio.wait_for(bob_events, 60)
    carol_chunks, carol_end = await asyncio.wait_for(carol_read, 60)

    # The sender: accepted with a seq, durable acks up to every chunk, then completed.
    assert responses[0].accepted.header.seq >= 1
    assert responses[-1].HasField("completed")
    final = responses[-1].completed.header
    assert final.state == message_pb2.MESSAGE_STATE_COMPLETE
    assert final.chunk_count == THIRTY_SECONDS
    assert max(r.ack.durable_chunk_count for r in responses if r.HasField("ack")) == THIRTY_SECONDS

    # Bob heard it live: the header, then every chunk in order, then the completion.
    assert events[0].HasField("header_added") or any(e.HasField("header_added") for e in events)
    live = [c for e in events if e.HasField("live_chunks") for c in e.live_chunks.chunks]
    assert [c.index for c in live] == list(range(THIRTY_SECONDS))
    assert _audio(live) == _audio(chunks)

    # Carol caught up to live and ended with byte-identical audio.
    assert [c.index for c in carol_chunks] == list(range(THIRTY_SECONDS))
    assert _audio(carol_chunks) == _audio(chunks)
    assert carol_end.end.state == message_pb2.MESSAGE_STATE_COMPLETE

    # Dave was offline: he pages his timeline later and reads the same bytes.
    timeline = await dave.call("ListTimeline", pb.ListTimelineRequest(device_id=dave.device_id))
    headers = {h.message_id: h for h in timeline.headers}
    assert headers[message_id].state == message_pb2.MESSAGE_STATE_COMPLETE
    assert timeline.next_cursor
    body = await dave.call(
        "ReadBodyRange", pb.ReadBodyRangeRequest(thread_id=thread, message_id=message_id)
    )
    assert body.data == _audio(chunks) and body.total_size_bytes == len(_audio(chunks))
    assert body.content_type == "audio/ogg;codecs=opus"
    again = await dave.call(
        "ListTimeline",
        pb.ListTimelineRequest(device_id=dave.device_id, cursor=timeline.next_cursor),
    )
    assert message_id not in {h.message_id for h in again.headers}

    latencies = [
        (received_at[(message_id, i)] - sent_at[i]) * 1000
        for i in range(THIRTY_SECONDS)
        if (message_id, i) in received_at
    ]
    ack_latencies = [
        (acked_at[i] - sent_at[i]) * 1000 for i in range(THIRTY_SECONDS) if i in acked_at
    ]
    print(
        f"\nlive latency ms p50={statistics.median(latencies):.2f} "
        f"p99={_percentile(latencies, 0.99):.2f} max={max(latencies):.2f}; "
        f"durable ack ms p50={statistics.median(ack_latencies):.2f} "
        f"p99={_percentile(ack_latencies, 0.99):.2f}"
    )


async def test_sender_cut_off_resumes_with_no_loss_or_duplicate(devices: MakeDevice) -> None:
    alice, bob = await devices("alice"), await devices("bob")
    thread = await _group(alice, bob)
    chunks = voice_chunks(300, seed="resume")
    message_id = uuid7()

    first = await send_voice(alice, thread, message_id, chunks, stop_after=120)
    durable_before = max((r.ack.durable_chunk_count for r in first if r.HasField("ack")), default=0)
    assert 0 < durable_before <= 120

    second = await send_voice(alice, thread, message_id, chunks, resume=True)
    accepted = second[0].accepted
    assert accepted.header.seq == first[0].accepted.header.seq  # the same message
    assert accepted.durable_chunk_count >= durable_before
    assert second[-1].completed.header.chunk_count == 300

    read, end = await bob.read_body(thread, message_id)
    assert [c.index for c in read] == list(range(300))  # no loss, no duplicate
    assert _audio(read) == _audio(chunks)
    assert end.end.state == message_pb2.MESSAGE_STATE_COMPLETE


async def test_updates_stream_resumes_from_its_cursor_with_no_gap(devices: MakeDevice) -> None:
    alice, bob = await devices("alice"), await devices("bob")
    thread = await _group(alice, bob)
    updates = bob.updates()
    await collect_updates(updates, lambda e: e.HasField("caught_up"))
    first_text = uuid7()
    await alice.call(
        "SendText",
        pb.SendTextRequest(message_id=first_text, thread_id=thread, device_id="web", text="one"),
    )
    cursor = ""

    def mentions_first(event: update_pb2.UpdateEvent) -> bool:
        for name in ("header_added", "header_updated"):
            if event.HasField(name) and getattr(event, name).message_id == first_text:
                return True
        changed = event.message_state_changed
        return event.HasField("message_state_changed") and changed.header.message_id == first_text

    async for frame in updates:
        cursor = frame.cursor
        if any(mentions_first(e) for e in frame.events):
            break
    updates.cancel()

    # While Bob is away, two more messages.
    missed = [uuid7(), uuid7()]
    for i, mid in enumerate(missed):
        await alice.call(
            "SendText",
            pb.SendTextRequest(message_id=mid, thread_id=thread, device_id="web", text=f"m{i}"),
        )
    resumed = bob.updates(cursor=cursor)
    replay = await collect_updates(resumed, lambda e: e.HasField("caught_up"))
    resumed.cancel()
    seen = {e.header_updated.message_id for e in replay if e.HasField("header_updated")}
    assert set(missed) <= seen


async def test_recall_cuts_off_a_live_listener_and_deletes_the_body(devices: MakeDevice) -> None:
    alice, bob = await devices("alice"), await devices("bob")
    thread = await _group(alice, bob)
    message_id = uuid7()
    chunks = voice_chunks(2000, seed="recall")
    sender = asyncio.create_task(send_voice(alice, thread, message_id, chunks, pace_s=0.005))
    await asyncio.sleep(0.5)
    reader = asyncio.create_task(bob.read_body(thread, message_id))
    await asyncio.sleep(0.3)

    recalled = await alice.call(
        "RecallMessage", pb.RecallMessageRequest(thread_id=thread, message_id=message_id)
    )
    assert recalled.header.state == message_pb2.MESSAGE_STATE_RECALLED

    got, end = await asyncio.wait_for(reader, 10)
    assert end.end.state == message_pb2.MESSAGE_STATE_RECALLED
    assert len(got) < 2000
    with pytest.raises(grpc.aio.AioRpcError) as sender_cut:
        await asyncio.wait_for(sender, 10)
    assert sender_cut.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await bob.call(
            "ReadBodyRange", pb.ReadBodyRangeRequest(thread_id=thread, message_id=message_id)
        )
    assert gone.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
    header = await bob.call(
        "GetMessage", pb.GetMessageRequest(thread_id=thread, message_id=message_id)
    )
    assert header.header.state == message_pb2.MESSAGE_STATE_RECALLED


async def test_bad_input_gets_a_precise_status_and_writes_nothing(devices: MakeDevice) -> None:
    alice, bob = await devices("alice"), await devices("bob")
    thread = await _group(alice, bob)
    other_thread = await _group(alice, bob, title="other")
    limits = alice.settings.limits

    async def refused(method: str, request: object) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await alice.call(method, request)
        return caught.value

    bad_id = await refused(
        "GetMessage", pb.GetMessageRequest(thread_id=thread, message_id="no spaces")
    )
    assert bad_id.code() == grpc.StatusCode.INVALID_ARGUMENT and "message_id" in (
        bad_id.details() or ""
    )
    unknown = await refused(
        "GetMessage", pb.GetMessageRequest(thread_id=thread, message_id=uuid7())
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND

    empty = await refused(
        "SendText", pb.SendTextRequest(message_id=uuid7(), thread_id=thread, device_id="d", text="")
    )
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    huge_text = await refused(
        "SendText",
        pb.SendTextRequest(
            message_id=uuid7(),
            thread_id=thread,
            device_id="d",
            text="x" * (limits.max_text_bytes + 1),
        ),
    )
    assert huge_text.code() == grpc.StatusCode.INVALID_ARGUMENT

    # A message id reused in another thread.
    reused = uuid7()
    await alice.call(
        "SendText", pb.SendTextRequest(message_id=reused, thread_id=thread, device_id="d", text="a")
    )
    again = await refused(
        "SendText",
        pb.SendTextRequest(message_id=reused, thread_id=other_thread, device_id="d", text="a"),
    )
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS

    # Chunk problems on the unary (browser) path.
    message_id = uuid7()
    start = message_pb2.MessageStart(
        message_id=message_id,
        thread_id=thread,
        kind=message_pb2.MESSAGE_KIND_VOICE,
        content_type="audio/webm;codecs=opus",
    )
    chunks = voice_chunks(5, seed="bad")
    started = await alice.call(
        "StartMessage", pb.StartMessageRequest(start=start, device_id="web", chunks=chunks[:2])
    )
    assert started.ack.durable_chunk_count == 2
    ref: dict[str, Any] = {"thread_id": thread, "message_id": message_id}
    gap = await refused("AppendChunks", pb.AppendChunksRequest(**ref, chunks=[chunks[3]]))
    assert gap.code() == grpc.StatusCode.INVALID_ARGUMENT and "gap" in (gap.details() or "")
    tampered = body_pb2.Chunk()
    tampered.CopyFrom(chunks[1])
    tampered.payload = b"\x00" * len(tampered.payload)
    repeat = await refused("AppendChunks", pb.AppendChunksRequest(**ref, chunks=[tampered]))
    assert repeat.code() == grpc.StatusCode.INVALID_ARGUMENT
    oversize = body_pb2.Chunk(
        index=2, offset=chunks[2].offset, payload=b"x" * (limits.max_chunk_bytes + 1)
    )
    big = await refused("AppendChunks", pb.AppendChunksRequest(**ref, chunks=[oversize]))
    assert big.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Nothing of the refused calls was written: the body continues at chunk 2.
    ok = await alice.call("AppendChunks", pb.AppendChunksRequest(**ref, chunks=chunks[2:]))
    assert ok.ack.durable_chunk_count == 5
    ended = await alice.call(
        "EndMessage",
        pb.EndMessageRequest(
            **ref,
            end=message_pb2.MessageEnd(
                chunk_count=5, size_bytes=sum(len(c.payload) for c in chunks)
            ),
        ),
    )
    assert ended.header.state == message_pb2.MESSAGE_STATE_COMPLETE
    past = await refused(
        "ReadBodyRange", pb.ReadBodyRangeRequest(**ref, offset=10_000_000, length=10)
    )
    assert past.code() == grpc.StatusCode.OUT_OF_RANGE
    body = await bob.call("ReadBodyRange", pb.ReadBodyRangeRequest(**ref))
    assert body.data == _audio(chunks)


async def test_a_stopped_send_says_why_before_it_ends(devices: MakeDevice) -> None:
    """A refused frame mid-Send: a `stopped` frame first, then the same status after half-close.

    The stream is not torn down under a writing client (whose library could then report the
    write as INTERNAL); a client that ignores the stop is cut off after the grace.
    """
    alice, bob = await devices("alice"), await devices("bob")
    thread = await _group(alice, bob)
    chunks = voice_chunks(6, seed="stop")
    grace_s = alice.settings.body_store.send_stop_grace_s

    async def open_send() -> Any:
        call = alice.send_call()
        start = message_pb2.MessageStart(
            message_id=uuid7(),
            thread_id=thread,
            kind=message_pb2.MESSAGE_KIND_VOICE,
            content_type="audio/ogg;codecs=opus",
        )
        await call.write(pb.SendRequest(start=start, device_id="phone", chunks=chunks[:2]))
        assert (await call.read()).HasField("accepted")
        await call.write(pb.SendRequest(chunks=[chunks[4]]))  # index gap: 2 and 3 missing
        return call

    async def until_stopped(call: Any) -> pb.SendResponse:
        while True:
            response: pb.SendResponse = await asyncio.wait_for(call.read(), 10)
            assert response is not grpc.aio.EOF  # type: ignore[attr-defined]
            if response.HasField("stopped"):
                return response
            assert response.HasField("ack"), response

    polite = await open_send()
    stopped = (await until_stopped(polite)).stopped
    assert stopped.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "gap" in stopped.message
    await polite.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(polite.read(), 10)
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ended.value.details() == stopped.message

    # Refused right after `accepted` (a resume past what is stored): stopped the same way.
    early = alice.send_call()
    start = message_pb2.MessageStart(
        message_id=uuid7(),
        thread_id=thread,
        kind=message_pb2.MESSAGE_KIND_VOICE,
        content_type="audio/ogg;codecs=opus",
    )
    await early.write(pb.SendRequest(start=start, device_id="phone", resume_from_index=7))
    assert (await early.read()).HasField("accepted")
    await early.write(pb.SendRequest(chunks=[chunks[0]]))  # still writing: no harm
    past = (await until_stopped(early)).stopped
    assert (
        past.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "resend from 0" in past.message
    )
    await early.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await asyncio.wait_for(early.read(), 10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # A client that never half-closes is ended anyway, once the grace has passed.
    stubborn = await open_send()
    await until_stopped(stubborn)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(grpc.aio.AioRpcError) as cut:
        await asyncio.wait_for(stubborn.read(), grace_s + 10)
    assert cut.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert loop.time() - began >= grace_s * 0.8


async def test_marks_reach_the_users_other_devices(devices: MakeDevice) -> None:
    alice = await devices("alice")
    bob_phone, bob_laptop = await devices("bob/phone"), await devices("bob/laptop")
    bob_laptop.user_id = bob_phone.user_id
    thread = await _group(alice, bob_phone)
    message_id = uuid7()
    await alice.call(
        "SendText",
        pb.SendTextRequest(message_id=message_id, thread_id=thread, device_id="d", text="hey"),
    )
    laptop = bob_laptop.updates()
    await _wait_caught_up(laptop)
    await bob_phone.call(
        "MarkRead", pb.MarkReadRequest(thread_id=thread, message_id=message_id, device_id="phone")
    )
    events = await asyncio.wait_for(collect_updates(laptop, lambda e: e.HasField("mark")), 10)
    laptop.cancel()
    assert events[-1].mark.message_id == message_id and events[-1].mark.device_id == "phone"


async def test_forward_shares_the_body_and_likes_reach_members(devices: MakeDevice) -> None:
    alice, bob, carol = await devices("alice"), await devices("bob"), await devices("carol")
    source_thread = await _group(alice, bob, title="source")
    target_thread = await _group(alice, carol, title="target")
    chunks = voice_chunks(50, seed="revox")
    original = uuid7()
    await send_voice(alice, source_thread, original, chunks)

    forwarded = await alice.call(
        "ForwardMessage",
        pb.ForwardMessageRequest(
            source=message_pb2.MessageRef(thread_id=source_thread, message_id=original),
            target_thread_id=target_thread,
            message_id=uuid7(),
            device_id="phone",
        ),
    )
    header = forwarded.header
    assert header.thread_id == target_thread
    assert header.forwarded_from.message_id == original
    # Carol reads the forward (the original's bytes, not a copy) but not the original.
    body = await carol.call(
        "ReadBodyRange",
        pb.ReadBodyRangeRequest(thread_id=target_thread, message_id=header.message_id),
    )
    assert body.data == _audio(chunks)
    streamed, end = await carol.read_body(target_thread, header.message_id)
    assert _audio(streamed) == _audio(chunks)
    assert end.end.state == message_pb2.MESSAGE_STATE_COMPLETE
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await carol.call(
            "ReadBodyRange", pb.ReadBodyRangeRequest(thread_id=source_thread, message_id=original)
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

    alice_updates = alice.updates()
    await _wait_caught_up(alice_updates)
    liked = await carol.call(
        "LikeMessage", pb.LikeMessageRequest(thread_id=target_thread, message_id=header.message_id)
    )
    assert liked.like_count == 1
    again = await carol.call(
        "LikeMessage", pb.LikeMessageRequest(thread_id=target_thread, message_id=header.message_id)
    )
    assert again.like_count == 1  # idempotent
    events = await asyncio.wait_for(
        collect_updates(alice_updates, lambda e: e.HasField("like_changed")), 10
    )
    alice_updates.cancel()
    assert events[-1].like_changed.like.user_id == carol.user_id
    assert events[-1].like_changed.like_count == 1
