"""The router's WebRTC rules without a server: admission, the live audio buffer, ICE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest

from tests.ports import stack_overrides
from voxmesh.common.v1 import message_pb2
from voxmesh.core.domain_errors import FailedPrecondition, ResourceExhausted
from voxmesh.core.settings import load_settings
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.router.webrtc_ice import announce, rtc_configuration
from voxmesh.router.webrtc_sessions import LiveAudioBuffer, WebRtcSessions


def _packet(sequence: int, timestamp: int) -> SimpleNamespace:
    return SimpleNamespace(
        sequence_number=sequence, timestamp=timestamp, _data=bytes([sequence % 256])
    )


def test_live_audio_buffer_passes_each_packet_at_once_and_drops_late_ones() -> None:
    buffer = LiveAudioBuffer()
    out = []
    for sequence in (65534, 65535, 0, 3, 2, 4):  # wraps; 1 lost; 2 arrives after 3
        _, frame = buffer.add(_packet(sequence, sequence * 960))
        out.append(None if frame is None else frame.data[0])
    assert out == [65534 % 256, 255, 0, 3, None, 4]


async def _never_send(
    user: str, frames: AsyncIterator[pb.SendRequest]
) -> AsyncIterator[pb.SendResponse]:
    raise AssertionError("nothing may be sent")
    yield pb.SendResponse()  # pragma: no cover


def _sessions(**webrtc: object) -> WebRtcSessions:
    overrides = stack_overrides("/nonexistent")
    overrides["webrtc"] = webrtc
    settings = load_settings(overrides=overrides)
    return WebRtcSessions(settings, _never_send, lambda request: None)  # type: ignore[arg-type,return-value]


_START = message_pb2.MessageStart(
    message_id="m", thread_id="t", kind=message_pb2.MESSAGE_KIND_VOICE
)


async def test_beyond_the_peer_connection_limit_a_talk_is_refused_before_anything_starts() -> None:
    sessions = _sessions(max_peer_connections=0)
    with pytest.raises(ResourceExhausted, match="max_peer_connections"):
        await sessions.talk("alice", "phone", _START, "v=0\r\nm=audio 9 UDP 0\r\n")
    assert sessions.peer_count == 0


async def test_webrtc_turned_off_is_said_so() -> None:
    sessions = _sessions(enabled=False)
    with pytest.raises(FailedPrecondition, match=r"webrtc\.enabled"):
        await sessions.talk("alice", "phone", _START, "v=0\r\nm=audio 9 UDP 0\r\n")


def test_no_ice_server_unless_configured_and_turn_when_it_is() -> None:
    assert rtc_configuration(_sessions().settings.webrtc).iceServers == []
    configured = _sessions(
        ice_servers=[{"urls": ["turn:turn.example.com:3478"], "username": "u", "credential": "p"}]
    ).settings.webrtc
    servers = rtc_configuration(configured).iceServers or []
    assert len(servers) == 1
    server = servers[0]
    assert server.urls == ["turn:turn.example.com:3478"] and server.credential == "p"


def test_the_announced_address_replaces_host_candidates_and_the_connection_line() -> None:
    sdp = (
        "v=0\r\nc=IN IP4 10.1.2.3\r\n"
        "a=candidate:abc 1 udp 2130706431 10.1.2.3 40000 typ host\r\n"
        "a=candidate:def 1 udp 1694498815 198.51.100.7 40001 typ srflx "
        "raddr 10.1.2.3 rport 40000\r\n"
    )
    out = announce(sdp, "203.0.113.9")
    assert "c=IN IP4 203.0.113.9" in out
    assert "203.0.113.9 40000 typ host" in out
    assert "198.51.100.7 40001 typ srflx" in out  # only host candidates are rewritten
    assert announce(sdp, "") == sdp


async def _first_frames(router_side: bool, count: int = 5) -> list[object]:
    """One talker -> receiver pair over loopback; the receiver set up as a router's or not."""
    import asyncio

    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from tests.webrtc.tone_audio import opus_packets
    from tests.webrtc.webrtc_client import PacketTrack
    from voxmesh.router.webrtc_sessions import keep_opus_encoded, pass_audio_on_at_once

    keep_opus_encoded()
    talker = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    talker.addTrack(PacketTrack(opus_packets(0.5)))
    frames: list[object] = []
    got = asyncio.Event()

    @receiver.on("track")
    def on_track(track: object) -> None:
        async def read() -> None:
            while len(frames) < count:
                frames.append(await track.recv())  # type: ignore[attr-defined]
            got.set()

        receiver.reader = asyncio.ensure_future(read())  # type: ignore[attr-defined]

    try:
        await talker.setLocalDescription(await talker.createOffer())
        await receiver.setRemoteDescription(
            RTCSessionDescription(sdp=talker.localDescription.sdp, type="offer")
        )
        if router_side:
            pass_audio_on_at_once(receiver)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await talker.setRemoteDescription(
            RTCSessionDescription(sdp=receiver.localDescription.sdp, type="answer")
        )
        await asyncio.wait_for(got.wait(), 20)
    finally:
        await talker.close()
        await receiver.close()
    return frames


async def test_a_routers_receiver_keeps_opus_encoded_and_others_still_decode() -> None:
    import av

    from voxmesh.router.webrtc_sessions import EncodedOpus

    kept = await _first_frames(router_side=True)
    assert all(isinstance(f, EncodedOpus) for f in kept)
    assert [f.timestamp for f in kept] == [960 * i for i in range(5)]  # type: ignore[attr-defined]
    decoded = await _first_frames(router_side=False)
    assert all(isinstance(f, av.AudioFrame) for f in decoded)
