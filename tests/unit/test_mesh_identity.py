"""The caller table and SPIFFE ids, as pure functions (no servers)."""

from __future__ import annotations

import pytest

from voxmesh.core.domain_errors import PermissionDenied, Unauthenticated
from voxmesh.core.mesh_identity import (
    ALLOWED_CALLERS,
    MESH_KINDS,
    MeshPeer,
    authorize,
    parse_spiffe_id,
    server_name,
    spiffe_id,
)

EXPECTED = {
    "voxmesh.router.v1.RouterPeerService": {"router"},
    "voxmesh.header.v1.HeaderService": {"router", "body", "notification"},
    "voxmesh.body.v1.BodyService": {"router", "body"},
    "voxmesh.notification.v1.NotificationService": {"router"},
    "grpc.health.v1.Health": set(MESH_KINDS),
}


def test_spiffe_ids_round_trip_and_foreign_ones_are_not_ours() -> None:
    assert parse_spiffe_id(spiffe_id("voxmesh", "body", "b-1"), "voxmesh") == MeshPeer(
        "body", "b-1"
    )
    for foreign in (
        "spiffe://other/router/r1",  # another trust domain
        "spiffe://voxmesh/client/r1",  # not a mesh kind
        "spiffe://voxmesh/router/",  # no node
        "spiffe://voxmesh/router/a/b",  # a path, not a node
        "https://voxmesh/router/r1",
    ):
        assert parse_spiffe_id(foreign, "voxmesh") is None, foreign
    assert server_name("voxmesh", "header") == "header.voxmesh.internal"


@pytest.mark.parametrize("service", sorted(EXPECTED))
def test_each_service_accepts_exactly_its_callers(service: str) -> None:
    assert ALLOWED_CALLERS[service] == EXPECTED[service]
    for kind in MESH_KINDS:
        method = f"/{service}/AnyMethod"
        if kind in EXPECTED[service]:
            assert authorize(method, MeshPeer(kind, "n")) == MeshPeer(kind, "n")
        else:
            with pytest.raises(PermissionDenied, match=f"a {kind} may not call {service}"):
                authorize(method, MeshPeer(kind, "n"))


def test_no_identity_is_unauthenticated_and_unlisted_services_are_closed() -> None:
    with pytest.raises(Unauthenticated, match="names no mesh identity"):
        authorize("/voxmesh.header.v1.HeaderService/GetThread", None)
    with pytest.raises(PermissionDenied, match="not open to mesh callers"):
        authorize("/voxmesh.router.v1.RouterService/Send", MeshPeer("router", "n"))
