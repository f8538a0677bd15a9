"""The chunk-frame rule on its own: every refusal, resends, and where the body ends up."""

from __future__ import annotations

import pytest

from tests.voxmesh_client import voice_chunks
from voxmesh.common.v1 import body_pb2
from voxmesh.core.chunk_frames import BodyEdge, FrameLimits, check_chunk_frame, first_frame_edge
from voxmesh.core.domain_errors import InvalidArgument

LIMITS = FrameLimits(max_chunk_bytes=200, max_message_bytes=1000)
CHUNKS = voice_chunks(6, size=160)


def _copy(chunk: body_pb2.Chunk, **changes: object) -> body_pb2.Chunk:
    changed = body_pb2.Chunk()
    changed.CopyFrom(chunk)
    for name, value in changes.items():
        setattr(changed, name, value)
    return changed


def test_a_valid_frame_moves_the_edge() -> None:
    check = check_chunk_frame("m", CHUNKS[:3], BodyEdge(), LIMITS)
    assert check.new_from == 0 and check.has_new and check.new_bytes == 480
    assert check.edge == BodyEdge(3, 480, CHUNKS[2].media_time_ms)


def test_resent_chunks_are_skipped_and_new_ones_judged() -> None:
    edge = BodyEdge(2, 320, CHUNKS[1].media_time_ms)
    check = check_chunk_frame("m", CHUNKS[:4], edge, LIMITS)
    assert check.new_from == 2 and check.edge.next_index == 4
    only_resent = check_chunk_frame("m", CHUNKS[:2], edge, LIMITS)
    assert not only_resent.has_new and only_resent.edge == edge
    assert not check_chunk_frame("m", [], edge, LIMITS).has_new


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        ([CHUNKS[1]], "gap"),
        ([CHUNKS[0], CHUNKS[2]], "consecutive"),
        ([_copy(CHUNKS[0], payload=b"")], "empty"),
        ([_copy(CHUNKS[0], payload=b"x" * 201)], "limit is 200"),
        ([CHUNKS[0], _copy(CHUNKS[1], offset=161)], "offset 161"),
        ([CHUNKS[0], _copy(CHUNKS[1], media_time_ms=0), _copy(CHUNKS[2], media_time_ms=1)], None),
        ([_copy(CHUNKS[0], media_time_ms=40), _copy(CHUNKS[1], media_time_ms=20)], "media time"),
        ([*CHUNKS[:6], _copy(CHUNKS[0], index=6, offset=960, media_time_ms=120)], "would be"),
    ],
)
def test_each_refusal_names_its_reason(frame: list[body_pb2.Chunk], words: str | None) -> None:
    if words is None:  # equal media times are fine
        check_chunk_frame("m", frame, BodyEdge(), LIMITS)
        return
    with pytest.raises(InvalidArgument, match=words):
        check_chunk_frame("m", frame, BodyEdge(), LIMITS)


def test_a_frame_is_judged_whole() -> None:
    """A bad last chunk refuses the frame: the caller takes none of it."""
    frame = [*CHUNKS[:3], _copy(CHUNKS[3], payload=b"")]
    with pytest.raises(InvalidArgument, match="chunk 3"):
        check_chunk_frame("m", frame, BodyEdge(), LIMITS)


def test_the_first_frame_of_a_new_message_starts_at_nothing() -> None:
    assert first_frame_edge(0, CHUNKS[2:]) == BodyEdge()
    with pytest.raises(InvalidArgument, match="gap"):
        check_chunk_frame("m", CHUNKS[2:], first_frame_edge(0, CHUNKS[2:]), LIMITS)
    resume = first_frame_edge(2, CHUNKS[2:4])
    assert check_chunk_frame("m", CHUNKS[2:4], resume, LIMITS).edge.next_index == 4
