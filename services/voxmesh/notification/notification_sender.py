"""NotificationService: push registrations, pushes to offline users, unread counts."""

from __future__ import annotations

from voxmesh.core.service_runner import Registration, ServiceParts
from voxmesh.core.settings import Settings
from voxmesh.core.unbuilt_rpcs import fill_unbuilt_rpcs
from voxmesh.notification.v1 import notification_service_pb2 as pb
from voxmesh.notification.v1 import notification_service_pb2_grpc as pb_grpc


class NotificationSender(pb_grpc.NotificationServiceServicer):
    pass


fill_unbuilt_rpcs(
    NotificationSender,
    pb.DESCRIPTOR.services_by_name["NotificationService"],
    "the notification sender (pushes, unread counts, presence)",
)


def create_notification_service(settings: Settings) -> ServiceParts:
    servicer = NotificationSender()  # type: ignore[abstract]
    return ServiceParts(
        [
            Registration(
                "voxmesh.notification.v1.NotificationService",
                servicer,
                pb_grpc.add_NotificationServiceServicer_to_server,
            )
        ]
    )
