"""HeaderService: threads, members, message headers and timelines (Spanner / SQLite)."""

from __future__ import annotations

from voxmesh.core.service_runner import Registration, ServiceParts
from voxmesh.core.settings import Settings
from voxmesh.core.unbuilt_rpcs import fill_unbuilt_rpcs
from voxmesh.header.v1 import header_service_pb2 as pb
from voxmesh.header.v1 import header_service_pb2_grpc as pb_grpc


class HeaderStore(pb_grpc.HeaderServiceServicer):
    pass


fill_unbuilt_rpcs(
    HeaderStore,
    pb.DESCRIPTOR.services_by_name["HeaderService"],
    "store-and-stream (header store on Cloud Spanner)",
)


def create_header_service(settings: Settings) -> ServiceParts:
    servicer = HeaderStore()  # type: ignore[abstract]
    return ServiceParts(
        [
            Registration(
                "voxmesh.header.v1.HeaderService",
                servicer,
                pb_grpc.add_HeaderServiceServicer_to_server,
            )
        ]
    )
