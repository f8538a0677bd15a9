"""The mesh on the embedded stores (SQLite headers, local-file bodies): what `voxmesh up`
runs on a machine without the emulators. Same client API, same results."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ports import stack_overrides
from tests.voxmesh_client import Device, send_voice, uuid7, voice_chunks
from voxmesh.common.v1 import message_pb2, thread_pb2
from voxmesh.core.settings import load_settings
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.stack.local_stack import LocalStack

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    run_dir = tmp_path_factory.mktemp("embedded")
    overrides = stack_overrides(str(run_dir))
    overrides["stores"] = {"backend": "embedded", "sqlite_path": "", "files_root": ""}
    with LocalStack(load_settings(overrides=overrides)) as stack:
        yield stack


async def test_embedded_stack_stores_and_streams(embedded_stack: LocalStack) -> None:
    names = {s.component.name for s in embedded_stack.status()}
    assert "spanner-emulator" not in names and "gcs-emulator" not in names
    settings = embedded_stack.settings
    address = f"{settings.host}:{settings.router.port}"
    alice, bob = (
        Device(settings, "alice", "phone", address),
        Device(settings, "bob", "phone", address),
    )
    try:
        created = await alice.call(
            "CreateThread",
            pb.CreateThreadRequest(kind=thread_pb2.THREAD_KIND_DIRECT, member_user_ids=["bob"]),
        )
        thread = created.thread.thread_id
        chunks = voice_chunks(200, seed="embedded")
        message_id = uuid7()
        responses = await send_voice(alice, thread, message_id, chunks)
        assert responses[-1].completed.header.state == message_pb2.MESSAGE_STATE_COMPLETE
        body = await bob.call(
            "ReadBodyRange", pb.ReadBodyRangeRequest(thread_id=thread, message_id=message_id)
        )
        assert body.data == b"".join(c.payload for c in chunks)
    finally:
        await alice.close()
        await bob.close()
    assert settings.sqlite_path.exists()
    assert any(settings.files_root.rglob("*"))
