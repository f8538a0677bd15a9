"""Router-to-router links: one long-lived Relay stream per peer router, no queue in between.

Entries bound for a peer are coalesced: whatever is waiting when the link's writer wakes
goes out as one frame, so many chunks that share a link cost one write. The event is
serialized once per fan-out and carried as bytes. The target acks frames and names a window:
at most that many frames are in flight, and while the window is full entries gather into the
next frame. Users the target says are no longer homed there are re-resolved on the ring and
their entries resent to the new home. A broken link is re-opened on the next entry; live
entries lost with it are not resent (the body store has the audio, and durable events reach
devices again through their updates stream's re-sync).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable
from typing import Any

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


# Where entries for users that moved go: (users, entry, the link that reported them).
Reroute = Callable[[list[str], peer_pb.RelayEntry, str], None]
_WINDOW_UNTIL_ACKED = 16  # frames in flight before the target's first ack names its window


class PeerLink:
    def __init__(
        self, mesh: MeshClients, source_node_id: str, address: str, reroute: Reroute
    ) -> None:
        self._mesh = mesh
        self._source = source_node_id
        self.address = address
        self._reroute = reroute
        self._pending: list[peer_pb.RelayEntry] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Flow control: frames sent and not acked (kept to resend to users that moved).
        self._inflight: dict[int, list[peer_pb.RelayEntry]] = {}
        self._acked = 0
        self._window = _WINDOW_UNTIL_ACKED

    def send(self, entry: peer_pb.RelayEntry) -> None:
        if len(self._pending) >= _MAX_PENDING:
            LINK_DROPPED.inc()
            return
        self._pending.append(entry)
        self._wake.set()
        if self._task is None or self._task.done():
            # A fresh context: the link outlives the call that opened it, so it must not
            # inherit that call's trace or request id (entries carry their own traceparent).
            self._task = asyncio.create_task(self._run(), context=contextvars.Context())

    async def _run(self) -> None:
        call = self._mesh.peer(self.address).Relay()  # type: ignore[call-arg]
        self._inflight.clear()
        self._acked = 0
        self._window = _WINDOW_UNTIL_ACKED
        reader = asyncio.create_task(self._read_acks(call))
        frame_seq = 0
        try:
            while True:
                # Wait for entries, and for room in the target's window: while it is full,
                # entries gather into the next frame (back-pressure coalesces).
                while not self._pending or frame_seq - self._acked >= self._window:
                    if reader.done():
                        return
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), 30)
                    except TimeoutError:
                        if not self._pending and not self._inflight:
                            return  # idle link: close it, re-open on demand
                entries, self._pending = self._pending, []
                frame_seq += 1
                self._inflight[frame_seq] = entries
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
            self._inflight.clear()
            reader.cancel()
            with contextlib.suppress(Exception):
                await call.done_writing()
            call.cancel()

    async def _read_acks(self, call: Any) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for reply in call:
                self._acked_up_to(reply)
        self._wake.set()  # the link ended: the writer stops

    def _acked_up_to(self, reply: peer_pb.RelayResponse) -> None:
        acked = reply.acked_frame_seq
        frames = [self._inflight.pop(seq) for seq in range(self._acked + 1, acked + 1)]
        self._acked = max(self._acked, acked)
        if reply.window_frames:
            self._window = reply.window_frames
        if reply.moved_user_ids:
            moved = set(reply.moved_user_ids)
            for frame in frames:
                for entry in frame:
                    users = [u for u in entry.user_ids if u in moved]
                    if users:
                        self._reroute(users, entry, self.address)
        self._wake.set()

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
        # Set by the owner: re-resolves users a target said are no longer homed there.
        self.reroute: Reroute = lambda users, entry, address: LINK_DROPPED.inc()

    def send(self, address: str, entry: peer_pb.RelayEntry) -> None:
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = PeerLink(
                self._mesh, self.source_node_id, address, self._reroute
            )
        link.send(entry)

    def _reroute(self, users: list[str], entry: peer_pb.RelayEntry, address: str) -> None:
        self.reroute(users, entry, address)

    async def close(self) -> None:
        for link in self._links.values():
            await link.close()
