"""BodyService: message bodies as ordered chunks (Cloud Storage / local files).

A thin servicer: it converts protobuf to the domain's types and back; the logic, the checks
and the errors are ``BodyDomain``'s (domain errors become statuses in the error interceptor).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import tenacity
from google.protobuf.duration_pb2 import Duration

from voxmesh.body.body_domain import BodyDomain, BodyLimits
from voxmesh.body.body_model import (
    BodyState,
    BodyStatus,
    ChunkLike,
    DurablePosition,
    EndTotals,
    ReadChunks,
    ReadEnd,
    ReadStat,
)
from voxmesh.body.body_storage import BodyStorage
from voxmesh.body.file_body_storage import FileBodyStorage
from voxmesh.body.gcs_body_storage import GcsBodyStorage
from voxmesh.body.v1 import body_service_pb2 as pb
from voxmesh.body.v1 import body_service_pb2_grpc as pb_grpc
from voxmesh.common.v1 import body_pb2 as body_pb
from voxmesh.common.v1 import message_pb2 as message_pb
from voxmesh.core.domain_errors import DomainError, InvalidArgument, Unavailable
from voxmesh.core.mesh_clients import MeshClients
from voxmesh.core.ring_membership import RingMembership
from voxmesh.core.rpc_interceptors import status_for
from voxmesh.core.service_runner import Registration, ServiceParts
from voxmesh.core.settings import Settings
from voxmesh.core.telemetry import continued_span
from voxmesh.header.v1 import header_service_pb2 as header_pb

Context = grpc.aio.ServicerContext[Any, Any]

# Entered for an AppendLink entry that carries no trace (reusable: it does nothing).
_NO_SPAN = contextlib.nullcontext()


def _span_for(entry: pb.AppendEntry) -> contextlib.AbstractContextManager[None]:
    """The sender's trace for an entry that carries one (a message's first on a link)."""
    if entry.traceparent:
        return continued_span("voxmesh.body.AppendEntry", entry.traceparent)
    return _NO_SPAN


_TO_PROTO = {
    BodyState.LIVE: message_pb.MESSAGE_STATE_LIVE,
    BodyState.COMPLETE: message_pb.MESSAGE_STATE_COMPLETE,
    BodyState.ABANDONED: message_pb.MESSAGE_STATE_ABANDONED,
    BodyState.RECALLED: message_pb.MESSAGE_STATE_RECALLED,
    BodyState.DELETED: message_pb.MESSAGE_STATE_DELETED,
}
_FROM_PROTO: dict[int, BodyState] = {int(value): key for key, value in _TO_PROTO.items()}


def _state(value: int, field: str) -> BodyState:
    state = _FROM_PROTO.get(int(value))
    if state is None:
        raise InvalidArgument(f"{field} is required")
    return state


def _duration(ms: int | None) -> Duration | None:
    if ms is None:
        return None
    duration = Duration()
    duration.FromMilliseconds(ms)
    return duration


def _ack(position: DurablePosition) -> body_pb.DurableAck:
    return body_pb.DurableAck(
        thread_id=position.thread_id,
        message_id=position.message_id,
        durable_chunk_count=position.chunk_count,
        durable_size_bytes=position.size_bytes,
    )


def _stat(status: BodyStatus) -> body_pb.BodyStat:
    return body_pb.BodyStat(
        thread_id=status.thread_id,
        message_id=status.message_id,
        state=_TO_PROTO[status.state],
        content_type=status.content_type,
        chunk_count=status.chunk_count,
        size_bytes=status.size_bytes,
        live_edge_index=status.live_edge_index,
        duration=_duration(status.duration_ms),
    )


def _chunks(chunks: Sequence[ChunkLike]) -> list[body_pb.Chunk]:
    # Chunks from the live tail are the senders' own Chunk messages: no rebuilding.
    return [
        c
        if isinstance(c, body_pb.Chunk)
        else body_pb.Chunk(
            index=c.index, offset=c.offset, media_time_ms=c.media_time_ms, payload=c.payload
        )
        for c in chunks
    ]


def kept_totals(status: BodyStatus) -> message_pb.MessageEnd:
    """What an abandoned body kept, as the header states it."""
    return message_pb.MessageEnd(
        chunk_count=status.chunk_count,
        size_bytes=status.size_bytes,
        duration=_duration(status.duration_ms),
    )


def _end(end: ReadEnd) -> body_pb.BodyEnd:
    return body_pb.BodyEnd(
        state=_TO_PROTO[end.state],
        chunk_count=end.chunk_count,
        size_bytes=end.size_bytes,
        duration=_duration(end.duration_ms),
    )


class BodyStore(pb_grpc.BodyServiceServicer):
    def __init__(self, domain: BodyDomain) -> None:
        self._domain = domain

    async def AppendChunks(
        self, request_iterator: AsyncIterator[pb.AppendChunksRequest], context: Context
    ) -> AsyncIterator[pb.AppendChunksResponse]:
        domain = self._domain
        sink = domain.open_sink()

        async def take_frames() -> None:
            try:
                async for frame in request_iterator:
                    await domain.append(
                        frame.thread_id, frame.message_id, frame.content_type, frame.chunks, sink
                    )
            finally:
                sink.wake()

        reader = asyncio.get_running_loop().create_task(take_frames())
        try:
            while True:
                await sink.changed()
                acks = sink.take()
                if acks:
                    yield pb.AppendChunksResponse(acks=[_ack(a) for a in acks])
                if sink.error is not None:
                    raise sink.error
                if reader.done():
                    reader.result()  # a refused frame ends the stream with its status
                    if not sink.outstanding:
                        return
        finally:
            reader.cancel()
            domain.close_sink(sink)

    async def AppendLink(
        self, request_iterator: AsyncIterator[pb.AppendLinkRequest], context: Context
    ) -> AsyncIterator[pb.AppendLinkResponse]:
        domain = self._domain
        sink = domain.open_sink()
        refusals: list[pb.EntryRefusal] = []
        # Messages whose entries wait on storage (a body taken over, a resend to verify):
        # their later entries queue behind in order, and the link's other messages go on.
        slow: dict[str, deque[pb.AppendEntry]] = {}
        loading: set[asyncio.Task[None]] = set()

        def refuse(entry: pb.AppendEntry, exc: DomainError) -> None:
            refusals.append(
                pb.EntryRefusal(
                    thread_id=entry.thread_id,
                    message_id=entry.message_id,
                    code=status_for(exc).value[0],
                    message=str(exc),
                )
            )
            sink.wake()

        async def drain(message_id: str) -> None:
            backlog = slow[message_id]
            try:
                while backlog:
                    entry = backlog[0]
                    try:
                        with _span_for(entry):
                            await domain.append(
                                entry.thread_id, message_id, entry.content_type, entry.chunks, sink
                            )
                    except DomainError as exc:
                        refuse(entry, exc)
                    backlog.popleft()
            finally:
                del slow[message_id]
                sink.wake()

        async def take_frames() -> None:
            try:
                async for frame in request_iterator:
                    for entry in frame.entries:
                        message_id = entry.message_id
                        backlog = slow.get(message_id)
                        if backlog is not None:
                            backlog.append(entry)
                            continue
                        try:
                            # A message's first entry on a link may carry its sender's trace;
                            # any other entry pays one field check.
                            if entry.traceparent:
                                with _span_for(entry):
                                    now = domain.append_now(
                                        entry.thread_id, message_id, entry.chunks, sink
                                    )
                            else:
                                now = domain.append_now(
                                    entry.thread_id, message_id, entry.chunks, sink
                                )
                            if now:
                                continue
                        except DomainError as exc:  # this entry only: the link goes on
                            refuse(entry, exc)
                            continue
                        slow[message_id] = deque([entry])
                        task = asyncio.get_running_loop().create_task(drain(message_id))
                        loading.add(task)
                        task.add_done_callback(loading.discard)
                while loading:
                    await asyncio.wait(set(loading))
            finally:
                sink.wake()

        reader = asyncio.get_running_loop().create_task(take_frames())
        try:
            while True:
                await sink.changed()
                acks = sink.take()
                if acks or refusals:
                    refused = refusals[:]
                    refusals.clear()
                    yield pb.AppendLinkResponse(acks=[_ack(a) for a in acks], refusals=refused)
                if sink.error is not None:
                    raise sink.error  # accepted chunks were lost: the router resends
                if reader.done():
                    reader.result()
                    if not sink.outstanding:
                        return
        finally:
            reader.cancel()
            for task in loading:
                task.cancel()
            domain.close_sink(sink)

    async def AppendChunksBatch(
        self, request: pb.AppendChunksBatchRequest, context: Context
    ) -> pb.AppendChunksBatchResponse:
        position = await self._domain.append_durable(
            request.thread_id, request.message_id, request.content_type, request.chunks
        )
        return pb.AppendChunksBatchResponse(ack=_ack(position))

    async def FinishBody(
        self, request: pb.FinishBodyRequest, context: Context
    ) -> pb.FinishBodyResponse:
        state = _state(request.final_state, "final_state")
        end = request.end
        totals = (
            EndTotals(
                chunk_count=end.chunk_count,
                size_bytes=end.size_bytes or None,
                duration_ms=end.duration.ToMilliseconds() if end.HasField("duration") else None,
            )
            if request.HasField("end")
            else None
        )
        status = await self._domain.finish(request.thread_id, request.message_id, state, totals)
        return pb.FinishBodyResponse(stat=_stat(status))

    async def ReadChunks(
        self, request: pb.ReadChunksRequest, context: Context
    ) -> AsyncIterator[pb.ReadChunksResponse]:
        events = self._domain.read(
            request.thread_id,
            request.message_id,
            from_index=request.from_index,
            from_live_edge=request.origin == body_pb.READ_ORIGIN_LIVE_EDGE,
            stored_only=request.stored_only,
        )
        async for event in events:
            if isinstance(event, ReadChunks):
                yield pb.ReadChunksResponse(
                    chunks=body_pb.BodyChunks(chunks=_chunks(event.chunks), live=event.live)
                )
            elif isinstance(event, ReadStat):
                yield pb.ReadChunksResponse(stat=_stat(event.status))
            else:
                yield pb.ReadChunksResponse(end=_end(event))

    async def ReadRange(
        self, request: pb.ReadRangeRequest, context: Context
    ) -> pb.ReadRangeResponse:
        read = await self._domain.read_range(
            request.thread_id, request.message_id, request.offset, request.length
        )
        return pb.ReadRangeResponse(
            content_type=read.content_type,
            offset=read.offset,
            data=read.data,
            total_size_bytes=read.total_size_bytes,
        )

    async def DeleteBody(
        self, request: pb.DeleteBodyRequest, context: Context
    ) -> pb.DeleteBodyResponse:
        reason = _state(request.reason, "reason")
        deleted, cut_off = await self._domain.delete(request.thread_id, request.message_id, reason)
        return pb.DeleteBodyResponse(deleted=deleted, readers_cut_off=cut_off)

    async def StatBody(self, request: pb.StatBodyRequest, context: Context) -> pb.StatBodyResponse:
        status = await self._domain.stat(request.thread_id, request.message_id)
        return pb.StatBodyResponse(stat=_stat(status))


def open_body_storage(settings: Settings) -> BodyStorage:
    """The storage adapter of ``settings.stores.backend`` (the bucket is provisioned already)."""
    if settings.stores.backend == "google":
        return GcsBodyStorage(settings.gcs.project, settings.gcs.bucket)
    return FileBodyStorage(settings.files_root)


def create_body_service(settings: Settings) -> ServiceParts:
    domain = BodyDomain(open_body_storage(settings), BodyLimits.from_settings(settings))
    servicer = BodyStore(domain)
    # The header ring: to mark a message ABANDONED when this node gives up on its body (the
    # sender's router, which would have done it, may be what died).
    membership = RingMembership(settings, ("header",))
    mesh = MeshClients(settings, membership, "body")

    async def tell_header(kept: BodyStatus) -> None:
        thread_id = kept.thread_id
        request = header_pb.SetMessageStateRequest(
            thread_id=thread_id,
            message_id=kept.message_id,
            state=message_pb.MESSAGE_STATE_ABANDONED,
            kept=kept_totals(kept),
        )
        async for attempt in tenacity.AsyncRetrying(
            stop=tenacity.stop_after_delay(30),
            wait=tenacity.wait_random_exponential(multiplier=0.2, max=5),
            retry=tenacity.retry_if_exception(_header_unreachable),
            reraise=True,
        ):
            with attempt:
                try:  # over the header ring: a failed header node is skipped within the call
                    await mesh.header(thread_id).SetMessageState(request, timeout=10)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                        return  # completed, recalled or deleted meanwhile: nothing to do
                    raise

    domain.on_abandoned = tell_header
    return ServiceParts(
        [
            Registration(
                "voxmesh.body.v1.BodyService", servicer, pb_grpc.add_BodyServiceServicer_to_server
            )
        ],
        startup_hooks=[domain.start, _started(mesh)],
        shutdown_hooks=[domain.close, mesh.close],
        membership=membership,
        settings_listeners=[lambda new: setattr(domain, "limits", BodyLimits.from_settings(new))],
    )


def _started(mesh: MeshClients) -> Callable[[], Awaitable[None]]:
    async def start() -> None:
        mesh.start()  # the header ring's health probe

    return start


def _header_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, Unavailable):  # no header node could take it just now
        return True
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
