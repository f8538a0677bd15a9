"""Who may call what inside the mesh: caller identities from mutual TLS, and the one table.

Every mesh process holds a certificate whose URI SAN names it,
``spiffe://<trust domain>/<kind>/<node>``, and answers on its internal port only over
mutual TLS with certificates of the mesh CA. TLS itself refuses plaintext, a missing client
certificate, another CA's and expired certificates (the handshake fails, so the caller sees
UNAVAILABLE and no handler runs). For a verified certificate, ``CallerIdentityInterceptor``
reads the caller's kind from it and checks ``ALLOWED_CALLERS``: UNAUTHENTICATED when the
certificate names no mesh identity, PERMISSION_DENIED when that kind may not call the
service. Callers in turn check the server: they expect the DNS SAN
``<kind>.<trust domain>.internal`` of the kind they meant to reach.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from voxmesh.core.domain_errors import PermissionDenied, Unauthenticated
from voxmesh.core.rpc_interceptors import AroundInterceptor, restore

MESH_KINDS = ("router", "header", "body", "notification")
_ANY_MESH = frozenset(MESH_KINDS)

ROUTER_PEER_SERVICE = "voxmesh.router.v1.RouterPeerService"
HEADER_SERVICE = "voxmesh.header.v1.HeaderService"
BODY_SERVICE = "voxmesh.body.v1.BodyService"
NOTIFICATION_SERVICE = "voxmesh.notification.v1.NotificationService"
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = (
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)

# The one table: for each service on the internal port, the kinds of caller it accepts.
# Anything not listed is refused (PERMISSION_DENIED), so a new internal service must be
# added here before anyone can call it.
ALLOWED_CALLERS: Mapping[str, frozenset[str]] = {
    # Relay links and event delivery between routers.
    ROUTER_PEER_SERVICE: frozenset({"router"}),
    # Threads and headers: routers for clients, body nodes marking abandoned messages,
    # notification senders reading threads and unread state.
    HEADER_SERVICE: frozenset({"router", "body", "notification"}),
    # Bodies: routers writing and reading, body nodes recovering a peer's messages.
    BODY_SERVICE: frozenset({"router", "body"}),
    # Push registrations, live reports, notices: routers only.
    NOTIFICATION_SERVICE: frozenset({"router"}),
    # Any mesh member may probe any other.
    HEALTH_SERVICE: _ANY_MESH,
    **{name: _ANY_MESH for name in REFLECTION_SERVICES},
}


@dataclass(frozen=True)
class MeshPeer:
    """A verified caller: its kind and node name, from its certificate."""

    kind: str
    node: str

    @property
    def spiffe_id(self) -> str:
        return f"{self.kind}/{self.node}"


_peer: contextvars.ContextVar[MeshPeer | None] = contextvars.ContextVar("mesh_peer", default=None)


def current_peer() -> MeshPeer | None:
    """The mesh caller of the RPC being handled (None outside the internal port)."""
    return _peer.get()


def spiffe_id(trust_domain: str, kind: str, node: str) -> str:
    return f"spiffe://{trust_domain}/{kind}/{node}"


def server_name(trust_domain: str, kind: str) -> str:
    """The DNS SAN a caller expects of a server of ``kind`` (checked instead of the IP)."""
    return f"{kind}.{trust_domain}.internal"


def parse_spiffe_id(uri: str, trust_domain: str) -> MeshPeer | None:
    """``spiffe://<trust domain>/<kind>/<node>`` → MeshPeer; None if it is not one of ours."""
    prefix = f"spiffe://{trust_domain}/"
    if not uri.startswith(prefix):
        return None
    kind, _, node = uri[len(prefix) :].partition("/")
    if kind not in MESH_KINDS or not node or "/" in node:
        return None
    return MeshPeer(kind, node)


def service_of(method: str) -> str:
    """``/pkg.Service/Method`` → ``pkg.Service``."""
    return method.lstrip("/").partition("/")[0]


def authorize(method: str, peer: MeshPeer | None) -> MeshPeer:
    """The one rule: may ``peer`` call ``method``? Raises the precise refusal if not."""
    if peer is None:
        raise Unauthenticated(
            "the client certificate names no mesh identity "
            "(a URI SAN spiffe://<trust domain>/<kind>/<node>)"
        )
    service = service_of(method)
    allowed = ALLOWED_CALLERS.get(service)
    if allowed is None:
        raise PermissionDenied(f"{service} is not open to mesh callers")
    if peer.kind not in allowed:
        raise PermissionDenied(
            f"a {peer.kind} may not call {service} (allowed: {', '.join(sorted(allowed))})"
        )
    return peer


def _auth_values(context: grpc.aio.ServicerContext[Any, Any], key: str) -> list[str]:
    values = (context.auth_context() or {}).get(key, ())
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def peer_from_context(
    context: grpc.aio.ServicerContext[Any, Any], trust_domain: str
) -> MeshPeer | None:
    """The caller's mesh identity from its verified certificate's URI SANs, if any."""
    # grpc puts a certificate's SPIFFE id (one URI SAN) and all its URI SANs in the context.
    for uri in _auth_values(context, "peer_spiffe_id") or _auth_values(context, "peer_uri"):
        peer = parse_spiffe_id(uri, trust_domain)
        if peer is not None:
            return peer
    return None


class CallerIdentityInterceptor(AroundInterceptor):
    """On the internal port: every call's caller identity against ``ALLOWED_CALLERS``."""

    def __init__(self, trust_domain: str) -> None:
        self._trust_domain = trust_domain

    @asynccontextmanager
    async def around(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        peer = authorize(method, peer_from_context(context, self._trust_domain))
        structlog.contextvars.bind_contextvars(caller=peer.spiffe_id)
        reset = _peer.set(peer)
        try:
            yield
        finally:
            restore(_peer, reset, None)
            structlog.contextvars.unbind_contextvars("caller")
