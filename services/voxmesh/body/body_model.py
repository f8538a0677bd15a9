"""Value types of the body store's domain: states, chunks, positions, stats and read events.

Plain Python: no grpc, no generated code. The servicer converts these to and from protobuf.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from voxmesh.core.chunk_frames import FrameChunk


class BodyState(enum.Enum):
    LIVE = "LIVE"
    COMPLETE = "COMPLETE"
    ABANDONED = "ABANDONED"
    RECALLED = "RECALLED"
    DELETED = "DELETED"

    @property
    def finished(self) -> bool:
        return self in (BodyState.COMPLETE, BodyState.ABANDONED)

    @property
    def removed(self) -> bool:
        return self in (BodyState.RECALLED, BodyState.DELETED)


# A chunk as the domain sees it: the frame rule's own chunk type (the generated ``Chunk``
# message fits, so chunks from a request are kept and handed to readers as they came).
ChunkLike = FrameChunk


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """A chunk read back from storage."""

    index: int
    offset: int
    media_time_ms: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class DurablePosition:
    """What a DurableAck says: the first ``chunk_count`` chunks (``size_bytes``) are durable."""

    thread_id: str
    message_id: str
    chunk_count: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class EndTotals:
    """The sender's totals from its end frame."""

    chunk_count: int
    size_bytes: int | None  # None: not given
    duration_ms: int | None  # None: not given


@dataclass(frozen=True, slots=True)
class BodyStatus:
    """What StatBody answers. Counts are of durable chunks (zero once removed)."""

    thread_id: str
    message_id: str
    state: BodyState
    content_type: str
    chunk_count: int
    size_bytes: int
    duration_ms: int | None

    @property
    def live_edge_index(self) -> int:
        return max(self.chunk_count - 1, 0)


@dataclass(frozen=True, slots=True)
class RangeRead:
    content_type: str
    offset: int
    data: bytes
    total_size_bytes: int


@dataclass(frozen=True, slots=True)
class ReadStat:
    """First event of a read."""

    status: BodyStatus


@dataclass(frozen=True, slots=True)
class ReadChunks:
    """Chunks in index order, without gaps; ``live`` once they come from the live tail."""

    chunks: list[ChunkLike]
    live: bool


@dataclass(frozen=True, slots=True)
class ReadEnd:
    """Last event of a read: the final state, or RECALLED/DELETED when cut off (zero totals);
    LIVE when a ``stored_only`` read of a live body stops at the stored chunks."""

    state: BodyState
    chunk_count: int
    size_bytes: int
    duration_ms: int | None


ReadEvent = ReadStat | ReadChunks | ReadEnd
