"""The router's links to the body nodes: one long-lived ``AppendLink`` stream per body node,
shared by every message this router is recording, and one ``MessageWriter`` per message.

A link coalesces whatever its messages have ready into one frame of (message, chunks)
entries, lingering ``body_store.link_linger_ms`` after the first so a frame carries many
messages' chunks (fewer gRPC messages on both ends, the most CPU a frame costs), and hands
the node's coalesced acks (message -> durable chunk count) and refusals back to the writers.
A writer keeps its chunks until they are acked. When a link breaks (the body node died or
restarted), the node is marked suspect and every writer on it resends its
unacknowledged chunks on the message's next body node (the preference list puts suspects
last, so with a single body node that is the same node once it is back), backing off, for as
long as ``body_store.failover_wait_s`` passes without progress; only then does the sender see
UNAVAILABLE. The body node recovers the durable position from storage and drops resent chunks
it already holds (comparing their bytes), so the sender never sees the failover, and acks
only ever cover durable chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections import deque
from collections.abc import Callable, Sequence

import grpc

from voxmesh.body.v1 import body_service_pb2 as body_pb
from voxmesh.body.v1 import body_service_pb2_grpc as body_grpc
from voxmesh.common.v1 import body_pb2
from voxmesh.core.domain_errors import Unavailable
from voxmesh.core.mesh_clients import MeshClients
from voxmesh.core.rpc_interceptors import error_for_status
from voxmesh.core.settings import Settings
from voxmesh.core.structured_logging import get_logger
from voxmesh.core.telemetry import current_traceparent

_log = get_logger(__name__)
# Node failures, not verdicts on the data: worth resending (on the next node, or later).
FAILOVER_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.OK,  # the node ended the link with chunks still unacked
    }
)
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_MAX_BACKOFF_S = 1.0

AckHandler = Callable[[body_pb2.DurableAck], None]


class BodyLinks:
    """Every body-node link of this router, made on first use and dropped when broken."""

    def __init__(self, settings: Settings, mesh: MeshClients) -> None:
        self.settings = settings
        self.mesh = mesh
        self._links: dict[str, BodyLink] = {}

    def reconfigure(self, settings: Settings) -> None:
        self.settings = settings

    def writer(
        self, thread_id: str, message_id: str, content_type: str, on_ack: AckHandler
    ) -> MessageWriter:
        return MessageWriter(self, thread_id, message_id, content_type, on_ack)

    def link_for(self, message_id: str) -> BodyLink:
        """The link to the message's body node now (healthy nodes first)."""
        address = self.mesh.candidates("body", message_id)[0]
        link = self._links.get(address)
        if link is None or link.broken:
            stub = body_grpc.BodyServiceStub(self.mesh.channel(address))
            link = BodyLink(self, address, stub)
            self._links[address] = link
        return link

    def dropped(self, link: BodyLink) -> None:
        if self._links.get(link.address) is link:
            del self._links[link.address]

    @property
    def frame_bytes(self) -> int:
        """Payload bytes per link frame, well under the gRPC message limit."""
        return self.settings.limits.max_grpc_message_bytes // 2

    @property
    def unacked_bytes(self) -> int:
        """Bytes a message may have sent and not acked before its writer waits."""
        return 4 * self.settings.limits.max_grpc_message_bytes

    async def close(self) -> None:
        links = list(self._links.values())
        self._links.clear()
        for link in links:
            await link.close()


