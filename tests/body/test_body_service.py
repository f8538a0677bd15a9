"""BodyService on a real grpc.aio server (build_runner, port 0), over a real channel, on
Cloud Storage (fake-gcs-server) and on local files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.mesh_pki import mesh_channel, tls_overrides
from voxmesh.body.v1 import body_service_pb2 as pb
from voxmesh.body.v1 import body_service_pb2_grpc as pb_grpc
from voxmesh.common.v1 import body_pb2 as body_pb
from voxmesh.common.v1 import message_pb2 as message_pb
from voxmesh.core.service_runner import ServiceRunner
from voxmesh.core.settings import Settings, load_settings
from voxmesh.service_registry import build_runner

EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # not in grpc-stubs
T = "thread-9"
OGG = "audio/ogg;codecs=opus"
WAIT = 10.0


def _chunks(count: int, first: int = 0, offset: int = 0, seed: str = "x") -> list[body_pb.Chunk]:
    chunks = []
    for index in range(first, first + count):
        payload = f"[{seed}{index}]".encode() * (5 + index % 3)
        chunks.append(
            body_pb.Chunk(index=index, offset=offset, media_time_ms=index * 20, payload=payload)
        )
        offset += len(payload)
    return chunks


def _bytes(chunks: Sequence[body_pb.Chunk]) -> bytes:
    return b"".join(c.payload for c in chunks)


def _end(chunks: Sequence[body_pb.Chunk]) -> message_pb.MessageEnd:
    return message_pb.MessageEnd(chunk_count=len(chunks), size_bytes=len(_bytes(chunks)))


@pytest.fixture
async def body_service(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[pb_grpc.BodyServiceAsyncStub]:
    overrides: dict[str, Any] = {"body_store": {"group_commit_ms": 5, "read_batch_max_chunks": 4}}
    if backend == "gcs":
        emulators: Settings = request.getfixturevalue("google_emulators")
        bucket: str = request.getfixturevalue("gcs_bucket")
        overrides["gcs"] = {"port": emulators.gcs.port, "bucket": bucket}
    else:
        overrides["stores"] = {"backend": "embedded", "files_root": str(tmp_path / "files")}
    settings = load_settings(environ={}, overrides={**overrides, **tls_overrides()})
    runner: ServiceRunner = build_runner("body", settings, port=0, metrics_port=0)
    await runner.start()
    try:
        async with mesh_channel(settings, runner.internal_address, "body", "router") as channel:
            yield pb_grpc.BodyServiceStub(channel)
    finally:
        await runner.drain(grace_s=0)


async def test_append_stream_acks_durable_chunks_of_many_messages(
    body_service: pb_grpc.BodyServiceAsyncStub,
) -> None:
    a, b = _chunks(5, seed="a"), _chunks(3, seed="b")
    frames = [
        pb.AppendChunksRequest(thread_id=T, message_id="m-a", content_type=OGG, chunks=a[:2]),
        pb.AppendChunksRequest(thread_id=T, message_id="m-b", content_type=OGG, chunks=b),
        pb.AppendChunksRequest(thread_id=T, message_id="m-a", chunks=a[2:]),
        pb.AppendChunksRequest(thread_id=T, message_id="m-a", chunks=a[3:]),  # resent: dropped
    ]
    call = body_service.AppendChunks()  # type: ignore[call-arg]  # stubs: iterator required
    for frame in frames:
        await call.write(frame)
    latest: dict[str, body_pb.DurableAck] = {}
    while latest.get("m-a", body_pb.DurableAck()).durable_chunk_count < 5 or "m-b" not in latest:
        response = await asyncio.wait_for(call.read(), WAIT)
        assert isinstance(response, pb.AppendChunksResponse)
        names = [ack.message_id for ack in response.acks]
        assert len(names) == len(set(names))  # one ack per message per frame
        latest.update({ack.message_id: ack for ack in response.acks})
    await call.done_writing()
    while (await asyncio.wait_for(call.read(), WAIT)) is not EOF:
        pass
    assert await call.code() == grpc.StatusCode.OK
    assert (latest["m-a"].durable_chunk_count, latest["m-a"].durable_size_bytes) == (
        5,
        len(_bytes(a)),
    )
    assert (latest["m-b"].thread_id, latest["m-b"].durable_chunk_count) == (T, 3)
    stat = await body_service.StatBody(pb.StatBodyRequest(thread_id=T, message_id="m-b"))
    assert (stat.stat.state, stat.stat.chunk_count, stat.stat.live_edge_index) == (
        message_pb.MESSAGE_STATE_LIVE,
        3,
        2,
    )


async def test_one_link_carries_many_messages_and_a_refusal_stops_only_its_own(
    body_service: pb_grpc.BodyServiceAsyncStub,
) -> None:
    """AppendLink: entries of many messages per frame, coalesced acks; a refused entry is
    answered with a refusal naming its message and the link and the others go on."""
    a, b, c = _chunks(6, seed="a"), _chunks(4, seed="b"), _chunks(3, seed="c")
    call = body_service.AppendLink()  # type: ignore[call-arg]  # stubs: iterator required

    def entry(message: str, chunks: Sequence[body_pb.Chunk], first: bool) -> pb.AppendEntry:
        return pb.AppendEntry(
            thread_id=T, message_id=message, content_type=OGG if first else "", chunks=chunks
        )

    await call.write(
        pb.AppendLinkRequest(
            entries=[entry("l-a", a[:3], True), entry("l-b", b[:2], True), entry("l-c", c, True)]
        )
    )
    await call.write(
        pb.AppendLinkRequest(
            entries=[
                entry("l-b", b[3:], False),  # gap: chunk 2 missing
                entry("l-a", a[3:], False),
                entry("l-a", a[4:], False),  # resent: dropped
            ]
        )
    )
    latest: dict[str, int] = {}
    refusals: list[pb.EntryRefusal] = []
    while latest.get("l-a", 0) < 6 or latest.get("l-c", 0) < 3 or not refusals:
        response = await asyncio.wait_for(call.read(), WAIT)
        assert isinstance(response, pb.AppendLinkResponse)
        names = [ack.message_id for ack in response.acks]
        assert len(names) == len(set(names))  # one ack per message per frame
        latest.update({ack.message_id: ack.durable_chunk_count for ack in response.acks})
        refusals += response.refusals
    assert [(r.message_id, r.code) for r in refusals] == [
        ("l-b", grpc.StatusCode.INVALID_ARGUMENT.value[0])
    ]
    assert "gap" in refusals[0].message
    await call.write(pb.AppendLinkRequest(entries=[entry("l-b", b[2:], False)]))  # corrected
    while latest.get("l-b", 0) < 4:
        response = await asyncio.wait_for(call.read(), WAIT)
        assert isinstance(response, pb.AppendLinkResponse)
        latest.update({ack.message_id: ack.durable_chunk_count for ack in response.acks})
    await call.done_writing()
    while (await asyncio.wait_for(call.read(), WAIT)) is not EOF:
        pass
    assert await call.code() == grpc.StatusCode.OK
    for message, chunks in (("l-a", a), ("l-b", b), ("l-c", c)):
        finished = await body_service.FinishBody(
            pb.FinishBodyRequest(
                thread_id=T,
                message_id=message,
                final_state=message_pb.MESSAGE_STATE_COMPLETE,
                end=_end(chunks),
            )
        )
        assert finished.stat.size_bytes == len(_bytes(chunks))
        body = await body_service.ReadRange(pb.ReadRangeRequest(thread_id=T, message_id=message))
        assert body.data == _bytes(chunks)


async def test_read_chunks_follows_a_live_body_to_its_end(
    body_service: pb_grpc.BodyServiceAsyncStub,
) -> None:
    chunks = _chunks(14)
    first = await body_service.AppendChunksBatch(
        pb.AppendChunksBatchRequest(
            thread_id=T, message_id="m-r", content_type=OGG, chunks=chunks[:6]
        )
    )
    assert first.ack.durable_chunk_count == 6
    reader = body_service.ReadChunks(pb.ReadChunksRequest(thread_id=T, message_id="m-r"))
    stat = await asyncio.wait_for(reader.read(), WAIT)
    assert isinstance(stat, pb.ReadChunksResponse) and stat.WhichOneof("event") == "stat"
    assert (stat.stat.state, stat.stat.content_type) == (message_pb.MESSAGE_STATE_LIVE, OGG)
    await body_service.AppendChunksBatch(
        pb.AppendChunksBatchRequest(thread_id=T, message_id="m-r", chunks=chunks[6:])
    )
    finished = await body_service.FinishBody(
        pb.FinishBodyRequest(
            thread_id=T,
            message_id="m-r",
            final_state=message_pb.MESSAGE_STATE_COMPLETE,
            end=_end(chunks),
        )
    )
    assert finished.stat.state == message_pb.MESSAGE_STATE_COMPLETE

    frames = await _rest(reader)
    got = [c for f in frames if f.WhichOneof("event") == "chunks" for c in f.chunks.chunks]
    assert [c.index for c in got] == list(range(14))
    assert _bytes(got) == _bytes(chunks)
    assert all(len(f.chunks.chunks) <= 4 for f in frames if f.WhichOneof("event") == "chunks")
    assert frames[-1].WhichOneof("event") == "end"
    assert (frames[-1].end.state, frames[-1].end.chunk_count) == (
        message_pb.MESSAGE_STATE_COMPLETE,
        14,
    )
    whole = await body_service.ReadRange(pb.ReadRangeRequest(thread_id=T, message_id="m-r"))
    assert (whole.data, whole.content_type, whole.total_size_bytes) == (
        _bytes(chunks),
        OGG,
        len(_bytes(chunks)),
    )


async def test_delete_cuts_a_reader_off(body_service: pb_grpc.BodyServiceAsyncStub) -> None:
    await body_service.AppendChunksBatch(
        pb.AppendChunksBatchRequest(
            thread_id=T, message_id="m-d", content_type=OGG, chunks=_chunks(2)
        )
    )
    reader = body_service.ReadChunks(
        pb.ReadChunksRequest(thread_id=T, message_id="m-d", origin=body_pb.READ_ORIGIN_LIVE_EDGE)
    )
    stat = await asyncio.wait_for(reader.read(), WAIT)
    assert isinstance(stat, pb.ReadChunksResponse) and stat.WhichOneof("event") == "stat"
    edge = await asyncio.wait_for(reader.read(), WAIT)
    assert isinstance(edge, pb.ReadChunksResponse)
    assert [c.index for c in edge.chunks.chunks] == [1]  # the live edge
    deleted = await body_service.DeleteBody(
        pb.DeleteBodyRequest(
            thread_id=T, message_id="m-d", reason=message_pb.MESSAGE_STATE_RECALLED
        )
    )
    assert (deleted.deleted, deleted.readers_cut_off) == (True, 1)
    last = await asyncio.wait_for(reader.read(), WAIT)
    assert isinstance(last, pb.ReadChunksResponse)
    assert last.end.state == message_pb.MESSAGE_STATE_RECALLED
    assert await reader.code() == grpc.StatusCode.OK


async def _rest(reader: Any) -> list[pb.ReadChunksResponse]:
    frames = []
    while (frame := await asyncio.wait_for(reader.read(), WAIT)) is not EOF:
        frames.append(frame)
    return frames


async def _status(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value.code(), refused.value.details() or ""


async def test_refusals_have_precise_statuses(body_service: pb_grpc.BodyServiceAsyncStub) -> None:
    chunks = _chunks(4)
    await body_service.AppendChunksBatch(
        pb.AppendChunksBatchRequest(
            thread_id=T, message_id="m-e", content_type=OGG, chunks=chunks[:2]
        )
    )
    code, details = await _status(
        body_service.AppendChunksBatch(
            pb.AppendChunksBatchRequest(thread_id=T, message_id="m-e", chunks=chunks[3:])
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "expected chunk 2" in details
    code, details = await _status(
        body_service.FinishBody(
            pb.FinishBodyRequest(
                thread_id=T,
                message_id="m-e",
                final_state=message_pb.MESSAGE_STATE_COMPLETE,
                end=_end(chunks),
            )
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "missing" in details
    code, _ = await _status(
        body_service.FinishBody(pb.FinishBodyRequest(thread_id=T, message_id="m-e"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await _status(
        body_service.StatBody(pb.StatBodyRequest(thread_id=T, message_id="m-none"))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    await body_service.FinishBody(
        pb.FinishBodyRequest(
            thread_id=T,
            message_id="m-e",
            final_state=message_pb.MESSAGE_STATE_ABANDONED,
        )
    )
    size = len(_bytes(chunks[:2]))
    code, details = await _status(
        body_service.ReadRange(
            pb.ReadRangeRequest(thread_id=T, message_id="m-e", offset=size, length=1)
        )
    )
    assert code == grpc.StatusCode.OUT_OF_RANGE and f"({size} bytes)" in details

    # A refused frame ends an AppendChunks stream with that frame's status.
    call = body_service.AppendChunks()  # type: ignore[call-arg]
    await call.write(pb.AppendChunksRequest(thread_id=T, message_id="m-f", chunks=chunks[:1]))
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "content_type is required" in (await call.details() or "")
