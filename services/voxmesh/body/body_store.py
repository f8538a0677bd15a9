"""BodyService: message bodies as ordered chunks (Cloud Storage / local files)."""

from __future__ import annotations

from voxmesh.body.v1 import body_service_pb2 as pb
from voxmesh.body.v1 import body_service_pb2_grpc as pb_grpc
from voxmesh.core.service_runner import Registration, ServiceParts
from voxmesh.core.settings import Settings
from voxmesh.core.unbuilt_rpcs import fill_unbuilt_rpcs


class BodyStore(pb_grpc.BodyServiceServicer):
    pass


fill_unbuilt_rpcs(
    BodyStore,
    pb.DESCRIPTOR.services_by_name["BodyService"],
    "store-and-stream (body store on Cloud Storage)",
)


def create_body_service(settings: Settings) -> ServiceParts:
    servicer = BodyStore()  # type: ignore[abstract]
    return ServiceParts(
        [
            Registration(
                "voxmesh.body.v1.BodyService", servicer, pb_grpc.add_BodyServiceServicer_to_server
            )
        ]
    )
