"""Where bodies are kept: the storage port of the body store, its layout and its records.

Layout under one body's prefix ``bodies/<thread>/<message>/`` (Cloud Storage object names, or
paths under the files root for the embedded adapter):

- ``batches/<first:010d>-<last:010d>``: one group commit of a live message, created once and
  never overwritten (``if_generation_match=0`` / a no-clobber link). Its bytes are the raw
  concatenated payloads of chunks ``first..last``; its chunk table (offset, media time and
  length per chunk) travels with it (custom metadata / a small header in front of the bytes).
- ``body``: written when the message is finished: the batches composed in order, byte for
  byte the media file. Range reads go here.
- ``index``: the finished body's chunk table, state, content type and duration. Written after
  ``body``: its presence is the commit point of a finish. Batches are deleted after it.
- ``deleted``: a tombstone (a few bytes naming RECALLED or DELETED) written first by a delete,
  which then removes everything else, so a late append or a restart cannot resurrect a
  recalled body, and StatBody can still answer RECALLED/DELETED.

Adapters raise ``StorageNotFound`` for a missing object and ``BatchConflict`` when a batch with
the same name but other contents exists; any other exception is a (retryable) storage failure.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

BODIES_PREFIX = "bodies"
BATCHES = "batches"
BODY_OBJECT = "body"
INDEX_OBJECT = "index"
TOMBSTONE_OBJECT = "deleted"
COMPOSE_SCRATCH = "compose"

FINISHED_STATES = ("COMPLETE", "ABANDONED")
DELETED_STATES = ("RECALLED", "DELETED")


class StorageNotFound(Exception):
    """The object does not exist (any more)."""


class BatchConflict(Exception):
    """A batch object with this name exists with other contents: another writer got there."""


@dataclass(frozen=True, slots=True)
class BodyKey:
    thread_id: str
    message_id: str

    @property
    def prefix(self) -> str:
        """Object name prefix of this body, with its trailing slash."""
        return f"{BODIES_PREFIX}/{self.thread_id}/{self.message_id}/"


def batch_name(first_index: int, last_index: int) -> str:
    return f"{BATCHES}/{first_index:010d}-{last_index:010d}"


def parse_batch_name(name: str) -> tuple[int, int] | None:
    """``(first, last)`` of a ``<first>-<last>`` batch name (without the ``batches/`` part)."""
    first, sep, last = name.partition("-")
    if not sep or not first.isdigit() or not last.isdigit():
        return None
    first_index, last_index = int(first), int(last)
    return (first_index, last_index) if last_index >= first_index else None


class ChunkTable:
    """Offset, media time and length of contiguous chunks ``first_index..``; no payloads.

    Encoded compactly (lengths, and media times as deltas) so a batch's table fits in a Cloud
    Storage object's custom metadata (8 KiB) and a long message's index stays small.
    """

    __slots__ = ("first_index", "first_offset", "lengths", "media_times", "offsets")

    def __init__(
        self,
        first_index: int,
        first_offset: int,
        lengths: Iterable[int] = (),
        media_times: Iterable[int] = (),
    ) -> None:
        self.first_index = first_index
        self.first_offset = first_offset
        self.lengths = array("I", lengths)
        self.media_times = array("Q", media_times)
        if len(self.lengths) != len(self.media_times):
            raise ValueError("a chunk table needs one length and one media time per chunk")
        self.offsets = array("Q")
        running = first_offset
        for length in self.lengths:
            self.offsets.append(running)
            running += length

    @property
    def count(self) -> int:
        return len(self.lengths)

    @property
    def end_index(self) -> int:
        """One past the last chunk."""
        return self.first_index + len(self.lengths)

    @property
    def last_index(self) -> int:
        return self.end_index - 1

    @property
    def size(self) -> int:
        """Bytes of the chunks in this table."""
        return self.end_offset - self.first_offset

    @property
    def end_offset(self) -> int:
        if not self.lengths:
            return self.first_offset
        return self.offsets[-1] + self.lengths[-1]

    def append(self, length: int, media_time_ms: int) -> None:
        self.offsets.append(self.end_offset)
        self.lengths.append(length)
        self.media_times.append(media_time_ms)

    def extend(self, other: ChunkTable) -> None:
        if other.first_index != self.end_index or other.first_offset != self.end_offset:
            raise ValueError(
                f"chunk table {other.first_index}.. does not continue {self.first_index}.."
                f"{self.end_index - 1}"
            )
        for length, media in zip(other.lengths, other.media_times, strict=True):
            self.append(length, media)

    def offset_of(self, index: int) -> int:
        """Byte offset of chunk ``index`` (``end_index`` gives the end offset)."""
        if index == self.end_index:
            return self.end_offset
        return self.offsets[index - self.first_index]

    def encode(self) -> str:
        deltas: list[int] = []
        previous = 0
        for media in self.media_times:
            deltas.append(media - previous)
            previous = media
        return json.dumps(
            {"i": self.first_index, "o": self.first_offset, "n": list(self.lengths), "t": deltas},
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str) -> ChunkTable:
        raw = json.loads(text)
        media: list[int] = []
        running = 0
        for delta in raw["t"]:
            running += int(delta)
            media.append(running)
        return cls(int(raw["i"]), int(raw["o"]), (int(n) for n in raw["n"]), media)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChunkTable):
            return NotImplemented
        return (
            self.first_index == other.first_index
            and self.first_offset == other.first_offset
            and self.lengths == other.lengths
            and self.media_times == other.media_times
        )

    def __hash__(self) -> int:
        return hash((self.first_index, self.first_offset, self.count))

    def __repr__(self) -> str:
        return f"ChunkTable({self.first_index}..{self.last_index}, bytes {self.first_offset}..)"


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """One group commit as stored: its chunk table and the body's content type."""

    table: ChunkTable
    content_type: str

    @property
    def name(self) -> str:
        return batch_name(self.table.first_index, self.table.last_index)


