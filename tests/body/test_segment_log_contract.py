"""The body node's shared log, over each storage adapter: one segment per commit window for
every live message, parts, segments deleted once parted, and a node taking a message over
finding its durable chunks in the previous node's segments (bounded by the last part)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from tests.body.body_helpers import GatedStorage, body_bytes, make_chunks
from tests.body.conftest import DomainMaker, StorageFactory
from voxmesh.body.body_domain import BodyDomain
from voxmesh.body.body_model import (
    BodyState,
    ChunkLike,
    EndTotals,
    ReadChunks,
    ReadEvent,
    StoredChunk,
)
from voxmesh.body.body_storage import BodyKey, BodyStorage, ChunkTable, batch_chain
from voxmesh.body.segment_log import recover_tail
from voxmesh.core.domain_errors import FailedPrecondition

T = "thread-1"
OGG = "audio/ogg;codecs=opus"
WAIT = 10.0


def _totals(chunks: Sequence[StoredChunk]) -> EndTotals:
    return EndTotals(len(chunks), len(body_bytes(chunks)), len(chunks) * 20)


async def _collect(events: AsyncIterator[ReadEvent]) -> list[ChunkLike]:
    return [c async for e in events if isinstance(e, ReadChunks) for c in e.chunks]


async def _send(domain: BodyDomain, message_id: str, chunks: Sequence[StoredChunk]) -> None:
    for chunk in chunks:  # one frame per chunk, as a router relays them
        await domain.append_durable(T, message_id, OGG, [chunk])


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        await asyncio.sleep(0.02)


async def test_one_segment_per_window_holds_every_live_message(
    make_domain: DomainMaker, storage_factory: StorageFactory
) -> None:
    gated = GatedStorage(storage_factory())
    gated.gate.set()
    domain = await make_domain(gated, group_commit_s=0.1)
    messages = [f"msg-{n}" for n in range(10)]
    bodies = {m: make_chunks(4, seed=m) for m in messages}
    # The first commit of each message is its part (the node's claim on it).
    await asyncio.gather(*(domain.append_durable(T, m, OGG, bodies[m][:1]) for m in messages))
    assert {w[0] for w in gated.writes} == {"part"}
    before = len(gated.objects)
    sink = domain.open_sink()
    for index in range(1, 4):  # every message's next chunks, within one window
        for m in messages:
            await domain.append(T, m, OGG, [bodies[m][index]], sink)
    acked: dict[str, int] = {}
    while any(acked.get(m) != 4 for m in messages):
        await asyncio.wait_for(sink.changed(), WAIT)
        acked.update({a.message_id: a.chunk_count for a in sink.take()})
    [segment] = gated.objects[before:]  # one object write for 30 chunks of 10 messages
    assert sorted(segment) == sorted(("segment", m, 1, 3) for m in messages)


async def test_a_node_taking_over_finds_the_chunks_in_the_previous_nodes_segments(
    make_domain: DomainMaker, storage_factory: StorageFactory
) -> None:
    chunks = make_chunks(30)
    first = await make_domain()
    await _send(first, "msg-1", chunks[:20])  # a part (0), then segments (1..19)
    assert [b.table.count for b in first._live["msg-1"].batches] == [1]

    second = await make_domain(storage_factory())  # the next node of the message's list
    status = await second.stat(T, "msg-1")
    assert (status.state, status.chunk_count) == (BodyState.LIVE, 20)
    assert status.size_bytes == len(body_bytes(chunks[:20]))
    got = await _collect(second.read(T, "msg-1", stored_only=True))
    assert [c.index for c in got] == list(range(20)) and body_bytes(got) == body_bytes(chunks[:20])
    # The router resends from its first unacknowledged chunk: duplicates are dropped.
    position = await second.append_durable(T, "msg-1", OGG, chunks[18:30])
    assert position.chunk_count == 30
    await second.finish(T, "msg-1", BodyState.COMPLETE, _totals(chunks))
    assert (await second.read_range(T, "msg-1", 0, 0)).data == body_bytes(chunks)

    third = await make_domain(storage_factory())
    assert (await third.stat(T, "msg-1")).state is BodyState.COMPLETE


async def test_a_chain_of_takeovers_loses_nothing(
    make_domain: DomainMaker, storage_factory: StorageFactory
) -> None:
    chunks = make_chunks(30)
    nodes = [await make_domain(storage_factory()) for _ in range(3)]
    for n, node in enumerate(nodes):  # each node takes 10 chunks, then "dies" (is left)
        await _send(node, "msg-1", chunks[n * 10 : n * 10 + 10])
    last = await make_domain(storage_factory())
    status = await last.stat(T, "msg-1")
    assert status.chunk_count == 30
    await last.finish(T, "msg-1", BodyState.COMPLETE, _totals(chunks))
    assert (await last.read_range(T, "msg-1", 0, 0)).data == body_bytes(chunks)


async def test_segments_go_once_every_message_in_them_is_parted_or_final(
    make_domain: DomainMaker, storage_factory: StorageFactory
) -> None:
    storage = storage_factory()
    domain = await make_domain(storage, part_interval_s=0.2)
    writer = domain.log.writer
    live, done = make_chunks(8, seed="live"), make_chunks(8, seed="done")
    await asyncio.gather(_send(domain, "msg-live", live), _send(domain, "msg-done", done))
    assert await storage.list_segments(writer, 0)
    await domain.finish(T, "msg-done", BodyState.COMPLETE, _totals(done))

    async def all_gone() -> bool:
        return not await storage.list_segments(writer, 0) and domain.log.segments_alive == 0

    # msg-live is still live: its tail gets a part after part_interval_s, freeing the rest.
    await _eventually(all_gone, "every segment deleted")
    assert (await domain.stat(T, "msg-live")).state is BodyState.LIVE
    # A node taking msg-live over now needs its parts alone.
    other = await make_domain(storage_factory())
    assert (await other.stat(T, "msg-live")).chunk_count == 8
    assert body_bytes(await _collect(other.read(T, "msg-live", stored_only=True))) == body_bytes(
        live
    )


async def test_recovery_reads_only_the_segments_since_the_last_part(
    make_domain: DomainMaker, storage_factory: StorageFactory
) -> None:
    storage = storage_factory()
    domain = await make_domain(storage, part_interval_s=0.3, group_commit_s=0.001)
    chunks = make_chunks(40, size=8)
    noise = make_chunks(400, seed="noise", size=8)
    await _send(domain, "msg-1", chunks[:20])
    await asyncio.sleep(0.5)  # past part_interval_s: the tail goes into a part
    await _send(domain, "msg-1", chunks[20:25])
    await _send(domain, "noise", noise)  # other messages keep the log busy
    key = BodyKey(T, "msg-1")

    async def parted() -> bool:
        stored = await storage.load(key)
        return stored is not None and len(stored.batches) >= 2

    await _eventually(parted, "a second part")
    stored = await storage.load(key)
    assert stored is not None
    chain = batch_chain(stored.batches)
    table = ChunkTable(0, 0)
    for part in chain:
        table.extend(part.table)
    began = time.perf_counter()
    tail = await recover_tail(storage, key, stored.batches, table.end_index, table.end_offset)
    took = time.perf_counter() - began
    assert table.end_index + len(tail.chunks) == 25
    # Recovery lists the segments from the last part's ``next_seq`` on; those before it are
    # never read (the garbage collector may delete more of them meanwhile: that only lowers
    # what is read).
    written = domain.log.segments_written
    since_part = written - max(part.next_seq for part in stored.batches)
    print(
        f"recovered {len(tail.chunks)} chunks reading {tail.segments_read} segments in "
        f"{took * 1000:.1f} ms ({written} segments written, {since_part} after the last part)"
    )
    assert tail.segments_read <= since_part < written


async def test_a_recalled_message_stays_recalled_while_segments_still_hold_it(
    make_domain: DomainMaker, storage_factory: StorageFactory
) -> None:
    chunks = make_chunks(6)
    first = await make_domain()
    await _send(first, "msg-1", chunks)
    await _send(first, "msg-2", make_chunks(6, seed="b"))  # keeps segments alive
    await first.delete(T, "msg-1", BodyState.RECALLED)
    second = await make_domain(storage_factory())
    assert (await second.stat(T, "msg-1")).state is BodyState.RECALLED
    with pytest.raises(FailedPrecondition, match="recalled"):
        await second.append(T, "msg-1", OGG, make_chunks(1, first=6))


async def test_recovery_time_is_bounded_by_the_segments_since_the_last_part(
    make_domain: DomainMaker, storage: BodyStorage
) -> None:
    """A node dies holding 20 live messages that each sent 15 chunks since their part (300
    segments of its log): a node taking one over lists and reads them (measured)."""
    domain = await make_domain(storage, part_interval_s=600.0, group_commit_s=0.0)
    bodies = {f"msg-{n}": make_chunks(16, seed=f"s{n}", size=20) for n in range(20)}
    for index in range(16):
        for message_id, chunks in bodies.items():
            await domain.append_durable(T, message_id, OGG, [chunks[index]])
    written = len(await storage.list_segments(domain.log.writer, 0))
    key = BodyKey(T, "msg-7")
    stored = await storage.load(key)
    assert stored is not None
    [part] = stored.batches
    began = time.perf_counter()
    tail = await recover_tail(
        storage, key, stored.batches, part.table.end_index, part.table.end_offset
    )
    took = time.perf_counter() - began
    assert [c.index for c in tail.chunks] == list(range(1, 16))
    assert body_bytes(tail.chunks) == body_bytes(bodies["msg-7"][1:])
    print(
        f"\nrecovery: {tail.segments_read} segments read ({written} written) in "
        f"{took * 1000:.0f} ms on {storage.description}"
    )
    assert took < WAIT
