"""Live audio over WebRTC (aiortc): a talker is just another sender, a listener another reader.

A talker's peer connection carries one Opus track and a data channel. Each RTP packet, in
order from aiortc's jitter buffer and *not decoded*, becomes one chunk (an Ogg/Opus page) of
a ``Send`` on this router: the same relay, store, acks and abandonment as a native client.
The router is the talker's client for that ``Send``: it numbers the chunks, and the
``SendResponse`` frames (accepted, ack, completed, stopped) go to the data channel,
serialized; a serialized ``SendRequest`` with ``end`` on the channel completes the message.
A peer connection that fails, closes or sends nothing for ``body_store.abandon_after_s``
ends the ``Send`` without ``end``, like a dropped stream. Live audio is never resent, so a
WebRTC talk cannot resume: the message is abandoned as soon as what it sent is stored
(``resumable=False``), keeping every acknowledged chunk, with no ghost LIVE message left.

A listener's peer connection gets the message's Opus packets as an outgoing track, read
with ``ReadChunks`` from the body node (stored chunks paced in real time, then the live
tail) and sent as they are, without re-encoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import aiortc.rtcrtpreceiver
import av
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from google.protobuf import duration_pb2

from voxmesh.body.v1 import body_service_pb2 as body_pb
from voxmesh.common.v1 import body_pb2, message_pb2
from voxmesh.core.domain_errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from voxmesh.core.settings import Settings
from voxmesh.core.structured_logging import get_logger
from voxmesh.router.ogg_opus import SAMPLE_RATE, OggOpusReader, OggOpusWriter, opus_samples
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.router.webrtc_ice import announce, choose_host_addresses, rtc_configuration

_log = get_logger(__name__)

OGG_OPUS = "audio/ogg;codecs=opus"
_MAX_SDP_BYTES = 64 * 1024
ReadChunks = Callable[[body_pb.ReadChunksRequest], AsyncIterator[body_pb.ReadChunksResponse]]
SendPath = Callable[[str, AsyncIterator[pb.SendRequest]], AsyncIterator[pb.SendResponse]]


class EncodedOpus:
    """What the talker's track yields: an RTP payload and its RTP timestamp, undecoded."""

    __slots__ = ("data", "timestamp")

    def __init__(self, data: bytes, timestamp: int) -> None:
        self.data = data
        self.timestamp = timestamp


class _KeptEncoded(JitterFrame):
    """A packet from a router's receiver (LiveAudioBuffer): passed on, never decoded."""


class _DecoderUnlessKept:
    """Frames of the router's receivers go on encoded; any other receiver in the process
    (a client, a test) still gets aiortc's decoder, created when it first needs it."""

    def __init__(self, codec: Any) -> None:
        self._codec = codec
        self._decoder: Any = None

    def decode(self, encoded_frame: JitterFrame) -> list[Any]:
        if isinstance(encoded_frame, _KeptEncoded):
            return [EncodedOpus(encoded_frame.data, encoded_frame.timestamp)]
        if self._decoder is None:
            self._decoder = _decoder_for(self._codec)
        frames: list[Any] = self._decoder.decode(encoded_frame)
        return frames


_decoder_for = getattr(aiortc.rtcrtpreceiver, "get_decoder")  # noqa: B009


def _get_decoder(codec: Any) -> Any:
    return _DecoderUnlessKept(codec)


class LiveAudioBuffer:
    """Stands in for aiortc's audio jitter buffer, which holds 4 packets back (80 ms more
    latency, and a message's last 80 ms never come out) and stalls up to 16 packets behind a
    lost one. Live beats in-order: a packet goes on at once; one that arrives after a newer
    one is dropped (never reordered); a lost one is a gap in media time."""

    capacity = 1 << 16

    def __init__(self) -> None:
        self._next: int | None = None

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        sequence = int(packet.sequence_number)
        if self._next is not None and (sequence - self._next) % (1 << 16) >= 1 << 15:
            return False, None  # older than one already passed on
        self._next = (sequence + 1) % (1 << 16)
        return False, _KeptEncoded(data=packet._data, timestamp=packet.timestamp)


