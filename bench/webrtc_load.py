"""WebRTC talkers for the live sweep (system ``voxmesh-webrtc``): each speaker is an aiortc
peer connection to a router (StartWebRtcTalk), its stamped frames sent as Opus RTP packets
every 20 ms; listeners are the same gRPC updates streams as for ``voxmesh``, so the figure is
talker's frame -> listener's device, through aiortc's sender, SRTP, the router's receiver,
the relay and the updates stream. Acks come back on the data channel."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
from collections.abc import AsyncIterator
from typing import Any

import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from voxmesh.common.v1 import message_pb2
from voxmesh.router.ogg_opus import OggOpusReader
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.router.webrtc_ice import choose_host_addresses

_TIME_BASE = fractions.Fraction(1, 48_000)
OnAck = Any


class _FrameTrack(MediaStreamTrack):
    """A microphone whose frames the load generator hands over on its 20 ms schedule."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.frames: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()

    async def recv(self) -> av.Packet[Any]:
        item = await self.frames.get()
        if item is None:
            raise MediaStreamError
        index, payload = item
        self.frames.task_done()
        packet = av.Packet(payload)
        packet.pts = index * 960
        packet.time_base = _TIME_BASE
        return packet


class WebRtcSpeaker:
    def __init__(self, pc: RTCPeerConnection, channel: Any, track: _FrameTrack) -> None:
        self._pc = pc
        self._channel = channel
        self._track = track
        self.completed = asyncio.Event()
        self._closing: asyncio.Future[None] | None = None

    async def write(self, index: int, payload: bytes) -> None:
        self._track.frames.put_nowait((index, payload))

    async def end(self, frames: int) -> None:
        await self._track.frames.join()  # every frame handed to aiortc's sender
        await asyncio.sleep(0.1)  # the last packets reach the router
        end = pb.SendRequest(end=message_pb2.MessageEnd())
        self._channel.send(end.SerializeToString())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.completed.wait(), 10)
        await self._pc.close()

    def abort(self) -> None:
        self._track.frames.put_nowait(None)
        self._closing = asyncio.ensure_future(self._pc.close())


async def start_speaker(
    stub: Any, metadata: Any, thread_id: str, message_id: str, on_ack: OnAck
) -> WebRtcSpeaker:
    choose_host_addresses(["127.0.0.1"])  # a loopback-only machine: offer loopback
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel = pc.createDataChannel("voxmesh")
    track = _FrameTrack()
    pc.addTrack(track)
    speaker = WebRtcSpeaker(pc, channel, track)

    def on_message(data: bytes | str) -> None:
        if isinstance(data, str):
            return
        response = pb.SendResponse.FromString(data)
        if response.HasField("ack"):
            on_ack(response.ack.durable_chunk_count)
        elif response.HasField("completed"):
            speaker.completed.set()

    channel.on("message", on_message)
    await pc.setLocalDescription(await pc.createOffer())
    reply = await stub.StartWebRtcTalk(
        pb.StartWebRtcTalkRequest(
            device_id="browser",
            start=message_pb2.MessageStart(
                message_id=message_id, thread_id=thread_id, kind=message_pb2.MESSAGE_KIND_VOICE
            ),
            offer_sdp=pc.localDescription.sdp,
        ),
        metadata=metadata,
        timeout=60,
    )
    await pc.setRemoteDescription(RTCSessionDescription(sdp=reply.answer_sdp, type="answer"))
    connected = asyncio.Event()

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState == "connected":
            connected.set()

    if pc.connectionState != "connected":
        await asyncio.wait_for(connected.wait(), 30)
    return speaker


async def unwrap_pages(payloads: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Live chunks of a WebRTC message are Ogg pages: the talker's packets, as sent."""
    reader = OggOpusReader()
    async for payload in payloads:
        for packet in reader.feed(payload):
            yield packet.data
