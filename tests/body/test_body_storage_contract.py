"""The BodyStorage contract, on Cloud Storage (fake-gcs-server) and on local files."""

from __future__ import annotations

import pytest

from tests.body.body_helpers import body_bytes, make_chunks
from voxmesh.body.body_storage import (
    BatchConflict,
    BodyIndex,
    BodyKey,
    BodyStorage,
    ChunkTable,
    LogWriter,
    SegmentEntry,
    StorageNotFound,
    StoredBatch,
    batch_chain,
    batch_name,
    decode_segment,
    encode_segment,
    parse_batch_name,
)

KEY = BodyKey("thread-1", "msg-1")


def _batch(first: int, count: int, offset: int, content_type: str = "audio/ogg") -> StoredBatch:
    chunks = make_chunks(count, first=first, start_offset=offset)
    table = ChunkTable(
        first, offset, [len(c.payload) for c in chunks], [c.media_time_ms for c in chunks]
    )
    return StoredBatch(table, content_type)


def _data(batch: StoredBatch) -> bytes:
    table = batch.table
    return body_bytes(make_chunks(table.count, first=table.first_index, start_offset=0))


async def test_nothing_stored_loads_as_none(storage: BodyStorage) -> None:
    assert await storage.load(KEY) is None


async def test_batches_are_new_objects_with_their_chunk_table(storage: BodyStorage) -> None:
    first = _batch(0, 3, 0)
    second = _batch(3, 2, first.table.end_offset)
    await storage.write_batch(KEY, first, _data(first))
    await storage.write_batch(KEY, second, _data(second))

    stored = await storage.load(KEY)
    assert stored is not None
    assert stored.index is None and stored.deleted_reason is None
    assert [b.name for b in stored.batches] == [batch_name(0, 2), batch_name(3, 4)]
    assert [b.table for b in stored.batches] == [first.table, second.table]
    assert stored.batches[0].content_type == "audio/ogg"
    assert await storage.read_batch(KEY, second) == _data(second)


async def test_a_batch_is_never_overwritten(storage: BodyStorage) -> None:
    batch = _batch(0, 3, 0)
    await storage.write_batch(KEY, batch, _data(batch))
    await storage.write_batch(KEY, batch, _data(batch))  # a retry: same bytes, fine
    with pytest.raises(BatchConflict):
        await storage.write_batch(KEY, batch, b"x" * len(_data(batch)))
    assert await storage.read_batch(KEY, batch) == _data(batch)


async def test_compose_many_batches_into_the_media_file(storage: BodyStorage) -> None:
    # 70 batches: more than two rounds of Cloud Storage's 32-source compose.
    batches, offset, expected = [], 0, b""
    for n in range(70):
        batch = _batch(n * 2, 2, offset)
        data = _data(batch)
        await storage.write_batch(KEY, batch, data)
        batches.append(batch)
        offset += len(data)
        expected += data
    await storage.compose(KEY, batches, "audio/ogg")
    table = ChunkTable(0, 0)
    for batch in batches:
        table.extend(batch.table)
    await storage.write_index(KEY, BodyIndex("COMPLETE", "audio/ogg", 2800, table))

    assert await storage.read_body(KEY, 0, len(expected)) == expected
    assert await storage.read_body(KEY, 100, 57) == expected[100:157]
    assert await storage.read_body(KEY, len(expected) - 5, 50) == expected[-5:]

    assert await storage.remove_batches(KEY) >= 70
    stored = await storage.load(KEY)
    assert stored is not None and stored.batches == []
    assert stored.index is not None
    assert stored.index.state == "COMPLETE" and stored.index.duration_ms == 2800
    assert stored.index.table == table
    assert await storage.read_body(KEY, 0, len(expected)) == expected


async def test_an_empty_body_composes_to_an_empty_object(storage: BodyStorage) -> None:
    await storage.compose(KEY, [], "audio/ogg")
    await storage.write_index(KEY, BodyIndex("ABANDONED", "audio/ogg", None, ChunkTable(0, 0)))
    stored = await storage.load(KEY)
    assert stored is not None and stored.index is not None
    assert stored.index.table.count == 0


async def test_delete_leaves_only_a_tombstone(storage: BodyStorage) -> None:
    batch = _batch(0, 3, 0)
    await storage.write_batch(KEY, batch, _data(batch))
    assert await storage.delete(KEY, "RECALLED") is True
    stored = await storage.load(KEY)
    assert stored is not None
    assert stored.deleted_reason == "RECALLED"
    assert stored.batches == [] and stored.index is None
    with pytest.raises(StorageNotFound):
        await storage.read_batch(KEY, batch)
    # Idempotent, and the first reason stays.
    assert await storage.delete(KEY, "DELETED") is False
    again = await storage.load(KEY)
    assert again is not None and again.deleted_reason == "RECALLED"


