"""Router-to-router links: one long-lived Relay stream per peer router, no queue in between.

Entries bound for a peer are coalesced: whatever is waiting when the link's writer wakes
goes out as one frame, so many chunks that share a link cost one write. The event is
serialized once per fan-out and carried as bytes. A broken link is re-opened on the next
entry; live entries lost with it are not resent (the body store has the audio, and durable
events reach devices again through their updates stream's re-sync).
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import prometheus_client

from voxmesh.core.mesh_clients import MeshClients
from voxmesh.core.structured_logging import get_logger
from voxmesh.router.v1 import router_peer_service_pb2 as peer_pb

_log = get_logger(__name__)
_MAX_PENDING = 10_000

LINK_FRAMES = prometheus_client.Counter(
    "voxmesh_router_peer_frames_total", "Relay frames sent to peer routers."
)
LINK_ENTRIES = prometheus_client.Counter(
    "voxmesh_router_peer_entries_total", "Relay entries sent to peer routers."
)
LINK_DROPPED = prometheus_client.Counter(
    "voxmesh_router_peer_entries_dropped_total",
    "Relay entries dropped (peer link down or too far behind).",
)


class PeerLink:
    def __init__(self, mesh: MeshClients, source_node_id: str, address: str) -> None:
        self._mesh = mesh
        self._source = source_node_id
        self.address = address
        self._pending: list[peer_pb.RelayEntry] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def send(self, entry: peer_pb.RelayEntry) -> None:
        if len(self._pending) >= _MAX_PENDING:
            LINK_DROPPED.inc()
            return
        self._pending.append(entry)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        call = self._mesh.peer(self.address).Relay()  # type: ignore[call-arg]
        reader = asyncio.create_task(self._read_acks(call))
        frame_seq = 0
        try:
            while True:
                if not self._pending:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), 30)
                    except TimeoutError:
                        return  # idle link: close it, re-open on demand
                entries, self._pending = self._pending, []
                frame_seq += 1
                await call.write(
                    peer_pb.RelayRequest(
                        source_node_id=self._source, frame_seq=frame_seq, entries=entries
                    )
                )
                LINK_FRAMES.inc()
                LINK_ENTRIES.inc(len(entries))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            LINK_DROPPED.inc(len(self._pending))
            self._pending.clear()
            self._mesh.suspect(self.address)
            _log.warning("peer link failed", peer=self.address, error=repr(exc))
        finally:
            reader.cancel()
            with contextlib.suppress(Exception):
                await call.done_writing()
            call.cancel()

    async def _read_acks(self, call: object) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for _reply in call:  # type: ignore[attr-defined]
                pass

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


class PeerLinks:
    def __init__(self, mesh: MeshClients) -> None:
        self._mesh = mesh
        self._links: dict[str, PeerLink] = {}
        self.source_node_id = ""

    def send(self, address: str, entry: peer_pb.RelayEntry) -> None:
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = PeerLink(self._mesh, self.source_node_id, address)
        link.send(entry)

    async def close(self) -> None:
        for link in self._links.values():
            await link.close()
