"""Readers of bodies on their body node: live-tail subscriptions, stored chunks, range reads.

Reads follow durable chunks: a reader sees a chunk once it is stored, never one that could
still be lost (live listeners get chunks straight from the sender's router). A reader
subscribes to the live tail first, then reads stored chunks up to the position at which it
subscribed, then takes committed chunks from its tail queue, so there is no gap and no
duplicate at the switch. The writer never waits for a reader: a reader whose queue overflows
drops back to reading stored chunks (the tail since the last part comes from memory) and
re-subscribes.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import prometheus_client

from voxmesh.body.body_model import (
    BodyState,
    ChunkLike,
    RangeRead,
    ReadChunks,
    ReadEnd,
    ReadEvent,
    ReadStat,
    StoredChunk,
)
from voxmesh.body.body_storage import BodyStorage, ChunkTable, StorageNotFound, StoredBatch
from voxmesh.body.live_body import FinishedBody, LiveBody, TailSubscription
from voxmesh.body.segment_log import with_retries
from voxmesh.core.domain_errors import (
    DomainError,
    NotFound,
    OutOfRange,
    Unavailable,
)

LAGGING_READERS = prometheus_client.Counter(
    "voxmesh_body_readers_lagging_total",
    "Times a live reader fell behind and dropped back to stored chunks.",
)


@dataclass(frozen=True)
class ReadLimits:
    read_batch_max_chunks: int
    max_frame_bytes: int  # payload bytes in one read frame or range read


class BodyReaders:
    """Who reads which body, and how reads get their chunks."""

    def __init__(self, storage: BodyStorage, limits: Callable[[], ReadLimits]) -> None:
        self.storage = storage
        self._limits = limits
        self._subscriptions: dict[str, set[TailSubscription]] = {}

    # -- the live tail -----------------------------------------------------------------------

    def publish(self, message_id: str, chunks: list[ChunkLike]) -> None:
        subs = self._subscriptions.get(message_id)
        if subs and chunks:
            size = sum(len(c.payload) for c in chunks)
            for sub in subs:
                sub.publish(chunks, size)

    def end(self, message_id: str, end: ReadEnd) -> None:
        for sub in self._subscriptions.get(message_id, ()):
            sub.end(end)

    def cut(self, message_id: str, end: ReadEnd) -> int:
        """Recall/delete: every reader of the body ends at once; returns how many."""
        readers = list(self._subscriptions.get(message_id, ()))
        for sub in readers:
            sub.cut(end)
        return len(readers)

    def fail(self, message_id: str, error: DomainError) -> None:
        for sub in self._subscriptions.get(message_id, ()):
            sub.fail(error)

    def fail_all(self, error: DomainError) -> None:
        for readers in self._subscriptions.values():
            for sub in readers:
                sub.fail(error)

    # -- reads -------------------------------------------------------------------------------

    async def read(
        self,
        known: LiveBody | FinishedBody,
        *,
        from_index: int,
        from_live_edge: bool,
        stored_only: bool,
    ) -> AsyncIterator[ReadEvent]:
        message_id = known.key.message_id
        sub = TailSubscription()
        readers = self._subscriptions.setdefault(message_id, set())
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
            if not readers and self._subscriptions.get(message_id) is readers:
                del self._subscriptions[message_id]

    async def read_range(self, body: FinishedBody, offset: int, length: int) -> RangeRead:
        key, table = body.key, body.index.table
        total = table.size
        if offset >= total:
            raise OutOfRange(
                f"offset {offset} is past the end of the body of {key.message_id} ({total} bytes)"
            )
        cap = self._limits().max_frame_bytes
        length = min(length or cap, cap, total - offset)
        try:
            data = await with_retries(
                self.storage,
                lambda: self.storage.read_body(key, offset, length),
                f"read {key.prefix}",
            )
        except StorageNotFound:
            raise NotFound(f"body of message {key.message_id} is gone") from None
        return RangeRead(body.index.content_type, offset, data, total)

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
                frame = self._live_frame(sub, want)
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

    def _live_frame(self, sub: TailSubscription, want: int) -> list[ChunkLike]:
        limits = self._limits()
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
            async for frame in self.chunks_of(body, start, stop):
                if sub.cut_off is not None:
                    yield sub.cut_off
                    return
                yield ReadChunks(frame, live=False)
        except (StorageNotFound, Unavailable):
            if sub.cut_off is not None:
                yield sub.cut_off
                return
            raise

    async def chunks_of(
        self, body: LiveBody | FinishedBody, start: int, stop: int
    ) -> AsyncIterator[list[ChunkLike]]:
        """Durable chunks [start, stop) of a body, frame by frame."""
        while start < stop:
            if isinstance(body, LiveBody) and body.final is not None:
                body = FinishedBody(body.key, body.final)  # finished meanwhile: parts go
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
        limits = self._limits()
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
        data = await with_retries(
            self.storage,
            lambda: self.storage.read_body(
                body.key, begin_offset, table.offset_of(end) - begin_offset
            ),
            f"read {body.key.prefix}",
        )
        return _split(table, start, end, data, begin_offset)

    async def _live_stored_frame(self, body: LiveBody, start: int, stop: int) -> list[ChunkLike]:
        stop = min(stop, body.durable_count)
        end = self._frame_end(body.table, start, stop)
        parts_end = body.parts_end
        if start >= parts_end:  # the tail, in memory
            tail = body.tail
            return [tail[index - parts_end] for index in range(start, min(end, body.durable_count))]
        end = min(end, parts_end)
        batches = body.batches
        position = bisect.bisect_right(batches, start, key=lambda b: b.table.first_index) - 1
        needed: list[StoredBatch] = []
        while position < len(batches) and batches[position].table.first_index < end:
            needed.append(batches[position])
            position += 1

        async def read_one(batch: StoredBatch) -> bytes:
            return await with_retries(
                self.storage,
                lambda: self.storage.read_batch(body.key, batch),
                f"read {body.key.prefix}{batch.name}",
            )

        try:
            payloads = await asyncio.gather(*(read_one(batch) for batch in needed))
        except StorageNotFound:
            if body.final is not None:  # finished meanwhile, and its parts removed
                return await self._finished_frame(FinishedBody(body.key, body.final), start, stop)
            raise Unavailable(
                f"a stored part of message {body.key.message_id} is missing; read again"
            ) from None
        frame: list[ChunkLike] = []
        for batch, payload in zip(needed, payloads, strict=True):
            table = batch.table
            lo, hi = max(start, table.first_index), min(end, table.end_index)
            frame.extend(_split(table, lo, hi, payload, table.first_offset))
        return frame


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
