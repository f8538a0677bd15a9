"""The body store's domain over each storage adapter: appends and durable acks, duplicates
and refusals, recovery by a restarted node, finishing, range reads, the live tail, deletes
and abandonment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
from prometheus_client import REGISTRY

from tests.body.body_helpers import (
    DelegatingStorage,
    FlakyStorage,
    GatedStorage,
    body_bytes,
    make_chunks,
)
from tests.body.conftest import DomainMaker, StorageFactory
from voxmesh.body.body_domain import BodyDomain
from voxmesh.body.body_model import (
    BodyState,
    ChunkLike,
    EndTotals,
    ReadChunks,
    ReadEnd,
    ReadEvent,
    ReadStat,
    StoredChunk,
)
from voxmesh.body.body_storage import BodyKey, BodyStorage, StoredBatch
from voxmesh.core.domain_errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
)

T, M = "thread-1", "msg-1"
OGG = "audio/ogg;codecs=opus"
WAIT = 10.0  # seconds: a generous bound on things that take milliseconds


def _totals(chunks: Sequence[StoredChunk]) -> EndTotals:
    return EndTotals(len(chunks), len(body_bytes(chunks)), len(chunks) * 20)


async def _collect(events: AsyncIterator[ReadEvent]) -> list[ReadEvent]:
    return [event async for event in events]


def _chunks_of(events: Sequence[ReadEvent]) -> list[ChunkLike]:
    return [c for e in events if isinstance(e, ReadChunks) for c in e.chunks]


async def _append_all(domain: BodyDomain, chunks: Sequence[StoredChunk], per_frame: int) -> None:
    for start in range(0, len(chunks), per_frame):
        await domain.append_durable(T, M, OGG, chunks[start : start + per_frame])


# -- appends and acks ---------------------------------------------------------------------


async def test_acks_come_only_once_the_batch_is_durable(
    make_domain: DomainMaker, storage_factory: StorageFactory
) -> None:
    gated = GatedStorage(storage_factory())
    domain = await make_domain(gated, group_commit_s=0.0)
    sink = domain.open_sink()
    chunks = make_chunks(3)
    await domain.append(T, M, OGG, chunks, sink)
    await asyncio.wait_for(gated.waiting.wait(), WAIT)  # the write is in flight, held
    assert sink.take() == [] and sink.outstanding
    assert (await domain.stat(T, M)).chunk_count == 0
    stored = await gated.inner.load(BodyKey(T, M))
    assert stored is None  # nothing in storage, so nothing acknowledged

    gated.gate.set()
    await asyncio.wait_for(sink.changed(), WAIT)
    [ack] = sink.take()
    assert (ack.message_id, ack.chunk_count, ack.size_bytes) == (M, 3, len(body_bytes(chunks)))
    assert not sink.outstanding
    stored = await gated.inner.load(BodyKey(T, M))
    assert stored is not None and [b.table.count for b in stored.batches] == [3]


async def test_chunks_arriving_together_are_one_group_commit(
    make_domain: DomainMaker, storage_factory: StorageFactory
) -> None:
    gated = GatedStorage(storage_factory())
    gated.gate.set()
    domain = await make_domain(gated, group_commit_s=0.2)
    chunks = make_chunks(12)
    sink = domain.open_sink()
    for chunk in chunks:  # one frame per chunk, as a router relays them
        await domain.append(T, M, OGG, [chunk], sink)
    while sink.outstanding:
        await asyncio.wait_for(sink.changed(), WAIT)
    assert gated.spans(M) == [(0, 11)]  # one commit (the message's first: a part)
    assert sink.take()[-1].chunk_count == 12


async def test_a_commit_is_cut_at_max_chunks_and_what_arrives_meanwhile_goes_next(
    make_domain: DomainMaker, storage_factory: StorageFactory
) -> None:
    gated = GatedStorage(storage_factory())
    domain = await make_domain(gated, group_commit_s=5.0, group_commit_max_chunks=4)
    chunks = make_chunks(10)
    sink = domain.open_sink()
    for chunk in chunks[:4]:
        await domain.append(T, M, OGG, [chunk], sink)
    await asyncio.wait_for(gated.waiting.wait(), WAIT)  # 4 chunks: written without the window
    for chunk in chunks[4:]:
        await domain.append(T, M, OGG, [chunk], sink)
    gated.gate.set()
    while sink.outstanding:
        await asyncio.wait_for(sink.changed(), WAIT)
    assert gated.spans(M) == [(0, 3), (4, 7), (8, 9)]


async def test_a_failed_write_is_retried_and_acked_once_stored(
    make_domain: DomainMaker, storage_factory: StorageFactory
) -> None:
    flaky = FlakyStorage(storage_factory(), failures=2)
    domain = await make_domain(flaky)
    chunks = make_chunks(5)
    position = await asyncio.wait_for(domain.append_durable(T, M, OGG, chunks), WAIT)
    assert position.chunk_count == 5 and flaky.attempts == 3
    stored = await flaky.inner.load(BodyKey(T, M))
    assert stored is not None and len(stored.batches) == 1


async def test_many_messages_commit_concurrently(make_domain: DomainMaker) -> None:
    domain = await make_domain()
    bodies = {f"msg-{n}": make_chunks(8, seed=f"s{n}") for n in range(20)}

    async def send(message_id: str, chunks: list[StoredChunk]) -> int:
        for start in range(0, 8, 2):
            position = await domain.append_durable(T, message_id, OGG, chunks[start : start + 2])
        return position.chunk_count

    counts = await asyncio.gather(*(send(m, c) for m, c in bodies.items()))
    assert counts == [8] * 20
    for message_id, chunks in bodies.items():
        await domain.finish(T, message_id, BodyState.COMPLETE, _totals(chunks))
        read = await domain.read_range(T, message_id, 0, 0)
        assert read.data == body_bytes(chunks)


async def test_a_body_waiting_for_a_write_slot_keeps_gathering_chunks(
    make_domain: DomainMaker, storage_factory: StorageFactory
) -> None:
    """With every write slot busy, a body's next batch is cut only when a slot frees up, so
    the chunks that arrived meanwhile make one write, not one each."""
    gated = GatedStorage(storage_factory())
    domain = await make_domain(gated, group_commit_s=0.0, max_concurrent_writes=1)
    sink = domain.open_sink()
    await domain.append(T, "msg-a", OGG, make_chunks(1, seed="a"), sink)
    await asyncio.wait_for(gated.waiting.wait(), WAIT)  # msg-a holds the only slot
    waiting = make_chunks(3, seed="b")
    for chunk in waiting:
        await domain.append(T, "msg-b", OGG, [chunk], sink)
        await asyncio.sleep(0.01)  # separate frames, each past the (zero) window
    assert gated.objects == []
    gated.gate.set()
    acked: dict[str, int] = {}
    while acked.get("msg-b") != 3 or acked.get("msg-a") != 1:
        await asyncio.wait_for(sink.changed(), WAIT)
        acked.update({ack.message_id: ack.chunk_count for ack in sink.take()})
    assert gated.spans("msg-a") == [(0, 0)]
    assert gated.spans("msg-b") == [(0, 2)]  # one write of chunks 0..2


# -- duplicates and refusals ---------------------------------------------------------------


async def test_resent_chunks_with_the_same_bytes_are_dropped(make_domain: DomainMaker) -> None:
    domain = await make_domain()
    chunks = make_chunks(8)
    await domain.append_durable(T, M, OGG, chunks[:5])
    position = await domain.append_durable(T, M, OGG, chunks[2:8])  # 2..4 again, then 5..7
    assert position.chunk_count == 8
    again = await domain.append_durable(T, M, OGG, chunks[6:8])  # all duplicates
    assert again.chunk_count == 8
    await domain.finish(T, M, BodyState.COMPLETE, _totals(chunks))
    assert (await domain.read_range(T, M, 0, 0)).data == body_bytes(chunks)


async def test_refused_frames_leave_no_trace(make_domain: DomainMaker) -> None:
    domain = await make_domain(max_chunk_bytes=100, max_message_bytes=400)
    chunks = make_chunks(8)  # 40..46 bytes each
    await domain.append_durable(T, M, OGG, chunks[:5])

    changed = StoredChunk(3, chunks[3].offset, chunks[3].media_time_ms, b"Z" * 41)
    with pytest.raises(InvalidArgument, match=f"chunk 3 of {M} was already stored with different"):
        await domain.append(T, M, OGG, [changed])
    with pytest.raises(InvalidArgument, match=r"chunk 6 .* gap: expected chunk 5"):
        await domain.append(T, M, OGG, chunks[6:8])
    big = StoredChunk(5, chunks[5].offset, 100, b"b" * 101)
    with pytest.raises(InvalidArgument, match="101 bytes; the limit is 100"):
        await domain.append(T, M, OGG, [big])
    wrong_offset = StoredChunk(5, chunks[5].offset + 1, 100, chunks[5].payload)
    with pytest.raises(InvalidArgument, match="offset"):
        await domain.append(T, M, OGG, [wrong_offset])
    # A good chunk followed by a bad one in the same frame: neither is taken.
    with pytest.raises(InvalidArgument):
        await domain.append(
            T, M, OGG, [chunks[5], StoredChunk(6, chunks[6].offset, 120, b"b" * 101)]
        )
    assert (await domain.stat(T, M)).chunk_count == 5
    # Over the body limit (400 bytes): refused whole.
    more = make_chunks(6, first=5, start_offset=chunks[5].offset)
    with pytest.raises(InvalidArgument, match="the limit is 400"):
        await domain.append(T, M, OGG, more)

    position = await domain.append_durable(T, M, OGG, chunks[5:8])  # continues where it was
    assert position.chunk_count == 8
    await domain.finish(T, M, BodyState.COMPLETE, _totals(chunks))
    assert (await domain.read_range(T, M, 0, 0)).data == body_bytes(chunks)


async def test_the_first_frame_needs_a_content_type_and_ids_are_checked(
    make_domain: DomainMaker,
) -> None:
    domain = await make_domain()
    with pytest.raises(InvalidArgument, match="content_type is required"):
        await domain.append(T, M, "", make_chunks(1))
    with pytest.raises(InvalidArgument, match="message_id"):
        await domain.append(T, "../x", OGG, make_chunks(1))
    await domain.append_durable(T, M, OGG, make_chunks(1))
    with pytest.raises(InvalidArgument, match=f"belongs to thread {T}"):
        await domain.append("thread-2", M, OGG, make_chunks(1))


# -- recovery --------------------------------------------------------------------------------


async def test_a_restarted_node_recovers_the_durable_position_from_storage(
    make_domain: DomainMaker, storage_factory: StorageFactory
) -> None:
    chunks = make_chunks(14)
    before = await make_domain()
    await _append_all(before, chunks[:10], per_frame=3)  # batches 0-2, 3-5, 6-8, 9

    after = await make_domain(storage_factory())  # a new node over the same storage
    status = await after.stat(T, M)
    assert (status.state, status.chunk_count) == (BodyState.LIVE, 10)
    # The sender resumes from its first unacknowledged chunk: 8 and 9 are dropped, checked
    # against the stored bytes, which this node never had in memory.
    changed = StoredChunk(8, chunks[8].offset, chunks[8].media_time_ms, b"?" * 41)
    with pytest.raises(InvalidArgument, match=r"chunk 8 .* different bytes"):
        await after.append(T, M, OGG, [changed])
    position = await after.append_durable(T, M, "", chunks[8:14])
    assert position.chunk_count == 14
    await after.finish(T, M, BodyState.COMPLETE, _totals(chunks))
    assert (await after.read_range(T, M, 0, 0)).data == body_bytes(chunks)
    assert _chunks_of(await _collect(after.read(T, M))) == chunks


# -- finishing -------------------------------------------------------------------------------


async def test_finish_composes_a_byte_identical_media_file(
    make_domain: DomainMaker, storage_factory: StorageFactory
) -> None:
    domain = await make_domain(group_commit_max_chunks=1)
    chunks = make_chunks(45, size=50)
    await domain.append_durable(T, M, OGG, chunks)  # 45 batches of one chunk
    status = await domain.finish(T, M, BodyState.COMPLETE, _totals(chunks))
    assert (status.state, status.chunk_count, status.duration_ms) == (
        BodyState.COMPLETE,
        45,
        900,
    )
    await domain.settle()  # batch clean-up
    stored = await domain.storage.load(BodyKey(T, M))
    assert stored is not None and stored.batches == [] and stored.index is not None

    # Whole file, chunk-indexed reads and ranges, also from a node that starts afresh.
    fresh = await make_domain(storage_factory())
    for node in (domain, fresh):
        assert (await node.read_range(T, M, 0, 0)).data == body_bytes(chunks)
        events = await _collect(node.read(T, M, from_index=40))
        assert isinstance(events[0], ReadStat) and events[0].status.chunk_count == 45
        assert _chunks_of(events) == chunks[40:]
        assert events[-1] == ReadEnd(BodyState.COMPLETE, 45, len(body_bytes(chunks)), 900)


async def test_finish_checks_totals_and_is_idempotent(make_domain: DomainMaker) -> None:
    domain = await make_domain()
    chunks = make_chunks(6)
    await domain.append_durable(T, M, OGG, chunks[:4])
    with pytest.raises(FailedPrecondition, match=r"chunks 4\.\.5 are missing"):
        await domain.finish(T, M, BodyState.COMPLETE, _totals(chunks))
    with pytest.raises(InvalidArgument, match="with 3 chunks: 4 chunks arrived"):
        await domain.finish(T, M, BodyState.COMPLETE, _totals(chunks[:3]))
    await domain.append_durable(T, M, OGG, chunks[4:])
    first = await domain.finish(T, M, BodyState.COMPLETE, _totals(chunks))
    assert await domain.finish(T, M, BodyState.COMPLETE, _totals(chunks)) == first
    assert await domain.finish(T, M, BodyState.ABANDONED, None) == first
    with pytest.raises(FailedPrecondition, match="already complete"):
        await domain.append(T, M, OGG, make_chunks(1, first=6, start_offset=first.size_bytes))


async def test_abandoned_keeps_what_arrived(make_domain: DomainMaker) -> None:
    domain = await make_domain()
    with pytest.raises(NotFound, match="no chunk arrived"):
        await domain.finish(T, "msg-nothing", BodyState.ABANDONED, None)
    empty = await domain.finish(T, "msg-empty", BodyState.COMPLETE, EndTotals(0, None, None))
    assert (empty.state, empty.chunk_count) == (BodyState.COMPLETE, 0)
    chunks = make_chunks(3)
    await domain.append_durable(T, M, OGG, chunks)
    status = await domain.finish(T, M, BodyState.ABANDONED, None)
    assert (status.state, status.chunk_count) == (BodyState.ABANDONED, 3)
    assert (await domain.read_range(T, M, 0, 0)).data == body_bytes(chunks)


async def test_range_reads(make_domain: DomainMaker) -> None:
    domain = await make_domain()
    chunks = make_chunks(10)
    whole = body_bytes(chunks)
    await domain.append_durable(T, M, OGG, chunks)
    with pytest.raises(FailedPrecondition, match="still live"):
        await domain.read_range(T, M, 0, 10)
    await domain.finish(T, M, BodyState.COMPLETE, _totals(chunks))
    read = await domain.read_range(T, M, 17, 33)
    assert (read.data, read.offset, read.total_size_bytes) == (whole[17:50], 17, len(whole))
    assert read.content_type == OGG
    assert (await domain.read_range(T, M, len(whole) - 3, 100)).data == whole[-3:]
    with pytest.raises(OutOfRange, match=f"past the end .* \\({len(whole)} bytes\\)"):
        await domain.read_range(T, M, len(whole), 1)
    with pytest.raises(OutOfRange):
        await _collect(domain.read(T, M, from_index=11))
    with pytest.raises(NotFound):
        await domain.read_range(T, "msg-unknown", 0, 1)


# -- the live tail ---------------------------------------------------------------------------


async def test_live_readers_follow_without_gap_or_duplicate(make_domain: DomainMaker) -> None:
    domain = await make_domain()
    chunks = make_chunks(60)
    await domain.append_durable(T, M, OGG, chunks[:5])

    early = asyncio.create_task(_collect(domain.read(T, M)))
    edge_events = domain.read(T, M, from_live_edge=True)
    edge_stat = await anext(edge_events)
    assert isinstance(edge_stat, ReadStat) and edge_stat.status.live_edge_index == 4
    edge = asyncio.create_task(_collect(edge_events))
    for start in range(5, 30, 5):
        await domain.append_durable(T, M, OGG, chunks[start : start + 5])

    late = asyncio.create_task(_collect(domain.read(T, M)))  # joins mid-message
    resumed = asyncio.create_task(_collect(domain.read(T, M, from_index=17)))
    for start in range(30, 60, 3):
        await domain.append(T, M, OGG, chunks[start : start + 3])  # not waiting: a live sender
    await domain.finish(T, M, BodyState.COMPLETE, _totals(chunks))

    results = await asyncio.wait_for(asyncio.gather(early, late, resumed, edge), WAIT)
    for events, first in zip(results, (0, 0, 17, 4), strict=True):
        got = _chunks_of(events)
        assert [c.index for c in got] == list(range(first, 60))
        assert body_bytes(got) == body_bytes(chunks[first:])
        assert events[-1] == ReadEnd(BodyState.COMPLETE, 60, len(body_bytes(chunks)), 1200)
    assert any(isinstance(e, ReadChunks) and e.live for e in results[1])
    assert isinstance(results[1][0], ReadStat) and results[1][0].status.state is BodyState.LIVE


class _CountingReads(DelegatingStorage):
    def __init__(self, inner: BodyStorage) -> None:
        super().__init__(inner)
        self.batch_reads = 0

    async def read_batch(self, key: BodyKey, batch: StoredBatch) -> bytes:
        self.batch_reads += 1
        return await self.inner.read_batch(key, batch)


def _lagging_count() -> float:
    return REGISTRY.get_sample_value("voxmesh_body_readers_lagging_total") or 0.0


async def test_a_slow_reader_never_holds_the_writer_and_catches_up(
    make_domain: DomainMaker, storage_factory: StorageFactory
) -> None:
    counting = _CountingReads(storage_factory())
    domain = await make_domain(counting, max_chunk_bytes=65536)
    lagged_before = _lagging_count()
    chunks = [
        StoredChunk(i, i * 60_000, i * 20, bytes([i % 251]) * 60_000) for i in range(40)
    ]  # 2.4 MB: beyond the tail queue (1 MiB) and the recent cache (2 MiB)
    await domain.append_durable(T, M, OGG, chunks[:1])
    slow = domain.read(T, M)
    assert isinstance(await anext(slow), ReadStat)  # subscribed, then not reading for a while
    for chunk in chunks[1:]:
        await asyncio.wait_for(domain.append_durable(T, M, OGG, [chunk]), WAIT)

    async def until_last_chunk() -> list[ReadEvent]:
        events: list[ReadEvent] = []
        async for event in slow:
            events.append(event)
            if isinstance(event, ReadChunks) and event.chunks[-1].index == 39:
                return events
        raise AssertionError(f"the read ended early: {events[-1]}")

    events = await asyncio.wait_for(until_last_chunk(), WAIT)  # caught up while still live
    await domain.finish(T, M, BodyState.COMPLETE, _totals(chunks))
    events += await asyncio.wait_for(_collect(slow), WAIT)
    got = _chunks_of(events)
    assert [c.index for c in got] == list(range(40))
    assert body_bytes(got) == body_bytes(chunks)
    assert isinstance(events[-1], ReadEnd) and events[-1].state is BodyState.COMPLETE
    # It fell behind, dropped back to stored chunks (older than the in-memory cache), caught up.
    assert _lagging_count() > lagged_before
    assert counting.batch_reads > 0
    assert any(isinstance(e, ReadChunks) and not e.live and e.chunks[0].index > 0 for e in events)


async def test_delete_cuts_live_readers_off_and_stays_deleted(
    make_domain: DomainMaker, storage_factory: StorageFactory
) -> None:
    domain = await make_domain()
    chunks = make_chunks(5)
    await domain.append_durable(T, M, OGG, chunks[:3])
    reader = domain.read(T, M)
    assert isinstance(await anext(reader), ReadStat)
    following = asyncio.create_task(_collect(reader))
    stored_only = await _collect(domain.read(T, M, stored_only=True))
    assert _chunks_of(stored_only) == chunks[:3]
    assert stored_only[-1] == ReadEnd(BodyState.LIVE, 3, len(body_bytes(chunks[:3])), None)

    assert await domain.delete(T, M, BodyState.RECALLED) == (True, 1)
    events = await asyncio.wait_for(following, WAIT)
    assert events[-1] == ReadEnd(BodyState.RECALLED, 0, 0, None)
    assert (await domain.stat(T, M)).state is BodyState.RECALLED
    with pytest.raises(FailedPrecondition, match="was recalled"):
        await domain.append(T, M, OGG, chunks[3:])
    assert await domain.delete(T, M, BodyState.RECALLED) == (False, 0)

    restarted = await make_domain(storage_factory())
    assert (await restarted.stat(T, M)).state is BodyState.RECALLED
    with pytest.raises(FailedPrecondition, match="was recalled"):
        await restarted.append(T, M, OGG, chunks[3:])
    assert _chunks_of(await _collect(restarted.read(T, M))) == []


async def test_a_silent_sender_is_abandoned(make_domain: DomainMaker) -> None:
    domain = await make_domain(abandon_after_s=0.3)
    chunks = make_chunks(4)
    await domain.append_durable(T, M, OGG, chunks)
    events = await asyncio.wait_for(_collect(domain.read(T, M)), WAIT)  # ends by itself
    assert _chunks_of(events) == chunks
    assert events[-1] == ReadEnd(BodyState.ABANDONED, 4, len(body_bytes(chunks)), None)
    assert (await domain.stat(T, M)).state is BodyState.ABANDONED
    with pytest.raises(FailedPrecondition, match="already abandoned"):
        await domain.append(T, M, OGG, chunks)
    # The end frame comes after all, with every chunk: complete.
    status = await domain.finish(T, M, BodyState.COMPLETE, _totals(chunks))
    assert (status.state, status.duration_ms) == (BodyState.COMPLETE, 80)