class BodyLink:
    """One AppendLink stream to one body node."""

    def __init__(self, links: BodyLinks, address: str, stub: body_grpc.BodyServiceAsyncStub):
        self.address = address
        self.broken = False
        self._links = links
        self._writers: dict[str, MessageWriter] = {}
        self._outbox: list[body_pb.AppendEntry] = []
        self._outbox_bytes = 0
        self._wake = asyncio.Event()
        self._closing = False
        # A fresh context: the link outlives the message that opened it, so it must not carry
        # that message's trace or request id (a message's first entry carries its own trace).
        detached = contextvars.Context()
        self._call = detached.run(stub.AppendLink)  # type: ignore[call-arg]
        self._sender = asyncio.create_task(self._send_frames(), context=detached.copy())
        self._reader = asyncio.create_task(self._read(), context=detached.copy())

    def send(self, writer: MessageWriter, chunks: Sequence[body_pb2.Chunk], first: bool) -> None:
        """Queue chunks of ``writer``'s message for the next frame (never awaits)."""
        self._writers[writer.message_id] = writer
        entry = body_pb.AppendEntry(
            thread_id=writer.thread_id,
            message_id=writer.message_id,
            content_type=writer.content_type if first else "",
            chunks=chunks,
        )
        if first and writer.traceparent:
            entry.traceparent = writer.traceparent
        self._outbox.append(entry)
        self._wake.set()

    def forget(self, writer: MessageWriter) -> None:
        if self._writers.get(writer.message_id) is writer:
            del self._writers[writer.message_id]

    async def _send_frames(self) -> None:
        limit = self._links.frame_bytes
        try:
            while True:
                await self._wake.wait()
                linger_s = self._links.settings.body_store.link_linger_ms / 1000
                if linger_s and not self._closing:
                    # Gather what other messages have ready: one frame for many entries.
                    await asyncio.sleep(linger_s)
                self._wake.clear()
                if self._closing:
                    await self._call.done_writing()
                    return
                entries, self._outbox = self._outbox, []
                frame: list[body_pb.AppendEntry] = []
                size = 0
                for entry in entries:
                    frame.append(entry)
                    size += sum(len(c.payload) for c in entry.chunks)
                    if size >= limit:
                        await self._call.write(body_pb.AppendLinkRequest(entries=frame))
                        frame, size = [], 0
                if frame:
                    await self._call.write(body_pb.AppendLinkRequest(entries=frame))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            # The call ended: the reader sees its status and breaks the link.
            _log.debug("body link write failed", node=self.address, error=repr(exc))

    async def _read(self) -> None:
        code, details = grpc.StatusCode.OK, "the body node ended the link"
        try:
            async for reply in self._call:
                writers = self._writers
                for ack in reply.acks:
                    writer = writers.get(ack.message_id)
                    if writer is not None:
                        writer.acked(ack)
                for refusal in reply.refusals:
                    writer = writers.get(refusal.message_id)
                    if writer is not None:
                        writer.refused(refusal)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or exc.code().name
        if not self._closing:
            self._break(code, details)

    def _break(self, code: grpc.StatusCode, details: str) -> None:
        if self.broken:
            return
        self.broken = True
        self._links.dropped(self)
        self._call.cancel()
        self._sender.cancel()
        if self._writers:
            _log.warning(
                "body link broke; resending on the next node",
                node=self.address,
                error=code.name,
                messages=len(self._writers),
            )
            if code in FAILOVER_CODES:
                self._links.mesh.suspect(self.address)
        writers, self._writers = list(self._writers.values()), {}
        for writer in writers:
            writer.link_broke(self, code, details)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        with contextlib.suppress(asyncio.TimeoutError, grpc.aio.AioRpcError):
            async with asyncio.timeout(1.0):
                await asyncio.gather(self._sender, self._reader, return_exceptions=True)
        self._call.cancel()
        self._sender.cancel()
        self._reader.cancel()


