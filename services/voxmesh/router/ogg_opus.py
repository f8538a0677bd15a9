"""Ogg/Opus (RFC 7845) for WebRTC audio: RTP Opus packets in, pages out, and back.

A WebRTC talker's Opus packets are stored as an Ogg/Opus body, one packet per page and one
page per chunk (the first chunk also carries the two header pages), so the stored body is a
valid media file, exactly like a native client's. Granule positions and the chunks' media
time follow the RTP timestamps, so a lost packet is a gap in time, never reordered audio.
The reader goes the other way for WebRTC listeners: pages (split anywhere across chunks) to
Opus packets with their start time, sent without re-encoding.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass

SAMPLE_RATE = 48_000  # Opus's RTP clock and Ogg Opus granule rate
_HEADER_FLAG_CONTINUED = 0x01
_HEADER_FLAG_FIRST = 0x02
_PAGE_HEADER = struct.Struct("<4sBBqIIIB")
_OPUS_HEAD = b"OpusHead"
_OPUS_TAGS = b"OpusTags"


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else (crc << 1)
        table.append(crc & 0xFFFFFFFF)
    return table


_CRC_TABLE = _crc_table()


def ogg_crc(data: bytes) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, not reflected, no final xor)."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[((crc >> 24) ^ byte) & 0xFF]
    return crc


def ogg_page(packet: bytes, *, granule: int, serial: int, sequence: int, first: bool) -> bytes:
    """One Ogg page holding one whole packet."""
    if len(packet) >= 255 * 255:
        raise ValueError(f"a {len(packet)}-byte packet does not fit one page")
    lacing = bytes([255] * (len(packet) // 255) + [len(packet) % 255])
    header = _PAGE_HEADER.pack(
        b"OggS", 0, _HEADER_FLAG_FIRST if first else 0, granule, serial, sequence, 0, len(lacing)
    )
    page = bytearray(header + lacing + packet)
    struct.pack_into("<I", page, 22, ogg_crc(bytes(page)))
    return bytes(page)


def opus_samples(packet: bytes) -> int:
    """Samples (at 48 kHz) in an Opus packet, from its TOC byte (RFC 6716 §3.1)."""
    if not packet:
        return 0
    config = packet[0] >> 3
    if config < 12:
        frame = (480, 960, 1920, 2880)[config % 4]
    elif config < 16:
        frame = (480, 960)[config % 2]
    else:
        frame = (120, 240, 480, 960)[config % 4]
    code = packet[0] & 0x03
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        frames = packet[1] & 0x3F if len(packet) > 1 else 0
    return frame * frames


def opus_head(channels: int = 1, pre_skip: int = 0) -> bytes:
    return _OPUS_HEAD + struct.pack("<BBHIhB", 1, channels, pre_skip, SAMPLE_RATE, 0, 0)


def opus_tags(vendor: str = "voxmesh") -> bytes:
    raw = vendor.encode()
    return _OPUS_TAGS + struct.pack("<I", len(raw)) + raw + struct.pack("<I", 0)


@dataclass(frozen=True)
class OpusChunk:
    """What one RTP packet becomes: a chunk's payload and where it sits in time."""

    payload: bytes
    media_time_ms: int


class OggOpusWriter:
    """Turns a talker's RTP Opus packets (in order, as the jitter buffer hands them over)
    into chunk payloads. The stream serial comes from the message id."""

    def __init__(self, message_id: str, channels: int = 1) -> None:
        self._serial = int.from_bytes(hashlib.blake2b(message_id.encode(), digest_size=4).digest())
        self._channels = channels
        self._base: int | None = None  # RTP timestamp of the first packet
        self._last = 0  # samples since the base, of the newest packet (unwrapped)
        self._pages = 0

    def _page(self, packet: bytes, granule: int) -> bytes:
        page = ogg_page(
            packet,
            granule=granule,
            serial=self._serial,
            sequence=self._pages,
            first=self._pages == 0,
        )
        self._pages += 1
        return page

    def add(self, packet: bytes, rtp_timestamp: int) -> OpusChunk:
        prefix = b""
        if self._base is None:
            self._base = rtp_timestamp
            prefix = self._page(opus_head(self._channels), 0) + self._page(opus_tags(), 0)
            elapsed = 0
        else:
            # RTP timestamps wrap at 2^32; the jitter buffer only ever moves forward.
            step = (rtp_timestamp - (self._base + self._last)) % (1 << 32)
            elapsed = self._last + step
        self._last = elapsed
        granule = elapsed + opus_samples(packet)
        return OpusChunk(prefix + self._page(packet, granule), elapsed * 1000 // SAMPLE_RATE)

    @property
    def duration_ms(self) -> int:
        return self._last * 1000 // SAMPLE_RATE


@dataclass(frozen=True)
class OpusPacket:
    data: bytes
    start_sample: int  # from the start of the stream, at 48 kHz
    samples: int


class OggOpusReader:
    """Incremental: feed body bytes in any split, get Opus audio packets with their time."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._partial = bytearray()  # a packet continued on the next page

    def feed(self, data: bytes) -> Iterator[OpusPacket]:
        self._buffer += data
        while True:
            page = self._next_page()
            if page is None:
                return
            yield from page

    def _next_page(self) -> list[OpusPacket] | None:
        buffer = self._buffer
        start = buffer.find(b"OggS")
        if start < 0:
            del buffer[: max(0, len(buffer) - 3)]
            return None
        if start:
            del buffer[:start]
        if len(buffer) < _PAGE_HEADER.size:
            return None
        _, _, flags, granule, _, _, _, count = _PAGE_HEADER.unpack_from(buffer)
        lacing_end = _PAGE_HEADER.size + count
        if len(buffer) < lacing_end:
            return None
        lacing = buffer[_PAGE_HEADER.size : lacing_end]
        end = lacing_end + sum(lacing)
        if len(buffer) < end:
            return None
        body = bytes(buffer[lacing_end:end])
        del buffer[:end]
        if not flags & _HEADER_FLAG_CONTINUED:
            self._partial.clear()
        packets: list[bytes] = []
        position = 0
        for size in lacing:
            self._partial += body[position : position + size]
            position += size
            if size < 255:
                packets.append(bytes(self._partial))
                self._partial.clear()
        audio = [p for p in packets if not p.startswith((_OPUS_HEAD, _OPUS_TAGS))]
        # The page's granule is the end of its last packet; count back to each start.
        out: list[OpusPacket] = []
        cursor = granule
        for packet in reversed(audio):
            samples = opus_samples(packet)
            cursor -= samples
            out.append(OpusPacket(packet, max(0, cursor), samples))
        out.reverse()
        return out
