"""A message's chunks on their way to its body node, surviving the node's death.

Chunks written but not yet durable are kept until acked. If the body node fails (the call
breaks with UNAVAILABLE or the like), the node is marked suspect, the stream is re-opened on
the next node of the message's preference list, which recovers the durable position from
storage, and the unacknowledged chunks are sent again (the body store drops the ones it
already has, checking their bytes). The sender never sees the failover; acks only ever
cover durable chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from voxmesh.body.v1 import body_service_pb2 as body_pb
from voxmesh.common.v1 import body_pb2
from voxmesh.core.domain_errors import Unavailable
from voxmesh.core.mesh_clients import MeshClients
from voxmesh.core.structured_logging import get_logger

_log = get_logger(__name__)
# Node failures, not verdicts on the data: worth trying the next body node.
FAILOVER_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)
_MAX_FAILOVERS = 6
_MAX_REOPENS = 20

AckHandler = Callable[[body_pb2.DurableAck], Awaitable[None]]


class BodyWriter:
    def __init__(
        self,
        mesh: MeshClients,
        thread_id: str,
        message_id: str,
        content_type: str,
        on_ack: AckHandler,
    ) -> None:
        self._mesh = mesh
        self._thread_id = thread_id
        self._message_id = message_id
        self._content_type = content_type
        self._on_ack = on_ack
        self._unacked: deque[body_pb2.Chunk] = deque()
        self.durable = 0
        self._call: Any = None
        self._address = ""
        self._reader: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._failovers = 0
        self._reopens = 0
        self._lock = asyncio.Lock()
        self._closing = False

    def _request(
        self, chunks: Sequence[body_pb2.Chunk], first: bool
    ) -> body_pb.AppendChunksRequest:
        return body_pb.AppendChunksRequest(
            thread_id=self._thread_id,
            message_id=self._message_id,
            content_type=self._content_type if first else "",
            chunks=chunks,
        )

    async def _open(self) -> None:
        self._address, stub = self._mesh.body(self._message_id)
        self._call = stub.AppendChunks()  # type: ignore[call-arg]
        # The first frame names the content type; it re-sends whatever is not durable yet.
        await self._call.write(self._request(list(self._unacked), first=True))
        self._reader = asyncio.create_task(self._read(self._call))

    async def _read(self, call: Any) -> None:
        try:
            async for reply in call:
                for ack in reply.acks:
                    if (
                        ack.message_id != self._message_id
                        or ack.durable_chunk_count <= self.durable
                    ):
                        continue
                    self.durable = ack.durable_chunk_count
                    while self._unacked and self._unacked[0].index < self.durable:
                        self._unacked.popleft()
                    await self._on_ack(ack)
        except grpc.aio.AioRpcError as exc:
            if call is self._call and not self._closing:
                self._failure = exc

    async def _failover(self, error: grpc.aio.AioRpcError) -> None:
        if error.code() not in FAILOVER_CODES or self._failovers >= _MAX_FAILOVERS:
            raise error
        self._failovers += 1
        _log.warning(
            "body node failed; failing over",
            node=self._address,
            message_id=self._message_id,
            error=error.code().name,
        )
        self._mesh.suspect(self._address)
        old = self._call
        self._call = None
        if old is not None:
            old.cancel()
        await asyncio.sleep(0.05 * self._failovers)
        await self._open()

    async def _check(self) -> None:
        """Raise a data error, or fail over after a node error seen by the reader."""
        failure, self._failure = self._failure, None
        if isinstance(failure, grpc.aio.AioRpcError):
            await self._failover(failure)

    async def write(self, chunks: Sequence[body_pb2.Chunk]) -> None:
        async with self._lock:
            await self._check()
            self._unacked.extend(chunks)
            if self._call is None:
                await self._open()
                return
            try:
                await self._call.write(self._request(chunks, first=False))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await self._reader_done()
                failure = self._failure
                self._failure = None
                if isinstance(failure, grpc.aio.AioRpcError):
                    await self._failover(failure)
                else:
                    raise

    async def _reader_done(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def finish(self, chunk_count: int) -> None:
        """Wait until every chunk below ``chunk_count`` is durable (failing over if needed)."""
        async with self._lock:
            if self._call is None:
                await self._open()
            while True:
                await self._call.done_writing()
                await self._reader_done()
                failure, self._failure = self._failure, None
                if isinstance(failure, grpc.aio.AioRpcError):
                    await self._failover(failure)
                    continue
                if self.durable < chunk_count and self._unacked:
                    # The body node ended the stream before every chunk was durable (it
                    # dropped its state, or a commit is still in flight): send the rest
                    # again on a new stream. Duplicates are dropped by index on the node.
                    self._reopens += 1
                    if self._reopens > _MAX_REOPENS:
                        raise Unavailable(
                            f"body store closed the stream with {self.durable} of "
                            f"{chunk_count} chunks durable, {_MAX_REOPENS} times"
                        )
                    await asyncio.sleep(0.02 * self._reopens)
                    await self._open()
                    continue
                return

    def failure(self) -> BaseException | None:
        return self._failure

    def close(self) -> None:
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
        if self._call is not None:
            self._call.cancel()
