"""RouterService: the client-facing API of a router node."""

from __future__ import annotations

from typing import Any

from voxmesh.core.ids import require_id
from voxmesh.core.service_runner import Registration, ServiceParts
from voxmesh.core.settings import Settings
from voxmesh.core.unbuilt_rpcs import fill_unbuilt_rpcs
from voxmesh.router.router_peer import RouterPeer
from voxmesh.router.v1 import router_peer_service_pb2_grpc
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.router.v1 import router_service_pb2_grpc as pb_grpc


class NodeRouter(pb_grpc.RouterServiceServicer):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._self = pb.RouterNode(zone=settings.zone)

    def bind(self, node_id: str, address: str) -> None:
        """Called once the server's port is known."""
        self._self.node_id = node_id
        self._self.address = address

    async def Discover(self, request: pb.DiscoverRequest, context: Any) -> pb.DiscoverResponse:
        require_id(request.user_id, "user_id")
        # Until routers form a ring on etcd, this node is the only router: every user's
        # preference list is this node alone.
        return pb.DiscoverResponse(routers=[self._self])


fill_unbuilt_rpcs(
    NodeRouter,
    pb.DESCRIPTOR.services_by_name["RouterService"],
    "store-and-stream (talk, listen live, catch up, time-shift)",
)


def create_router_service(settings: Settings) -> ServiceParts:
    router = NodeRouter(settings)  # type: ignore[abstract]
    peer = RouterPeer()  # type: ignore[abstract]
    return ServiceParts(
        [
            Registration(
                "voxmesh.router.v1.RouterService",
                router,
                pb_grpc.add_RouterServiceServicer_to_server,
            ),
            Registration(
                "voxmesh.router.v1.RouterPeerService",
                peer,
                router_peer_service_pb2_grpc.add_RouterPeerServiceServicer_to_server,
            ),
        ],
        started_hooks=[router.bind],
    )
