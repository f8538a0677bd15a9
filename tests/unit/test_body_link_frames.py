"""The router's body link, in-process over a recorded call: how many link frames carry what.

A frame per chunk would cost both ends a gRPC message each (the most CPU a live frame costs
the mesh); the link lingers ``body_store.link_linger_ms`` after the first entry so one frame
carries what every message had ready meanwhile.
"""

from __future__ import annotations

import asyncio
from typing import Any

from voxmesh.body.v1 import body_service_pb2 as body_pb
from voxmesh.common.v1 import body_pb2
from voxmesh.core.settings import load_settings
from voxmesh.router.body_links import BodyLink, BodyLinks


class _RecordedCall:
    """An AppendLink call that keeps what was written and never answers."""

    def __init__(self) -> None:
        self.frames: list[body_pb.AppendLinkRequest] = []
        self._ended = asyncio.Event()

    async def write(self, frame: body_pb.AppendLinkRequest) -> None:
        self.frames.append(frame)

    async def done_writing(self) -> None:
        self._ended.set()

    def cancel(self) -> bool:
        self._ended.set()
        return True

    def __aiter__(self) -> _RecordedCall:
        return self

    async def __anext__(self) -> Any:
        await self._ended.wait()
        raise StopAsyncIteration


class _Stub:
    def __init__(self) -> None:
        self.call = _RecordedCall()

    def AppendLink(self) -> _RecordedCall:
        return self.call


class _Writer:
    def __init__(self, message_id: str) -> None:
        self.thread_id = "thread"
        self.message_id = message_id
        self.content_type = "audio/ogg"
        self.traceparent = ""


async def _frames_for(linger_ms: float, messages: int, chunks_each: int) -> list[Any]:
    settings = load_settings(environ={}, overrides={"body_store": {"link_linger_ms": linger_ms}})
    stub = _Stub()
    link = BodyLink(BodyLinks(settings, mesh=None), "body:1", stub)  # type: ignore[arg-type]
    writers = [_Writer(f"m{i}") for i in range(messages)]
    for index in range(chunks_each):
        for writer in writers:  # the speakers' frames arrive interleaved
            chunk = body_pb2.Chunk(index=index, offset=index * 160, payload=b"x" * 160)
            link.send(writer, [chunk], first=index == 0)  # type: ignore[arg-type]
            await asyncio.sleep(0)  # the link's sender may run between any two
    await asyncio.sleep(linger_ms / 1000 + 0.05)
    await link.close()
    return stub.call.frames


async def test_lingering_gathers_many_messages_chunks_into_one_frame() -> None:
    frames = await _frames_for(linger_ms=50.0, messages=10, chunks_each=2)
    entries = [entry for frame in frames for entry in frame.entries]
    assert len(entries) == 20  # nothing lost or merged away
    assert sorted((e.message_id, e.chunks[0].index) for e in entries) == sorted(
        (f"m{i}", n) for i in range(10) for n in range(2)
    )
    # All 20 arrive within the linger: one frame (two if this process stalled mid-way).
    assert len(frames) <= 2, [len(f.entries) for f in frames]
    assert max(len(f.entries) for f in frames) >= 10


async def test_without_linger_each_ready_entry_goes_at_once() -> None:
    frames = await _frames_for(linger_ms=0.0, messages=10, chunks_each=2)
    assert sum(len(f.entries) for f in frames) == 20
    assert len(frames) == 20  # the sender ran between entries: each had its own frame
