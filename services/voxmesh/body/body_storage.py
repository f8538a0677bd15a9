"""Where bodies are kept: the storage port of the body store, its layout and its records.

The shared log of a body node: ``segments/<node>/<epoch>/<seq:012d>``. One create-only object
per commit window holds the chunks of every live message the node took in that window (a small
header lists which message's chunks sit where, then the payloads). ``<epoch>`` is new each
time the process starts, so a restarted node never reuses a name. A segment is deleted once
every message in it is covered by a part or final; a bucket lifecycle rule on ``segments/``
is the backstop for nodes that died.

Layout under one body's prefix ``bodies/<thread>/<message>/`` (Cloud Storage object names, or
paths under the files root for the embedded adapter):

- ``batches/<first:010d>-<last:010d>_<node>~<epoch>``: a *part* of a live message: chunks
  ``first..last`` written by one node from memory (its first commit of the message, then
  every ``part_interval_s`` / ``part_max_bytes``, and the last one when it finishes), created
  once and never overwritten (``if_generation_match=0`` / a no-clobber link). Its bytes are the
  raw concatenated payloads; its chunk table (offset, media time and length per chunk) and the
  first segment that may hold the message's later chunks travel with it (custom metadata / a
  small header in front of the bytes). A node taking a message over finds its durable chunks
  in the parts, then in the segments of each part's writer from that segment on.
- ``body``: written when the message is finished: the parts composed in order, byte for
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
import secrets
import struct
import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

BODIES_PREFIX = "bodies"
SEGMENTS_PREFIX = "segments"
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


def batch_name(first_index: int, last_index: int, writer: str = "") -> str:
    suffix = f"_{writer}" if writer else ""
    return f"{BATCHES}/{first_index:010d}-{last_index:010d}{suffix}"


def parse_batch_name(name: str) -> tuple[int, int] | None:
    """``(first, last)`` of a ``<first>-<last>[_<writer>]`` batch name (without ``batches/``)."""
    span, _, _ = name.partition("_")
    first, sep, last = span.partition("-")
    if not sep or not first.isdigit() or not last.isdigit():
        return None
    first_index, last_index = int(first), int(last)
    return (first_index, last_index) if last_index >= first_index else None


_NAME_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")


@dataclass(frozen=True, slots=True)
class LogWriter:
    """One body node process's log: ``segments/<node>/<epoch>/``."""

    node: str
    epoch: str

    def __post_init__(self) -> None:
        for part in (self.node, self.epoch):
            if not part or not set(part) <= _NAME_SAFE:
                raise ValueError(f"log writer names use [A-Za-z0-9.-] only: {part!r}")

    @classmethod
    def new(cls, node: str) -> LogWriter:
        """A fresh epoch for ``node`` (any characters outside [A-Za-z0-9.-] become '-')."""
        safe = "".join(c if c in _NAME_SAFE else "-" for c in node) or "body"
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        return cls(safe, f"{stamp}-{secrets.token_hex(4)}")

    @property
    def name(self) -> str:
        """How parts name their writer: ``<node>~<epoch>``."""
        return f"{self.node}~{self.epoch}"

    @classmethod
    def parse(cls, name: str) -> LogWriter | None:
        node, sep, epoch = name.partition("~")
        try:
            return cls(node, epoch) if sep else None
        except ValueError:
            return None

    @property
    def prefix(self) -> str:
        return f"{SEGMENTS_PREFIX}/{self.node}/{self.epoch}/"

    def segment(self, seq: int) -> str:
        return f"{self.prefix}{seq:012d}"


