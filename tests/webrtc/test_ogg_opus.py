"""RTP Opus packets to an Ogg/Opus body and back, without a server."""

from __future__ import annotations

from tests.webrtc.tone_audio import decode, dominant_frequency, opus_packets
from voxmesh.router.ogg_opus import OggOpusReader, OggOpusWriter, ogg_crc, opus_samples


def test_ogg_crc_matches_the_spec_check_value() -> None:
    # CRC-32/MPEG-2 without the final inversion and init 0 is Ogg's; "123456789" -> 0x89A1897F.
    assert ogg_crc(b"123456789") == 0x89A1897F


def test_rtp_packets_become_a_valid_ogg_opus_file_one_page_per_chunk() -> None:
    packets = opus_packets(2.0)
    writer = OggOpusWriter("m-1")
    chunks = [writer.add(p, 1_000 + 960 * i) for i, p in enumerate(packets)]
    assert chunks[0].payload.startswith(b"OggS") and b"OpusHead" in chunks[0].payload
    assert [c.media_time_ms for c in chunks[:3]] == [0, 20, 40]
    samples, rate = decode(b"".join(c.payload for c in chunks))
    assert abs(len(samples) / rate - 2.0) < 0.05
    assert abs(dominant_frequency(samples, rate) - 440) < 5


def test_a_lost_packet_is_a_gap_in_media_time_and_timestamps_wrap() -> None:
    packets = opus_packets(0.2)
    writer = OggOpusWriter("m-2")
    base = (1 << 32) - 960 * 2  # wraps after the second packet
    times = [0, 1, 2, 5, 6]  # packets 3 and 4 lost
    chunks = [writer.add(packets[i], (base + 960 * t) % (1 << 32)) for i, t in enumerate(times)]
    assert [c.media_time_ms for c in chunks] == [0, 20, 40, 100, 120]


def test_the_reader_gives_back_every_packet_with_its_time_whatever_the_split() -> None:
    packets = opus_packets(0.5)
    writer = OggOpusWriter("m-3")
    body = b"".join(writer.add(p, 960 * i).payload for i, p in enumerate(packets))
    reader = OggOpusReader()
    out = []
    for start in range(0, len(body), 7):  # split mid-page everywhere
        out += list(reader.feed(body[start : start + 7]))
    assert [p.data for p in out] == packets
    assert [p.start_sample for p in out] == [960 * i for i in range(len(packets))]
    assert all(p.samples == opus_samples(p.data) == 960 for p in out)
