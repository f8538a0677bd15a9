"""Channels to the other nodes of the mesh, chosen by the rings.

A call keyed by a thread goes to the thread's header node, by a message to its body node,
by a user to the user's home router. A node that just failed a call is skipped ("suspect")
until its lease expires and the ring drops it, so traffic moves to the next node of the
preference list at once. With no ring known yet (etcd unreachable), the configured single
addresses are used, so one node per kind still works.

Every mesh channel is made here, to the other process's internal port, over mutual TLS:
this process presents its own certificate and checks that the server's names the kind it
meant to call (``mesh_identity.server_name``). When the certificate files rotate, new
channels are made with the new ones; calls already open finish on the old channels.
"""

from __future__ import annotations

import time

import grpc

from voxmesh.body.v1 import body_service_pb2_grpc as body_grpc
from voxmesh.core.domain_errors import Unavailable
from voxmesh.core.mesh_tls import ReloadingTls, mesh_files, mesh_target_options
from voxmesh.core.ring_membership import Member, RingMembership
from voxmesh.core.settings import SERVICE_KINDS, ServiceKind, Settings
from voxmesh.core.telemetry import client_interceptors
from voxmesh.header.v1 import header_service_pb2_grpc as header_grpc
from voxmesh.router.v1 import router_peer_service_pb2_grpc as peer_grpc

RING_KINDS = ("router", "header", "body", "notification")


class MeshClients:
    def __init__(
        self, settings: Settings, membership: RingMembership, own_kind: ServiceKind
    ) -> None:
        self._settings = settings
        self.membership = membership
        self._own_kind = own_kind
        self._tls: ReloadingTls | None = None
        self._tls_generation = 0
        self._channels: dict[str, grpc.aio.Channel] = {}
        # Channels made with certificates since rotated: calls open on them finish there.
        self._retired: list[grpc.aio.Channel] = []
        self._suspect_until: dict[str, float] = {}
        limit = settings.limits.max_grpc_message_bytes
        self._options = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.keepalive_time_ms", 10_000),
            # A node that restarts is reachable again within moments: do not back off for
            # minutes (gRPC's default) before trying it again.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]

    def reconfigure(self, settings: Settings) -> None:
        self._settings = settings
        self.membership.reconfigure(settings)

    def _identity(self) -> ReloadingTls:
        """This process's certificate (read at first use, then followed on disk)."""
        if self._tls is None:
            files = mesh_files(self._settings, self._own_kind)
            self._tls = ReloadingTls(files, self._settings.tls.reload_check_s)
            self._tls_generation = self._tls.generation
        self._tls.current()
        if self._tls.generation != self._tls_generation:
            self._tls_generation = self._tls.generation
            self._retired.extend(self._channels.values())
            self._channels.clear()
        return self._tls

    def _kind_of(self, address: str) -> str:
        for kind in self.membership.kinds:
            if any(m.mesh_address == address for m in self.membership.members(kind)):
                return kind
        for kind in SERVICE_KINDS:
            if address == self._configured(kind):
                return kind
        raise Unavailable(f"{address} is not a known mesh member")

    def _configured(self, kind: str) -> str:
        return f"{self._settings.host}:{self._settings.service(kind).internal_port}"  # type: ignore[arg-type]

    def channel(self, address: str, kind: str | None = None) -> grpc.aio.Channel:
        """The mutual-TLS channel to the internal ``address`` of a process of ``kind``
        (looked up in the rings when not given)."""
        tls = self._identity()
        channel = self._channels.get(address)
        if channel is None:
            options = [
                *self._options,
                *mesh_target_options(self._settings, kind or self._kind_of(address)),
            ]
            channel = grpc.aio.secure_channel(
                address, tls.channel_credentials(), options, interceptors=client_interceptors()
            )
            self._channels[address] = channel
        return channel

    def suspect(self, address: str) -> None:
        """``address`` failed: skip it until its lease has had time to expire."""
        self._suspect_until[address] = time.monotonic() + self._settings.rings.suspect_s

    def _healthy(self, member: Member) -> bool:
        until = self._suspect_until.get(member.mesh_address)
        return until is None or until < time.monotonic()

    def candidates(self, kind: str, key: str) -> list[str]:
        """Addresses for ``key``, home first, suspects last; the configured one if no ring."""
        members = self.membership.preference_list(kind, key)
        if not members:
            return [self._configured(kind)]
        ordered = [m for m in members if self._healthy(m)] + [
            m for m in members if not self._healthy(m)
        ]
        return [m.mesh_address for m in ordered]

    def header(self, key: str) -> header_grpc.HeaderServiceAsyncStub:
        return self.header_node(key)[1]

    def header_node(self, key: str) -> tuple[str, header_grpc.HeaderServiceAsyncStub]:
        """The header node for ``key`` and a stub to it (the address, to mark it suspect)."""
        address = self.candidates("header", key)[0]
        return address, header_grpc.HeaderServiceStub(self.channel(address, "header"))

    def body(self, message_id: str) -> tuple[str, body_grpc.BodyServiceAsyncStub]:
        address = self.candidates("body", message_id)[0]
        return address, body_grpc.BodyServiceStub(self.channel(address, "body"))

    def peer(self, address: str) -> peer_grpc.RouterPeerServiceAsyncStub:
        """RouterPeerService of the router whose internal address is ``address``."""
        return peer_grpc.RouterPeerServiceStub(self.channel(address, "router"))

    def routers_for(self, user_id: str) -> list[Member]:
        return self.membership.preference_list("router", user_id)

    async def close(self) -> None:
        for channel in [*self._channels.values(), *self._retired]:
            await channel.close(None)
        self._channels.clear()
        self._retired.clear()
