"""The body store's domain: appends with group commits, finishing, reads with a live tail,
range reads, deletes and abandonment. Plain asyncio over a ``BodyStorage``; never imports grpc.

Appends. A frame's chunks must be consecutive and continue the body: chunks already accepted
are dropped when their bytes (and offset) match what is stored and refused when they differ;
a gap, an oversize chunk or a body beyond ``max_message_bytes`` is INVALID_ARGUMENT (the
request is wrong, retrying it cannot help); a body with more than ``max_pending_bytes`` waiting
for storage is RESOURCE_EXHAUSTED (back off and resend). A frame is checked whole before any
of it is taken, so a refused frame leaves no trace. Accepting a chunk never awaits storage.

Group commits. Each live body has at most one batch write in flight. The first pending chunk
opens a window of ``group_commit_ms`` (cut short at ``group_commit_max_chunks``); chunks that
arrive while a write is in flight go in the next batch right after it. A batch is one new
object; a failed write is retried with backoff for as long as the body is live, and chunks are
acknowledged (ack sinks, waiters) only once their batch is durable.

Recovery. A message this node does not hold in memory (restart, failover) is looked up in
storage before anything else: its durable position is where its stored batches reach.

Reads follow durable chunks: a reader sees a chunk once it is stored, never one that could
still be lost (live listeners get chunks straight from the sender's router). A reader
subscribes to the live tail first, then reads stored chunks up to the position at which it
subscribed, then takes committed batches from its tail queue, so there is no gap and no
duplicate at the switch. The writer never waits for a reader: a reader whose queue overflows
drops back to reading from storage (recent chunks come from memory) and re-subscribes.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import prometheus_client
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from voxmesh.body.body_model import (
    BodyState,
    BodyStatus,
    ChunkLike,
    DurablePosition,
    EndTotals,
    RangeRead,
    ReadChunks,
    ReadEnd,
    ReadEvent,
    ReadStat,
    StoredChunk,
)
from voxmesh.body.body_storage import (
    BatchConflict,
    BodyIndex,
    BodyKey,
    BodyStorage,
    ChunkTable,
    StorageNotFound,
    StoredBatch,
    batch_chain,
)
from voxmesh.body.live_body import (
    AckSink,
    FinishedBody,
    KnownBody,
    LiveBody,
    RemovedBody,
    TailSubscription,
)
from voxmesh.core.chunk_frames import BodyEdge, FrameLimits, check_chunk_frame
from voxmesh.core.domain_errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    Unavailable,
)
from voxmesh.core.ids import require_id
from voxmesh.core.settings import Settings
from voxmesh.core.structured_logging import get_logger

_log = get_logger(__name__)

T = TypeVar("T")

# A batch's chunk table travels in object metadata (8 KiB on Cloud Storage): cap its chunks.
MAX_BATCH_CHUNKS = 256
# Finished and removed bodies remembered in memory (their chunk tables, tombstones).
FINISHED_CACHE_SIZE = 2048
REMOVED_CACHE_SIZE = 8192
MAX_CONTENT_TYPE = 255
# Storage calls other than batch writes: attempts before answering UNAVAILABLE.
STORAGE_ATTEMPTS = 4

BATCH_WRITES = prometheus_client.Counter(
    "voxmesh_body_batches_written_total", "Chunk batches made durable (group commits)."
)
BATCH_CHUNKS = prometheus_client.Histogram(
    "voxmesh_body_batch_chunks",
    "Chunks per group commit.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_SECONDS = prometheus_client.Histogram(
    "voxmesh_body_batch_write_seconds",
    "Time to make one batch durable, retries included.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
STORAGE_RETRIES = prometheus_client.Counter(
    "voxmesh_body_storage_retries_total", "Storage calls retried after a failure."
)
LAGGING_READERS = prometheus_client.Counter(
    "voxmesh_body_readers_lagging_total",
    "Times a live reader fell behind and dropped back to stored chunks.",
)


@dataclass(frozen=True)
class BodyLimits:
    group_commit_s: float
    group_commit_max_chunks: int
    max_concurrent_writes: int
    abandon_after_s: float
    read_batch_max_chunks: int
    max_chunk_bytes: int
    max_message_bytes: int
    max_frame_bytes: int  # payload bytes in one read frame or range read
    max_pending_bytes: int  # per body, accepted but not yet durable

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyLimits:
        body, limits = settings.body_store, settings.limits
        grpc_limit = limits.max_grpc_message_bytes
        return cls(
            group_commit_s=body.group_commit_ms / 1000,
            group_commit_max_chunks=min(body.group_commit_max_chunks, MAX_BATCH_CHUNKS),
            max_concurrent_writes=body.max_concurrent_writes,
            abandon_after_s=body.abandon_after_s,
            read_batch_max_chunks=body.read_batch_max_chunks,
            max_chunk_bytes=limits.max_chunk_bytes,
            max_message_bytes=limits.max_message_bytes,
            # Leave room for framing (chunk headers, stat fields) under the gRPC limit.
            max_frame_bytes=max(grpc_limit - 64 * 1024, limits.max_chunk_bytes),
            max_pending_bytes=max(4 * grpc_limit, limits.max_chunk_bytes),
        )


def _retryable(exc: BaseException) -> bool:
    return not isinstance(exc, BatchConflict | StorageNotFound | DomainError)


def _word(state: BodyState) -> str:
    return state.value.lower()


class BodyDomain:
    def __init__(self, storage: BodyStorage, limits: BodyLimits) -> None:
        self.storage = storage
        self.limits = limits
        self._live: dict[str, LiveBody] = {}
        self._finished: OrderedDict[str, FinishedBody] = OrderedDict()
        self._removed: OrderedDict[str, RemovedBody] = OrderedDict()
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._readers: dict[str, set[TailSubscription]] = {}
        self._background: set[asyncio.Task[object]] = set()
        self._abandoner: asyncio.Task[None] | None = None
        self._closing = False
        # Called with what was kept once this node abandoned an idle body on its own: the
        # router that would have marked the header may be the process that died.
        self.on_abandoned: Callable[[BodyStatus], Awaitable[None]] | None = None
        self._slots = asyncio.Semaphore(limits.max_concurrent_writes)
        self._slots_size = limits.max_concurrent_writes

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.storage.open()
        self._abandoner = asyncio.get_running_loop().create_task(self._abandon_idle_bodies())

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop: let in-flight commits and finishes end (up to ``grace_s``), then close."""
        self._closing = True
        if self._abandoner is not None:
            self._abandoner.cancel()
        for body in self._live.values():
            body.flush_now.set()
        pending: list[asyncio.Task[Any]] = [
            b.commit_task for b in self._live.values() if b.commit_task is not None
        ]
        pending += list(self._background)
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace_s)
            for task in late:
                task.cancel()
        for readers in self._readers.values():
            for sub in readers:
                sub.fail(Unavailable("the body node is shutting down; read again elsewhere"))
        await self.storage.close()

    async def settle(self) -> None:
        """Wait for the background work started so far (batch clean-ups, abandonments)."""
        while self._background:
            await asyncio.wait(list(self._background))

    def _spawn(self, coro: Awaitable[object]) -> None:
        async def run() -> object:
            return await coro

        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def live_count(self) -> int:
        return len(self._live)

    # -- finding bodies ----------------------------------------------------------------------

    def _key(self, thread_id: str, message_id: str) -> BodyKey:
        return BodyKey(require_id(thread_id, "thread_id"), require_id(message_id, "message_id"))

    def _known(self, key: BodyKey) -> KnownBody | None:
        message_id = key.message_id
        known: KnownBody | None = self._live.get(message_id)
        if known is None:
            known = self._finished.get(message_id)
            if known is not None:
                self._finished.move_to_end(message_id)
        if known is None:
            known = self._removed.get(message_id)
        if known is not None and known.key.thread_id != key.thread_id:
            raise InvalidArgument(
                f"message {message_id} belongs to thread {known.key.thread_id}, not {key.thread_id}"
            )
        return known

    async def _resolve(self, key: BodyKey) -> KnownBody | None:
        """The body from memory, else from storage (adopting a live one found there)."""
        known = self._known(key)
        if known is not None:
            return known
        task = self._loading.get(key.message_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(key))
            self._loading[key.message_id] = task
            task.add_done_callback(lambda _: self._loading.pop(key.message_id, None))
        await asyncio.shield(task)
        return self._known(key)

    async def _load(self, key: BodyKey) -> None:
        stored = await self._with_retries(lambda: self.storage.load(key), f"load {key.prefix}")
        if stored is None or self._known(key) is not None:
            return
        if stored.deleted_reason is not None:
            reason = stored.deleted_reason
            self._remember_removed(
                RemovedBody(key, BodyState(reason) if reason == "RECALLED" else BodyState.DELETED)
            )
        elif stored.index is not None:
            self._remember_finished(FinishedBody(key, stored.index))
            if stored.batches:  # a finish that stopped before its clean-up
                self._spawn(self._remove_batches(key))
        elif stored.batches:
            chain = batch_chain(stored.batches)
            body = LiveBody(
                key=key,
                content_type=stored.batches[0].content_type,
                last_activity=time.monotonic(),
            )
            for batch in chain:
                body.table.extend(batch.table)
            body.durable_count = body.table.count
            body.durable_size = body.table.end_offset
            body.batches = chain
            self._live[key.message_id] = body
            _log.info(
                "live body recovered from storage",
                message_id=key.message_id,
                durable_chunks=body.durable_count,
                batches=len(chain),
                unused_batches=len(stored.batches) - len(chain),
            )

    def _remember_finished(self, finished: FinishedBody) -> None:
        self._finished[finished.key.message_id] = finished
        self._finished.move_to_end(finished.key.message_id)
        while len(self._finished) > FINISHED_CACHE_SIZE:
            self._finished.popitem(last=False)

    def _remember_removed(self, removed: RemovedBody) -> None:
        self._removed[removed.key.message_id] = removed
        self._removed.move_to_end(removed.key.message_id)
        while len(self._removed) > REMOVED_CACHE_SIZE:
            self._removed.popitem(last=False)

    async def _with_retries(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_retryable),
                stop=stop_after_attempt(STORAGE_ATTEMPTS),
                wait=wait_exponential(multiplier=0.05, max=1.0),
                before_sleep=self._log_retry(what),
                reraise=True,
            ):
                with attempt:
                    return await call()
        except (DomainError, StorageNotFound, BatchConflict):
            raise
        except Exception as exc:
            raise Unavailable(f"body storage ({self.storage.description}): {what}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _log_retry(what: str) -> Callable[[RetryCallState], None]:
        def log(state: RetryCallState) -> None:
            STORAGE_RETRIES.inc()
            error = state.outcome.exception() if state.outcome is not None else None
            _log.warning(
                "body storage retry", what=what, attempt=state.attempt_number, error=str(error)
            )

        return log

    # -- appends -----------------------------------------------------------------------------

    async def append(
        self,
        thread_id: str,
        message_id: str,
        content_type: str,
        chunks: Sequence[ChunkLike],
        sink: AckSink | None = None,
    ) -> LiveBody:
        """Accept a frame of chunks (not durable yet: a sink or ``append_durable`` says when)."""
        body = self._live.get(message_id)
        if body is None or body.key.thread_id != thread_id:
            body = await self._open_for_append(self._key(thread_id, message_id), content_type)
        if not body.writable:
            self._refuse(body)
        body.last_activity = time.monotonic()
        if chunks:
            verified: dict[int, bytes] = {}
            if chunks[0].index < body.durable_count:  # resent chunks: compare their bytes
                verified = await self._verify_resent(body, chunks)
                if not body.writable:  # changed while stored chunks were read back
                    self._refuse(body)
            self._accept(body, chunks, verified)
        if sink is not None:
            sink.expect(body)
        return body

    async def append_durable(
        self, thread_id: str, message_id: str, content_type: str, chunks: Sequence[ChunkLike]
    ) -> DurablePosition:
        """Accept a frame and return once it is durable."""
        body = await self.append(thread_id, message_id, content_type, chunks)
        target = body.table.count
        if body.durable_count >= target:
            return body.position()
        waiter: asyncio.Future[DurablePosition] = asyncio.get_running_loop().create_future()
        body.waiters.append((target, waiter))
        return await waiter

    def open_sink(self) -> AckSink:
        return AckSink()

    def close_sink(self, sink: AckSink) -> None:
        sink.detach()

    async def _open_for_append(self, key: BodyKey, content_type: str) -> LiveBody:
        known = await self._resolve(key)
        if known is None:
            known = self._live.get(key.message_id)  # created by a concurrent first frame
        if known is None:
            if not content_type:
                raise InvalidArgument(
                    f"content_type is required on the first frame of message {key.message_id}"
                )
            if len(content_type) > MAX_CONTENT_TYPE:
                raise InvalidArgument(f"content_type is longer than {MAX_CONTENT_TYPE} characters")
            known = LiveBody(key=key, content_type=content_type, last_activity=time.monotonic())
            self._live[key.message_id] = known
        if not isinstance(known, LiveBody):
            raise FailedPrecondition(self._closed_reason(key.message_id, known.status().state))
        return known

    @staticmethod
    def _closed_reason(message_id: str, state: BodyState) -> str:
        if state.removed:
            return f"body of message {message_id} was {_word(state)}: it takes no more chunks"
        return f"body of message {message_id} is already {_word(state)}: it takes no more chunks"

    def _refuse(self, body: LiveBody) -> None:
        message_id = body.key.message_id
        if body.evicted:
            raise Unavailable(
                f"body of message {message_id} is reloading after a storage conflict; resend"
            )
        if body.state is not BodyState.LIVE:
            raise FailedPrecondition(self._closed_reason(message_id, body.state))
        raise FailedPrecondition(
            f"body of message {message_id} is being finished: it takes no more chunks"
        )

    async def _verify_resent(self, body: LiveBody, chunks: Sequence[ChunkLike]) -> dict[int, bytes]:
        """Stored payloads of resent chunks that are no longer in memory (rare: a sender
        resends from its first unacknowledged chunk, which is recent)."""
        durable = body.durable_count
        needed = [
            c.index for c in chunks if c.index < durable and body.recent_chunk(c.index) is None
        ]
        if not needed:
            return {}
        verified: dict[int, bytes] = {}
        async for frame in self._chunks_of(body, min(needed), max(needed) + 1):
            for chunk in frame:
                verified[chunk.index] = chunk.payload
        return verified

    def _accept(
        self, body: LiveBody, chunks: Sequence[ChunkLike], verified: dict[int, bytes]
    ) -> None:
        """Check the whole frame, then take its new chunks. Never awaits."""
        limits = self.limits
        message_id = body.key.message_id
        table = body.table
        edge = BodyEdge(table.count, table.end_offset, table.media_times[-1] if table.count else 0)
        check = check_chunk_frame(
            message_id, chunks, edge, FrameLimits(limits.max_chunk_bytes, limits.max_message_bytes)
        )
        for position in range(check.new_from):  # already accepted: the very same bytes
            chunk = chunks[position]
            index = chunk.index
            stored_chunk = body.unwritten(index)
            if stored_chunk is None:
                stored_chunk = body.recent_chunk(index)
            stored = stored_chunk.payload if stored_chunk is not None else verified.get(index)
            if stored != chunk.payload or chunk.offset != table.offset_of(index):
                raise InvalidArgument(
                    f"chunk {index} of {message_id} was already stored with different bytes"
                )
        if not check.has_new:
            return
        new_from, new_bytes = check.new_from, check.new_bytes
        if body.pending_bytes + new_bytes > limits.max_pending_bytes:
            raise ResourceExhausted(
                f"body of {message_id} has {body.pending_bytes} bytes waiting for storage; "
                f"resend later"
            )
        for chunk in chunks[max(new_from, 0) :]:
            table.append(len(chunk.payload), chunk.media_time_ms)
            body.pending.append(chunk)
        body.pending_bytes += new_bytes
        self._schedule_commit(body)

    # -- group commits -----------------------------------------------------------------------

    def _write_slots(self) -> asyncio.Semaphore:
        """Batch writes allowed at once on this node (a new size applies to new writes)."""
        if self.limits.max_concurrent_writes != self._slots_size:
            self._slots = asyncio.Semaphore(self.limits.max_concurrent_writes)
            self._slots_size = self.limits.max_concurrent_writes
        return self._slots

    def _schedule_commit(self, body: LiveBody) -> None:
        if body.commit_task is None:
            body.pending_since = time.monotonic()
            body.flush_now.clear()
            body.commit_task = asyncio.get_running_loop().create_task(self._commit(body))
        elif len(body.pending) >= self.limits.group_commit_max_chunks:
            body.flush_now.set()

    async def _commit(self, body: LiveBody) -> None:
        limits = self.limits
        try:
            while body.pending and not body.state.removed and not body.evicted:
                wait = body.pending_since + limits.group_commit_s - time.monotonic()
                if (
                    wait > 0
                    and len(body.pending) < limits.group_commit_max_chunks
                    and body.finishing is None
                    and not self._closing
                ):
                    try:
                        async with asyncio.timeout(wait):
                            await body.flush_now.wait()
                    except TimeoutError:
                        pass
                if body.state.removed:
                    return
                # The batch is cut only once a write slot is free: under load, chunks keep
                # joining it while it waits, so the node makes fewer, larger writes instead
                # of queueing one small write per chunk (adaptive group commit).
                slots = self._write_slots()
                await slots.acquire()
                try:
                    if body.state.removed or not body.pending:
                        return
                    body.flush_now.clear()
                    count = min(len(body.pending), limits.group_commit_max_chunks)
                    batch = body.pending[:count]
                    del body.pending[:count]
                    body.inflight = batch
                    data = b"".join([chunk.payload for chunk in batch])
                    first = batch[0].index
                    table = ChunkTable(
                        first,
                        body.table.offset_of(first),
                        body.table.lengths[first : first + count],
                        body.table.media_times[first : first + count],
                    )
                    stored = StoredBatch(table, body.content_type)
                    started = time.perf_counter()
                    await self._write_batch(body, stored, data)
                finally:
                    slots.release()
                BATCH_SECONDS.observe(time.perf_counter() - started)
                BATCH_WRITES.inc()
                BATCH_CHUNKS.observe(count)
                body.inflight = []
                self._made_durable(body, stored, batch, len(data))
                # Whatever arrived during the write has waited long enough: it goes next.
                body.pending_since = time.monotonic() - limits.group_commit_s
        except Exception as exc:
            if body.state.removed or self._closing:
                return
            _log.error(
                "batch write failed for good",
                message_id=body.key.message_id,
                error=str(exc),
                exc_info=not isinstance(exc, BatchConflict),
            )
            self._evict(
                body,
                Unavailable(
                    f"body of message {body.key.message_id} could not be stored ({exc}); resend"
                ),
            )
        finally:
            body.commit_task = None

    async def _write_batch(self, body: LiveBody, stored: StoredBatch, data: bytes) -> None:
        def give_up(_: RetryCallState) -> bool:
            return body.state.removed or self._closing

        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_retryable),
            stop=give_up,
            wait=wait_exponential(multiplier=0.02, max=2.0),
            before_sleep=self._log_retry(f"write {body.key.prefix}{stored.name}"),
            reraise=True,
        ):
            with attempt:
                await self.storage.write_batch(body.key, stored, data)

    def _made_durable(
        self, body: LiveBody, stored: StoredBatch, batch: list[ChunkLike], size: int
    ) -> None:
        body.durable_count = stored.table.end_index
        body.durable_size = stored.table.end_offset
        body.pending_bytes -= size
        body.batches.append(stored)
        body.remember(batch, size)
        for sub in self._readers.get(body.key.message_id, ()):
            sub.publish(batch, size)
        position = body.position()
        if body.waiters:
            still: list[tuple[int, asyncio.Future[DurablePosition]]] = []
            for target, waiter in body.waiters:
                if waiter.done():
                    continue
                if target <= position.chunk_count:
                    waiter.set_result(position)
                else:
                    still.append((target, waiter))
            body.waiters = still
        for sink in list(body.sinks):
            sink.push(position)
            if not sink.awaits(body.key.message_id):
                body.sinks.discard(sink)
                sink.bodies.discard(body)

    def _evict(self, body: LiveBody, error: DomainError) -> None:
        """Drop a live body whose state can no longer be trusted; the next use reloads it."""
        body.evicted = True
        if self._live.get(body.key.message_id) is body:
            del self._live[body.key.message_id]
        for _, waiter in body.waiters:
            if not waiter.done():
                waiter.set_exception(error)
        body.waiters = []
        for sink in list(body.sinks):
            sink.fail(error)
        body.sinks.clear()
        for sub in self._readers.get(body.key.message_id, ()):
            sub.fail(error)

    # -- finishing ---------------------------------------------------------------------------

    async def finish(
        self, thread_id: str, message_id: str, state: BodyState, totals: EndTotals | None
    ) -> BodyStatus:
        """COMPLETE (with the sender's totals) or ABANDONED: compose the body. Idempotent."""
        if not state.finished:
            raise InvalidArgument(f"final_state must be COMPLETE or ABANDONED, not {state.value}")
        if state is BodyState.COMPLETE and totals is None:
            raise InvalidArgument("a COMPLETE finish needs the sender's end totals")
        key = self._key(thread_id, message_id)
        while True:
            known = await self._resolve(key)
            if known is None:
                if state is BodyState.ABANDONED:
                    raise NotFound(f"no body for message {message_id}: no chunk arrived")
                if totals is not None and totals.chunk_count:
                    raise FailedPrecondition(
                        f"cannot complete {message_id}: chunks 0..{totals.chunk_count - 1} are "
                        f"missing (none arrived)"
                    )
                # Complete with no chunks at all: an empty body.
                known = self._live.get(message_id) or LiveBody(
                    key=key, content_type="", last_activity=time.monotonic()
                )
                self._live[message_id] = known
            if isinstance(known, RemovedBody):
                raise FailedPrecondition(
                    f"body of message {message_id} was {_word(known.state)}: it cannot be finished"
                )
            if isinstance(known, FinishedBody):
                return await self._finish_again(known, state, totals)
            if known.finishing is not None:
                await asyncio.wait([known.finishing])
                continue  # look again: finished now, or the finish failed and is ours to retry
            return await self._begin_finish(known, state, totals)

    async def _begin_finish(
        self, body: LiveBody, state: BodyState, totals: EndTotals | None
    ) -> BodyStatus:
        if state is BodyState.COMPLETE:
            assert totals is not None
            self._check_totals(body.key.message_id, body.table, totals)
        task = asyncio.get_running_loop().create_task(self._finish_live(body, state, totals))
        body.finishing = task
        return await asyncio.shield(task)

    @staticmethod
    def _check_totals(message_id: str, table: ChunkTable, totals: EndTotals) -> None:
        have, want = table.count, totals.chunk_count
        if want > have:
            raise FailedPrecondition(
                f"cannot complete {message_id}: chunks {have}..{want - 1} are missing "
                f"({have} of {want} arrived)"
            )
        if want < have:
            raise InvalidArgument(
                f"cannot complete {message_id} with {want} chunks: {have} chunks arrived"
            )
        if totals.size_bytes is not None and totals.size_bytes != table.end_offset:
            raise InvalidArgument(
                f"cannot complete {message_id} with {totals.size_bytes} bytes: "
                f"{table.end_offset} bytes arrived"
            )

    async def _finish_live(
        self, body: LiveBody, state: BodyState, totals: EndTotals | None
    ) -> BodyStatus:
        key = body.key
        try:
            body.flush_now.set()
            while body.commit_task is not None:
                await asyncio.wait([body.commit_task])
            self._check_still_there(body)
            if body.durable_count < body.table.count:
                raise Unavailable(f"chunks of {key.message_id} are not stored yet; retry")
            duration = totals.duration_ms if totals is not None else None
            index = BodyIndex(
                state.value,
                body.content_type,
                duration if state is BodyState.COMPLETE else None,
                body.table,
            )
            await self._with_retries(
                lambda: self.storage.compose(key, body.batches, body.content_type),
                f"compose {key.prefix}",
            )
            self._check_still_there(body)
            await self._with_retries(
                lambda: self.storage.write_index(key, index), f"write index {key.prefix}"
            )
            self._check_still_there(body)
            # Committed: the index is the finish's commit point.
            body.final = index
            body.state = state
        finally:
            body.finishing = None
        if self._live.get(key.message_id) is body:
            del self._live[key.message_id]
        finished = FinishedBody(key, index)
        self._remember_finished(finished)
        end = ReadEnd(state, index.table.count, index.table.size, index.duration_ms)
        for sub in self._readers.get(key.message_id, ()):
            sub.end(end)
        for sink in list(body.sinks):
            sink.forget(body)
        body.sinks.clear()
        self._spawn(self._remove_batches(key))
        _log.info(
            "body finished",
            message_id=key.message_id,
            state=state.value,
            chunks=index.table.count,
            bytes=index.table.size,
            batches=len(body.batches),
        )
        return finished.status()

    def _check_still_there(self, body: LiveBody) -> None:
        if body.state.removed:
            raise FailedPrecondition(
                f"body of message {body.key.message_id} was {_word(body.state)} while finishing"
            )
        if body.evicted:
            raise Unavailable(f"body of message {body.key.message_id} is reloading; retry")

    async def _finish_again(
        self, finished: FinishedBody, state: BodyState, totals: EndTotals | None
    ) -> BodyStatus:
        index = finished.index
        if state is BodyState.ABANDONED:
            return finished.status()  # an abandon repeated, or after the completion
        assert totals is not None
        self._check_totals(finished.key.message_id, index.table, totals)
        if index.state == BodyState.COMPLETE.value:
            return finished.status()  # a completion repeated
        # Abandoned (the sender was silent too long), and now its end frame came with every
        # chunk: the message is complete after all.
        upgraded = BodyIndex(
            BodyState.COMPLETE.value, index.content_type, totals.duration_ms, index.table
        )
        await self._with_retries(
            lambda: self.storage.write_index(finished.key, upgraded),
            f"write index {finished.key.prefix}",
        )
        completed = FinishedBody(finished.key, upgraded)
        if self._known(finished.key) is finished:
            self._remember_finished(completed)
        return completed.status()

    async def _remove_batches(self, key: BodyKey) -> None:
        try:
            await self._with_retries(
                lambda: self.storage.remove_batches(key), f"remove batches {key.prefix}"
            )
        except DomainError as exc:  # left for the next load of the body to retry
            _log.warning("batches not removed", message_id=key.message_id, error=str(exc))

    async def _abandon_idle_bodies(self) -> None:
        while True:
            after = self.limits.abandon_after_s  # dynamic: read each round
            await asyncio.sleep(min(max(after / 4, 0.01), 1.0))
            now = time.monotonic()
            for body in list(self._live.values()):
                if body.writable and not body.evicted and now - body.last_activity >= after:
                    _log.info("body abandoned", message_id=body.key.message_id, idle_s=after)
                    self._spawn(self._abandon(body))

    async def _abandon(self, body: LiveBody) -> None:
        if not body.writable or body.evicted:
            return
        try:
            kept = await self._begin_finish(body, BodyState.ABANDONED, None)
        except DomainError as exc:
            _log.warning("abandon failed", message_id=body.key.message_id, error=str(exc))
            body.last_activity = time.monotonic()  # try again after another idle period
            return
        if self.on_abandoned is not None:
            try:
                await self.on_abandoned(kept)
            except Exception as exc:  # the callback retries; a header left LIVE is logged
                _log.warning(
                    "header not told of abandonment",
                    message_id=body.key.message_id,
                    error=repr(exc),
                )

    # -- deleting ----------------------------------------------------------------------------

    async def delete(self, thread_id: str, message_id: str, reason: BodyState) -> tuple[bool, int]:
        """Recall or delete: cut readers off, drop the body. Returns (deleted, readers cut)."""
        if not reason.removed:
            raise InvalidArgument(f"reason must be RECALLED or DELETED, not {reason.value}")
        key = self._key(thread_id, message_id)
        known = self._known(key)
        had_live = False
        if isinstance(known, LiveBody):
            had_live = True
            body = known
            body.state = reason
            del self._live[message_id]
            error = FailedPrecondition(f"body of message {message_id} was {_word(reason)}")
            for _, waiter in body.waiters:
                if not waiter.done():
                    waiter.set_exception(error)
            body.waiters = []
            for sink in list(body.sinks):
                sink.forget(body)
            body.sinks.clear()
            body.flush_now.set()
        self._finished.pop(message_id, None)
        self._remember_removed(RemovedBody(key, reason))
        readers = list(self._readers.get(message_id, ()))
        end = ReadEnd(reason, 0, 0, None)
        for sub in readers:
            sub.cut(end)
        if isinstance(known, LiveBody):
            # Let an in-flight batch write or finish settle, so nothing lands after the delete.
            busy = [t for t in (known.commit_task, known.finishing) if t is not None]
            if busy:
                await asyncio.wait(busy, timeout=30)
        existed = await self._with_retries(
            lambda: self.storage.delete(key, reason.value), f"delete {key.prefix}"
        )
        _log.info("body removed", message_id=message_id, reason=reason.value, readers=len(readers))
        return existed or had_live, len(readers)

    # -- reads -------------------------------------------------------------------------------

    async def stat(self, thread_id: str, message_id: str) -> BodyStatus:
        key = self._key(thread_id, message_id)
        known = await self._resolve(key)
        if known is None:
            raise NotFound(f"no body for message {message_id} in thread {thread_id}")
        return known.status()

    async def read_range(
        self, thread_id: str, message_id: str, offset: int, length: int
    ) -> RangeRead:
        """Bytes of a finished body; ``length`` 0 (or too much) is capped at one frame."""
        key = self._key(thread_id, message_id)
        known = await self._resolve(key)
        if known is None:
            raise NotFound(f"no body for message {message_id} in thread {thread_id}")
        if isinstance(known, RemovedBody):
            raise NotFound(f"body of message {message_id} was {_word(known.state)}")
        if isinstance(known, LiveBody):
            raise FailedPrecondition(
                f"body of message {message_id} is still live: read it with ReadChunks"
            )
        table = known.index.table
        total = table.size
        if offset >= total:
            raise OutOfRange(
                f"offset {offset} is past the end of the body of {message_id} ({total} bytes)"
            )
        cap = self.limits.max_frame_bytes
        length = min(length or cap, cap, total - offset)
        try:
            data = await self._with_retries(
                lambda: self.storage.read_body(key, offset, length), f"read {key.prefix}"
            )
        except StorageNotFound:
            raise NotFound(f"body of message {message_id} is gone") from None
        return RangeRead(known.index.content_type, offset, data, total)

    async def read(
        self,
        thread_id: str,
        message_id: str,
        *,
        from_index: int = 0,
        from_live_edge: bool = False,
        stored_only: bool = False,
    ) -> AsyncIterator[ReadEvent]:
        """Stat, then chunks (stored, then the live tail), then end."""
        key = self._key(thread_id, message_id)
        known = await self._resolve(key)
        if known is None:
            raise NotFound(f"no body for message {message_id} in thread {thread_id}")
        if isinstance(known, RemovedBody):
            yield ReadStat(known.status())
            yield ReadEnd(known.state, 0, 0, None)
            return
        sub = TailSubscription()
        readers = self._readers.setdefault(message_id, set())
        readers.add(sub)  # before reading any position: commits from now on reach `sub`
        try:
            if isinstance(known, FinishedBody):
                events = self._read_finished(known, sub, from_index, from_live_edge)
            else:
                events = self._read_live(known, sub, from_index, from_live_edge, stored_only)
            async for event in events:
                yield event
        finally:
            readers.discard(sub)
            if not readers and self._readers.get(message_id) is readers:
                del self._readers[message_id]

    async def _read_finished(
        self, body: FinishedBody, sub: TailSubscription, from_index: int, from_live_edge: bool
    ) -> AsyncIterator[ReadEvent]:
        table = body.index.table
        count = table.count
        start = count if from_live_edge else from_index
        if start > count:
            raise OutOfRange(
                f"chunk {start} is past the end of the body of {body.key.message_id} "
                f"({count} chunks)"
            )
        yield ReadStat(body.status())
        async for event in self._stored(body, sub, start, count):
            yield event
            if isinstance(event, ReadEnd):
                return
        yield ReadEnd(BodyState(body.index.state), count, table.size, body.index.duration_ms)

    async def _read_live(
        self,
        body: LiveBody,
        sub: TailSubscription,
        from_index: int,
        from_live_edge: bool,
        stored_only: bool,
    ) -> AsyncIterator[ReadEvent]:
        tail_start = body.durable_count  # the tail hands `sub` every chunk from here on
        status = body.status()
        want = max(tail_start - 1, 0) if from_live_edge else from_index
        yield ReadStat(status)
        if stored_only:
            async for event in self._stored(body, sub, want, tail_start):
                yield event
                if isinstance(event, ReadEnd):
                    return
            yield ReadEnd(BodyState.LIVE, status.chunk_count, status.size_bytes, None)
            return
        limits = self.limits
        caught_up = tail_start
        while True:
            if want < caught_up:  # stored chunks first, at full speed
                async for event in self._stored(body, sub, want, caught_up):
                    yield event
                    if isinstance(event, ReadEnd):
                        return
                want = caught_up
            if sub.error is not None:
                raise sub.error
            if sub.cut_off is not None:
                yield sub.cut_off
                return
            if sub.queue:
                frame = self._live_frame(sub, want, limits)
                if frame:
                    want = frame[-1].index + 1
                    yield ReadChunks(frame, live=True)
                continue
            if sub.lagging:  # dropped by the tail: catch up from storage, then follow again
                LAGGING_READERS.inc()
                sub.lagging = False
                caught_up = body.durable_count
                continue
            if sub.ended is not None:
                yield sub.ended
                return
            sub.wake.clear()
            await sub.wake.wait()

    def _live_frame(self, sub: TailSubscription, want: int, limits: BodyLimits) -> list[ChunkLike]:
        frame: list[ChunkLike] = []
        size = 0
        while sub.queue and len(frame) < limits.read_batch_max_chunks:
            batch = sub.take()
            for position, chunk in enumerate(batch):
                if chunk.index < want:
                    continue
                length = len(chunk.payload)
                if len(frame) >= limits.read_batch_max_chunks or (
                    frame and size + length > limits.max_frame_bytes
                ):
                    rest = batch[position:]
                    sub.queue.appendleft(rest)
                    sub.queued_bytes += sum(len(c.payload) for c in rest)
                    return frame
                frame.append(chunk)
                size += length
        return frame

    async def _stored(
        self, body: LiveBody | FinishedBody, sub: TailSubscription, start: int, stop: int
    ) -> AsyncIterator[ReadChunks | ReadEnd]:
        """Stored chunks [start, stop) as frames; a recall or delete meanwhile ends the read."""
        try:
            async for frame in self._chunks_of(body, start, stop):
                if sub.cut_off is not None:
                    yield sub.cut_off
                    return
                yield ReadChunks(frame, live=False)
        except (StorageNotFound, Unavailable):
            if sub.cut_off is not None:
                yield sub.cut_off
                return
            raise

    async def _chunks_of(
        self, body: LiveBody | FinishedBody, start: int, stop: int
    ) -> AsyncIterator[list[ChunkLike]]:
        while start < stop:
            if isinstance(body, LiveBody) and body.final is not None:
                body = FinishedBody(body.key, body.final)  # finished meanwhile: batches go
            if isinstance(body, FinishedBody):
                frame = await self._finished_frame(body, start, stop)
            else:
                frame = await self._live_stored_frame(body, start, stop)
            if not frame:  # nothing stored there (yet): never loop on it
                return
            yield frame
            start += len(frame)

    def _frame_end(self, table: ChunkTable, start: int, stop: int) -> int:
        """One past the last chunk of a frame from ``start``: within the chunk and byte caps."""
        limits = self.limits
        end = min(stop, start + limits.read_batch_max_chunks)
        lengths, first = table.lengths, table.first_index
        size = 0
        for index in range(start, end):
            size += lengths[index - first]
            if size > limits.max_frame_bytes and index > start:
                return index
        return end

    async def _finished_frame(self, body: FinishedBody, start: int, stop: int) -> list[ChunkLike]:
        table = body.index.table
        end = self._frame_end(table, start, stop)
        begin_offset = table.offset_of(start)
        data = await self._with_retries(
            lambda: self.storage.read_body(
                body.key, begin_offset, table.offset_of(end) - begin_offset
            ),
            f"read {body.key.prefix}",
        )
        return self._split(table, start, end, data, begin_offset)

    @staticmethod
    def _split(
        table: ChunkTable, start: int, end: int, data: bytes, data_offset: int
    ) -> list[ChunkLike]:
        chunks: list[ChunkLike] = []
        for index in range(start, end):
            position = index - table.first_index
            offset = table.offsets[position]
            begin = offset - data_offset
            chunks.append(
                StoredChunk(
                    index,
                    offset,
                    table.media_times[position],
                    data[begin : begin + table.lengths[position]],
                )
            )
        return chunks

    async def _live_stored_frame(self, body: LiveBody, start: int, stop: int) -> list[ChunkLike]:
        stop = min(stop, body.durable_count)
        end = self._frame_end(body.table, start, stop)
        if body.recent and start >= body.recent_first:
            frame: list[ChunkLike] = []
            for index in range(start, end):
                chunk = body.recent_chunk(index)
                assert chunk is not None
                frame.append(chunk)
            return frame
        if body.recent:
            end = min(end, body.recent_first)
        batches = body.batches
        position = bisect.bisect_right(batches, start, key=lambda b: b.table.first_index) - 1
        needed: list[StoredBatch] = []
        while position < len(batches) and batches[position].table.first_index < end:
            needed.append(batches[position])
            position += 1

        async def read_one(batch: StoredBatch) -> bytes:
            return await self._with_retries(
                lambda: self.storage.read_batch(body.key, batch.table),
                f"read {body.key.prefix}{batch.name}",
            )

        try:
            payloads = await asyncio.gather(*(read_one(batch) for batch in needed))
        except StorageNotFound:
            if body.final is not None:  # finished meanwhile, and its batches removed
                return await self._finished_frame(FinishedBody(body.key, body.final), start, stop)
            raise Unavailable(
                f"a stored batch of message {body.key.message_id} is missing; read again"
            ) from None
        frame = []
        for batch, payload in zip(needed, payloads, strict=True):
            table = batch.table
            lo, hi = max(start, table.first_index), min(end, table.end_index)
            frame.extend(self._split(table, lo, hi, payload, table.first_offset))
        return frame
