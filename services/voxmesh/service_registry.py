"""What each service kind serves: each service module's factory, wired into the ServiceRunner.

Service modules declare their servicers as subclasses of the generated servicer bases; RPCs
not built yet are filled in at import by ``fill_unbuilt_rpcs``, which mypy cannot see (hence
the `type: ignore[abstract]` on such classes' construction in the factories).
"""

from __future__ import annotations

from voxmesh.core.dynamic_config import DynamicSettings
from voxmesh.core.ring_membership import RingMembership
from voxmesh.core.service_runner import ServiceParts, ServiceRunner
from voxmesh.core.settings import ServiceKind, Settings


def service_parts(kind: ServiceKind, settings: Settings) -> ServiceParts:
    if kind == "router":
        from voxmesh.router.node_router import create_router_service

        return create_router_service(settings)
    if kind == "header":
        from voxmesh.header.header_store import create_header_service

        return create_header_service(settings)
    if kind == "body":
        from voxmesh.body.body_store import create_body_service

        return create_body_service(settings)
    from voxmesh.notification.notification_sender import create_notification_service

    return create_notification_service(settings)


def build_runner(
    kind: ServiceKind,
    settings: Settings,
    port: int | None = None,
    metrics_port: int | None = None,
    join_ring: bool = False,
    internal_port: int | None = None,
) -> ServiceRunner:
    """A runner for ``kind``; with ``join_ring`` it registers in etcd (keeps retrying)."""
    parts = service_parts(kind, settings)
    # A router watches the rings in any case (its own membership object); registering is
    # what `voxmesh serve` asks for, not in-process test servers.
    membership = parts.membership
    if membership is None and join_ring:
        membership = RingMembership(settings, ())
    return ServiceRunner(
        kind,
        settings,
        parts.registrations,
        port=port,
        metrics_port=metrics_port,
        internal_port=internal_port,
        started_hooks=parts.started_hooks,
        startup_hooks=parts.startup_hooks,
        shutdown_hooks=parts.shutdown_hooks,
        interceptors=parts.interceptors,
        membership=membership,
        register_in_ring=join_ring,
        settings_listeners=parts.settings_listeners,
        dynamic=DynamicSettings(settings) if join_ring else None,
    )
