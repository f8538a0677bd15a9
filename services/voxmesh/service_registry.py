"""What each service kind serves: its servicers, wired into the shared ServiceRunner.

`type: ignore[abstract]`: the generated stubs declare every RPC abstract; RPCs not built yet
are filled in at import by ``fill_unbuilt_rpcs``, which mypy cannot see.
"""

from __future__ import annotations

from voxmesh.core.service_runner import Registration, ServiceRunner, StartedHook
from voxmesh.core.settings import ServiceKind, Settings


def _registrations(
    kind: ServiceKind, settings: Settings
) -> tuple[list[Registration], list[StartedHook]]:
    hooks: list[StartedHook] = []
    if kind == "router":
        from voxmesh.router.node_router import NodeRouter
        from voxmesh.router.router_peer import RouterPeer
        from voxmesh.router.v1 import router_peer_service_pb2_grpc, router_service_pb2_grpc

        router = NodeRouter(settings)  # type: ignore[abstract]
        hooks.append(router.bind)
        return [
            Registration(
                "voxmesh.router.v1.RouterService",
                router,
                router_service_pb2_grpc.add_RouterServiceServicer_to_server,
            ),
            Registration(
                "voxmesh.router.v1.RouterPeerService",
                RouterPeer(),  # type: ignore[abstract]
                router_peer_service_pb2_grpc.add_RouterPeerServiceServicer_to_server,
            ),
        ], hooks
    if kind == "header":
        from voxmesh.header.header_store import HeaderStore
        from voxmesh.header.v1 import header_service_pb2_grpc

        return [
            Registration(
                "voxmesh.header.v1.HeaderService",
                HeaderStore(),  # type: ignore[abstract]
                header_service_pb2_grpc.add_HeaderServiceServicer_to_server,
            )
        ], hooks
    if kind == "body":
        from voxmesh.body.body_store import BodyStore
        from voxmesh.body.v1 import body_service_pb2_grpc

        return [
            Registration(
                "voxmesh.body.v1.BodyService",
                BodyStore(),  # type: ignore[abstract]
                body_service_pb2_grpc.add_BodyServiceServicer_to_server,
            )
        ], hooks
    from voxmesh.notification.notification_sender import NotificationSender
    from voxmesh.notification.v1 import notification_service_pb2_grpc

    return [
        Registration(
            "voxmesh.notification.v1.NotificationService",
            NotificationSender(),  # type: ignore[abstract]
            notification_service_pb2_grpc.add_NotificationServiceServicer_to_server,
        )
    ], hooks


def build_runner(
    kind: ServiceKind, settings: Settings, port: int | None = None, metrics_port: int | None = None
) -> ServiceRunner:
    registrations, hooks = _registrations(kind, settings)
    return ServiceRunner(
        kind, settings, registrations, port=port, metrics_port=metrics_port, started_hooks=hooks
    )
