"""NotificationService: push registrations, pushes to offline users, unread counts.

Routers tell this node when a message starts and when it completes (NotifyMessage), when a
mark is made (ClearUnread) and which devices have an open updates stream (ReportPresence,
leased). This node counts the message unread for each target and queues one push per
message per device for targets with no live device, unless the thread is muted or the user
is in do-not-disturb. Jobs are delivered from a durable Redis stream (see push_queue.py for
the delivery guarantee); a push that still fails after the retries is dead-lettered.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis

from voxmesh.common.v1 import device_pb2, message_pb2, thread_pb2
from voxmesh.core.domain_errors import InvalidArgument, Unavailable
from voxmesh.core.ids import require_id
from voxmesh.core.mesh_clients import MeshClients
from voxmesh.core.ring_membership import RingMembership
from voxmesh.core.service_runner import Registration, ServiceParts
from voxmesh.core.settings import Settings
from voxmesh.core.structured_logging import get_logger
from voxmesh.header.v1 import header_service_pb2 as header_pb
from voxmesh.notification.device_registry import DeviceRegistry
from voxmesh.notification.push_providers import (
    PushContent,
    PushFailed,
    PushProvider,
    create_providers,
)
from voxmesh.notification.push_queue import (
    PUSH_OUTCOMES,
    PushJob,
    PushQueue,
    PushWorker,
    push_id,
)
from voxmesh.notification.unread_counts import UnreadCounts
from voxmesh.notification.v1 import notification_service_pb2 as pb
from voxmesh.notification.v1 import notification_service_pb2_grpc as pb_grpc
from voxmesh.notification.webhook_targets import WebhookTargets

Context = grpc.aio.ServicerContext[Any, Any]

_log = get_logger(__name__)

_PUSHED_STATES = (message_pb2.MESSAGE_STATE_LIVE, message_pb2.MESSAGE_STATE_COMPLETE)
_GONE_STATES = (message_pb2.MESSAGE_STATE_RECALLED, message_pb2.MESSAGE_STATE_DELETED)
_PREVIEW_CHARS = 120
_TITLE_CACHE_S = 60.0
_PLATFORM_NAMES = {
    device_pb2.PLATFORM_WEBHOOK: "webhook",
    device_pb2.PLATFORM_FCM: "fcm",
    device_pb2.PLATFORM_APNS: "apns",
}


def _event_ms(header: message_pb2.MessageHeader) -> int:
    """Server time of what this notice announces: the start, or the completion."""
    if header.state == message_pb2.MESSAGE_STATE_COMPLETE and header.HasField("completed_at"):
        return int(header.completed_at.ToMilliseconds())
    if header.HasField("started_at"):
        return int(header.started_at.ToMilliseconds())
    return int(header.updated_at.ToMilliseconds())


def _enum_word(name: str) -> str:
    """MESSAGE_KIND_VOICE -> voice."""
    return name.rsplit("_", 1)[-1].lower()


def preview(header: message_pb2.MessageHeader) -> str:
    """What the push says about the message, in the sender's words where there are some."""
    kind = header.kind
    if kind == message_pb2.MESSAGE_KIND_TEXT and header.text:
        text = header.text.strip()
        return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 1] + "…"
    if kind == message_pb2.MESSAGE_KIND_VOICE:  # pushed at start: tap to listen live
        live = header.state == message_pb2.MESSAGE_STATE_LIVE
        return "is talking now" if live else "Voice message"
    if kind == message_pb2.MESSAGE_KIND_IMAGE:
        return header.text or "Photo"
    if kind == message_pb2.MESSAGE_KIND_FILE:
        return f"File: {header.file_name}" if header.file_name else "File"
    if kind == message_pb2.MESSAGE_KIND_LOCATION:
        return f"Location: {header.location.label}" if header.location.label else "Location"
    return "New message"


def _ms(stamp: Any, present: bool) -> int:
    return int(stamp.ToMilliseconds()) if present else 0


