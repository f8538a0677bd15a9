"""Live audio over WebRTC on the real stack: an aiortc talker is heard live over the gRPC
updates stream and over a WebRTC listener, the stored body is a valid Ogg/Opus file of the
same tone, and a bad offer writes nothing."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable

import grpc
import numpy as np
import pytest

from tests.voxmesh_client import Device, collect_updates, uuid7
from tests.webrtc.tone_audio import decode, dominant_frequency, opus_packets
from tests.webrtc.webrtc_client import start_listen, start_talk
from voxmesh.common.v1 import message_pb2, thread_pb2, update_pb2
from voxmesh.router.v1 import router_service_pb2 as pb

pytestmark = pytest.mark.stack

MakeDevice = Callable[[str], Awaitable[Device]]
SECONDS = 3.0


async def _group(owner: Device, *members: Device) -> str:
    reply = await owner.call(
        "CreateThread",
        pb.CreateThreadRequest(
            kind=thread_pb2.THREAD_KIND_GROUP,
            title="webrtc",
            member_user_ids=[m.user_id for m in members],
        ),
    )
    return str(reply.thread.thread_id)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def test_a_webrtc_talker_is_heard_live_and_stored_as_the_same_tone(
    devices: MakeDevice,
) -> None:
    alice, bob, carol = [await devices(n) for n in ("alice", "bob", "carol")]
    thread = await _group(alice, bob, carol)
    updates = bob.updates()
    await collect_updates(updates, lambda e: e.HasField("caught_up"))

    packets = opus_packets(SECONDS)
    message_id = uuid7()
    talk = await start_talk(alice, thread, message_id, packets)
    assert talk.header.state == message_pb2.MESSAGE_STATE_LIVE
    assert talk.header.content_type == "audio/ogg;codecs=opus"
    await talk.wait_for(lambda t: t.durable > 0)  # the body exists once a chunk is stored
    listen = await start_listen(carol, thread, message_id)

    received_at: dict[tuple[str, int], float] = {}
    heard_while_talking: list[bool] = []

    def last_chunk(event: update_pb2.UpdateEvent) -> bool:
        if event.HasField("live_chunks") and event.live_chunks.message_id == message_id:
            heard_while_talking.append(not talk.track.done.is_set())
            return any(c.index == len(packets) - 1 for c in event.live_chunks.chunks)
        return False

    await asyncio.wait_for(collect_updates(updates, last_chunk, received_at=received_at), 30)
    assert heard_while_talking and heard_while_talking[0], "Bob heard nothing while Alice talked"
    assert sorted(i for (m, i) in received_at if m == message_id) == list(range(len(packets)))

    await talk.wait_for(lambda t: t.durable == len(packets))
    completed = await talk.end()
    header = completed.completed.header
    assert header.state == message_pb2.MESSAGE_STATE_COMPLETE
    assert header.chunk_count == len(packets)
    assert abs(header.duration.seconds + header.duration.nanos / 1e9 - SECONDS) < 0.05
    await talk.close()

    chunks, _ = await bob.read_body(thread, message_id)
    assert [c.index for c in chunks] == list(range(len(packets)))
    assert [c.media_time_ms for c in chunks[:3]] == [0, 20, 40]
    samples, rate = decode(b"".join(c.payload for c in chunks))
    assert abs(len(samples) / rate - SECONDS) < 0.05
    assert abs(dominant_frequency(samples, rate) - 440) < 5

    # Carol's WebRTC track: heard while Alice talked, the same tone, the whole message.
    await asyncio.wait_for(listen.ended.wait(), 30)
    frames = listen.frames  # type: ignore[attr-defined]
    assert frames, "the WebRTC listener got no audio"
    first_heard = frames[0][0]
    assert first_heard < talk.track.sent_at[len(packets) - 1], "Carol heard nothing live"
    pcm = np.concatenate([f.to_ndarray().reshape(-1).astype(np.float32) for _, f in frames])
    channels = len(frames[0][1].layout.channels)
    mono = pcm.reshape(-1, channels)[:, 0] if channels > 1 else pcm
    assert abs(dominant_frequency(mono, frames[0][1].sample_rate) - 440) < 5
    assert len(frames) >= len(packets) - 5  # every packet but the jitter buffer's edges
    await listen.close()

    latencies = [
        (received_at[(message_id, i)] - talk.track.sent_at[i]) * 1000 for i in range(len(packets))
    ]
    print(
        f"\nWebRTC talk -> gRPC updates listener, per packet: p50 "
        f"{statistics.median(latencies):.1f} ms, p99 {_percentile(latencies, 0.99):.1f} ms; "
        f"WebRTC listener first audio {1000 * (first_heard - talk.track.sent_at[0]):.0f} ms "
        f"after the first packet"
    )


async def test_a_timestamp_gap_is_a_gap_in_media_time_never_reordered(
    devices: MakeDevice,
) -> None:
    alice, bob = [await devices(n) for n in ("alice", "bob")]
    thread = await _group(alice, bob)
    packets = opus_packets(0.6)
    message_id = uuid7()
    talk = await start_talk(alice, thread, message_id, packets, skip=frozenset({10, 11, 12}))
    await asyncio.wait_for(talk.track.done.wait(), 10)
    await talk.wait_for(lambda t: t.durable == len(packets) - 3)
    await talk.end()
    await talk.close()
    chunks, _ = await bob.read_body(thread, message_id)
    times = [c.media_time_ms for c in chunks]
    assert times == sorted(times)
    assert times[10] - times[9] == 80  # packets 10-12 (60 ms) never arrived


async def test_a_bad_offer_is_refused_and_writes_nothing(devices: MakeDevice) -> None:
    alice, bob = [await devices(n) for n in ("alice", "bob")]
    thread = await _group(alice, bob)
    start = message_pb2.MessageStart(
        message_id=uuid7(), thread_id=thread, kind=message_pb2.MESSAGE_KIND_VOICE
    )
    for offer, words in (("", "offer_sdp is required"), ("v=0\r\nm=audio x\r\n", "offer_sdp")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await alice.call(
                "StartWebRtcTalk",
                pb.StartWebRtcTalkRequest(device_id=alice.device_id, start=start, offer_sdp=offer),
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in (refused.value.details() or "")
    text = message_pb2.MessageStart(
        message_id=uuid7(), thread_id=thread, kind=message_pb2.MESSAGE_KIND_TEXT, text="hi"
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await alice.call(
            "StartWebRtcTalk",
            pb.StartWebRtcTalkRequest(device_id=alice.device_id, start=text, offer_sdp="v=0"),
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = await bob.call("ListMessages", pb.ListMessagesRequest(thread_id=thread))
    assert list(listed.headers) == []


async def test_a_webrtc_talker_that_hangs_up_without_end_is_abandoned_at_once(
    devices: MakeDevice,
) -> None:
    """A WebRTC talk cannot resume (live audio is not resent): a talker gone without `end`
    leaves no ghost LIVE message for `abandon_after_s` (60 s here); the message is ABANDONED
    as soon as what it sent is stored, keeping every acknowledged chunk."""
    alice, bob = [await devices(n) for n in ("alice", "bob")]
    thread = await _group(alice, bob)
    updates = bob.updates()
    await collect_updates(updates, lambda e: e.HasField("caught_up"))
    packets = opus_packets(1.0)
    message_id = uuid7()
    talk = await start_talk(alice, thread, message_id, packets)
    await talk.wait_for(lambda t: t.durable == len(packets))
    hung_up = asyncio.get_running_loop().time()
    await talk.close()  # the peer connection closes; no `end` was sent

    def abandoned(event: update_pb2.UpdateEvent) -> bool:
        changed = event.message_state_changed
        return (
            event.HasField("message_state_changed")
            and changed.header.message_id == message_id
            and changed.header.state == message_pb2.MESSAGE_STATE_ABANDONED
        )

    events = await asyncio.wait_for(collect_updates(updates, abandoned), 15)
    took = asyncio.get_running_loop().time() - hung_up
    header = next(e for e in events if abandoned(e)).message_state_changed.header
    assert header.chunk_count == len(packets), "the abandoned header does not state what was kept"
    chunks, _ = await bob.read_body(thread, message_id)
    assert [c.index for c in chunks] == list(range(len(packets)))
    print(f"\nWebRTC talker hung up without end: ABANDONED {took:.2f} s later")
    assert took < 10
