"""The body node's commit loop: one shared log of segments for every live message it holds.

Chunks accepted for any live body wait in that body's ``pending`` list. The loop opens a
commit window when the first of them arrives (``group_commit_ms``; cut short when a body has
``group_commit_max_chunks`` waiting or a finish is waiting), then waits for one of
``max_concurrent_writes`` write slots (while every slot is busy, the window keeps gathering
chunks: under load segments grow instead of writes multiplying), then cuts: every body's
pending chunks go into **one** segment object, and the commit's acks follow that one write.
Object writes per second are set by the window and the slots, not by the number of speakers.

Parts. A body's chunks also go into an object of its own, a *part* (written from memory, in
the same commit, instead of a segment entry):

- on the node's first commit of the body: the part is the node's claim, naming the first of
  its segments that may hold the body's later chunks;
- when the body's durable chunks held only in segments (its tail) are ``part_interval_s``
  old, ``part_max_bytes`` big or a chunk table's worth (``MAX_PART_CHUNKS``);
- when the body finishes (``seal``): everything goes into parts, which are then composed.

A segment is deleted once every body in it has a part covering its chunks there (or was
removed). So a segment lives about ``part_interval_s``, and a node taking a body over
(``recover_tail``) reads the body's parts, then, for each node that wrote one, that node's
segments from the part's ``next_seq`` on: at most about ``part_interval_s`` of them.

This class owns the write slots, the segment sequence, the pending/tail bookkeeping of bodies
and segment clean-up; the domain (``BodyDomain``) gets ``on_durable`` / ``on_failed`` calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import prometheus_client
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from voxmesh.body.body_model import ChunkLike, StoredChunk
from voxmesh.body.body_storage import (
    BatchConflict,
    BodyKey,
    BodyStorage,
    LogWriter,
    SegmentEntry,
    StorageNotFound,
    StoredBatch,
    decode_segment,
    encode_segment,
)
from voxmesh.body.live_body import LiveBody
from voxmesh.core.domain_errors import DomainError, Unavailable
from voxmesh.core.structured_logging import get_logger

_log = get_logger(__name__)

T = TypeVar("T")

# A part's chunk table travels in object metadata (8 KiB on Cloud Storage): cap its chunks.
MAX_PART_CHUNKS = 512
# Segments read at once when a node recovers a body from another node's log.
RECOVERY_READS = 16
# A window is cut early once this many payload bytes wait (one segment stays modest).
SEGMENT_MAX_BYTES = 8 << 20

OBJECT_WRITES = prometheus_client.Counter(
    "voxmesh_body_object_writes",
    "Object-store writes by the body node, by kind (segment, part, body, index, tombstone).",
    ["kind"],
)
for _kind in ("segment", "part", "body", "index", "tombstone"):
    OBJECT_WRITES.labels(_kind)  # every kind reported from the start, at zero
COMMITS = prometheus_client.Counter(
    "voxmesh_body_commits_total", "Commits (one segment and/or parts) made durable."
)
COMMIT_CHUNKS = prometheus_client.Histogram(
    "voxmesh_body_commit_chunks",
    "Chunks per commit, across every body in it.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
COMMIT_SECONDS = prometheus_client.Histogram(
    "voxmesh_body_commit_write_seconds",
    "Time to make one commit durable, retries included.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
SEGMENTS_DELETED = prometheus_client.Counter(
    "voxmesh_body_segments_deleted_total", "Segments deleted once every body in them was parted."
)
STORAGE_RETRIES = prometheus_client.Counter(
    "voxmesh_body_storage_retries_total", "Storage calls retried after a failure."
)
RECOVERY_SECONDS = prometheus_client.Histogram(
    "voxmesh_body_recovery_seconds",
    "Time to find a taken-over body's chunks in other nodes' segments.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def retryable(exc: BaseException) -> bool:
    return not isinstance(exc, BatchConflict | StorageNotFound | DomainError)


def log_retry(what: str) -> Callable[[RetryCallState], None]:
    def log(state: RetryCallState) -> None:
        STORAGE_RETRIES.inc()
        error = state.outcome.exception() if state.outcome is not None else None
        _log.warning(
            "body storage retry", what=what, attempt=state.attempt_number, error=str(error)
        )

    return log


@dataclass(frozen=True)
class LogLimits:
    group_commit_s: float
    group_commit_max_chunks: int
    max_concurrent_writes: int
    part_interval_s: float
    part_max_bytes: int


@dataclass
class _Part:
    body: LiveBody
    chunks: list[ChunkLike]  # tail + new, from the body's parts_end
    new: list[ChunkLike]  # the chunks of this commit (the end of ``chunks``)
    batch: StoredBatch | None = None


@dataclass
class _Commit:
    entries: list[tuple[LiveBody, list[ChunkLike]]] = field(default_factory=list)
    parts: list[_Part] = field(default_factory=list)
    seq: int | None = None

    @property
    def chunk_count(self) -> int:
        return sum(len(c) for _, c in self.entries) + sum(len(p.new) for p in self.parts)


DurableCallback = Callable[[LiveBody, list[ChunkLike]], None]
FailedCallback = Callable[[LiveBody, Exception], None]


class SegmentLog:
    def __init__(
        self,
        storage: BodyStorage,
        writer: LogWriter,
        limits: Callable[[], LogLimits],
        on_durable: DurableCallback,
        on_failed: FailedCallback,
    ) -> None:
        self.storage = storage
        self.writer = writer
        self._limits = limits
        self._on_durable = on_durable
        self._on_failed = on_failed
        self._ready: dict[LiveBody, None] = {}  # pending chunks, no commit in flight
        self._tails: dict[LiveBody, None] = {}  # durable chunks only in segments, oldest first
        self._window_start = 0.0
        self._wake = asyncio.Event()
        self._cut_now = asyncio.Event()
        self._next_seq = 0
        self._unsettled: dict[int, int] = {}  # segment seq -> bodies not yet parted in it
        self._doomed: list[int] = []
        self._deleter: asyncio.Task[None] | None = None
        self._commits: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._slots_size = 0
        self._slots = asyncio.Semaphore(1)
        self.closing = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run())

    async def close(self, grace_s: float) -> None:
        """Commit what is pending, wait (up to ``grace_s``) for commits in flight, stop."""
        self._cut_now.set()
        self._wake.set()
        deadline = time.monotonic() + grace_s
        while (self._ready or self._commits) and time.monotonic() < deadline:
            waiting: list[asyncio.Task[None]] = list(self._commits)
            if not waiting:
                await asyncio.sleep(0.005)
                continue
            await asyncio.wait(waiting, timeout=max(deadline - time.monotonic(), 0.0))
        self.closing = True
        for task in [self._runner, *self._commits, self._deleter]:
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in [self._runner, *self._commits, self._deleter] if t is not None),
            return_exceptions=True,
        )

    @property
    def segments_written(self) -> int:
        """How many segments this node has cut so far (the next segment's sequence number)."""
        return self._next_seq

    @property
    def segments_alive(self) -> int:
        """This node's segments not yet deleted (some body in them is not parted yet)."""
        return len(self._unsettled)

    # -- what the domain asks ----------------------------------------------------------------

    def submit(self, body: LiveBody) -> None:
        """``body`` has new pending chunks."""
        if not body.committing and body not in self._ready:
            self._enqueue(body)
        if len(body.pending) >= self._limits().group_commit_max_chunks:
            self._cut_now.set()
        self._wake.set()

    async def seal(self, body: LiveBody) -> None:
        """Return once every accepted chunk of ``body`` is durable in its parts (or the body
        was removed or evicted meanwhile: the caller checks)."""
        body.sealing = True
        try:
            while not body.settled and not body.state.removed and not body.evicted:
                if not body.committing and body not in self._ready:
                    self._enqueue(body)
                self._cut_now.set()
                self._wake.set()
                body.commit_done.clear()
                await body.commit_done.wait()
        finally:
            body.sealing = False

    async def settle(self, body: LiveBody) -> None:
        """Wait until no commit of ``body`` is in flight."""
        while body.committing:
            body.commit_done.clear()
            await body.commit_done.wait()

    def release(self, body: LiveBody) -> None:
        """The body is final or removed: its segment entries are no longer needed."""
        self._ready.pop(body, None)
        self._tails.pop(body, None)
        self._settle_segments(body)

    def forget(self, body: LiveBody) -> None:
        """The body was evicted: stop committing it (its segments stay for its reload)."""
        self._ready.pop(body, None)
        self._tails.pop(body, None)
        body.segments = []

    def _enqueue(self, body: LiveBody) -> None:
        if not self._ready:
            self._window_start = body.pending_since or time.monotonic()
        else:
            self._window_start = min(self._window_start, body.pending_since or self._window_start)
        self._ready[body] = None

    # -- the loop ----------------------------------------------------------------------------

    def _write_slots(self, size: int) -> asyncio.Semaphore:
        """Commits in flight at once (a new size applies to new commits)."""
        if size != self._slots_size:
            self._slots = asyncio.Semaphore(size)
            self._slots_size = size
        return self._slots

    async def _run(self) -> None:
        while True:
            limits = self._limits()
            due = self._due_tails(time.monotonic(), limits)
            if not self._ready and not due:
                self._wake.clear()
                timeout = limits.part_interval_s / 2 if self._tails else None
                try:
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            if self._ready and not self._cut_now.is_set():
                wait = self._window_start + limits.group_commit_s - time.monotonic()
                if wait > 0:
                    try:
                        async with asyncio.timeout(wait):
                            await self._cut_now.wait()
                    except TimeoutError:
                        pass
            slots = self._write_slots(limits.max_concurrent_writes)
            await slots.acquire()
            self._cut_now.clear()
            commit = self._cut(self._limits())
            if not commit.entries and not commit.parts:
                slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._write(commit, slots))
            self._commits.add(task)
            task.add_done_callback(self._commits.discard)

    def _due_tails(self, now: float, limits: LogLimits) -> list[LiveBody]:
        due: list[LiveBody] = []
        for body in self._tails:
            if now - body.tail_since < limits.part_interval_s:
                break
            if not body.committing:
                due.append(body)
        return due

    def _cut(self, limits: LogLimits) -> _Commit:
        now = time.monotonic()
        commit = _Commit()
        bodies = list(self._ready)
        self._ready.clear()
        ready = set(bodies)
        bodies += [b for b in self._due_tails(now, limits) if b not in ready]
        for body in bodies:
            if body.state.removed or body.evicted:
                self._tails.pop(body, None)
                continue
            if body.committing:
                continue
            count = min(len(body.pending), limits.group_commit_max_chunks)
            tail_count = len(body.tail)
            wants_part = (
                not body.own_part
                or body.sealing
                or (tail_count > 0 and now - body.tail_since >= limits.part_interval_s)
                or body.tail_bytes + body.pending_bytes >= limits.part_max_bytes
                or tail_count + count >= MAX_PART_CHUNKS
            )
            if wants_part:
                count = min(count, MAX_PART_CHUNKS - tail_count)
            if count == 0 and not (wants_part and tail_count):
                continue
            new = body.pending[:count]
            del body.pending[:count]
            body.inflight = new
            body.committing = True
            if wants_part:
                commit.parts.append(_Part(body, [*body.tail, *new], new))
            else:
                commit.entries.append((body, new))
            if body.pending:  # more than one commit's worth: the rest goes next
                body.pending_since = now - limits.group_commit_s
        if commit.entries:
            commit.seq = self._next_seq
            self._next_seq += 1
        for part in commit.parts:
            body = part.body
            start = body.parts_end
            part.batch = StoredBatch(
                body.table.slice(start, start + len(part.chunks)),
                body.content_type,
                self.writer.name,
                self._next_seq,  # its later chunks go into segments from this one on
            )
        return commit

    async def _write(self, commit: _Commit, slots: asyncio.Semaphore) -> None:
        started = time.perf_counter()
        calls: list[Awaitable[None]] = []
        if commit.seq is not None:
            calls.append(self._write_segment(commit.seq, commit.entries))
        calls += [self._write_part(part) for part in commit.parts]
        try:
            # Each write acks its own bodies as soon as it lands: a segment's entries never
            # wait for the parts written beside them.
            await asyncio.gather(*calls)
        finally:
            slots.release()
        COMMIT_SECONDS.observe(time.perf_counter() - started)
        COMMITS.inc()
        COMMIT_CHUNKS.observe(commit.chunk_count)

    async def _write_segment(
        self, seq: int, entries: list[tuple[LiveBody, list[ChunkLike]]]
    ) -> None:
        data = encode_segment(
            [
                (
                    SegmentEntry(
                        body.key.thread_id,
                        body.key.message_id,
                        body.content_type,
                        body.table.slice(chunks[0].index, chunks[-1].index + 1),
                    ),
                    [c.payload for c in chunks],
                )
                for body, chunks in entries
            ]
        )
        name = self.writer.segment(seq)
        try:
            await self._persist("segment", name, lambda: self.storage.write_segment(name, data))
        except Exception as error:
            for body, _ in entries:
                self._fail(body, error)
            return
        self._unsettled[seq] = len(entries)
        for body, chunks in entries:
            self._entry_durable(body, chunks, seq)

    async def _write_part(self, part: _Part) -> None:
        body, batch = part.body, part.batch
        assert batch is not None
        data = b"".join([c.payload for c in part.chunks])
        try:
            await self._persist(
                "part",
                f"{body.key.prefix}{batch.name}",
                lambda: self.storage.write_batch(body.key, batch, data),
            )
        except Exception as error:
            self._fail(body, error)
            return
        self._part_durable(part)

    async def _persist(self, kind: str, what: str, call: Callable[[], Awaitable[None]]) -> None:
        """One object write, retried with backoff until it lands or the node stops."""

        def give_up(_: RetryCallState) -> bool:
            return self.closing

        async for attempt in AsyncRetrying(
            retry=retry_if_exception(retryable),
            stop=give_up,
            wait=wait_exponential(multiplier=0.02, max=2.0),
            before_sleep=log_retry(f"write {what}"),
            reraise=True,
        ):
            with attempt:
                await call()
        OBJECT_WRITES.labels(kind).inc()

    # -- outcomes ----------------------------------------------------------------------------

    def _entry_durable(self, body: LiveBody, chunks: list[ChunkLike], seq: int) -> None:
        body.inflight = []
        body.committing = False
        if body.state.removed or body.evicted:
            self._release_seq(seq)
            body.commit_done.set()
            return
        if not body.tail:
            body.tail_since = time.monotonic()
            self._tails.pop(body, None)
            self._tails[body] = None
        body.tail.extend(chunks)
        body.tail_bytes += sum(len(c.payload) for c in chunks)
        body.segments.append(seq)
        self._advance(body, chunks)

    def _part_durable(self, part: _Part) -> None:
        body, batch = part.body, part.batch
        assert batch is not None
        body.inflight = []
        body.committing = False
        if body.state.removed or body.evicted:
            body.commit_done.set()
            return
        body.batches.append(batch)
        body.own_part = True
        body.tail = []
        body.tail_bytes = 0
        self._tails.pop(body, None)
        self._settle_segments(body)
        self._advance(body, part.new)

    def _advance(self, body: LiveBody, chunks: list[ChunkLike]) -> None:
        size = sum(len(c.payload) for c in chunks)
        if chunks:
            body.durable_count = chunks[-1].index + 1
            body.durable_size = body.table.offset_of(body.durable_count)
            body.pending_bytes -= size
        if body.pending and body not in self._ready:
            self._enqueue(body)
            self._wake.set()
        body.commit_done.set()
        self._on_durable(body, chunks)

    def _fail(self, body: LiveBody, error: BaseException) -> None:
        body.inflight = []
        body.committing = False
        body.commit_done.set()
        if body.state.removed or self.closing:
            return
        _log.error(
            "commit failed for good",
            message_id=body.key.message_id,
            error=str(error),
            exc_info=not isinstance(error, BatchConflict),
        )
        self.forget(body)
        self._on_failed(body, error if isinstance(error, Exception) else Exception(str(error)))

    # -- segment clean-up --------------------------------------------------------------------

    def _settle_segments(self, body: LiveBody) -> None:
        for seq in body.segments:
            self._release_seq(seq)
        body.segments = []

    def _release_seq(self, seq: int) -> None:
        left = self._unsettled.get(seq)
        if left is None:
            return
        if left > 1:
            self._unsettled[seq] = left - 1
            return
        del self._unsettled[seq]
        self._doomed.append(seq)
        if self._deleter is None or self._deleter.done():
            self._deleter = asyncio.get_running_loop().create_task(self._delete_doomed())

    async def _delete_doomed(self) -> None:
        while self._doomed:
            batch, self._doomed = self._doomed, []
            names = [self.writer.segment(seq) for seq in batch]
            try:
                await self.storage.delete_segments(names)
                SEGMENTS_DELETED.inc(len(names))
            except Exception as exc:  # the bucket's lifecycle rule is the backstop
                _log.warning("segments not deleted", count=len(names), error=str(exc))


