"""The one rule for a frame of chunks, applied by the router (before it relays anything live)
and by the body store (before it takes anything): plain Python, no grpc, no I/O.

A frame is a run of chunks of one message. Its chunks must be consecutive, start at or below
the next index the body needs (lower ones are resends, which the body store compares with
what it holds), and every new chunk must continue the body: offset equal to the bytes before
it, a payload neither empty nor over ``max_chunk_bytes``, a media time not before the previous
chunk's, and the body no larger than ``max_message_bytes``. A frame is judged whole: either it
is valid and the caller takes its new chunks, or ``InvalidArgument`` says what is wrong and
nothing of it may be relayed or stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from voxmesh.core.domain_errors import InvalidArgument
from voxmesh.core.settings import Settings


class FrameChunk(Protocol):
    """A chunk as the rule sees it (the generated ``Chunk`` message fits)."""

    @property
    def index(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def media_time_ms(self) -> int: ...

    @property
    def payload(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class FrameLimits:
    max_chunk_bytes: int
    max_message_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> FrameLimits:
        return cls(settings.limits.max_chunk_bytes, settings.limits.max_message_bytes)


@dataclass(frozen=True, slots=True)
class BodyEdge:
    """Where a body stands: the next chunk index and byte offset it needs, and the media
    time of its last chunk (0 when unknown: the body store, which knows it, checks it)."""

    next_index: int = 0
    next_offset: int = 0
    last_media_ms: int = 0


@dataclass(frozen=True, slots=True)
class FrameCheck:
    """A valid frame: its chunks from position ``new_from`` on are new; ``edge`` is where the
    body stands once they are taken; ``new_bytes`` is their payload size."""

    new_from: int
    edge: BodyEdge
    new_bytes: int

    @property
    def has_new(self) -> bool:
        return self.new_bytes > 0


def check_chunk_frame(
    message_id: str, chunks: Sequence[FrameChunk], edge: BodyEdge, limits: FrameLimits
) -> FrameCheck:
    """Judge a whole frame against the body's ``edge``; raise ``InvalidArgument`` if invalid."""
    if not chunks:
        return FrameCheck(0, edge, 0)
    first = chunks[0].index
    if first > edge.next_index:
        raise InvalidArgument(
            f"chunk {first} of {message_id} leaves a gap: expected chunk {edge.next_index}"
        )
    new_from = edge.next_index - first  # position in the frame of the first new chunk
    size = edge.next_offset
    media = edge.last_media_ms
    new_bytes = 0
    for position, chunk in enumerate(chunks):
        index = chunk.index
        if index != first + position:
            raise InvalidArgument(
                f"chunks of a frame must be consecutive: chunk {index} of {message_id} "
                f"follows chunk {first + position - 1}"
            )
        if position < new_from:
            continue  # a resend: the body store compares it with what it holds
        length = len(chunk.payload)
        if length == 0:
            raise InvalidArgument(f"chunk {index} of {message_id} has an empty payload")
        if length > limits.max_chunk_bytes:
            raise InvalidArgument(
                f"chunk {index} of {message_id} is {length} bytes; the limit is "
                f"{limits.max_chunk_bytes}"
            )
        if chunk.offset != size:
            raise InvalidArgument(
                f"chunk {index} of {message_id} has offset {chunk.offset}; expected {size} "
                f"(the bytes before it)"
            )
        if chunk.media_time_ms < media:
            raise InvalidArgument(
                f"chunk {index} of {message_id} has media time {chunk.media_time_ms} ms, "
                f"before the previous chunk's {media} ms"
            )
        size += length
        media = chunk.media_time_ms
        new_bytes += length
        if size > limits.max_message_bytes:
            raise InvalidArgument(
                f"body of {message_id} would be {size} bytes; the limit is "
                f"{limits.max_message_bytes}"
            )
    if new_from >= len(chunks):
        return FrameCheck(len(chunks), edge, 0)
    return FrameCheck(new_from, BodyEdge(first + len(chunks), size, media), new_bytes)


def first_frame_edge(resume_from_index: int, chunks: Sequence[FrameChunk]) -> BodyEdge:
    """The edge to judge a message's first frame by before its header exists: a new message
    (no resume) starts at nothing; a resume is judged from its own first chunk, the body
    store judging it against what it holds."""
    if resume_from_index == 0 or not chunks:
        return BodyEdge()
    head = chunks[0]
    return BodyEdge(head.index, head.offset, head.media_time_ms)