class MessageWriter:
    """A message's chunks on their way to its body node, kept until durable."""

    def __init__(
        self,
        links: BodyLinks,
        thread_id: str,
        message_id: str,
        content_type: str,
        on_ack: AckHandler,
    ) -> None:
        self._links = links
        self.thread_id = thread_id
        self.message_id = message_id
        self.content_type = content_type
        # The Send's trace, for the message's first entry on each link ("" when not tracing).
        self.traceparent = current_traceparent()
        self._on_ack = on_ack
        self._unacked: deque[body_pb2.Chunk] = deque()
        self._unacked_bytes = 0
        self.durable = 0
        self._link: BodyLink | None = None
        self._error: BaseException | None = None
        self._progress = asyncio.Event()
        self._failing_since: float | None = None
        self._attempts = 0
        self._retry: asyncio.Task[None] | None = None
        self._closed = False

    # -- from the Send pump --------------------------------------------------------------

    async def write(self, chunks: Sequence[body_pb2.Chunk]) -> None:
        """Send chunks (already judged by the frame rule); waits only while too much is unacked."""
        self._raise_error()
        while self._unacked_bytes > self._links.unacked_bytes:
            await self._wait_progress()
            self._raise_error()
        self._unacked.extend(chunks)
        self._unacked_bytes += sum(len(c.payload) for c in chunks)
        link = self._link
        if link is not None and not link.broken:
            link.send(self, chunks, first=False)
        elif self._retry is None:
            self._attach()
        # else: a resend is scheduled; it sends everything unacked

    async def finish(self, chunk_count: int) -> None:
        """Wait until every chunk below ``chunk_count`` is durable (resending if needed)."""
        while self.durable < chunk_count:
            self._raise_error()
            if not self._unacked:
                return  # nothing of it is here to wait for: FinishBody judges
            if (self._link is None or self._link.broken) and self._retry is None:
                self._attach()
            await self._wait_progress()

    def close(self) -> None:
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        if self._link is not None:
            self._link.forget(self)

    # -- from the link -------------------------------------------------------------------

    def acked(self, ack: body_pb2.DurableAck) -> None:
        if ack.durable_chunk_count <= self.durable:
            return
        self.durable = ack.durable_chunk_count
        unacked = self._unacked
        while unacked and unacked[0].index < self.durable:
            self._unacked_bytes -= len(unacked.popleft().payload)
        self._failing_since = None
        self._attempts = 0
        self._on_ack(ack)
        self._progress.set()

    def refused(self, refusal: body_pb.EntryRefusal) -> None:
        code = _CODES.get(refusal.code, grpc.StatusCode.UNKNOWN)
        if code == grpc.StatusCode.UNAVAILABLE:
            # The node dropped its state of the body (storage conflict): resend what is unacked.
            self._link_lost(code, refusal.message)
            return
        self._fail(error_for_status(code, refusal.message))

    def link_broke(self, link: BodyLink, code: grpc.StatusCode, details: str) -> None:
        if link is self._link:
            self._link_lost(code, details)

    # -- inside ----------------------------------------------------------------------------

    def _attach(self) -> None:
        self._link = self._links.link_for(self.message_id)
        # The first entry on a link names the content type and resends whatever is unacked.
        self._link.send(self, list(self._unacked), first=True)

    def _link_lost(self, code: grpc.StatusCode, details: str) -> None:
        if self._link is not None:
            self._link.forget(self)
        self._link = None
        if self._closed or self._error is not None:
            return
        if code not in FAILOVER_CODES:
            self._fail(error_for_status(code, details))
            return
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        wait_s = self._links.settings.body_store.failover_wait_s
        if now - self._failing_since >= wait_s:
            self._fail(
                Unavailable(
                    f"the body store is unreachable: no progress for {wait_s:g} s ({details})"
                )
            )
            return
        if self._retry is None:
            self._attempts += 1
            self._retry = asyncio.create_task(self._resend_later())

    async def _resend_later(self) -> None:
        await asyncio.sleep(min(0.05 * 2 ** (self._attempts - 1), _MAX_BACKOFF_S))
        self._retry = None
        if self._closed or self._error is not None:
            return
        _log.info("resending unacked chunks", message_id=self.message_id, count=len(self._unacked))
        self._attach()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._progress.set()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    async def _wait_progress(self) -> None:
        self._progress.clear()
        await self._progress.wait()

    def failure(self) -> BaseException | None:
        return self._error
