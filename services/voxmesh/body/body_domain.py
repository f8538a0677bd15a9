"""The body store's domain: appends and durable acks, finishing, deletes and abandonment over
a ``BodyStorage``. Plain asyncio; never imports grpc.

Its state is split three ways: this class holds the bodies (live, finished, removed) and
their acks; ``SegmentLog`` is the commit loop (write slots, the node's shared segment log,
parts, segment clean-up); ``BodyReaders`` holds the readers (live-tail subscriptions, stored
and range reads).

Appends. A frame's chunks must be consecutive and continue the body: chunks already accepted
are dropped when their bytes (and offset) match what is stored and refused when they differ;
a gap, an oversize chunk or a body beyond ``max_message_bytes`` is INVALID_ARGUMENT (the
request is wrong, retrying it cannot help); a body with more than ``max_pending_bytes`` waiting
for storage is RESOURCE_EXHAUSTED (back off and resend). A frame is checked whole before any
of it is taken, so a refused frame leaves no trace. Accepting a chunk never awaits storage;
chunks are acknowledged (ack sinks, waiters) only once the commit holding them is durable.

Recovery. A message this node does not hold in memory (restart, failover) is looked up in
storage before anything else: its parts, then the segments of the nodes that wrote them
(``recover_tail``); its durable position is where those reach.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from voxmesh.body.body_model import (
    BodyState,
    BodyStatus,
    ChunkLike,
    DurablePosition,
    EndTotals,
    RangeRead,
    ReadEnd,
    ReadEvent,
    ReadStat,
)
from voxmesh.body.body_reads import BodyReaders, ReadLimits
from voxmesh.body.body_storage import (
    BodyIndex,
    BodyKey,
    BodyStorage,
    ChunkTable,
    LogWriter,
    batch_chain,
)
from voxmesh.body.live_body import (
    AckSink,
    FinishedBody,
    KnownBody,
    LiveBody,
    RemovedBody,
)
from voxmesh.body.segment_log import (
    OBJECT_WRITES,
    LogLimits,
    SegmentLog,
    recover_tail,
    with_retries,
)
from voxmesh.core.chunk_frames import BodyEdge, FrameLimits, check_chunk_frame
from voxmesh.core.domain_errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from voxmesh.core.ids import require_id
from voxmesh.core.settings import Settings
from voxmesh.core.structured_logging import get_logger

_log = get_logger(__name__)

T = TypeVar("T")

# A commit's entry per message is capped (a part's chunk table lives in object metadata).
MAX_BATCH_CHUNKS = 256
# Finished and removed bodies remembered in memory (their chunk tables, tombstones).
FINISHED_CACHE_SIZE = 2048
REMOVED_CACHE_SIZE = 8192
MAX_CONTENT_TYPE = 255


@dataclass(frozen=True)
class BodyLimits:
    group_commit_s: float
    group_commit_max_chunks: int
    max_concurrent_writes: int
    part_interval_s: float
    part_max_bytes: int
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
            part_interval_s=body.part_interval_s,
            part_max_bytes=body.part_max_bytes,
            abandon_after_s=body.abandon_after_s,
            read_batch_max_chunks=body.read_batch_max_chunks,
            max_chunk_bytes=limits.max_chunk_bytes,
            max_message_bytes=limits.max_message_bytes,
            # Leave room for framing (chunk headers, stat fields) under the gRPC limit.
            max_frame_bytes=max(grpc_limit - 64 * 1024, limits.max_chunk_bytes),
            max_pending_bytes=max(4 * grpc_limit, limits.max_chunk_bytes),
        )


def _word(state: BodyState) -> str:
    return state.value.lower()


class BodyDomain:
    def __init__(
        self, storage: BodyStorage, limits: BodyLimits, writer: LogWriter | None = None
    ) -> None:
        self.storage = storage
        self.limits = limits  # replaced whole when dynamic settings change
        self._live: dict[str, LiveBody] = {}
        self._finished: OrderedDict[str, FinishedBody] = OrderedDict()
        self._removed: OrderedDict[str, RemovedBody] = OrderedDict()
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[object]] = set()
        self._abandoner: asyncio.Task[None] | None = None
        self._closing = False
        # Called with what was kept once this node abandoned an idle body on its own: the
        # router that would have marked the header may be the process that died.
        self.on_abandoned: Callable[[BodyStatus], Awaitable[None]] | None = None
        self.log = SegmentLog(
            storage,
            writer or LogWriter.new(socket.gethostname()),
            self._log_limits,
            self._made_durable,
            self._commit_failed,
        )
        self.readers = BodyReaders(storage, self._read_limits)

    def _log_limits(self) -> LogLimits:
        limits = self.limits
        return LogLimits(
            limits.group_commit_s,
            limits.group_commit_max_chunks,
            limits.max_concurrent_writes,
            limits.part_interval_s,
            limits.part_max_bytes,
        )

    def _read_limits(self) -> ReadLimits:
        return ReadLimits(self.limits.read_batch_max_chunks, self.limits.max_frame_bytes)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.storage.open()
        self.log.start()
        self._abandoner = asyncio.get_running_loop().create_task(self._abandon_idle_bodies())

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop: let pending commits, in-flight commits and finishes end (up to ``grace_s``)."""
        self._closing = True
        if self._abandoner is not None:
            self._abandoner.cancel()
        began = time.monotonic()
        await self.log.close(grace_s)
        pending: list[asyncio.Task[Any]] = list(self._background)
        if pending:
            _, late = await asyncio.wait(
                pending, timeout=max(grace_s - (time.monotonic() - began), 0.05)
            )
            for task in late:
                task.cancel()
        self.readers.fail_all(Unavailable("the body node is shutting down; read again elsewhere"))
        await self.storage.close()

    async def settle(self) -> None:
        """Wait for the background work started so far (part clean-ups, abandonments)."""
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
            table = ChunkTable(0, 0)
            for batch in chain:
                table.extend(batch.table)
            tail = await self._with_retries(
                lambda: recover_tail(
                    self.storage, key, stored.batches, table.end_index, table.end_offset
                ),
                f"recover {key.prefix}",
            )
            if self._known(key) is not None:
                return
            body = LiveBody(
                key=key,
                content_type=stored.batches[0].content_type,
                last_activity=time.monotonic(),
            )
            body.table = table
            for chunk in tail.chunks:
                body.table.append(len(chunk.payload), chunk.media_time_ms)
            body.batches = chain
            body.tail = list(tail.chunks)
            body.tail_bytes = sum(len(c.payload) for c in tail.chunks)
            body.tail_since = time.monotonic()
            body.durable_count = body.table.count
            body.durable_size = body.table.end_offset
            self._live[key.message_id] = body
            _log.info(
                "live body recovered from storage",
                message_id=key.message_id,
                durable_chunks=body.durable_count,
                parts=len(chain),
                unused_parts=len(stored.batches) - len(chain),
                chunks_from_segments=len(tail.chunks),
                segments_read=tail.segments_read,
                recovery_ms=round(tail.seconds * 1000, 1),
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
        return await with_retries(self.storage, call, what)

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

    def append_now(
        self,
        thread_id: str,
        message_id: str,
        chunks: Sequence[ChunkLike],
        sink: AckSink | None = None,
    ) -> bool:
        """``append`` when it needs no storage: the body is live in memory and the frame
        resends nothing already durable. False: nothing was done, call ``append``."""
        body = self._live.get(message_id)
        if body is None or body.key.thread_id != thread_id:
            return False
        if chunks and chunks[0].index < body.durable_count:
            return False  # resent chunks: their stored bytes may have to be read back
        if not body.writable:
            self._refuse(body)
        body.last_activity = time.monotonic()
        if chunks:
            self._accept(body, chunks, {})
        if sink is not None:
            sink.expect(body)
        return True

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
        async for frame in self.readers.chunks_of(body, min(needed), max(needed) + 1):
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
        if not body.pending:
            body.pending_since = time.monotonic()
        for chunk in chunks[max(new_from, 0) :]:
            table.append(len(chunk.payload), chunk.media_time_ms)
            body.pending.append(chunk)
        body.pending_bytes += new_bytes
        self.log.submit(body)

    # -- commits (the segment log calls these) -----------------------------------------------

    def _made_durable(self, body: LiveBody, chunks: list[ChunkLike]) -> None:
        self.readers.publish(body.key.message_id, chunks)
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

    def _commit_failed(self, body: LiveBody, error: Exception) -> None:
        self._evict(
            body,
            Unavailable(
                f"body of message {body.key.message_id} could not be stored ({error}); resend"
            ),
        )

    def _evict(self, body: LiveBody, error: DomainError) -> None:
        """Drop a live body whose state can no longer be trusted; the next use reloads it."""
        body.evicted = True
        self.log.forget(body)
        if self._live.get(body.key.message_id) is body:
            del self._live[body.key.message_id]
        for _, waiter in body.waiters:
            if not waiter.done():
                waiter.set_exception(error)
        body.waiters = []
        for sink in list(body.sinks):
            sink.fail(error)
        body.sinks.clear()
        self.readers.fail(body.key.message_id, error)

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
            await self.log.seal(body)  # every chunk durable, and in parts
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
            OBJECT_WRITES.labels("body").inc()
            self._check_still_there(body)
            await self._with_retries(
                lambda: self.storage.write_index(key, index), f"write index {key.prefix}"
            )
            OBJECT_WRITES.labels("index").inc()
            self._check_still_there(body)
            # Committed: the index is the finish's commit point.
            body.final = index
            body.state = state
        finally:
            body.finishing = None
        if self._live.get(key.message_id) is body:
            del self._live[key.message_id]
        self.log.release(body)
        finished = FinishedBody(key, index)
        self._remember_finished(finished)
        end = ReadEnd(state, index.table.count, index.table.size, index.duration_ms)
        self.readers.end(key.message_id, end)
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
        OBJECT_WRITES.labels("index").inc()
        completed = FinishedBody(finished.key, upgraded)
        if self._known(finished.key) is finished:
            self._remember_finished(completed)
        return completed.status()

    async def _remove_batches(self, key: BodyKey) -> None:
        try:
            await self._with_retries(
                lambda: self.storage.remove_batches(key), f"remove parts {key.prefix}"
            )
        except DomainError as exc:  # left for the next load of the body to retry
            _log.warning("parts not removed", message_id=key.message_id, error=str(exc))

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
            body.commit_done.set()  # a finish waiting for its commits looks again
        self._finished.pop(message_id, None)
        self._remember_removed(RemovedBody(key, reason))
        readers = self.readers.cut(message_id, ReadEnd(reason, 0, 0, None))
        if isinstance(known, LiveBody):
            # Let an in-flight commit or finish settle, so nothing lands after the delete.
            try:
                async with asyncio.timeout(30):
                    await self.log.settle(known)
                    if known.finishing is not None:
                        await asyncio.wait([known.finishing])
            except TimeoutError:
                pass
        existed = await self._with_retries(
            lambda: self.storage.delete(key, reason.value), f"delete {key.prefix}"
        )
        OBJECT_WRITES.labels("tombstone").inc()
        if isinstance(known, LiveBody):
            self.log.release(known)  # its segment entries are no longer needed
        _log.info("body removed", message_id=message_id, reason=reason.value, readers=readers)
        return existed or had_live, readers

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
        return await self.readers.read_range(known, offset, length)

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
        async for event in self.readers.read(
            known, from_index=from_index, from_live_edge=from_live_edge, stored_only=stored_only
        ):
            yield event
