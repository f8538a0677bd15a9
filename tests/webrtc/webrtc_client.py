"""A WebRTC client as a native or browser app would be: aiortc, the router's signaling calls,
a data channel for acks and the end of a message."""

from __future__ import annotations

import asyncio
import fractions
import time
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tests.voxmesh_client import Device
from voxmesh.common.v1 import body_pb2, message_pb2
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.router.webrtc_ice import choose_host_addresses

# This machine has only loopback to offer; the product setting is the same one routers use.
choose_host_addresses(["127.0.0.1"])
_TIME_BASE = fractions.Fraction(1, 48_000)


class PacketTrack(MediaStreamTrack):
    """A microphone that sends ready Opus packets every 20 ms (as an encoder would), then
    stays open silent until the talker ends the message."""

    kind = "audio"

    def __init__(self, packets: list[bytes], skip: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self._packets = packets
        self._skip = skip  # indexes never sent (lost on the way)
        self._next = 0
        self._start = 0.0
        self.sent_at: dict[int, float] = {}
        self.done = asyncio.Event()

    async def recv(self) -> av.Packet[Any]:
        while self._next < len(self._packets) and self._next in self._skip:
            self._next += 1
        if self._next >= len(self._packets):
            self.done.set()
            await asyncio.Event().wait()  # silence until the connection closes
            raise MediaStreamError
        index = self._next
        self._next += 1
        now = time.perf_counter()
        if index == 0 or not self._start:
            self._start = now - index * 0.02
        due = self._start + index * 0.02
        if due > now:
            await asyncio.sleep(due - now)
        packet = av.Packet(self._packets[index])
        packet.pts = index * 960
        packet.time_base = _TIME_BASE
        self.sent_at[index] = time.perf_counter()
        return packet


@dataclass
class WebRtcTalk:
    pc: RTCPeerConnection
    track: PacketTrack
    header: Any
    responses: list[pb.SendResponse] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_message(self, data: bytes | str) -> None:
        if isinstance(data, bytes):
            self.responses.append(pb.SendResponse.FromString(data))
            self.changed.set()

    @property
    def durable(self) -> int:
        acks = [r.ack.durable_chunk_count for r in self.responses if r.HasField("ack")]
        return max(acks, default=0)

    async def wait_for(self, predicate: Any, within_s: float = 30) -> None:
        async def until() -> None:
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), within_s)

    async def end(self) -> pb.SendResponse:
        self.channel.send(pb.SendRequest(end=message_pb2.MessageEnd()).SerializeToString())
        await self.wait_for(lambda t: any(r.HasField("completed") for r in t.responses))
        return next(r for r in self.responses if r.HasField("completed"))

    async def close(self) -> None:
        await self.pc.close()

    channel: Any = None


async def start_talk(
    device: Device,
    thread_id: str,
    message_id: str,
    packets: list[bytes],
    skip: frozenset[int] = frozenset(),
) -> WebRtcTalk:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel = pc.createDataChannel("voxmesh")
    track = PacketTrack(packets, skip)
    pc.addTrack(track)
    await pc.setLocalDescription(await pc.createOffer())
    reply = await device.call(
        "StartWebRtcTalk",
        pb.StartWebRtcTalkRequest(
            device_id=device.device_id,
            start=message_pb2.MessageStart(
                message_id=message_id, thread_id=thread_id, kind=message_pb2.MESSAGE_KIND_VOICE
            ),
            offer_sdp=pc.localDescription.sdp,
        ),
    )
    talk = WebRtcTalk(pc, track, reply.header)
    talk.channel = channel
    channel.on("message", talk.on_message)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.answer_sdp, type="answer"))
    return talk


@dataclass
class WebRtcListen:
    pc: RTCPeerConnection
    packets: list[tuple[float, bytes, int]] = field(default_factory=list)  # (at, data, pts)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def close(self) -> None:
        await self.pc.close()


async def start_listen(
    device: Device, thread_id: str, message_id: str, live_edge: bool = False
) -> WebRtcListen:
    """Receive the message's audio track; packets are decoded by aiortc into frames, whose
    arrival times and timestamps are recorded, and the PCM kept for a pitch check."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="recvonly")
    listen = WebRtcListen(pc)
    frames: list[Any] = []
    listen.frames = frames  # type: ignore[attr-defined]

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        async def read() -> None:
            try:
                while True:
                    frame = await track.recv()
                    frames.append((time.perf_counter(), frame))
            except MediaStreamError:
                listen.ended.set()

        listen.reader = asyncio.ensure_future(read())  # type: ignore[attr-defined]

    await pc.setLocalDescription(await pc.createOffer())
    reply = await device.call(
        "ListenWebRtc",
        pb.ListenWebRtcRequest(
            thread_id=thread_id,
            message_id=message_id,
            origin=body_pb2.READ_ORIGIN_LIVE_EDGE if live_edge else body_pb2.READ_ORIGIN_INDEX,
            offer_sdp=pc.localDescription.sdp,
        ),
    )
    await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.answer_sdp, type="answer"))
    return listen
