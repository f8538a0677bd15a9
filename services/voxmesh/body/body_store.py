"""BodyService: message bodies as ordered chunks (Cloud Storage / local files)."""

from __future__ import annotations

from voxmesh.body.v1 import body_service_pb2 as pb
from voxmesh.body.v1 import body_service_pb2_grpc as pb_grpc
from voxmesh.core.unbuilt_rpcs import fill_unbuilt_rpcs


class BodyStore(pb_grpc.BodyServiceServicer):
    pass


fill_unbuilt_rpcs(
    BodyStore,
    pb.DESCRIPTOR.services_by_name["BodyService"],
    "store-and-stream (body store on Cloud Storage)",
)
