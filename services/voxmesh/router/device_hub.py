"""The devices connected to this router, and the hand-off of events to their updates streams.

Delivery never waits: each device has a bounded queue, and a device that falls behind is
disconnected (it resumes from its cursor, replaying durable events from the header store and
reading missed audio from the body store) rather than slowing the speaker.

Queues hold serialized ``UpdateEvent``s: an event is serialized once however many devices it
goes to, and one relayed from a peer router is queued as the bytes that came, never decoded
(the updates stream splices them into its frames).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import prometheus_client

from voxmesh.common.v1 import update_pb2
from voxmesh.core.structured_logging import get_logger

_log = get_logger(__name__)

DEVICES_CONNECTED = prometheus_client.Gauge(
    "voxmesh_router_devices_connected", "Devices with an open updates stream on this router."
)
EVENTS_DELIVERED = prometheus_client.Counter(
    "voxmesh_router_events_delivered_total", "Events queued to device updates streams."
)
DEVICES_EVICTED = prometheus_client.Counter(
    "voxmesh_router_devices_evicted_total", "Updates streams closed because the device fell behind."
)


@dataclass(eq=False)
class DeviceStream:
    user_id: str
    device_id: str
    queue_max: int
    pending: deque[bytes] = field(default_factory=deque)  # serialized UpdateEvents
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed_reason: str | None = None

    def offer(self, event: bytes) -> None:
        if self.closed_reason is not None:
            return
        if len(self.pending) >= self.queue_max:
            self.close(
                f"device {self.device_id} fell {self.queue_max} events behind: "
                f"reopen the updates stream from your last cursor"
            )
            DEVICES_EVICTED.inc()
            return
        self.pending.append(event)
        EVENTS_DELIVERED.inc()
        self.wake.set()

    def close(self, reason: str) -> None:
        self.closed_reason = reason
        self.wake.set()

    async def next_batch(self, timeout_s: float, max_events: int = 256) -> list[bytes]:
        """Queued events (at most ``max_events``), or [] after ``timeout_s`` with none."""
        if not self.pending and self.closed_reason is None:
            try:
                await asyncio.wait_for(self.wake.wait(), timeout_s)
            except TimeoutError:
                return []
        batch: list[bytes] = []
        while self.pending and len(batch) < max_events:
            batch.append(self.pending.popleft())
        if not self.pending:
            self.wake.clear()
        return batch


class DeviceHub:
    def __init__(self, queue_max: int) -> None:
        self.queue_max = queue_max  # for streams opened from now on (dynamic)
        self._by_user: dict[str, dict[str, DeviceStream]] = {}
        # Told (user, device, live) when a device's stream opens or its last one closes:
        # presence and the notification sender's live-device leases. They must not block.
        self.listeners: list[Callable[[str, str, bool], None]] = []

    def _tell(self, user_id: str, device_id: str, live: bool) -> None:
        for listener in self.listeners:
            try:
                listener(user_id, device_id, live)
            except Exception:
                _log.exception("device listener failed", user_id=user_id)

    def connect(self, user_id: str, device_id: str) -> DeviceStream:
        """A new stream for the device; an older stream of the same device is closed."""
        devices = self._by_user.setdefault(user_id, {})
        old = devices.get(device_id)
        if old is not None:
            old.close(f"device {device_id} opened a newer updates stream")
        stream = DeviceStream(user_id, device_id, self.queue_max)
        devices[device_id] = stream
        DEVICES_CONNECTED.set(self.device_count())
        self._tell(user_id, device_id, True)
        return stream

    def disconnect(self, stream: DeviceStream) -> None:
        devices = self._by_user.get(stream.user_id)
        if devices is not None and devices.get(stream.device_id) is stream:
            del devices[stream.device_id]
            if not devices:
                del self._by_user[stream.user_id]
            self._tell(stream.user_id, stream.device_id, False)
        DEVICES_CONNECTED.set(self.device_count())

    def deliver(
        self,
        user_ids: Iterable[str],
        event: update_pb2.UpdateEvent,
        skip_device: tuple[str, str] | None = None,
    ) -> int:
        """Queue ``event`` on every connected device of ``user_ids``; returns how many."""
        streams = self._streams(user_ids, skip_device)
        if streams:
            raw = event.SerializeToString()
            for stream in streams:
                stream.offer(raw)
        return len(streams)

    def deliver_raw(
        self, user_ids: Iterable[str], event: bytes, skip_device: tuple[str, str] | None = None
    ) -> int:
        """``deliver`` for an event already serialized (from a peer router): not decoded."""
        streams = self._streams(user_ids, skip_device)
        for stream in streams:
            stream.offer(event)
        return len(streams)

    def _streams(
        self, user_ids: Iterable[str], skip_device: tuple[str, str] | None
    ) -> list[DeviceStream]:
        return [
            stream
            for user_id in user_ids
            for stream in self._by_user.get(user_id, {}).values()
            if skip_device != (stream.user_id, stream.device_id)
        ]

    def close_users(self, keep: Callable[[str], bool], reason: str) -> int:
        """Close the streams of every user for whom ``keep(user)`` is false."""
        closed = 0
        for user_id, devices in list(self._by_user.items()):
            if not keep(user_id):
                for stream in devices.values():
                    stream.close(reason)
                    closed += 1
        return closed

    def is_online(self, user_id: str) -> bool:
        return bool(self._by_user.get(user_id))

    def device_count(self) -> int:
        return sum(len(devices) for devices in self._by_user.values())
