"""RouterPeerService: router-to-router relay of live messages and events."""

from __future__ import annotations

from voxmesh.core.unbuilt_rpcs import fill_unbuilt_rpcs
from voxmesh.router.v1 import router_peer_service_pb2 as pb
from voxmesh.router.v1 import router_peer_service_pb2_grpc as pb_grpc


class RouterPeer(pb_grpc.RouterPeerServiceServicer):
    pass


fill_unbuilt_rpcs(
    RouterPeer,
    pb.DESCRIPTOR.services_by_name["RouterPeerService"],
    "rings on etcd (router-to-router relay)",
)
