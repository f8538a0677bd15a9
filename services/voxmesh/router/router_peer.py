"""RouterPeerService: the receiving end of router-to-router relay links."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from voxmesh.common.v1 import update_pb2
from voxmesh.core.ids import require_id
from voxmesh.core.ring_membership import RingMembership
from voxmesh.core.telemetry import continued_span
from voxmesh.router.device_hub import DeviceHub
from voxmesh.router.presence_tracker import PresenceTracker
from voxmesh.router.updates_stream import UpdatesStreamer
from voxmesh.router.v1 import router_peer_service_pb2 as pb
from voxmesh.router.v1 import router_peer_service_pb2_grpc as pb_grpc

# Frames a source router may have unacknowledged on a Relay link.
RELAY_WINDOW_FRAMES = 64


class RouterPeer(pb_grpc.RouterPeerServiceServicer):
    def __init__(
        self,
        hub: DeviceHub,
        membership: RingMembership,
        updates: UpdatesStreamer,
        presence: PresenceTracker,
    ) -> None:
        self._hub = hub
        self._updates = updates
        self._presence = presence
        self._membership = membership
        self.node_id = ""
        # The user's home router node id: the router sets the one that skips suspect routers.
        self.home_of: Callable[[str], str | None] = lambda user: self._membership.ring(
            "router"
        ).home(user)

    def bind(self, node_id: str, address: str) -> None:
        self.node_id = node_id

    def _thread_news(self, event: bytes, user_ids: Sequence[str]) -> None:
        """New members of a thread: presence tells them about each other (see PresenceTracker)."""
        parsed = update_pb2.UpdateEvent.FromString(event)
        if parsed.HasField("thread_changed"):
            self._presence.thread_changed(parsed.thread_changed, list(user_ids))

    def _deliver(
        self, user_ids: list[str], event: update_pb2.UpdateEvent, exclude_device: str
    ) -> tuple[list[str], int]:
        """Hand to local devices; report users this router is no longer home for."""
        delivered = 0
        if event.HasField("thread_changed"):
            self._presence.thread_changed(event.thread_changed, user_ids)
        for user in user_ids:
            skip = (user, exclude_device) if exclude_device else None
            delivered += self._hub.deliver([user], event, skip)
        ring = self._membership.ring("router")
        moved = [u for u in user_ids if len(ring) and self.home_of(u) != self.node_id]
        return moved, delivered

    async def Relay(
        self, request_iterator: AsyncIterator[pb.RelayRequest], context: Any
    ) -> AsyncIterator[pb.RelayResponse]:
        """Each frame is handed to device streams at once (never waits) and acked with the
        window the source may run ahead by; users neither connected nor homed here come back
        as moved (the source resends to their new home). Event bytes go to the devices as
        they came, undecoded."""
        async for frame in request_iterator:
            ring = self._membership.ring("router")
            check_home = len(ring) > 0
            moved: list[str] = []
            for entry in frame.entries:
                if not entry.ephemeral:  # durable events only (never live chunks): rare
                    self._thread_news(entry.event, entry.user_ids)
                if entry.ephemeral or not entry.traceparent:
                    self._deliver_entry(entry, ring, check_home, moved)
                else:
                    # A durable event (a start, a state change) joins its sender's trace.
                    with continued_span("voxmesh.router.RelayDeliver", entry.traceparent):
                        self._deliver_entry(entry, ring, check_home, moved)
            yield pb.RelayResponse(
                acked_frame_seq=frame.frame_seq,
                window_frames=RELAY_WINDOW_FRAMES,
                moved_user_ids=moved,
            )

    def _deliver_entry(
        self, entry: pb.RelayEntry, ring: Any, check_home: bool, moved: list[str]
    ) -> None:
        exclude = entry.exclude_device_id
        for user in entry.user_ids:
            if self._hub.is_online(user):  # still connected here: delivered here
                self._hub.deliver_raw([user], entry.event, (user, exclude) if exclude else None)
            elif check_home and self.home_of(user) != self.node_id:
                moved.append(user)

    async def DeliverEvent(
        self, request: pb.DeliverEventRequest, context: Any
    ) -> pb.DeliverEventResponse:
        moved, delivered = self._deliver(
            list(request.user_ids), request.event, request.exclude_device_id
        )
        return pb.DeliverEventResponse(moved_user_ids=moved, delivered_device_count=delivered)

    async def ProxyUpdates(
        self, request: pb.ProxyUpdatesRequest, context: Any
    ) -> AsyncIterator[pb.ProxyUpdatesResponse]:
        """The user's own updates stream, served here for the router the device reached.

        The device's token was verified there; if this router is no longer the user's home,
        the stream ends with the same redirect reason a direct stream would (the device
        reconnects through the gateway and lands on a router that proxies to the new home).
        """
        user = require_id(request.user_id, "user_id")
        async for frame in self._updates.stream(
            user, request.request.device_id, request.request.cursor
        ):
            # Messages or spliced wire bytes, sent as they are (SplicedUpdatesInterceptor).
            yield frame  # type: ignore[misc]

    async def ProxySetPresence(
        self, request: pb.ProxySetPresenceRequest, context: Any
    ) -> pb.ProxySetPresenceResponse:
        user = require_id(request.user_id, "user_id")
        presence = self._presence.set_presence(
            user, request.request.device_id, request.request.state
        )
        return pb.ProxySetPresenceResponse(presence=presence)
