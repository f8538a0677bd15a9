"""In-memory state of bodies on their body node: live messages, their readers and ack sinks.

A live body is owned by one event loop and changed only synchronously (no await between a
check and its update), so appends from several streams, commits, finishes and deletes never
see each other half-way.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from voxmesh.body.body_model import (
    BodyState,
    BodyStatus,
    ChunkLike,
    DurablePosition,
    ReadEnd,
)
from voxmesh.body.body_storage import BodyIndex, BodyKey, ChunkTable, StoredBatch
from voxmesh.core.domain_errors import DomainError

# A reader further behind the live tail than this drops back to reading stored chunks.
TAIL_QUEUE_MAX_BYTES = 1 << 20
TAIL_QUEUE_MAX_BATCHES = 1024


class TailSubscription:
    """One reader's place on a body's live tail: a bounded queue of committed batches.

    The writer never waits for a reader: when the queue is full the reader is marked lagging
    and its queue dropped; it then reads what it missed from storage and re-subscribes.
    """

    __slots__ = ("cut_off", "ended", "error", "lagging", "queue", "queued_bytes", "wake")

    def __init__(self) -> None:
        self.queue: deque[list[ChunkLike]] = deque()
        self.queued_bytes = 0
        self.lagging = False
        self.ended: ReadEnd | None = None  # set after the last batch was published
        self.cut_off: ReadEnd | None = None  # recall/delete: ends at once
        self.error: DomainError | None = None
        self.wake = asyncio.Event()

    def publish(self, batch: list[ChunkLike], size: int) -> None:
        if self.lagging:
            return
        if (
            self.queued_bytes + size > TAIL_QUEUE_MAX_BYTES
            or len(self.queue) >= TAIL_QUEUE_MAX_BATCHES
        ):
            self.lagging = True
            self.queue.clear()
            self.queued_bytes = 0
        else:
            self.queue.append(batch)
            self.queued_bytes += size
        self.wake.set()

    def take(self) -> list[ChunkLike]:
        batch = self.queue.popleft()
        self.queued_bytes -= sum(len(c.payload) for c in batch)
        return batch

    def end(self, end: ReadEnd) -> None:
        self.ended = end
        self.wake.set()

    def cut(self, end: ReadEnd) -> None:
        self.cut_off = end
        self.queue.clear()
        self.wake.set()

    def fail(self, error: DomainError) -> None:
        self.error = error
        self.wake.set()


class AckSink:
    """The acks owed to one AppendChunks stream: latest durable position per message."""

    def __init__(self) -> None:
        self._ready: dict[str, DurablePosition] = {}
        self._awaiting: dict[str, int] = {}  # message id -> chunk count still to be acked
        self._changed = asyncio.Event()
        self.bodies: set[LiveBody] = set()
        self.error: DomainError | None = None

    def expect(self, body: LiveBody) -> None:
        """This stream sent chunks for ``body``: ack up to what it has accepted."""
        accepted = body.table.count
        if body.durable_count >= accepted:  # nothing new (duplicates, empty frame): ack now
            self.push(body.position())
            return
        message_id = body.key.message_id
        self._awaiting[message_id] = max(self._awaiting.get(message_id, 0), accepted)
        body.sinks.add(self)
        self.bodies.add(body)

    def push(self, position: DurablePosition) -> None:
        self._ready[position.message_id] = position
        target = self._awaiting.get(position.message_id)
        if target is not None and position.chunk_count >= target:
            del self._awaiting[position.message_id]
        self._changed.set()

    def forget(self, body: LiveBody) -> None:
        """The body went away (deleted, or evicted after a conflict): nothing more comes."""
        self._awaiting.pop(body.key.message_id, None)
        self.bodies.discard(body)
        self._changed.set()

    def fail(self, error: DomainError) -> None:
        """Chunks this stream sent were lost (the body was evicted): the stream must end."""
        self.error = error
        self._changed.set()

    def wake(self) -> None:
        """Make ``changed`` return (the stream's reader ended)."""
        self._changed.set()

    def awaits(self, message_id: str) -> bool:
        return message_id in self._awaiting

    def take(self) -> list[DurablePosition]:
        ready = list(self._ready.values())
        self._ready.clear()
        return ready

    @property
    def outstanding(self) -> bool:
        """Chunks this stream sent are not durable yet."""
        return bool(self._awaiting)

    async def changed(self) -> None:
        await self._changed.wait()
        self._changed.clear()

    def detach(self) -> None:
        for body in self.bodies:
            body.sinks.discard(self)
        self.bodies.clear()


@dataclass(eq=False)
class LiveBody:
    """A message being recorded, on its body node.

    Its chunks move pending -> inflight (one commit at a time) -> durable. Durable chunks are
    either in the body's parts (``batches``, from chunk 0) or, after them, in the node's
    segments and kept in memory (``tail``) until the next part takes them.
    """

    key: BodyKey
    content_type: str
    last_activity: float
    # Offsets, lengths and media times of every accepted chunk (durable, in flight, pending).
    table: ChunkTable = field(default_factory=lambda: ChunkTable(0, 0))
    state: BodyState = BodyState.LIVE
    finishing: asyncio.Task[BodyStatus] | None = None
    durable_count: int = 0
    durable_size: int = 0
    # Accepted chunks not yet durable: the commit being written, then those waiting for it.
    inflight: list[ChunkLike] = field(default_factory=list)
    pending: list[ChunkLike] = field(default_factory=list)
    pending_bytes: int = 0
    pending_since: float = 0.0
    committing: bool = False  # a commit of it (segment entry or part) is being written
    # Set (and cleared by waiters) whenever a commit of this body ends, durable or not.
    commit_done: asyncio.Event = field(default_factory=asyncio.Event)
    # Durable parts from chunk 0, in order (what a finish composes).
    batches: list[StoredBatch] = field(default_factory=list)
    # Durable chunks after the parts, in memory (they are in segments or foreign segments).
    tail: list[ChunkLike] = field(default_factory=list)
    tail_bytes: int = 0
    tail_since: float = 0.0
    # This node's segments that hold tail chunks (released once a part covers them).
    segments: list[int] = field(default_factory=list)
    own_part: bool = False  # this node wrote a part of it (its claim: where to look next)
    sealing: bool = False  # a finish asked for everything to go into parts
    sinks: set[AckSink] = field(default_factory=set)
    waiters: list[tuple[int, asyncio.Future[DurablePosition]]] = field(default_factory=list)
    final: BodyIndex | None = None  # set once the finish has committed its index
    evicted: bool = False  # dropped after a storage failure: the next use reloads it

    @property
    def writable(self) -> bool:
        return self.state is BodyState.LIVE and self.finishing is None and not self.evicted

    @property
    def parts_end(self) -> int:
        """One past the last chunk in parts: where the tail starts."""
        return self.durable_count - len(self.tail)

    @property
    def settled(self) -> bool:
        """Nothing pending, in flight, or only in segments."""
        return not self.pending and not self.inflight and not self.tail

    def position(self) -> DurablePosition:
        return DurablePosition(
            self.key.thread_id, self.key.message_id, self.durable_count, self.durable_size
        )

    def status(self) -> BodyStatus:
        if self.final is not None:
            return finished_status(self.key, self.final)
        return BodyStatus(
            thread_id=self.key.thread_id,
            message_id=self.key.message_id,
            state=self.state,
            content_type=self.content_type,
            chunk_count=self.durable_count,
            size_bytes=self.durable_size,
            duration_ms=None,
        )

    def unwritten(self, index: int) -> ChunkLike | None:
        """An accepted chunk that is not durable yet (in flight or pending)."""
        position = index - self.durable_count
        if position < 0:
            return None
        if position < len(self.inflight):
            return self.inflight[position]
        position -= len(self.inflight)
        return self.pending[position] if position < len(self.pending) else None

    def recent_chunk(self, index: int) -> ChunkLike | None:
        """A durable chunk still in memory (the tail)."""
        position = index - self.parts_end
        if position < 0 or index >= self.durable_count:
            return None
        return self.tail[position]


def finished_status(key: BodyKey, index: BodyIndex) -> BodyStatus:
    return BodyStatus(
        thread_id=key.thread_id,
        message_id=key.message_id,
        state=BodyState(index.state),
        content_type=index.content_type,
        chunk_count=index.table.count,
        size_bytes=index.table.size,
        duration_ms=index.duration_ms,
    )


@dataclass(frozen=True)
class FinishedBody:
    key: BodyKey
    index: BodyIndex

    def status(self) -> BodyStatus:
        return finished_status(self.key, self.index)


@dataclass(frozen=True)
class RemovedBody:
    key: BodyKey
    state: BodyState  # RECALLED or DELETED

    def status(self) -> BodyStatus:
        return BodyStatus(
            thread_id=self.key.thread_id,
            message_id=self.key.message_id,
            state=self.state,
            content_type="",
            chunk_count=0,
            size_bytes=0,
            duration_ms=None,
        )


KnownBody = LiveBody | FinishedBody | RemovedBody
