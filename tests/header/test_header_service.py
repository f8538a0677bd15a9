"""The header service on a real grpc.aio server (port 0), over a real channel, on each backend:
the proto translation and the status codes and messages clients see."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from tests.header.conftest import BACKENDS
from tests.mesh_pki import mesh_channel, tls_overrides
from voxmesh.common.v1 import mark_pb2, message_pb2, thread_pb2
from voxmesh.core.settings import Settings, load_settings
from voxmesh.header.header_store import HeaderStore
from voxmesh.header.header_tokens import decode_cursor, encode_cursor
from voxmesh.header.v1 import header_service_pb2 as pb
from voxmesh.header.v1 import header_service_pb2_grpc as pb_grpc
from voxmesh.service_registry import build_runner


@pytest.fixture(params=BACKENDS)
async def stub(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[pb_grpc.HeaderServiceAsyncStub]:
    settings: Settings
    if request.param == "spanner":
        emulators: Settings = request.getfixturevalue("google_emulators")
        database: str = request.getfixturevalue("spanner_database")
        settings = dataclasses.replace(
            emulators, spanner=dataclasses.replace(emulators.spanner, database=database)
        )
    else:
        settings = load_settings(
            environ={},
            overrides={
                "stores": {"backend": "embedded", "sqlite_path": str(tmp_path / "h.db")},
                **tls_overrides(),
            },
        )
    runner = build_runner("header", settings, port=0, metrics_port=0)
    await runner.start()
    try:
        async with mesh_channel(settings, runner.internal_address, "header", "router") as channel:
            yield pb_grpc.HeaderServiceStub(channel)
    finally:
        await runner.drain(grace_s=0)


async def _fails(call: object, code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call  # type: ignore[misc]
    assert failure.value.code() == code, failure.value.details()
    assert message in (failure.value.details() or ""), failure.value.details()


def test_every_rpc_is_built() -> None:
    service = pb.DESCRIPTOR.services_by_name["HeaderService"]
    assert [m.name for m in service.methods if m.name not in HeaderStore.__dict__] == []


async def test_a_voice_message_round_trips_through_the_protos(
    stub: pb_grpc.HeaderServiceAsyncStub,
) -> None:
    created = await stub.CreateThread(
        pb.CreateThreadRequest(
            thread_id="g-1",
            kind=thread_pb2.THREAD_KIND_GROUP,
            title="Crew",
            creator_user_id="alice",
            member_user_ids=["alice", "bob"],
        )
    )
    assert created.created and created.thread.title == "Crew"
    assert [(m.user_id, m.role) for m in created.thread.members] == [
        ("alice", thread_pb2.MEMBER_ROLE_ADMIN),
        ("bob", thread_pb2.MEMBER_ROLE_MEMBER),
    ]
    assert created.thread.created_at.seconds > 0 and not created.thread.HasField("user_state")

    start = message_pb2.MessageStart(
        message_id="0190a5f2-0000-7000-8000-000000000001",
        thread_id="g-1",
        kind=message_pb2.MESSAGE_KIND_VOICE,
        content_type="audio/webm;codecs=opus",
    )
    start.created_at.FromSeconds(1_700_000_000)
    started = await stub.StartMessage(
        pb.StartMessageRequest(start=start, sender_user_id="alice", sender_device_id="web")
    )
    assert started.created and list(started.member_user_ids) == ["alice", "bob"]
    assert started.header.seq == 1 and started.header.state == message_pb2.MESSAGE_STATE_LIVE
    assert started.header.created_at.seconds == 1_700_000_000
    assert not started.header.HasField("completed_at")
    assert started.header.body.message_id == start.message_id

    end = message_pb2.MessageEnd(
        chunk_count=50, duration=Duration(seconds=1, nanos=250_000_000), size_bytes=8000
    )
    completed = await stub.CompleteMessage(
        pb.CompleteMessageRequest(thread_id="g-1", message_id=start.message_id, end=end)
    )
    header = completed.header
    assert header.state == message_pb2.MESSAGE_STATE_COMPLETE
    assert (header.duration.seconds, header.duration.nanos) == (1, 250_000_000)
    assert (header.chunk_count, header.size_bytes) == (50, 8000)
    assert header.completed_at == header.updated_at
    fetched = await stub.GetMessage(
        pb.GetMessageRequest(thread_id="g-1", message_id=start.message_id)
    )
    assert fetched.header == header

    marked = await stub.SetMark(
        pb.SetMarkRequest(
            mark=mark_pb2.Mark(
                user_id="bob",
                device_id="phone",
                thread_id="g-1",
                message_id=start.message_id,
                kind=mark_pb2.MARK_KIND_LISTENED,
            )
        )
    )
    assert marked.advanced and marked.mark.seq == 1 and marked.mark.marked_at.seconds > 0

    timeline = await stub.ListTimeline(pb.ListTimelineRequest(user_id="bob", device_id="phone"))
    assert [h.message_id for h in timeline.headers] == [start.message_id]
    assert timeline.threads[0].user_state.listened_seq == 1
    acked = await stub.AckTimeline(
        pb.AckTimelineRequest(user_id="bob", device_id="phone", cursor=timeline.next_cursor)
    )
    assert acked.cursor == timeline.next_cursor
    members = await stub.GetMembers(pb.GetMembersRequest(thread_id="g-1"))
    assert list(members.user_ids) == ["alice", "bob"] and members.last_seq == 1


async def test_clients_get_precise_status_codes(stub: pb_grpc.HeaderServiceAsyncStub) -> None:
    await stub.CreateThread(
        pb.CreateThreadRequest(
            thread_id="g",
            kind=thread_pb2.THREAD_KIND_GROUP,
            creator_user_id="alice",
            member_user_ids=["bob"],
        )
    )
    await stub.CreateThread(
        pb.CreateThreadRequest(
            thread_id="h",
            kind=thread_pb2.THREAD_KIND_GROUP,
            creator_user_id="alice",
            member_user_ids=["bob"],
        )
    )
    text = message_pb2.MessageStart(
        message_id="m1", thread_id="g", kind=message_pb2.MESSAGE_KIND_TEXT, text="hi"
    )
    await stub.StartMessage(
        pb.StartMessageRequest(start=text, sender_user_id="bob", sender_device_id="p")
    )
    invalid = grpc.StatusCode.INVALID_ARGUMENT

    await _fails(
        stub.CreateThread(pb.CreateThreadRequest(thread_id="a b")),
        invalid,
        "thread_id 'a b' is malformed",
    )
    await _fails(
        stub.StartMessage(pb.StartMessageRequest(sender_user_id="bob", sender_device_id="p")),
        invalid,
        "message_id is required",
    )
    await _fails(
        stub.GetThread(pb.GetThreadRequest(thread_id="nope")),
        grpc.StatusCode.NOT_FOUND,
        "thread nope not found",
    )
    await _fails(
        stub.StartMessage(
            pb.StartMessageRequest(start=text, sender_user_id="mallory", sender_device_id="p")
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "user mallory is not a member of thread g",
    )
    elsewhere = message_pb2.MessageStart()
    elsewhere.CopyFrom(text)
    elsewhere.thread_id = "h"
    await _fails(
        stub.StartMessage(
            pb.StartMessageRequest(start=elsewhere, sender_user_id="bob", sender_device_id="p")
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "message id m1 is already used in another thread",
    )
    await _fails(
        stub.SetMessageState(
            pb.SetMessageStateRequest(
                thread_id="g", message_id="m1", state=message_pb2.MESSAGE_STATE_ABANDONED
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "m1 cannot go from COMPLETE to ABANDONED",
    )
    await _fails(
        stub.ListMessages(pb.ListMessagesRequest(thread_id="g", page_size=-1)),
        invalid,
        "page_size must not be negative",
    )
    listing = await stub.ListTimeline(pb.ListTimelineRequest(user_id="bob"))
    future = encode_cursor(decode_cursor(listing.next_cursor).replace(year=2999))
    await _fails(
        stub.ListTimeline(pb.ListTimelineRequest(user_id="bob", cursor=future)),
        grpc.StatusCode.OUT_OF_RANGE,
        "cursor is ahead of this header store",
    )
