"""RouterPeerService: the receiving end of router-to-router relay links."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from voxmesh.common.v1 import update_pb2
from voxmesh.core.ring_membership import RingMembership
from voxmesh.router.device_hub import DeviceHub
from voxmesh.router.v1 import router_peer_service_pb2 as pb
from voxmesh.router.v1 import router_peer_service_pb2_grpc as pb_grpc


class RouterPeer(pb_grpc.RouterPeerServiceServicer):
    def __init__(self, hub: DeviceHub, membership: RingMembership) -> None:
        self._hub = hub
        self._membership = membership
        self.node_id = ""

    def bind(self, node_id: str, address: str) -> None:
        self.node_id = node_id

    def _deliver(
        self, user_ids: list[str], event: update_pb2.UpdateEvent, exclude_device: str
    ) -> tuple[list[str], int]:
        """Hand to local devices; report users this router is no longer home for."""
        delivered = 0
        for user in user_ids:
            skip = (user, exclude_device) if exclude_device else None
            delivered += self._hub.deliver([user], event, skip)
        ring = self._membership.ring("router")
        moved = [u for u in user_ids if len(ring) and ring.home(u) != self.node_id]
        return moved, delivered

    async def Relay(
        self, request_iterator: AsyncIterator[pb.RelayRequest], context: Any
    ) -> AsyncIterator[pb.RelayResponse]:
        async for frame in request_iterator:
            moved: list[str] = []
            for entry in frame.entries:
                event = update_pb2.UpdateEvent.FromString(entry.event)
                gone, _ = self._deliver(list(entry.user_ids), event, entry.exclude_device_id)
                moved += gone
            yield pb.RelayResponse(acked_frame_seq=frame.frame_seq, moved_user_ids=moved)

    async def DeliverEvent(
        self, request: pb.DeliverEventRequest, context: Any
    ) -> pb.DeliverEventResponse:
        moved, delivered = self._deliver(
            list(request.user_ids), request.event, request.exclude_device_id
        )
        return pb.DeliverEventResponse(moved_user_ids=moved, delivered_device_count=delivered)