def redis_client(settings: Settings) -> aioredis.Redis:
    """Redis as configured: the local server, or Memorystore with AUTH and TLS."""
    redis = settings.redis
    password = Path(redis.password_file).read_text().strip() if redis.password_file else None
    tls: dict[str, Any] = (
        {"ssl": True, "ssl_ca_certs": redis.tls_ca_file} if redis.tls_ca_file else {}
    )
    return aioredis.Redis(
        host=settings.redis_host,
        port=redis.port,
        password=password,
        health_check_interval=30,
        **tls,
    )


class NotificationSender(pb_grpc.NotificationServiceServicer):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._push = settings.notification_sender
        self._redis = redis_client(settings)
        # Header nodes from the header ring (any one serves any thread; the thread's home
        # first); channels are made lazily, in the serving loop.
        self.membership = RingMembership(settings, ("header",))
        self._mesh = MeshClients(settings, self.membership, "notification")
        self._webhooks = WebhookTargets.from_settings(settings)
        self.registry = DeviceRegistry(self._redis, self._webhooks)
        self.unread = UnreadCounts(
            self._redis,
            self._mesh.header,
            self._push.unread_rebuild_max_per_thread,
            self._restore_mute,
        )
        self.queue = PushQueue(self._redis, self._push)
        self._providers: dict[int, PushProvider] = {}
        self._worker: PushWorker | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._titles: dict[str, tuple[float, str]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self._providers = create_providers(self._push, self._webhooks)
        self._mesh.start()  # the header ring's health probe

    def bind(self, node_id: str, address: str) -> None:
        """Start delivering once the node id is known: it names this node's consumer."""
        self._worker = PushWorker(self._redis, self._push, self._deliver, node_id)
        self._worker_task = asyncio.get_running_loop().create_task(self._worker.run())

    async def close(self) -> None:
        if self._worker is not None:
            await self._worker.stop(self._settings.notification.drain_grace_s)
        if self._worker_task is not None:
            self._worker_task.cancel()
            await asyncio.gather(self._worker_task, return_exceptions=True)
        for provider in self._providers.values():
            await provider.close()
        await self._mesh.close()
        await self._redis.aclose()

    # -- devices ---------------------------------------------------------------------------

    async def RegisterDevice(
        self, request: pb.RegisterDeviceRequest, context: Context
    ) -> pb.RegisterDeviceResponse:
        return pb.RegisterDeviceResponse(device=await self.registry.register(request.device))

    async def UnregisterDevice(
        self, request: pb.UnregisterDeviceRequest, context: Context
    ) -> pb.UnregisterDeviceResponse:
        removed = await self.registry.unregister(request.user_id, request.device_id)
        return pb.UnregisterDeviceResponse(removed=removed)

    async def ListDevices(
        self, request: pb.ListDevicesRequest, context: Context
    ) -> pb.ListDevicesResponse:
        require_id(request.user_id, "user_id")
        return pb.ListDevicesResponse(devices=await self.registry.devices(request.user_id))

    async def ReportPresence(
        self, request: pb.ReportPresenceRequest, context: Context
    ) -> pb.ReportPresenceResponse:
        require_id(request.user_id, "user_id")
        require_id(request.device_id, "device_id")
        ttl_s = request.ttl.ToTimedelta().total_seconds() if request.HasField("ttl") else 0.0
        if request.live and ttl_s <= 0:
            raise InvalidArgument("ttl is required for a live report (the router renews it)")
        ttl_s = min(ttl_s, self._push.max_live_report_ttl_s)
        observed_ms = request.observed_at.ToMilliseconds() if request.HasField("observed_at") else 0
        count = await self.registry.report_live(
            request.user_id, request.device_id, request.live, ttl_s, observed_ms
        )
        return pb.ReportPresenceResponse(live_device_count=count)

    # -- do-not-disturb and mutes ----------------------------------------------------------

    async def SetDoNotDisturb(
        self, request: pb.SetDoNotDisturbRequest, context: Context
    ) -> pb.SetDoNotDisturbResponse:
        require_id(request.user_id, "user_id")
        enabled, until_ms = await self.registry.set_dnd(
            request.user_id, request.enabled, _ms(request.until, request.HasField("until"))
        )
        response = pb.SetDoNotDisturbResponse(enabled=enabled)
        if until_ms:
            response.until.FromMilliseconds(until_ms)
        return response

    async def SetThreadMute(
        self, request: pb.SetThreadMuteRequest, context: Context
    ) -> pb.SetThreadMuteResponse:
        require_id(request.user_id, "user_id")
        require_id(request.thread_id, "thread_id")
        muted = await self.registry.set_mute(
            request.user_id,
            request.thread_id,
            request.muted,
            _ms(request.muted_until, request.HasField("muted_until")),
        )
        return pb.SetThreadMuteResponse(muted=muted)

    async def _restore_mute(self, user_id: str, thread: thread_pb2.Thread) -> None:
        state = thread.user_state
        if state.muted:
            until = _ms(state.muted_until, state.HasField("muted_until"))
            await self.registry.set_mute(user_id, thread.thread_id, True, until)

    # -- unread counts ---------------------------------------------------------------------

    async def GetUnreadCounts(
        self, request: pb.GetUnreadCountsRequest, context: Context
    ) -> pb.GetUnreadCountsResponse:
        require_id(request.user_id, "user_id")
        threads = [require_id(t, "thread_ids[]") for t in request.thread_ids]
        await self.unread.ensure(request.user_id)
        total, per_thread = await self.unread.counts(request.user_id, threads)
        return pb.GetUnreadCountsResponse(total=total, thread_counts=per_thread)

    async def ClearUnread(
        self, request: pb.ClearUnreadRequest, context: Context
    ) -> pb.ClearUnreadResponse:
        require_id(request.user_id, "user_id")
        require_id(request.thread_id, "thread_id")
        await self.unread.ensure(request.user_id)
        left = await self.unread.clear(request.user_id, request.thread_id, request.up_to_seq)
        total, _ = await self.unread.counts(request.user_id)
        return pb.ClearUnreadResponse(thread_count=left, total=total)

    # -- messages --------------------------------------------------------------------------

    async def NotifyMessage(
        self, request: pb.NotifyMessageRequest, context: Context
    ) -> pb.NotifyMessageResponse:
        header = request.header
        require_id(header.thread_id, "header.thread_id")
        require_id(header.message_id, "header.message_id")
        require_id(header.sender_user_id, "header.sender_user_id")
        if header.seq <= 0:
            raise InvalidArgument("header.seq is required (the header store assigns it)")
        targets = [
            u
            for u in dict.fromkeys(require_id(u, "user_ids[]") for u in request.user_ids)
            if u != header.sender_user_id
        ]
        if header.state in _GONE_STATES:
            for user in targets:
                await self.unread.remove(user, header.thread_id, header.message_id)
            return pb.NotifyMessageResponse()
        if header.state not in _PUSHED_STATES:  # abandoned: what arrived was announced already
            return pb.NotifyMessageResponse()
        title, body = await self._text(request)
        results = await asyncio.gather(
            *(self._notify_user(user, header, title, body) for user in targets)
        )
        return pb.NotifyMessageResponse(
            pushes_sent=sum(r[0] for r in results), pushes_skipped=sum(r[1] for r in results)
        )

    async def _notify_user(
        self, user: str, header: message_pb2.MessageHeader, title: str, body: str
    ) -> tuple[int, int]:
        await self.unread.ensure(user)
        unread = await self.unread.add(user, header.thread_id, header.seq, header.message_id)
        devices = await self.registry.devices(user)
        if not devices:
            return 0, 0
        reason = ""
        happened_ms = _event_ms(header)
        if not unread:
            reason = "read"  # a mark from another device already covers it
        elif await self.registry.live_devices(user) or await self.registry.live_since(
            user, happened_ms
        ):
            # The user hears it on an open updates stream, or did when it happened (the
            # device went offline after this notice was issued).
            reason = "live"
        elif await self.registry.dnd(user, happened_ms):
            reason = "dnd"
        elif await self.registry.muted(user, header.thread_id):
            reason = "muted"
        if reason:
            PUSH_OUTCOMES.labels(f"skipped_{reason}").inc(len(devices))
            return 0, len(devices)
        sent = skipped = 0
        now_ms = int(time.time() * 1000)
        for device in devices:
            job = PushJob(
                push_id=push_id(header.message_id, user, device.device_id),
                user_id=user,
                device_id=device.device_id,
                thread_id=header.thread_id,
                message_id=header.message_id,
                seq=header.seq,
                sender_user_id=header.sender_user_id,
                kind=_enum_word(message_pb2.MessageKind.Name(header.kind)),
                state=_enum_word(message_pb2.MessageState.Name(header.state)),
                title=title,
                body=body,
                enqueued_at_ms=now_ms,
            )
            if await self.queue.enqueue(job):
                sent += 1
            else:
                skipped += 1  # already queued for this message (start, then completion)
        return sent, skipped

    async def _text(self, request: pb.NotifyMessageRequest) -> tuple[str, str]:
        header = request.header
        sender = request.sender_display_name or header.sender_user_id
        said = request.preview_text or preview(header)
        thread_title = request.thread_title or await self._thread_title(header.thread_id)
        if thread_title:
            return thread_title, f"{sender}: {said}"
        return sender, said

    async def _thread_title(self, thread_id: str) -> str:
        """A group's title (cached briefly); empty for direct threads or if unknown."""
        cached = self._titles.get(thread_id)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            reply = await self._mesh.header(thread_id).GetThread(
                header_pb.GetThreadRequest(thread_id=thread_id)
            )
            title = reply.thread.title
        except (grpc.aio.AioRpcError, Unavailable):
            return ""  # a push without the group's name beats no push
        if len(self._titles) > 10_000:
            self._titles.clear()
        self._titles[thread_id] = (now + _TITLE_CACHE_S, title)
        return title

    # -- delivery (the worker) -------------------------------------------------------------

    async def _deliver(self, job: PushJob) -> str:
        device = await self.registry.get(job.user_id, job.device_id)
        if device is None:
            return "skipped"  # unregistered since
        if await self.unread.is_read(job.user_id, job.thread_id, job.seq):
            return "skipped"  # read on another device while queued
        total, per_thread = await self.unread.counts(job.user_id, [job.thread_id])
        content = PushContent(
            push_id=job.push_id,
            user_id=job.user_id,
            device_id=job.device_id,
            thread_id=job.thread_id,
            message_id=job.message_id,
            seq=job.seq,
            sender_user_id=job.sender_user_id,
            kind=job.kind,
            state=job.state,
            title=job.title,
            body=job.body,
            badge=total,
            thread_unread=per_thread.get(job.thread_id, 0),
            locale=device.locale,
        )
        platform = _PLATFORM_NAMES.get(device.platform, "unknown")
        provider = self._providers.get(device.platform)
        try:
            if provider is None:
                raise PushFailed(f"no provider for platform {device.platform}", retryable=False)
            await provider.send(device, content)
        except PushFailed as failure:
            await self.queue.dead_letter(
                job,
                platform,
                {
                    "error": failure.reason,
                    "status": failure.status,
                    "attempts": failure.attempts,
                    "unregistered": failure.unregister,
                },
            )
            if failure.unregister:
                await self.registry.unregister(job.user_id, job.device_id)
            _log.warning(
                "push dead-lettered",
                push_id=job.push_id,
                platform=platform,
                attempts=failure.attempts,
                error=failure.reason,
            )
            return "dead"
        return "sent"


def create_notification_service(settings: Settings) -> ServiceParts:
    servicer = NotificationSender(settings)
    return ServiceParts(
        [
            Registration(
                "voxmesh.notification.v1.NotificationService",
                servicer,
                pb_grpc.add_NotificationServiceServicer_to_server,
            )
        ],
        started_hooks=[servicer.bind],
        startup_hooks=[servicer.open],
        shutdown_hooks=[servicer.close],
        membership=servicer.membership,
    )