async def test_reading_a_missing_body_is_not_found(storage: BodyStorage) -> None:
    with pytest.raises(StorageNotFound):
        await storage.read_body(BodyKey("thread-1", "nothing"), 0, 10)


def test_batch_names_sort_by_index_and_parse_back() -> None:
    assert batch_name(7, 12) == "batches/0000000007-0000000012"
    assert parse_batch_name("0000000007-0000000012") == (7, 12)
    assert parse_batch_name("12-7") is None
    assert parse_batch_name(".tmp-abc") is None


def test_chunk_table_round_trips_compactly() -> None:
    table = ChunkTable(5, 1000, [160] * 256, [i * 20 for i in range(5, 261)])
    encoded = table.encode()
    assert ChunkTable.decode(encoded) == table
    assert len(encoded) < 8 * 1024 - 100  # fits Cloud Storage custom metadata
    assert table.offset_of(6) == 1160 and table.end_offset == 1000 + 160 * 256


def test_chain_takes_whole_batches_that_continue_each_other() -> None:
    def batch(first: int, last: int) -> StoredBatch:
        return StoredBatch(
            ChunkTable(first, first, [1] * (last - first + 1), [0] * (last - first + 1)), ""
        )

    # 0-4 and 0-9 overlap (a failover); only 0-4 continues into 5-20; 30-31 is unreachable.
    chain = batch_chain([batch(0, 9), batch(0, 4), batch(5, 20), batch(30, 31)])
    assert [(b.table.first_index, b.table.last_index) for b in chain] == [(0, 4), (5, 20)]
    assert batch_chain([batch(1, 3)]) == []


async def test_segments_are_create_only_listed_in_order_and_deleted(storage: BodyStorage) -> None:
    writer = LogWriter.new("body-test")
    other = LogWriter.new("body-test")  # the same node restarted: another epoch
    entry = SegmentEntry("thread-1", "msg-1", "audio/ogg", ChunkTable(0, 0, [3, 2], [0, 20]))
    data = encode_segment([(entry, [b"abc", b"de"])])
    for seq in (2, 0, 1, 10):
        await storage.write_segment(writer.segment(seq), data)
    await storage.write_segment(other.segment(0), data)
    await storage.write_segment(writer.segment(1), data)  # a retry: same bytes, fine
    with pytest.raises(BatchConflict):
        await storage.write_segment(writer.segment(1), data + b"x")
    assert await storage.list_segments(writer, 0) == [0, 1, 2, 10]
    assert await storage.list_segments(writer, 2) == [2, 10]
    assert await storage.list_segments(other, 0) == [0]
    [(decoded, payload)] = decode_segment(await storage.read_segment(writer.segment(10)))
    assert decoded == entry and bytes(payload) == b"abcde"
    await storage.delete_segments([writer.segment(0), writer.segment(2), writer.segment(99)])
    assert await storage.list_segments(writer, 0) == [1, 10]
    with pytest.raises(StorageNotFound):
        await storage.read_segment(writer.segment(0))


async def test_parts_keep_their_writer_and_log_position(storage: BodyStorage) -> None:
    writer = LogWriter.new("body-test")
    base = _batch(0, 3, 0)
    part = StoredBatch(base.table, base.content_type, writer.name, 42)
    await storage.write_batch(KEY, part, _data(part))
    stored = await storage.load(KEY)
    assert stored is not None
    [loaded] = stored.batches
    assert (loaded.writer, loaded.next_seq, loaded.table) == (writer.name, 42, part.table)
    assert LogWriter.parse(loaded.writer) == writer
    assert await storage.read_batch(KEY, loaded) == _data(part)


def test_a_segment_names_every_message_in_it() -> None:
    entries = [
        (
            SegmentEntry("t", f"m{n}", "audio/ogg", ChunkTable(n, n * 10, [n + 1], [n])),
            [bytes([65 + n]) * (n + 1)],
        )
        for n in range(5)
    ]
    decoded = decode_segment(encode_segment(entries))
    assert [e.message_id for e, _ in decoded] == [f"m{n}" for n in range(5)]
    assert [bytes(p) for _, p in decoded] == [bytes([65 + n]) * (n + 1) for n in range(5)]
    with pytest.raises(ValueError):
        decode_segment(encode_segment(entries)[:-1])