def parse_segment_seq(name: str) -> int | None:
    """The sequence number of a segment object name's last component."""
    last = name.rsplit("/", 1)[-1]
    return int(last) if last.isdigit() else None


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

    def slice(self, start: int, end: int) -> ChunkTable:
        """The table of chunks ``start..end-1`` (within this one)."""
        lo, hi = start - self.first_index, end - self.first_index
        return ChunkTable(
            start, self.offset_of(start), self.lengths[lo:hi], self.media_times[lo:hi]
        )

    def offset_of(self, index: int) -> int:
        """Byte offset of chunk ``index`` (``end_index`` gives the end offset)."""
        if index == self.end_index:
            return self.end_offset
        return self.offsets[index - self.first_index]

    def as_dict(self) -> dict[str, object]:
        deltas: list[int] = []
        previous = 0
        for media in self.media_times:
            deltas.append(media - previous)
            previous = media
        return {"i": self.first_index, "o": self.first_offset, "n": list(self.lengths), "t": deltas}

    def encode(self) -> str:
        return json.dumps(self.as_dict(), separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> ChunkTable:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ChunkTable:
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
    """One part as stored: its chunk table, the body's content type, and which node's log
    (``LogWriter.name``) may hold the message's next chunks from segment ``next_seq`` on."""

    table: ChunkTable
    content_type: str
    writer: str = ""
    next_seq: int = 0

    @property
    def name(self) -> str:
        return batch_name(self.table.first_index, self.table.last_index, self.writer)

    def log_position(self) -> str:
        return f"{self.writer}/{self.next_seq}" if self.writer else ""

    @staticmethod
    def parse_log_position(text: str) -> tuple[str, int]:
        writer, _, seq = text.partition("/")
        return (writer, int(seq)) if seq.isdigit() else ("", 0)


# -- segments -------------------------------------------------------------------------------

SEGMENT_MAGIC = b"VXS1"
_SEGMENT_HEADER = struct.Struct(">4sI")  # magic, JSON index length


@dataclass(frozen=True, slots=True)
class SegmentEntry:
    """One message's chunks in a segment: ``table`` says which, the payloads follow in order."""

    thread_id: str
    message_id: str
    content_type: str
    table: ChunkTable


def encode_segment(entries: Sequence[tuple[SegmentEntry, Sequence[bytes]]]) -> bytes:
    """A segment: magic, index length, the JSON index, then every entry's payloads in order."""
    index = [
        {
            "t": entry.thread_id,
            "m": entry.message_id,
            "c": entry.content_type,
            "k": entry.table.as_dict(),
        }
        for entry, _ in entries
    ]
    header = json.dumps({"v": 1, "e": index}, separators=(",", ":")).encode()
    parts = [_SEGMENT_HEADER.pack(SEGMENT_MAGIC, len(header)), header]
    for _, payloads in entries:
        parts.extend(payloads)
    return b"".join(parts)


def decode_segment(data: bytes) -> list[tuple[SegmentEntry, memoryview]]:
    """The entries of a segment with each one's payload bytes (raises ValueError if corrupt)."""
    if len(data) < _SEGMENT_HEADER.size:
        raise ValueError("segment too short")
    magic, length = _SEGMENT_HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC:
        raise ValueError("not a voxmesh segment")
    start = _SEGMENT_HEADER.size
    raw = json.loads(bytes(data[start : start + length]))
    if raw.get("v") != 1:
        raise ValueError("unknown segment version")
    view = memoryview(data)
    position = start + length
    found: list[tuple[SegmentEntry, memoryview]] = []
    for item in raw["e"]:
        table = ChunkTable.from_dict(item["k"])
        entry = SegmentEntry(str(item["t"]), str(item["m"]), str(item["c"]), table)
        found.append((entry, view[position : position + table.size]))
        position += table.size
    if position != len(data):
        raise ValueError("segment payloads do not match its index")
    return found


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
                "chunks": self.table.as_dict(),
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
            table=ChunkTable.from_dict(raw["chunks"]),
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
        """Create the part object, never overwriting one. An existing object with the same
        bytes and table counts as written (a retry); other contents raise BatchConflict."""

    async def write_segment(self, name: str, data: bytes) -> None:
        """Create a segment of the shared log, never overwriting one (same bytes: a retry)."""

    async def list_segments(self, writer: LogWriter, from_seq: int) -> list[int]:
        """Sequence numbers of ``writer``'s segments from ``from_seq`` on, ascending."""

    async def read_segment(self, name: str) -> bytes:
        """A whole segment (StorageNotFound once deleted)."""

    async def delete_segments(self, names: Sequence[str]) -> None:
        """Delete segments (missing ones are fine)."""

    async def load(self, key: BodyKey) -> StoredBody | None:
        """What is stored for the body, or None if nothing is."""

    async def read_batch(self, key: BodyKey, batch: StoredBatch) -> bytes:
        """The payload bytes of a part."""

    async def compose(
        self, key: BodyKey, batches: Sequence[StoredBatch], content_type: str
    ) -> None:
        """Write ``body``: the batches' bytes concatenated in order (any number of them)."""

    async def write_index(self, key: BodyKey, index: BodyIndex) -> None:
        """Write (or replace) ``index``, after ``body``."""

    async def read_body(self, key: BodyKey, offset: int, length: int) -> bytes:
        """``length`` bytes of ``body`` from ``offset`` (fewer at its end)."""

    async def remove_batches(self, key: BodyKey) -> int:
        """Delete every part and compose scratch object of a finished body; returns how many."""

    async def delete(self, key: BodyKey, reason: str) -> bool:
        """Tombstone the body with ``reason``, then delete everything else under its prefix.
        Returns whether there was anything besides a tombstone."""