# -- recovery -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecoveredTail:
    chunks: list[ChunkLike]  # durable chunks after the parts, in order, from the parts' end
    segments_read: int
    seconds: float


async def recover_tail(
    storage: BodyStorage,
    key: BodyKey,
    parts: Sequence[StoredBatch],
    chain_end: int,
    chain_end_offset: int,
) -> RecoveredTail:
    """The durable chunks of ``key`` after its parts' chain (which ends at chunk
    ``chain_end``, byte ``chain_end_offset``): from the segments of every node that wrote a
    part of it, from the segment each one named on. Chunks are taken only where they
    continue the chain."""
    began = time.perf_counter()
    start_at: dict[str, int] = {}
    for part in parts:
        if part.writer:
            start_at[part.writer] = max(start_at.get(part.writer, 0), part.next_seq)
    names: list[str] = []
    for writer_name, from_seq in start_at.items():
        writer = LogWriter.parse(writer_name)
        if writer is None:
            continue
        names += [writer.segment(seq) for seq in await storage.list_segments(writer, from_seq)]
    gate = asyncio.Semaphore(RECOVERY_READS)

    async def read(name: str) -> list[tuple[SegmentEntry, memoryview]]:
        async with gate:
            try:
                data = await storage.read_segment(name)
            except StorageNotFound:  # deleted meanwhile: its bodies were parted
                return []
        try:
            return [
                (e, v)
                for e, v in decode_segment(data)
                if e.message_id == key.message_id and e.thread_id == key.thread_id
            ]
        except ValueError as exc:
            _log.warning("unreadable segment skipped", segment=name, error=str(exc))
            return []

    found = [x for group in await asyncio.gather(*(read(n) for n in names)) for x in group]
    found.sort(key=lambda x: x[0].table.first_index)
    chunks: list[ChunkLike] = []
    end = chain_end
    end_offset = chain_end_offset
    progressed = True
    while progressed:
        progressed = False
        for entry, payload in found:
            table = entry.table
            if not (table.first_index <= end < table.end_index):
                continue
            offset = table.offset_of(end)
            if offset != end_offset:
                continue
            for index in range(end, table.end_index):
                at = index - table.first_index
                begin = table.offsets[at] - table.first_offset
                chunks.append(
                    StoredChunk(
                        index,
                        table.offsets[at],
                        table.media_times[at],
                        bytes(payload[begin : begin + table.lengths[at]]),
                    )
                )
            end = table.end_index
            end_offset = table.end_offset
            progressed = True
    seconds = time.perf_counter() - began
    RECOVERY_SECONDS.observe(seconds)
    return RecoveredTail(chunks, len(names), seconds)


# -- other storage calls ----------------------------------------------------------------------

STORAGE_ATTEMPTS = 4  # storage calls other than commits: attempts before UNAVAILABLE


async def with_retries(storage: BodyStorage, call: Callable[[], Awaitable[T]], what: str) -> T:
    """A storage call retried a few times; what still fails is UNAVAILABLE (not found and
    conflicts pass through as they are)."""
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(retryable),
            stop=stop_after_attempt(STORAGE_ATTEMPTS),
            wait=wait_exponential(multiplier=0.05, max=1.0),
            before_sleep=log_retry(what),
            reraise=True,
        ):
            with attempt:
                return await call()
    except (DomainError, StorageNotFound, BatchConflict):
        raise
    except Exception as exc:
        raise Unavailable(f"body storage ({storage.description}): {what}: {exc}") from exc
    raise AssertionError("unreachable")  # pragma: no cover
