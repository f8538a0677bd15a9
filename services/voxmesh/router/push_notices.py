"""Router -> notification sender: what the notification ring needs to know, never awaited by
the live path.

Message starts and ends (NotifyMessage), marks (ClearUnread) and mutes (SetThreadMute) are
queued, bounded, and sent by a few workers that retry a failing node with backoff (every
call is idempotent at the notification sender); a notice that finds the queue full is
dropped and counted. Live devices are reported as leases (ReportPresence) by one flusher
that coalesces a device's changes and renews every live device before its lease runs out.

Ordering that matters: a NotifyMessage waits (briefly) until every live report issued
before it has been applied, so a device that connected or disconnected just before a
message started is pushed to, or not, by what it really was.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import prometheus_client
import tenacity
from google.protobuf import duration_pb2, timestamp_pb2

from voxmesh.common.v1 import device_pb2, mark_pb2, message_pb2, thread_pb2
from voxmesh.core.domain_errors import PermissionDenied, Unavailable
from voxmesh.core.ids import require_id
from voxmesh.core.mesh_clients import MeshClients
from voxmesh.core.settings import Settings
from voxmesh.core.structured_logging import get_logger
from voxmesh.notification.v1 import notification_service_pb2 as n_pb
from voxmesh.router.device_hub import DeviceHub

_log = get_logger(__name__)

NOTICES = prometheus_client.Counter(
    "voxmesh_router_notices_total",
    "Notices to the notification sender, by method and outcome (sent, dropped, failed).",
    ["method", "outcome"],
)
NOTICES_QUEUED = prometheus_client.Gauge(
    "voxmesh_router_notices_queued", "Notices waiting for a worker."
)

_NOTIFIED_STATES = (
    message_pb2.MESSAGE_STATE_LIVE,
    message_pb2.MESSAGE_STATE_COMPLETE,
    message_pb2.MESSAGE_STATE_RECALLED,
    message_pb2.MESSAGE_STATE_DELETED,
)
_RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, Unavailable):  # no notification node could take it just now
        return True
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _RETRYABLE


@dataclass(frozen=True)
class _Notice:
    method: str
    key: str  # user id: picks the notification node
    request: Any
    after_report: int  # live reports issued before it, which must be applied first


class PushNotices:
    def __init__(self, settings: Settings, hub: DeviceHub, mesh: MeshClients) -> None:
        self._settings = settings.presence
        self._hub = hub
        self._mesh = mesh
        self._queue: asyncio.Queue[_Notice] = asyncio.Queue(self._settings.notices_queue_max)
        self._tasks: list[asyncio.Task[None]] = []
        # Live reports: the devices with an open updates stream here, and changes to send.
        self._connected: set[tuple[str, str]] = set()
        # (user, device) -> (live, issue number, when it changed in ms; 0 = a renewal)
        self._dirty: dict[tuple[str, str], tuple[bool, int, int]] = {}
        self._wake = asyncio.Event()
        self._issued = 0
        self._applied = 0
        self._applied_changed = asyncio.Condition()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work()) for _ in range(self._settings.notices_concurrency)
        ]
        self._tasks.append(asyncio.create_task(self._report_loop()))

    async def close(self, grace_s: float = 2.0) -> None:
        """Give queued notices and live reports a moment to go out, then stop."""
        deadline = time.monotonic() + grace_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), grace_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self._wait_for_reports(self._issued), max(0.0, deadline - time.monotonic())
            )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the notification node of a user ---------------------------------------------------

    async def _call(self, method: str, key: str, request: Any) -> Any:
        # Over the notification ring: a failed node is skipped within the call (the mesh's
        # retry policy); a ring that cannot serve answers Unavailable, retried by the queue.
        return await self._mesh.call(
            "notification", key, method, request, timeout=self._settings.notices_call_timeout_s
        )

    # -- client calls (awaited: the device asked) ------------------------------------------

    async def register_device(self, user_id: str, device: device_pb2.Device) -> device_pb2.Device:
        if device.user_id and device.user_id != user_id:
            raise PermissionDenied("a device can only be registered for the caller")
        stored = device_pb2.Device()
        stored.CopyFrom(device)
        stored.user_id = user_id
        reply = await self._call(
            "RegisterDevice", user_id, n_pb.RegisterDeviceRequest(device=stored)
        )
        return reply.device  # type: ignore[no-any-return]

    async def unregister_device(self, user_id: str, device_id: str) -> bool:
        require_id(device_id, "device_id")
        reply = await self._call(
            "UnregisterDevice",
            user_id,
            n_pb.UnregisterDeviceRequest(user_id=user_id, device_id=device_id),
        )
        return bool(reply.removed)

    async def unread_counts(
        self, user_id: str, thread_ids: list[str]
    ) -> tuple[int, dict[str, int]]:
        reply = await self._call(
            "GetUnreadCounts",
            user_id,
            n_pb.GetUnreadCountsRequest(user_id=user_id, thread_ids=thread_ids),
        )
        return int(reply.total), dict(reply.thread_counts)

    async def set_do_not_disturb(
        self, user_id: str, enabled: bool, until: timestamp_pb2.Timestamp | None
    ) -> tuple[bool, timestamp_pb2.Timestamp | None]:
        request = n_pb.SetDoNotDisturbRequest(user_id=user_id, enabled=enabled)
        if until is not None:
            request.until.CopyFrom(until)
        reply = await self._call("SetDoNotDisturb", user_id, request)
        return bool(reply.enabled), (reply.until if reply.HasField("until") else None)

    # -- notices (queued: never awaited by the caller) -------------------------------------

    def _submit(self, method: str, key: str, request: Any) -> None:
        try:
            self._queue.put_nowait(_Notice(method, key, request, self._issued))
        except asyncio.QueueFull:
            NOTICES.labels(method, "dropped").inc()
            return
        NOTICES_QUEUED.set(self._queue.qsize())

    def message_started(self, header: message_pb2.MessageHeader, member_ids: Sequence[str]) -> None:
        self._notify(header, member_ids)

    def message_ended(self, header: message_pb2.MessageHeader, member_ids: Sequence[str]) -> None:
        self._notify(header, member_ids)

    def _notify(self, header: message_pb2.MessageHeader, member_ids: Sequence[str]) -> None:
        if header.state not in _NOTIFIED_STATES:
            return
        by_node: dict[str, list[str]] = {}
        for user in dict.fromkeys(member_ids):
            if user != header.sender_user_id:
                by_node.setdefault(self._mesh.candidates("notification", user)[0], []).append(user)
        # One request per notification node, naming the users it homes.
        for users in by_node.values():
            request = n_pb.NotifyMessageRequest(user_ids=users, header=header)
            self._submit("NotifyMessage", users[0], request)

    def mark_made(self, mark: mark_pb2.Mark) -> None:
        self._submit(
            "ClearUnread",
            mark.user_id,
            n_pb.ClearUnreadRequest(
                user_id=mark.user_id, thread_id=mark.thread_id, up_to_seq=mark.seq
            ),
        )

    async def mute_changed(
        self, user_id: str, thread_id: str, state: thread_pb2.ThreadUserState
    ) -> None:
        """Applied before MuteThread answers when the node is up, so the next push obeys it;
        queued (retried) when it is not. The header store keeps the mute in any case."""
        request = n_pb.SetThreadMuteRequest(user_id=user_id, thread_id=thread_id, muted=state.muted)
        if state.HasField("muted_until"):
            request.muted_until.CopyFrom(state.muted_until)
        try:
            await self._call("SetThreadMute", user_id, request)
            NOTICES.labels("SetThreadMute", "sent").inc()
        except (grpc.aio.AioRpcError, Unavailable):
            self._submit("SetThreadMute", user_id, request)

    async def _work(self) -> None:
        while True:
            notice = await self._queue.get()
            NOTICES_QUEUED.set(self._queue.qsize())
            try:
                await self._wait_for_reports(notice.after_report)
                async for attempt in tenacity.AsyncRetrying(
                    stop=tenacity.stop_after_delay(self._settings.notices_retry_deadline_s),
                    wait=tenacity.wait_random_exponential(multiplier=0.05, max=2.0),
                    retry=tenacity.retry_if_exception(_retryable),
                    reraise=True,
                ):
                    with attempt:
                        await self._call(notice.method, notice.key, notice.request)
                NOTICES.labels(notice.method, "sent").inc()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                NOTICES.labels(notice.method, "failed").inc()
                _log.warning(
                    "notice to the notification sender failed",
                    method=notice.method,
                    error=repr(exc),
                )
            finally:
                self._queue.task_done()

    # -- live devices ----------------------------------------------------------------------

    def device_changed(self, user_id: str, device_id: str, live: bool) -> None:
        """A device opened or closed its updates stream here (DeviceHub listener)."""
        key = (user_id, device_id)
        if live:
            self._connected.add(key)
        else:
            self._connected.discard(key)
        self._issued += 1
        self._dirty[key] = (live, self._issued, int(time.time() * 1000))
        self._wake.set()

    async def _wait_for_reports(self, issued: int) -> None:
        if self._applied >= issued:
            return
        with contextlib.suppress(TimeoutError):
            async with self._applied_changed:
                await asyncio.wait_for(
                    self._applied_changed.wait_for(lambda: self._applied >= issued),
                    self._settings.notices_call_timeout_s,
                )

    async def _report_loop(self) -> None:
        ttl_s = self._settings.live_report_ttl_s
        ttl = duration_pb2.Duration()
        ttl.FromMilliseconds(int(ttl_s * 1000))
        next_renewal = time.monotonic() + ttl_s / 3
        limit = asyncio.Semaphore(self._settings.notices_concurrency)

        async def report(user: str, device: str, live: bool, changed_ms: int) -> None:
            request = n_pb.ReportPresenceRequest(user_id=user, device_id=device, live=live)
            if live:
                request.ttl.CopyFrom(ttl)
            if changed_ms:
                request.observed_at.FromMilliseconds(changed_ms)
            async with limit:
                try:
                    async for attempt in tenacity.AsyncRetrying(
                        stop=tenacity.stop_after_attempt(3),
                        wait=tenacity.wait_random_exponential(multiplier=0.05, max=0.5),
                        retry=tenacity.retry_if_exception(_retryable),
                        reraise=True,
                    ):
                        with attempt:
                            await self._call("ReportPresence", user, request)
                    NOTICES.labels("ReportPresence", "sent").inc()
                except (grpc.aio.AioRpcError, Unavailable) as exc:
                    # A lost "live" is renewed soon; a lost "gone" lapses with its lease.
                    NOTICES.labels("ReportPresence", "failed").inc()
                    _log.warning("live report failed", user_id=user, error=str(exc))

        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_renewal - time.monotonic()))
            self._wake.clear()
            if time.monotonic() >= next_renewal:
                for key in self._connected:
                    self._dirty.setdefault(key, (True, 0, 0))
                next_renewal = time.monotonic() + ttl_s / 3
            batch, self._dirty = self._dirty, {}
            if not batch:
                continue
            newest = max(issued for _, issued, _ in batch.values())
            await asyncio.gather(
                *(
                    report(user, device, live, changed_ms)
                    for (user, device), (live, _, changed_ms) in batch.items()
                )
            )
            async with self._applied_changed:
                self._applied = max(self._applied, newest)
                self._applied_changed.notify_all()
