"""The per-device updates stream: replay from a cursor, then live events, with no gap.

The device is registered with the hub *before* the replay, so anything that happens while
the header store is being read is queued, not lost; events may then arrive twice, and
clients apply them idempotently (by message id and state, chunk index, thread id). The
cursor a frame carries is the header store's timeline cursor of the last completed replay
or re-sync: resuming from it replays every durable event after it. Live audio missed while
disconnected is read from the body store (ReadBody), not replayed here.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from voxmesh.common.v1 import thread_pb2, update_pb2
from voxmesh.core.domain_errors import Aborted, FailedPrecondition, ResourceExhausted
from voxmesh.core.ids import require_id
from voxmesh.core.mesh_clients import MeshClients
from voxmesh.core.rpc_interceptors import AroundInterceptor
from voxmesh.core.settings import UpdatesSettings
from voxmesh.header.v1 import header_service_pb2 as header_pb
from voxmesh.router.device_hub import DeviceHub
from voxmesh.router.message_relay import update_event
from voxmesh.router.v1 import router_service_pb2 as pb

_REPLAY_PAGE = 200
MOVED = "moved:"  # closed_reason prefix: the user's home is now another router


class UpdatesStreamer:
    def __init__(self, settings: UpdatesSettings, hub: DeviceHub, mesh: MeshClients) -> None:
        self._settings = settings
        self._hub = hub
        self._mesh = mesh

    def reconfigure(self, settings: UpdatesSettings) -> None:
        self._settings = settings

    async def _replay(
        self, user: str, device: str, cursor: str
    ) -> AsyncIterator[tuple[list[update_pb2.UpdateEvent], str]]:
        """Pages of durable events after ``cursor``; the last page carries the new cursor."""
        token = ""
        while True:
            reply = await self._mesh.header(user).ListTimeline(
                header_pb.ListTimelineRequest(
                    user_id=user,
                    device_id=device,
                    cursor=cursor,
                    page_size=_REPLAY_PAGE,
                    page_token=token,
                )
            )
            events = [
                update_event(
                    thread_changed=update_pb2.ThreadChanged(
                        change=update_pb2.THREAD_CHANGE_KIND_UPDATED, thread=thread
                    )
                )
                for thread in reply.threads
            ]
            events += [update_event(header_updated=header) for header in reply.headers]
            events += [
                update_event(
                    thread_changed=update_pb2.ThreadChanged(
                        change=update_pb2.THREAD_CHANGE_KIND_MEMBER_REMOVED,
                        thread=thread_pb2.Thread(thread_id=thread_id),
                        user_ids=[user],
                    )
                )
                for thread_id in reply.removed_thread_ids
            ]
            token = reply.next_page_token
            if not token:
                yield events, reply.next_cursor or cursor
                return
            yield events, cursor  # mid-listing: resuming replays the listing from the start

    async def stream(
        self, user: str, device_id: str, cursor: str
    ) -> AsyncIterator[pb.UpdatesResponse | bytes]:
        """Frames as messages, or live ones as spliced wire bytes (see splice_frame)."""
        require_id(device_id, "device_id")
        stream = self._hub.connect(user, device_id)
        try:
            if not cursor:  # the device's acknowledged cursor (an empty ack changes nothing)
                acked = await self._mesh.header(user).AckTimeline(
                    header_pb.AckTimelineRequest(user_id=user, device_id=device_id, cursor="")
                )
                cursor = acked.cursor
            replayed = 0
            async for events, page_cursor in self._replay(user, device_id, cursor):
                replayed += len(events)
                if events:
                    yield pb.UpdatesResponse(events=events, cursor=page_cursor)
                cursor = page_cursor
            yield pb.UpdatesResponse(
                events=[update_event(caught_up=update_pb2.CaughtUp(replayed_event_count=replayed))],
                cursor=cursor,
            )
            last_sent = last_sync = time.monotonic()
            while True:
                now = time.monotonic()
                wait = min(
                    self._settings.heartbeat_s - (now - last_sent),
                    self._settings.resync_s - (now - last_sync),
                )
                batch = await stream.next_batch(max(wait, 0.0))
                if stream.closed_reason is not None and not batch:
                    if stream.closed_reason.startswith(MOVED):
                        raise FailedPrecondition(stream.closed_reason)
                    if "newer" in stream.closed_reason:
                        raise Aborted(stream.closed_reason)
                    raise ResourceExhausted(stream.closed_reason)
                now = time.monotonic()
                if now - last_sync >= self._settings.resync_s:
                    # Re-sync the cursor: anything durable a live hand-off missed comes now.
                    new_cursor = cursor
                    async for events, new_cursor in self._replay(user, device_id, cursor):  # noqa: B007
                        batch += [e.SerializeToString() for e in events]
                    cursor = new_cursor
                    last_sync = now
                if batch:
                    yield splice_frame(batch, cursor)
                    last_sent = now
                elif now - last_sent >= self._settings.heartbeat_s:
                    heartbeat = update_pb2.Heartbeat()
                    heartbeat.server_time.GetCurrentTime()
                    yield pb.UpdatesResponse(
                        events=[update_event(heartbeat=heartbeat)], cursor=cursor
                    )
                    last_sent = now
        finally:
            self._hub.disconnect(stream)


UPDATES_METHOD = "/voxmesh.router.v1.RouterService/Updates"
# The home router's side of a proxied updates stream: the same frames (its response message
# has UpdatesResponse's fields), so it is spliced and passed through the same way.
PROXY_UPDATES_METHOD = "/voxmesh.router.v1.RouterPeerService/ProxyUpdates"
_SPLICED_METHODS = (UPDATES_METHOD, PROXY_UPDATES_METHOD)
_EVENTS_TAG = b"\x0a"  # UpdatesResponse.events, field 1, length-delimited
_CURSOR_TAG = b"\x12"  # UpdatesResponse.cursor, field 2, length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def splice_frame(events: list[bytes], cursor: str) -> bytes:
    """An UpdatesResponse's wire bytes from serialized events, without decoding them (a
    repeated message field is its elements' bytes, each tagged and length-prefixed)."""
    parts: list[bytes] = []
    for event in events:
        parts += (_EVENTS_TAG, _varint(len(event)), event)
    if cursor:
        encoded = cursor.encode()
        parts += (_CURSOR_TAG, _varint(len(encoded)), encoded)
    return b"".join(parts)


def _serialize_frame(frame: pb.UpdatesResponse | bytes) -> bytes:
    return frame if isinstance(frame, bytes) else frame.SerializeToString()


class SplicedUpdatesInterceptor(AroundInterceptor):
    """Lets the Updates handler yield frames already spliced into wire bytes."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler_call_details.method not in _SPLICED_METHODS
            or handler.unary_stream is None
        ):
            return handler
        return grpc.unary_stream_rpc_method_handler(
            handler.unary_stream, handler.request_deserializer, _serialize_frame
        )