@dataclass(frozen=True, slots=True)
class BodyIndex:
    """What a finished body keeps beside its ``body`` object."""

    state: str  # one of FINISHED_STATES
    content_type: str
    duration_ms: int | None
    table: ChunkTable  # from chunk 0, offset 0

    def encode(self) -> bytes:
        return json.dumps(
            {
                "v": 1,
                "state": self.state,
                "content_type": self.content_type,
                "duration_ms": self.duration_ms,
                "chunks": json.loads(self.table.encode()),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> BodyIndex:
        raw = json.loads(data)
        if raw.get("v") != 1 or raw.get("state") not in FINISHED_STATES:
            raise ValueError(f"not a v1 body index: {data[:80]!r}")
        duration = raw.get("duration_ms")
        return cls(
            state=raw["state"],
            content_type=str(raw.get("content_type", "")),
            duration_ms=None if duration is None else int(duration),
            table=ChunkTable.decode(json.dumps(raw["chunks"])),
        )


@dataclass(frozen=True, slots=True)
class StoredBody:
    """Everything stored under one body's prefix, as found by ``BodyStorage.load``."""

    batches: list[StoredBatch]  # every batch object, sorted by (first, last)
    index: BodyIndex | None  # set once finished
    deleted_reason: str | None  # set once recalled/deleted (wins over everything else)


def batch_chain(batches: Sequence[StoredBatch]) -> list[StoredBatch]:
    """The batches that cover chunks 0.. contiguously, as far as any chain reaches.

    Normally the batches tile the body exactly. After a failover two nodes may have written
    overlapping batches (one of them never acknowledged); compose takes whole objects, so the
    chain uses only batches that start exactly where the previous one ended.
    """
    by_first: dict[int, list[StoredBatch]] = {}
    for batch in batches:
        by_first.setdefault(batch.table.first_index, []).append(batch)
    # Breadth-first over "next index to cover", remembering how each was reached.
    reached: dict[int, StoredBatch | None] = {0: None}
    frontier = [0]
    while frontier:
        following: list[int] = []
        for start in frontier:
            for batch in by_first.get(start, ()):
                end = batch.table.end_index
                if end not in reached:
                    reached[end] = batch
                    following.append(end)
        frontier = following
    end = max(reached)
    chain: list[StoredBatch] = []
    while end != 0:
        step = reached[end]
        assert step is not None
        chain.append(step)
        end = step.table.first_index
    chain.reverse()
    return chain


class BodyStorage(Protocol):
    """The body store's storage port. Adapters: Cloud Storage, local files."""

    description: str

    async def open(self) -> None:
        """Connect (never fails for an unreachable store: operations report that)."""

    async def close(self) -> None: ...

    async def write_batch(self, key: BodyKey, batch: StoredBatch, data: bytes) -> None:
        """Create the batch object, never overwriting one. An existing object with the same
        bytes and table counts as written (a retry); other contents raise BatchConflict."""

    async def load(self, key: BodyKey) -> StoredBody | None:
        """What is stored for the body, or None if nothing is."""

    async def read_batch(self, key: BodyKey, table: ChunkTable) -> bytes:
        """The payload bytes of the batch covering exactly ``table``'s chunks."""

    async def compose(
        self, key: BodyKey, batches: Sequence[StoredBatch], content_type: str
    ) -> None:
        """Write ``body``: the batches' bytes concatenated in order (any number of them)."""

    async def write_index(self, key: BodyKey, index: BodyIndex) -> None:
        """Write (or replace) ``index``, after ``body``."""

    async def read_body(self, key: BodyKey, offset: int, length: int) -> bytes:
        """``length`` bytes of ``body`` from ``offset`` (fewer at its end)."""

    async def remove_batches(self, key: BodyKey) -> int:
        """Delete every batch and compose scratch object of a finished body; returns how many."""

    async def delete(self, key: BodyKey, reason: str) -> bool:
        """Tombstone the body with ``reason``, then delete everything else under its prefix.
        Returns whether there was anything besides a tombstone."""
