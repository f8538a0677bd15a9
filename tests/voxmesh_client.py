"""A device's view of voxmesh, for end-to-end tests: a user, a token, a channel to a router."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from voxmesh.common.v1 import body_pb2, message_pb2, update_pb2
from voxmesh.core.client_auth import issue_token
from voxmesh.core.ids import new_uuid7
from voxmesh.core.mesh_tls import client_channel
from voxmesh.core.settings import Settings
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.router.v1 import router_service_pb2_grpc as pb_grpc


def uuid7() -> str:
    """A UUIDv7, as clients choose message ids."""
    return new_uuid7()


def voice_chunks(count: int, seed: str = "voice", size: int = 160) -> list[body_pb2.Chunk]:
    """``count`` 20 ms chunks of deterministic pseudo-audio (opaque bytes to voxmesh)."""
    chunks = []
    offset = 0
    for index in range(count):
        payload = b""
        block = hashlib.sha256(f"{seed}:{index}".encode()).digest()
        while len(payload) < size:
            payload += block
        payload = payload[:size]
        chunks.append(
            body_pb2.Chunk(index=index, offset=offset, media_time_ms=index * 20, payload=payload)
        )
        offset += size
    return chunks


@dataclass
class Device:
    settings: Settings
    user_id: str
    device_id: str
    address: str
    channel: grpc.aio.Channel = field(init=False)
    stub: Any = field(init=False)

    def __post_init__(self) -> None:
        # Own subchannels and a short backoff: a device reconnecting to a restarted router
        # must not inherit another channel's reconnect backoff (gRPC shares subchannels).
        self.channel = client_channel(
            self.settings,
            self.address,
            [
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self.stub = pb_grpc.RouterServiceStub(self.channel)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {issue_token(self.settings.auth, self.user_id)}"),)

    async def call(self, method: str, request: Any) -> Any:
        return await getattr(self.stub, method)(request, metadata=self.metadata, timeout=30)

    async def close(self) -> None:
        await self.channel.close(None)

    def updates(self, cursor: str = "") -> Any:
        return self.stub.Updates(
            pb.UpdatesRequest(device_id=self.device_id, cursor=cursor), metadata=self.metadata
        )

    def send_call(self) -> Any:
        return self.stub.Send(metadata=self.metadata)

    async def read_body(
        self,
        thread_id: str,
        message_id: str,
        from_index: int = 0,
        live_edge: bool = False,
    ) -> tuple[list[body_pb2.Chunk], pb.ReadBodyResponse]:
        """All chunks until the end frame; returns (chunks, end frame)."""
        call = self.stub.ReadBody(
            pb.ReadBodyRequest(
                thread_id=thread_id,
                message_id=message_id,
                origin=body_pb2.READ_ORIGIN_LIVE_EDGE if live_edge else body_pb2.READ_ORIGIN_INDEX,
                from_index=from_index,
            ),
            metadata=self.metadata,
        )
        chunks: list[body_pb2.Chunk] = []
        async for frame in call:
            if frame.HasField("chunks"):
                chunks.extend(frame.chunks.chunks)
            elif frame.HasField("end"):
                return chunks, frame
        raise AssertionError("ReadBody ended without an end frame")


async def send_voice(
    device: Device,
    thread_id: str,
    message_id: str,
    chunks: Sequence[body_pb2.Chunk],
    pace_s: float = 0.0,
    sent_at: dict[int, float] | None = None,
    acked_at: dict[int, float] | None = None,
    content_type: str = "audio/ogg;codecs=opus",
    stop_after: int | None = None,
    resume: bool = False,
    on_sent: Any = None,
) -> list[pb.SendResponse]:
    """Stream a voice message with Send; ``stop_after`` cuts the connection after N chunks."""
    start = message_pb2.MessageStart(
        message_id=message_id,
        thread_id=thread_id,
        kind=message_pb2.MESSAGE_KIND_VOICE,
        content_type=content_type,
    )
    call = device.send_call()
    await call.write(pb.SendRequest(start=start, device_id=device.device_id))
    responses: list[pb.SendResponse] = []
    first = await call.read()
    responses.append(first)
    begin = first.accepted.durable_chunk_count if resume else 0

    acked = asyncio.Event()
    stopped = asyncio.Event()

    async def read_acks() -> None:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:  # type: ignore[attr-defined]
                return
            responses.append(response)
            if response.HasField("stopped"):
                stopped.set()  # the status follows once we half-close
            if response.HasField("ack") and response.ack.durable_chunk_count:
                acked.set()
            if response.HasField("ack") and acked_at is not None:
                now = time.perf_counter()
                for index in range(response.ack.durable_chunk_count):
                    acked_at.setdefault(index, now)

    reader = asyncio.create_task(read_acks())
    pending = list(chunks[begin:])
    count = 0
    for chunk in pending:
        if stop_after is not None and count >= stop_after:
            await asyncio.wait_for(acked.wait(), 30)  # something is durable; now vanish
            call.cancel()
            reader.cancel()
            return responses
        if stopped.is_set():
            # The server takes no more: half-close and raise the status it ends with.
            await call.done_writing()
            await reader
            raise AssertionError("Send stopped but ended without an error status")
        if sent_at is not None:
            sent_at[chunk.index] = time.perf_counter()
        try:
            await call.write(pb.SendRequest(chunks=[chunk]))
        except asyncio.InvalidStateError:
            await reader  # the server ended the call: raise its status (AioRpcError)
            raise
        except BaseException:
            reader.cancel()
            raise
        count += 1
        if on_sent is not None:
            on_sent(chunk.index)
        if pace_s:
            await asyncio.sleep(pace_s)
    total = sum(len(c.payload) for c in chunks)
    await call.write(
        pb.SendRequest(end=message_pb2.MessageEnd(chunk_count=len(chunks), size_bytes=total))
    )
    await call.done_writing()
    await reader
    return responses


async def collect_updates(
    updates: AsyncIterator[pb.UpdatesResponse] | Any,
    until: Any,
    received_at: dict[tuple[str, int], float] | None = None,
    sink: list[update_pb2.UpdateEvent] | None = None,
) -> list[update_pb2.UpdateEvent]:
    """Events until ``until(event)`` is true; records live chunk arrival times."""
    events: list[update_pb2.UpdateEvent] = [] if sink is None else sink
    async for frame in updates:
        now = time.perf_counter()
        for event in frame.events:
            events.append(event)
            if received_at is not None and event.HasField("live_chunks"):
                for chunk in event.live_chunks.chunks:
                    received_at.setdefault((event.live_chunks.message_id, chunk.index), now)
            if until(event):
                return events
    return events