def pass_audio_on_at_once(pc: RTCPeerConnection) -> None:
    """Every audio receiver of ``pc`` hands each packet over as it arrives (aiortc 1.16 has
    no setting for its jitter buffer; the attribute is its receiver's private one)."""
    for receiver in pc.getReceivers():
        if receiver.track is not None and receiver.track.kind == "audio":
            setattr(receiver, "_RTCRtpReceiver__jitter_buffer", LiveAudioBuffer())  # noqa: B010


def keep_opus_encoded() -> None:
    """Packets from receivers set up by ``pass_audio_on_at_once`` reach their track as
    received: the router stores and relays the talker's bytes and never spends CPU decoding
    them (aiortc has no switch for this; its receiver asks ``get_decoder`` per codec)."""
    setattr(aiortc.rtcrtpreceiver, "get_decoder", _get_decoder)  # noqa: B010


class _TalkSession:
    def __init__(self, sessions: WebRtcSessions, pc: RTCPeerConnection, message_id: str) -> None:
        self._sessions = sessions
        self.pc = pc
        self.writer = OggOpusWriter(message_id)
        self.frames: asyncio.Queue[pb.SendRequest | None] = asyncio.Queue(maxsize=256)
        self.channel: RTCDataChannel | None = None
        self._pending: list[bytes] = []  # responses before the data channel opened
        self._next_index = 0
        self._offset = 0
        self._last_samples = 0
        self._ended = False

    async def requests(self, first: pb.SendRequest) -> AsyncIterator[pb.SendRequest]:
        yield first
        while (frame := await self.frames.get()) is not None:
            yield frame

    def _finish_frames(self) -> None:
        if not self._ended:
            self._ended = True
            with contextlib.suppress(asyncio.QueueFull):
                self.frames.put_nowait(None)
            if self.frames.full():  # a stuck queue: make room for the end marker
                self.frames.get_nowait()
                self.frames.put_nowait(None)

    async def pump(self, track: MediaStreamTrack) -> None:
        """RTP packets to chunks; a silent track for the abandon timeout hangs up."""
        try:
            while not self._ended:
                idle_s = self._sessions.settings.body_store.abandon_after_s
                packet = cast(EncodedOpus, await asyncio.wait_for(track.recv(), idle_s))
                chunk = self.writer.add(packet.data, packet.timestamp)
                self._last_samples = opus_samples(packet.data)
                await self.frames.put(
                    pb.SendRequest(
                        chunks=[
                            body_pb2.Chunk(
                                index=self._next_index,
                                offset=self._offset,
                                media_time_ms=chunk.media_time_ms,
                                payload=chunk.payload,
                            )
                        ]
                    )
                )
                self._next_index += 1
                self._offset += len(chunk.payload)
        except (MediaStreamError, TimeoutError):
            pass
        finally:
            await self.hang_up()

    def on_message(self, message: bytes | str) -> None:
        if isinstance(message, str) or self._ended:
            return
        try:
            request = pb.SendRequest.FromString(message)
        except Exception:
            _log.info("webrtc data channel: undecodable frame ignored", size=len(message))
            return
        if request.HasField("end"):
            duration_ms = self.writer.duration_ms + self._last_samples * 1000 // SAMPLE_RATE
            end = message_pb2.MessageEnd(
                chunk_count=self._next_index,
                duration=duration_pb2.Duration(
                    seconds=duration_ms // 1000, nanos=(duration_ms % 1000) * 1_000_000
                ),
                size_bytes=self._offset,
            )
            self._ended = True
            self.frames.put_nowait(pb.SendRequest(end=end))
            self.frames.put_nowait(None)

    def tell(self, response: pb.SendResponse) -> None:
        data = response.SerializeToString()
        channel = self.channel
        if channel is None or channel.readyState != "open":
            self._pending.append(data)
            return
        channel.send(data)

    def channel_open(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        channel.on("message", self.on_message)

        def flush() -> None:
            for data in self._pending:
                channel.send(data)
            self._pending.clear()

        if channel.readyState == "open":
            flush()
        else:
            channel.on("open", flush)

    async def forward(self, responses: AsyncIterator[pb.SendResponse]) -> None:
        """The Send's answers to the talker, until it ends; then the call is over."""
        try:
            async for response in responses:
                self.tell(response)
        except Exception as exc:  # the Send ended with a status: the talker got `stopped`
            _log.info("webrtc talk ended", reason=str(exc))
        finally:
            await asyncio.sleep(0.2)  # let the last frames leave before closing
            await self.hang_up()

    async def hang_up(self) -> None:
        self._finish_frames()
        await self._sessions.close_peer(self.pc)


async def _checked_body(
    frames: AsyncIterator[body_pb.ReadChunksResponse],
) -> AsyncIterator[body_pb.ReadChunksResponse]:
    """The body's frames, once its first (stat) frame says it is Ogg/Opus."""
    first = await anext(frames)
    content_type = first.stat.content_type if first.HasField("stat") else ""
    if content_type.split(";")[0].strip() != "audio/ogg":
        raise FailedPrecondition(
            f"the message is {content_type or 'not audio'}: WebRTC listening needs Ogg/Opus "
            f"(read it with ReadBody)"
        )

    async def frames_from_first() -> AsyncIterator[body_pb.ReadChunksResponse]:
        yield first
        async for frame in frames:
            yield frame

    return frames_from_first()


class BodyOpusTrack(MediaStreamTrack):
    """A stored or live Ogg/Opus body as an outgoing WebRTC audio track, paced in real
    time, packets passed on as stored (aiortc's sender packs ``av.Packet`` as is)."""

    kind = "audio"

    def __init__(self, chunks: AsyncIterator[body_pb.ReadChunksResponse]) -> None:
        super().__init__()
        self._packets = self._read(chunks)
        self._first_sample: int | None = None
        self._clock_start = 0.0
        self._time_base = fractions.Fraction(1, SAMPLE_RATE)

    async def _read(self, chunks: AsyncIterator[body_pb.ReadChunksResponse]) -> AsyncIterator[Any]:
        reader = OggOpusReader()
        async for frame in chunks:
            if frame.HasField("chunks"):
                for chunk in frame.chunks.chunks:
                    for packet in reader.feed(chunk.payload):
                        yield packet
            if frame.HasField("end"):
                return

    async def recv(self) -> av.Packet[Any]:
        try:
            packet = await anext(self._packets)
        except (StopAsyncIteration, Exception) as exc:
            self.stop()
            raise MediaStreamError from exc
        now = time.monotonic()
        if self._first_sample is None:
            self._first_sample = packet.start_sample
            self._clock_start = now
        position = packet.start_sample - self._first_sample
        due = self._clock_start + position / SAMPLE_RATE
        if due > now:
            await asyncio.sleep(due - now)
        out = av.Packet(packet.data)
        out.pts = position
        out.time_base = self._time_base
        return out


def configure_process(settings: Settings) -> None:
    """Once per router process, before any peer connection: the ICE host addresses, Opus kept
    encoded, and a word if the kernel's port range is not the configured one."""
    keep_opus_encoded()
    choose_host_addresses(settings.webrtc.host_addresses)
    _check_port_range(settings)


def _check_port_range(settings: Settings) -> None:
    """ICE sockets take ephemeral ports: the kernel's range is the one firewalls must open."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return
    webrtc = settings.webrtc
    if (low, high) != (webrtc.udp_port_min, webrtc.udp_port_max):
        _log.warning(
            "webrtc: ICE ports come from the kernel's ephemeral range, which differs from "
            "webrtc.udp_port_min/max: set net.ipv4.ip_local_port_range for this router",
            kernel_range=f"{low}-{high}",
            configured=f"{webrtc.udp_port_min}-{webrtc.udp_port_max}",
        )


class WebRtcSessions:
    """The peer connections of one router: talkers and listeners, within the configured
    limit, each closed when its call ends."""

    def __init__(self, settings: Settings, send: SendPath, read_chunks: ReadChunks) -> None:
        self.settings = settings
        self._send = send
        self._read_chunks = read_chunks
        self._peers: set[RTCPeerConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def reconfigure(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def peer_count(self) -> int:
        return len(self._peers)

    def _admit(self) -> RTCPeerConnection:
        webrtc = self.settings.webrtc
        if not webrtc.enabled:
            raise FailedPrecondition("WebRTC is turned off on this router (webrtc.enabled)")
        if len(self._peers) >= webrtc.max_peer_connections:
            raise ResourceExhausted(
                f"this router holds {len(self._peers)} WebRTC peer connections, its limit "
                f"(webrtc.max_peer_connections); try another router"
            )
        pc = RTCPeerConnection(rtc_configuration(webrtc))
        self._peers.add(pc)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close_peer(pc)

        return pc

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _offer(self, pc: RTCPeerConnection, offer_sdp: str) -> None:
        """The client's offer, or INVALID_ARGUMENT: aiortc's SDP parser and checks raise
        whatever they meet (IndexError, KeyError, ValueError...), all about the offer."""
        if len(offer_sdp) > _MAX_SDP_BYTES:
            raise InvalidArgument(f"offer_sdp is over {_MAX_SDP_BYTES} bytes")
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as exc:
            raise InvalidArgument(f"offer_sdp is not a usable SDP offer: {exc!r}") from exc

    async def _local_answer(self, pc: RTCPeerConnection) -> str:
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        return announce(pc.localDescription.sdp, self.settings.webrtc.announced_address)

    async def talk(
        self, user_id: str, device_id: str, start: message_pb2.MessageStart, offer_sdp: str
    ) -> tuple[message_pb2.MessageHeader, str]:
        if not offer_sdp:
            raise InvalidArgument("offer_sdp is required")
        if start.kind != message_pb2.MESSAGE_KIND_VOICE:
            raise InvalidArgument("a WebRTC talk is a voice message: start.kind must be VOICE")
        if "m=audio" not in offer_sdp:
            raise InvalidArgument("offer_sdp has no audio track")
        voice = message_pb2.MessageStart()
        voice.CopyFrom(start)
        voice.content_type = OGG_OPUS
        pc = self._admit()
        session = _TalkSession(self, pc, voice.message_id)
        pc.on("track", lambda track: self._spawn(session.pump(track)))
        pc.on("datachannel", session.channel_open)
        try:
            # The offer is checked before anything is written.
            await self._offer(pc, offer_sdp)
            pass_audio_on_at_once(pc)
            responses = self._send(
                user_id, session.requests(pb.SendRequest(device_id=device_id, start=voice))
            )
            accepted = await anext(responses)
        except BaseException:
            await self.close_peer(pc)
            raise
        # From here the Send runs to its end whatever happens: forward drives it.
        self._spawn(session.forward(responses))
        try:
            header = accepted.accepted.header
            durable = accepted.accepted.durable_chunk_count
            if durable or header.state != message_pb2.MESSAGE_STATE_LIVE:
                # Live audio is not resent, so a WebRTC talk never continues an old message.
                raise FailedPrecondition(
                    f"message {voice.message_id} was already started "
                    f"({message_pb2.MessageState.Name(header.state)}, {durable} chunks "
                    f"stored): talk in a new message"
                )
            session.tell(accepted)
            return header, await self._local_answer(pc)
        except BaseException:
            await session.hang_up()
            raise

    async def listen(self, request: body_pb.ReadChunksRequest, offer_sdp: str) -> str:
        if not offer_sdp:
            raise InvalidArgument("offer_sdp is required")
        if "m=audio" not in offer_sdp:
            raise InvalidArgument("offer_sdp has no audio transceiver")
        pc = self._admit()
        try:
            await self._offer(pc, offer_sdp)
            track = BodyOpusTrack(await _checked_body(self._read_chunks(request)))
            pc.addTrack(track)
            answer_sdp = await self._local_answer(pc)
        except BaseException:
            await self.close_peer(pc)
            raise
        self._spawn(self._close_after(pc, track))
        return answer_sdp

    async def _close_after(self, pc: RTCPeerConnection, track: BodyOpusTrack) -> None:
        """A listener's connection ends with the message (and at the latest after
        webrtc.max_listen_seconds)."""
        ended = asyncio.Event()
        track.on("ended", ended.set)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), self.settings.webrtc.max_listen_seconds)
        await asyncio.sleep(0.5)  # the last packets leave
        await self.close_peer(pc)

    async def close_peer(self, pc: RTCPeerConnection) -> None:
        if pc in self._peers:
            self._peers.discard(pc)
            await pc.close()

    async def close(self) -> None:
        for pc in list(self._peers):
            await self.close_peer(pc)
        for task in list(self._tasks):
            task.cancel()
