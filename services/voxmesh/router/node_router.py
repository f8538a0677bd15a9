"""RouterService: the client-facing API of a router node.

Thin: every call is authenticated (the caller comes from the JWT), authorised by thread
membership, then handed to the header store, the body store or the message relay, and what
changed is fanned out to the updates streams of the users concerned.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from voxmesh.body.v1 import body_service_pb2 as body_pb
from voxmesh.common.v1 import body_pb2, mark_pb2, message_pb2, thread_pb2, update_pb2
from voxmesh.core import field_rules
from voxmesh.core.client_auth import AuthInterceptor, current_caller, token_verifier
from voxmesh.core.domain_errors import FailedPrecondition, InvalidArgument, PermissionDenied
from voxmesh.core.ids import new_uuid7, require_id
from voxmesh.core.mesh_clients import RING_KINDS, MeshClients
from voxmesh.core.ring_membership import Member, RingMembership
from voxmesh.core.rpc_interceptors import FieldCheckInterceptor
from voxmesh.core.service_runner import Exposure, Registration, ServiceParts
from voxmesh.core.settings import Settings
from voxmesh.core.structured_logging import get_logger
from voxmesh.gateway.envoy_config import GATEWAY_HEADER
from voxmesh.header.v1 import header_service_pb2 as header_pb
from voxmesh.router.device_hub import DeviceHub
from voxmesh.router.message_relay import DELETED, RECALLED, MessageRelay, update_event
from voxmesh.router.peer_links import PeerLinks
from voxmesh.router.presence_tracker import PresenceTracker
from voxmesh.router.push_notices import PushNotices
from voxmesh.router.rate_limits import CallLimitInterceptor, LimitKind, RateLimiter
from voxmesh.router.router_peer import RouterPeer
from voxmesh.router.updates_stream import (
    MOVED,
    PROXY_UPDATES_METHOD,
    SplicedUpdatesInterceptor,
    UpdatesStreamer,
)
from voxmesh.router.v1 import router_peer_service_pb2 as peer_pb
from voxmesh.router.v1 import router_peer_service_pb2_grpc
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.router.v1 import router_service_pb2_grpc as pb_grpc
from voxmesh.router.webrtc_sessions import WebRtcSessions
from voxmesh.router.webrtc_sessions import configure_process as configure_webrtc

Context = grpc.aio.ServicerContext[Any, Any]
ROUTER_SERVICE = pb.DESCRIPTOR.services_by_name["RouterService"].full_name
_log = get_logger(__name__)


def _via_gateway(context: Context) -> bool:
    return any(
        key == GATEWAY_HEADER and value == "gateway"
        for key, value in context.invocation_metadata() or ()
    )


def direct_thread_id(user_a: str, user_b: str) -> str:
    """Both users get the same direct thread, whoever creates it first."""
    low, high = sorted((user_a, user_b))
    return "d-" + hashlib.sha256(f"{low}\n{high}".encode()).hexdigest()[:32]


class NodeRouter(pb_grpc.RouterServiceServicer):
    def __init__(self, settings: Settings, membership: RingMembership) -> None:
        self._settings = settings
        self._self = pb.RouterNode(zone=settings.zone)
        self.hub = DeviceHub(settings.updates.queue_max)
        self.limits = RateLimiter(settings.rate_limits)
        self._mesh = MeshClients(settings, membership, "router")
        self._links = PeerLinks(self._mesh)
        self.relay = MessageRelay(settings, self.hub, self._mesh, self._links)
        self.updates = UpdatesStreamer(settings.updates, self.hub, self._mesh)
        membership.on_change(self._ring_changed)
        self._mesh.health.on_change(self._ring_changed)  # a suspect router is not a home
        # Pushes, unread counts and presence: told by the relay and the hub, never awaited.
        self.notices = PushNotices(settings, self.hub, self._mesh)
        # A WebRTC talker is a Send like any other (the same metering of chunks and starts),
        # but one that cannot resume: live audio is never resent.
        self.webrtc = WebRtcSessions(
            settings,
            lambda user, frames: self._metered_send(user, frames, resumable=False),
            self._read_chunks,
        )
        self.presence = PresenceTracker(
            settings.presence,
            self._mesh,
            lambda users, event: self.relay.fan_out(users, event, ephemeral=True),
        )
        self.relay.observers.extend([self.notices, self.presence])
        self.hub.listeners.extend([self.notices.device_changed, self.presence.device_changed])

    def reconfigure(self, settings: Settings) -> None:
        """Adopt dynamic settings: limits, timeouts, queue sizes, ring parameters."""
        self._settings = settings
        self.limits.reconfigure(settings.rate_limits)
        self.relay.reconfigure(settings)
        self.updates.reconfigure(settings.updates)
        self.hub.queue_max = settings.updates.queue_max
        self._mesh.reconfigure(settings)
        self.webrtc.reconfigure(settings)

    def _ring_changed(self, kind: str) -> None:
        """Devices whose user is now homed elsewhere must move there (the rendezvous)."""
        if kind != "router" or not self._self.node_id:
            return
        if not len(self._mesh.membership.ring("router")):
            return

        def homed_here(user: str) -> bool:
            home = self._mesh.home("router", user)
            return home is None or home.node_id == self._self.node_id

        moved = self.hub.close_users(
            homed_here,
            f"{MOVED} the user's home router changed: Discover and reconnect with your cursor",
        )
        if moved:
            _log.info("moved devices to their new home router", devices=moved)

    # -- lifecycle -------------------------------------------------------------------------

    def bind(self, node_id: str, address: str) -> None:
        """Called once the server's port is known."""
        self._self.node_id = node_id
        self._self.address = address
        self.relay.node_id = node_id
        self._links.source_node_id = node_id

    async def open(self) -> None:
        self._mesh.start()
        await self.notices.start()
        await self.presence.start()

    async def close(self) -> None:
        await self.webrtc.close()
        await self.presence.close()
        await self.notices.close()
        await self.relay.close()
        await self._mesh.close()

    # -- helpers ---------------------------------------------------------------------------

    async def _require_member(
        self, user_id: str, thread_id: str
    ) -> thread_pb2.MemberRole.ValueType:
        require_id(thread_id, "thread_id")
        reply = await self._mesh.header(thread_id).CheckMembership(
            header_pb.CheckMembershipRequest(thread_id=thread_id, user_id=user_id)
        )
        if not reply.is_member:
            raise PermissionDenied(f"user {user_id} is not a member of thread {thread_id}")
        return reply.role

    async def _header(
        self, user_id: str, thread_id: str, message_id: str
    ) -> message_pb2.MessageHeader:
        await self._require_member(user_id, thread_id)
        require_id(message_id, "message_id")
        reply = await self._mesh.header(thread_id).GetMessage(
            header_pb.GetMessageRequest(thread_id=thread_id, message_id=message_id)
        )
        return reply.header

    async def _body_of(self, user_id: str, thread_id: str, message_id: str) -> tuple[str, str]:
        """Where a message's bytes live: its own body, or the original's for a forward."""
        header = await self._header(user_id, thread_id, message_id)
        if header.body.message_id:
            return header.body.thread_id, header.body.message_id
        return header.thread_id, header.message_id

    def _thread_changed(
        self,
        thread: thread_pb2.Thread,
        change: update_pb2.ThreadChangeKind.ValueType,
        actor: str,
        user_ids: list[str] | None = None,
        also: list[str] | None = None,
    ) -> None:
        members = [m.user_id for m in thread.members]
        shared = thread_pb2.Thread()
        shared.CopyFrom(thread)
        shared.ClearField("user_state")  # the caller's own state is not for the others
        changed = update_pb2.ThreadChanged(
            change=change, thread=shared, actor_user_id=actor, user_ids=user_ids or []
        )
        self.presence.thread_changed(changed, members)  # those homed here (others: their homes)
        self.relay.fan_out(
            members + (also or []),
            update_event(thread_changed=changed),
        )

    # -- discovery -------------------------------------------------------------------------

    def home_node(self, user_id: str) -> str | None:
        """The node id of the user's home router: the first healthy one of its list."""
        home = self._mesh.home("router", user_id)
        return None if home is None else home.node_id

    async def _routers_for(self, user_id: str) -> list[Member]:
        """The user's routers, never one whose health probe fails; a router whose connection
        just dropped is probed first (a router killed a moment ago is not named)."""
        members = self._mesh.routers_for(user_id)
        await self._mesh.verify(members)
        return self._mesh.routers_for(user_id)

    async def Discover(self, request: pb.DiscoverRequest, context: Context) -> pb.DiscoverResponse:
        require_id(request.user_id, "user_id")
        members = await self._routers_for(request.user_id)
        if not members:  # no ring known (etcd unreachable): this router is all there is
            return pb.DiscoverResponse(routers=[self._self])
        return pb.DiscoverResponse(
            routers=[
                pb.RouterNode(node_id=m.node_id, address=m.address, zone=m.zone) for m in members
            ]
        )

    # -- talk ------------------------------------------------------------------------------

    async def Send(
        self, request_iterator: AsyncIterator[pb.SendRequest], context: Context
    ) -> AsyncIterator[pb.SendResponse]:
        async for response in self._metered_send(current_caller().user_id, request_iterator):
            yield response

    def _metered_send(
        self, user: str, frames: AsyncIterator[pb.SendRequest], resumable: bool = True
    ) -> AsyncIterator[pb.SendResponse]:
        """Every talk, over gRPC or WebRTC: its frames charged to the user, then relayed."""
        return self.relay.send(user, self.limits.metered_send(user, frames), resumable)

    async def StartMessage(
        self, request: pb.StartMessageRequest, context: Context
    ) -> pb.StartMessageResponse:
        user = current_caller().user_id
        self.limits.check(LimitKind.MESSAGE_STARTS, user, request.device_id)
        self.limits.check(LimitKind.CHUNKS, user, request.device_id, len(request.chunks))
        if request.HasField("end") and (not request.chunks or request.chunks[0].index == 0):
            # The whole message in one call: its totals must be these chunks' before the
            # header is written (else a refused call would leave a LIVE header behind).
            size = sum(len(c.payload) for c in request.chunks)
            if request.end.chunk_count != len(request.chunks) or request.end.size_bytes not in (
                0,
                size,
            ):
                raise InvalidArgument(
                    f"end says {request.end.chunk_count} chunks and {request.end.size_bytes} "
                    f"bytes, but the request carries {len(request.chunks)} chunks of {size} "
                    f"bytes"
                )
        live, durable = await self.relay.start(
            user, request.device_id, request.start, request.chunks
        )
        ack = body_pb2.DurableAck(
            thread_id=live.thread_id, message_id=live.message_id, durable_chunk_count=durable
        )
        header = live.header
        try:
            if request.chunks:
                ack = await self._append(live, request.chunks, live.header.content_type)
            if request.HasField("end"):
                header = await self.relay.complete(live, request.end)
        finally:
            if header.state == message_pb2.MESSAGE_STATE_LIVE:
                # Unary appends may follow; if none comes, the message is abandoned.
                self.relay.watch_for_abandonment(live)
        return pb.StartMessageResponse(header=header, ack=ack)

    async def _live(self, user: str, thread_id: str, message_id: str) -> Any:
        live = self.relay.live_message(message_id)
        if live is None or live.thread_id != thread_id:
            header = await self._header(user, thread_id, message_id)
            # Not started through this router (or it restarted): take it up again.
            live, _ = await self.relay.start(
                user,
                header.sender_device_id,
                message_pb2.MessageStart(
                    message_id=message_id,
                    thread_id=thread_id,
                    kind=header.kind,
                    content_type=header.content_type,
                ),
            )
        if live.header.sender_user_id != user:
            raise PermissionDenied(f"message {message_id} belongs to another sender")
        return live

    async def _append(self, live: Any, chunks: Any, content_type: str = "") -> body_pb2.DurableAck:
        stored = self.relay.relay_chunks(live, chunks)
        reply = await self._mesh.body_unary(live.message_id).AppendChunksBatch(
            body_pb.AppendChunksBatchRequest(
                thread_id=live.thread_id,
                message_id=live.message_id,
                content_type=content_type or live.header.content_type,
                chunks=stored,
            )
        )
        return reply.ack

    async def AppendChunks(
        self, request: pb.AppendChunksRequest, context: Context
    ) -> pb.AppendChunksResponse:
        user = current_caller().user_id
        self.limits.check(LimitKind.CHUNKS, user, count=len(request.chunks))
        live = await self._live(user, request.thread_id, request.message_id)
        try:
            return pb.AppendChunksResponse(ack=await self._append(live, request.chunks))
        finally:
            self.relay.watch_for_abandonment(live)  # abandoned if no EndMessage follows

    async def EndMessage(
        self, request: pb.EndMessageRequest, context: Context
    ) -> pb.EndMessageResponse:
        user = current_caller().user_id
        live = await self._live(user, request.thread_id, request.message_id)
        return pb.EndMessageResponse(header=await self.relay.complete(live, request.end))

    async def SendText(self, request: pb.SendTextRequest, context: Context) -> pb.SendTextResponse:
        user = current_caller().user_id
        self.limits.check(LimitKind.TEXTS, user, request.device_id)
        if not request.text:
            raise InvalidArgument("text is empty")
        start = message_pb2.MessageStart(
            message_id=request.message_id,
            thread_id=request.thread_id,
            kind=message_pb2.MESSAGE_KIND_TEXT,
            content_type="text/plain; charset=utf-8",
            text=request.text,
        )
        if request.HasField("created_at"):
            start.created_at.CopyFrom(request.created_at)
        live, _ = await self.relay.start(user, request.device_id, start)
        header = live.header
        if header.state == message_pb2.MESSAGE_STATE_LIVE:
            reply = await self._mesh.header(header.thread_id).CompleteMessage(
                header_pb.CompleteMessageRequest(
                    thread_id=header.thread_id,
                    message_id=header.message_id,
                    end=message_pb2.MessageEnd(size_bytes=len(request.text.encode())),
                )
            )
            header = reply.header
            self.relay.fan_out(
                list(reply.member_user_ids),
                update_event(
                    message_state_changed=update_pb2.MessageStateChanged(
                        header=header,
                        previous_state=message_pb2.MESSAGE_STATE_LIVE,
                        actor_user_id=user,
                    )
                ),
            )
            self.relay.observers.message_ended(header, list(reply.member_user_ids))
        return pb.SendTextResponse(header=header)

    # -- listen ----------------------------------------------------------------------------

    async def Updates(
        self, request: pb.UpdatesRequest, context: Context
    ) -> AsyncIterator[pb.UpdatesResponse]:
        user = current_caller().user_id
        members = await self._routers_for(user)
        if members and members[0].node_id != self._self.node_id and _via_gateway(context):
            # A browser cannot follow a redirect behind the gateway: serve its stream from
            # the home router over the mesh, frames passed through unchanged.
            async for raw in self._proxy_updates(members[0].mesh_address, user, request):
                yield raw  # type: ignore[misc]
            return
        if members and members[0].node_id != self._self.node_id:
            # A user's devices all meet at the user's home router (the rendezvous), the first
            # live router of the preference list: a dead home leaves the ring when its lease
            # expires, and the next router becomes home. Redirect.
            addresses = ",".join(m.address for m in members)
            context.set_trailing_metadata((("voxmesh-routers", addresses),))
            raise FailedPrecondition(
                f"this router does not serve user {user}: connect to one of {addresses} "
                f"(Discover returns the current list)"
            )
        async for frame in self.updates.stream(user, request.device_id, request.cursor):
            # Live frames come spliced as wire bytes (SplicedUpdatesInterceptor sends them).
            yield frame  # type: ignore[misc]

    async def _proxy_updates(
        self, address: str, user: str, request: pb.UpdatesRequest
    ) -> AsyncIterator[bytes]:
        """The home router's frames as wire bytes: ProxyUpdatesResponse and UpdatesResponse
        share their fields, so a frame passes through without being decoded."""
        require_id(request.device_id, "device_id")
        call = self._mesh.channel(address).unary_stream(
            PROXY_UPDATES_METHOD,
            request_serializer=peer_pb.ProxyUpdatesRequest.SerializeToString,
            response_deserializer=bytes,
        )(peer_pb.ProxyUpdatesRequest(user_id=user, request=request))
        try:
            async for frame in call:
                yield frame
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                self._mesh.suspect(address)
            raise
        finally:
            call.cancel()

    async def ReadBody(
        self, request: pb.ReadBodyRequest, context: Context
    ) -> AsyncIterator[pb.ReadBodyResponse]:
        user = current_caller().user_id
        thread_id, message_id = await self._body_of(user, request.thread_id, request.message_id)
        frames = self._mesh.stream(
            "body",
            message_id,
            "ReadChunks",
            body_pb.ReadChunksRequest(
                thread_id=thread_id,
                message_id=message_id,
                origin=request.origin,
                from_index=request.from_index,
                stored_only=request.stored_only,
            ),
        )
        async for frame in frames:
            # Same field layout: the bytes are a valid ReadBodyResponse.
            yield pb.ReadBodyResponse.FromString(frame.SerializeToString())

    def _read_chunks(
        self, request: body_pb.ReadChunksRequest
    ) -> AsyncIterator[body_pb.ReadChunksResponse]:
        return self._mesh.stream("body", request.message_id, "ReadChunks", request)

    # -- WebRTC ----------------------------------------------------------------------------

    async def StartWebRtcTalk(
        self, request: pb.StartWebRtcTalkRequest, context: Context
    ) -> pb.StartWebRtcTalkResponse:
        user = current_caller().user_id
        header, answer = await self.webrtc.talk(
            user, request.device_id, request.start, request.offer_sdp
        )
        return pb.StartWebRtcTalkResponse(header=header, answer_sdp=answer)

    async def ListenWebRtc(
        self, request: pb.ListenWebRtcRequest, context: Context
    ) -> pb.ListenWebRtcResponse:
        user = current_caller().user_id
        thread_id, message_id = await self._body_of(user, request.thread_id, request.message_id)
        answer = await self.webrtc.listen(
            body_pb.ReadChunksRequest(
                thread_id=thread_id,
                message_id=message_id,
                origin=request.origin,
                from_index=request.from_index,
            ),
            request.offer_sdp,
        )
        return pb.ListenWebRtcResponse(answer_sdp=answer)

    async def ReadBodyRange(
        self, request: pb.ReadBodyRangeRequest, context: Context
    ) -> pb.ReadBodyRangeResponse:
        user = current_caller().user_id
        thread_id, message_id = await self._body_of(user, request.thread_id, request.message_id)
        reply = await self._mesh.body_unary(message_id).ReadRange(
            body_pb.ReadRangeRequest(
                thread_id=thread_id,
                message_id=message_id,
                offset=request.offset,
                length=request.length,
            )
        )
        return pb.ReadBodyRangeResponse(
            content_type=reply.content_type,
            offset=reply.offset,
            data=reply.data,
            total_size_bytes=reply.total_size_bytes,
        )

    # -- timeline --------------------------------------------------------------------------

    async def ListTimeline(
        self, request: pb.ListTimelineRequest, context: Context
    ) -> pb.ListTimelineResponse:
        user = current_caller().user_id
        require_id(request.device_id, "device_id")
        reply = await self._mesh.header(user).ListTimeline(
            header_pb.ListTimelineRequest(
                user_id=user,
                device_id=request.device_id,
                cursor=request.cursor,
                page_size=request.page_size,
                page_token=request.page_token,
            )
        )
        return pb.ListTimelineResponse(
            threads=reply.threads,
            headers=reply.headers,
            removed_thread_ids=reply.removed_thread_ids,
            next_page_token=reply.next_page_token,
            next_cursor=reply.next_cursor,
        )

    async def AckTimeline(
        self, request: pb.AckTimelineRequest, context: Context
    ) -> pb.AckTimelineResponse:
        user = current_caller().user_id
        require_id(request.device_id, "device_id")
        reply = await self._mesh.header(user).AckTimeline(
            header_pb.AckTimelineRequest(
                user_id=user, device_id=request.device_id, cursor=request.cursor
            )
        )
        return pb.AckTimelineResponse(cursor=reply.cursor)

    # -- threads ---------------------------------------------------------------------------

    async def CreateThread(
        self, request: pb.CreateThreadRequest, context: Context
    ) -> pb.CreateThreadResponse:
        user = current_caller().user_id
        others = [require_id(u, "member_user_ids[]") for u in request.member_user_ids]
        if request.kind == thread_pb2.THREAD_KIND_DIRECT:
            if len(set(others) - {user}) != 1:
                raise InvalidArgument("a direct thread has exactly one other member")
            (other,) = set(others) - {user}
            thread_id = direct_thread_id(user, other)
        elif request.kind == thread_pb2.THREAD_KIND_GROUP:
            # Client-chosen (for idempotent retries) or ours: a UUIDv7 either way.
            thread_id = (
                field_rules.uuid7(request.thread_id, "thread_id")
                if request.thread_id
                else new_uuid7()
            )
        else:
            raise InvalidArgument("kind must be THREAD_KIND_DIRECT or THREAD_KIND_GROUP")
        reply = await self._mesh.header(thread_id).CreateThread(
            header_pb.CreateThreadRequest(
                thread_id=thread_id,
                kind=request.kind,
                title=request.title,
                creator_user_id=user,
                member_user_ids=[user, *others],
            )
        )
        if reply.created:
            self._thread_changed(reply.thread, update_pb2.THREAD_CHANGE_KIND_CREATED, user)
        return pb.CreateThreadResponse(thread=reply.thread)

    async def GetThread(
        self, request: pb.GetThreadRequest, context: Context
    ) -> pb.GetThreadResponse:
        user = current_caller().user_id
        await self._require_member(user, request.thread_id)
        reply = await self._mesh.header(request.thread_id).GetThread(
            header_pb.GetThreadRequest(thread_id=request.thread_id, viewer_user_id=user)
        )
        return pb.GetThreadResponse(thread=reply.thread)

    async def ListThreads(
        self, request: pb.ListThreadsRequest, context: Context
    ) -> pb.ListThreadsResponse:
        user = current_caller().user_id
        reply = await self._mesh.header(user).ListThreadsForUser(
            header_pb.ListThreadsForUserRequest(
                user_id=user, page_size=request.page_size, page_token=request.page_token
            )
        )
        return pb.ListThreadsResponse(threads=reply.threads, next_page_token=reply.next_page_token)

    async def UpdateThread(
        self, request: pb.UpdateThreadRequest, context: Context
    ) -> pb.UpdateThreadResponse:
        user = current_caller().user_id
        await self._require_member(user, request.thread_id)
        reply = await self._mesh.header(request.thread_id).UpdateThread(
            header_pb.UpdateThreadRequest(
                thread_id=request.thread_id, actor_user_id=user, title=request.title
            )
        )
        self._thread_changed(reply.thread, update_pb2.THREAD_CHANGE_KIND_UPDATED, user)
        return pb.UpdateThreadResponse(thread=reply.thread)

    async def AddMembers(
        self, request: pb.AddMembersRequest, context: Context
    ) -> pb.AddMembersResponse:
        user = current_caller().user_id
        await self._require_member(user, request.thread_id)
        reply = await self._mesh.header(request.thread_id).AddMembers(
            header_pb.AddMembersRequest(
                thread_id=request.thread_id,
                actor_user_id=user,
                user_ids=request.user_ids,
                role=request.role,
            )
        )
        if reply.added_user_ids:
            self._thread_changed(
                reply.thread,
                update_pb2.THREAD_CHANGE_KIND_MEMBERS_ADDED,
                user,
                list(reply.added_user_ids),
            )
        return pb.AddMembersResponse(thread=reply.thread)

    async def RemoveMember(
        self, request: pb.RemoveMemberRequest, context: Context
    ) -> pb.RemoveMemberResponse:
        user = current_caller().user_id
        await self._require_member(user, request.thread_id)
        reply = await self._mesh.header(request.thread_id).RemoveMember(
            header_pb.RemoveMemberRequest(
                thread_id=request.thread_id, actor_user_id=user, user_id=request.user_id
            )
        )
        change = (
            update_pb2.THREAD_CHANGE_KIND_MEMBER_LEFT
            if request.user_id == user
            else update_pb2.THREAD_CHANGE_KIND_MEMBER_REMOVED
        )
        self._thread_changed(reply.thread, change, user, [request.user_id], also=[request.user_id])
        return pb.RemoveMemberResponse(thread=reply.thread)

    async def SetMemberRole(
        self, request: pb.SetMemberRoleRequest, context: Context
    ) -> pb.SetMemberRoleResponse:
        user = current_caller().user_id
        await self._require_member(user, request.thread_id)
        reply = await self._mesh.header(request.thread_id).SetMemberRole(
            header_pb.SetMemberRoleRequest(
                thread_id=request.thread_id,
                actor_user_id=user,
                user_id=request.user_id,
                role=request.role,
            )
        )
        self._thread_changed(
            reply.thread, update_pb2.THREAD_CHANGE_KIND_ROLE_CHANGED, user, [request.user_id]
        )
        return pb.SetMemberRoleResponse(thread=reply.thread)

    async def LeaveThread(
        self, request: pb.LeaveThreadRequest, context: Context
    ) -> pb.LeaveThreadResponse:
        user = current_caller().user_id
        await self.RemoveMember(
            pb.RemoveMemberRequest(thread_id=request.thread_id, user_id=user), context
        )
        return pb.LeaveThreadResponse()

    async def MuteThread(
        self, request: pb.MuteThreadRequest, context: Context
    ) -> pb.MuteThreadResponse:
        user = current_caller().user_id
        await self._require_member(user, request.thread_id)
        mute = header_pb.MuteThreadRequest(
            thread_id=request.thread_id, user_id=user, muted=request.muted
        )
        if request.HasField("muted_until"):
            mute.muted_until.CopyFrom(request.muted_until)
        reply = await self._mesh.header(request.thread_id).MuteThread(mute)
        await self.notices.mute_changed(user, request.thread_id, reply.user_state)
        self.relay.fan_out(  # the user's other devices show the same mute
            [user],
            update_event(
                thread_changed=update_pb2.ThreadChanged(
                    change=update_pb2.THREAD_CHANGE_KIND_MUTE_CHANGED,
                    thread=thread_pb2.Thread(
                        thread_id=request.thread_id, user_state=reply.user_state
                    ),
                    actor_user_id=user,
                )
            ),
        )
        return pb.MuteThreadResponse(user_state=reply.user_state)

    async def ListMessages(
        self, request: pb.ListMessagesRequest, context: Context
    ) -> pb.ListMessagesResponse:
        user = current_caller().user_id
        await self._require_member(user, request.thread_id)
        listing = header_pb.ListMessagesRequest(
            thread_id=request.thread_id,
            viewer_user_id=user,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        if request.HasField("before_seq"):
            listing.before_seq = request.before_seq
        elif request.HasField("after_seq"):
            listing.after_seq = request.after_seq
        reply = await self._mesh.header(request.thread_id).ListMessages(listing)
        return pb.ListMessagesResponse(headers=reply.headers, next_page_token=reply.next_page_token)

    async def GetMessage(
        self, request: pb.GetMessageRequest, context: Context
    ) -> pb.GetMessageResponse:
        user = current_caller().user_id
        return pb.GetMessageResponse(
            header=await self._header(user, request.thread_id, request.message_id)
        )

    # -- marks and likes -------------------------------------------------------------------

    async def _mark(
        self, thread_id: str, message_id: str, device_id: str, kind: mark_pb2.MarkKind.ValueType
    ) -> mark_pb2.Mark:
        user = current_caller().user_id
        require_id(device_id, "device_id")
        header = await self._header(user, thread_id, message_id)
        reply = await self._mesh.header(thread_id).SetMark(
            header_pb.SetMarkRequest(
                mark=mark_pb2.Mark(
                    user_id=user,
                    device_id=device_id,
                    thread_id=thread_id,
                    message_id=message_id,
                    seq=header.seq,
                    kind=kind,
                )
            )
        )
        if reply.advanced:  # the user's other devices clear the same badge
            self.relay.fan_out([user], update_event(mark=reply.mark), skip_device=(user, device_id))
        self.notices.mark_made(reply.mark)  # even if not advanced: it re-syncs a stale count
        return reply.mark

    async def MarkRead(self, request: pb.MarkReadRequest, context: Context) -> pb.MarkReadResponse:
        mark = await self._mark(
            request.thread_id, request.message_id, request.device_id, mark_pb2.MARK_KIND_READ
        )
        return pb.MarkReadResponse(mark=mark)

    async def MarkListened(
        self, request: pb.MarkListenedRequest, context: Context
    ) -> pb.MarkListenedResponse:
        mark = await self._mark(
            request.thread_id, request.message_id, request.device_id, mark_pb2.MARK_KIND_LISTENED
        )
        return pb.MarkListenedResponse(mark=mark)

    async def LikeMessage(
        self, request: pb.LikeMessageRequest, context: Context
    ) -> pb.LikeMessageResponse:
        user = current_caller().user_id
        await self._require_member(user, request.thread_id)
        reply = await self._mesh.header(request.thread_id).LikeMessage(
            header_pb.LikeMessageRequest(
                thread_id=request.thread_id, message_id=request.message_id, user_id=user
            )
        )
        if reply.changed:
            self.relay.fan_out(
                list(reply.member_user_ids),
                update_event(
                    like_changed=update_pb2.LikeChanged(
                        like=reply.like, liked=True, like_count=reply.like_count
                    )
                ),
            )
        return pb.LikeMessageResponse(like_count=reply.like_count)

    async def UnlikeMessage(
        self, request: pb.UnlikeMessageRequest, context: Context
    ) -> pb.UnlikeMessageResponse:
        user = current_caller().user_id
        await self._require_member(user, request.thread_id)
        reply = await self._mesh.header(request.thread_id).UnlikeMessage(
            header_pb.UnlikeMessageRequest(
                thread_id=request.thread_id, message_id=request.message_id, user_id=user
            )
        )
        if reply.changed:
            self.relay.fan_out(
                list(reply.member_user_ids),
                update_event(
                    like_changed=update_pb2.LikeChanged(
                        like=message_pb2.Like(
                            thread_id=request.thread_id, message_id=request.message_id, user_id=user
                        ),
                        liked=False,
                        like_count=reply.like_count,
                    )
                ),
            )
        return pb.UnlikeMessageResponse(like_count=reply.like_count)

    # -- manage ----------------------------------------------------------------------------

    async def ForwardMessage(
        self, request: pb.ForwardMessageRequest, context: Context
    ) -> pb.ForwardMessageResponse:
        user = current_caller().user_id
        require_id(request.device_id, "device_id")
        await self._require_member(user, request.source.thread_id)
        await self._require_member(user, request.target_thread_id)
        reply = await self._mesh.header(request.target_thread_id).ForwardMessage(
            header_pb.ForwardMessageRequest(
                source=request.source,
                target_thread_id=request.target_thread_id,
                message_id=request.message_id,
                sender_user_id=user,
                sender_device_id=request.device_id,
            )
        )
        self.relay.fan_out(
            list(reply.member_user_ids),
            update_event(header_added=reply.header),
            skip_device=(user, request.device_id),
        )
        self.relay.observers.message_started(reply.header, list(reply.member_user_ids))
        return pb.ForwardMessageResponse(header=reply.header)

    async def RecallMessage(
        self, request: pb.RecallMessageRequest, context: Context
    ) -> pb.RecallMessageResponse:
        user = current_caller().user_id
        await self._require_member(user, request.thread_id)
        require_id(request.message_id, "message_id")
        header = await self.relay.set_state(request.thread_id, request.message_id, RECALLED, user)
        return pb.RecallMessageResponse(header=header)

    async def DeleteMessage(
        self, request: pb.DeleteMessageRequest, context: Context
    ) -> pb.DeleteMessageResponse:
        user = current_caller().user_id
        await self._require_member(user, request.thread_id)
        require_id(request.message_id, "message_id")
        if request.scope == message_pb2.DELETE_SCOPE_FOR_EVERYONE:
            header = await self.relay.set_state(
                request.thread_id, request.message_id, DELETED, user
            )
        elif request.scope == message_pb2.DELETE_SCOPE_FOR_ME:
            reply = await self._mesh.header(request.thread_id).HideMessage(
                header_pb.HideMessageRequest(
                    thread_id=request.thread_id, message_id=request.message_id, user_id=user
                )
            )
            header = reply.header
            self.relay.fan_out(
                [user],
                update_event(
                    message_state_changed=update_pb2.MessageStateChanged(
                        header=header,
                        previous_state=header.state,
                        actor_user_id=user,
                        for_me_only=True,
                    )
                ),
            )
        else:
            raise InvalidArgument("scope must be DELETE_SCOPE_FOR_ME or DELETE_SCOPE_FOR_EVERYONE")
        return pb.DeleteMessageResponse(header=header)

    # -- presence and pushes ---------------------------------------------------------------

    async def SetTyping(
        self, request: pb.SetTypingRequest, context: Context
    ) -> pb.SetTypingResponse:
        user = current_caller().user_id
        await self._require_member(user, request.thread_id)
        expires_at = await self.presence.set_typing(user, request.thread_id, request.typing)
        return pb.SetTypingResponse(expires_at=expires_at)

    async def SetPresence(
        self, request: pb.SetPresenceRequest, context: Context
    ) -> pb.SetPresenceResponse:
        user = current_caller().user_id
        members = self._mesh.routers_for(user)
        if members and members[0].node_id != self._self.node_id:
            # Presence is kept where the user's device streams are: the home router.
            address = members[0].mesh_address
            reply = await self._mesh.peer(address).ProxySetPresence(
                peer_pb.ProxySetPresenceRequest(user_id=user, request=request)
            )
            return pb.SetPresenceResponse(presence=reply.presence)
        presence = self.presence.set_presence(user, request.device_id, request.state)
        return pb.SetPresenceResponse(presence=presence)

    async def RegisterDevice(
        self, request: pb.RegisterDeviceRequest, context: Context
    ) -> pb.RegisterDeviceResponse:
        user = current_caller().user_id
        device = await self.notices.register_device(user, request.device)
        return pb.RegisterDeviceResponse(device=device)

    async def UnregisterDevice(
        self, request: pb.UnregisterDeviceRequest, context: Context
    ) -> pb.UnregisterDeviceResponse:
        user = current_caller().user_id
        await self.notices.unregister_device(user, request.device_id)
        return pb.UnregisterDeviceResponse()

    async def GetUnreadCounts(
        self, request: pb.GetUnreadCountsRequest, context: Context
    ) -> pb.GetUnreadCountsResponse:
        user = current_caller().user_id
        for thread_id in request.thread_ids:
            require_id(thread_id, "thread_ids")
        total, counts = await self.notices.unread_counts(user, list(request.thread_ids))
        return pb.GetUnreadCountsResponse(total=total, thread_counts=counts)

    async def SetDoNotDisturb(
        self, request: pb.SetDoNotDisturbRequest, context: Context
    ) -> pb.SetDoNotDisturbResponse:
        user = current_caller().user_id
        until = request.until if request.HasField("until") else None
        enabled, ends = await self.notices.set_do_not_disturb(user, request.enabled, until)
        reply = pb.SetDoNotDisturbResponse(enabled=enabled)
        if ends is not None:
            reply.until.CopyFrom(ends)
        return reply


def create_router_service(settings: Settings) -> ServiceParts:
    configure_webrtc(settings)
    membership = RingMembership(settings, RING_KINDS)
    router = NodeRouter(settings, membership)
    peer = RouterPeer(router.hub, membership, router.updates, router.presence)
    peer.home_of = router.home_node
    verifier = token_verifier(settings.auth)
    return ServiceParts(
        [
            Registration(
                ROUTER_SERVICE,
                router,
                pb_grpc.add_RouterServiceServicer_to_server,
                exposure=Exposure.CLIENT,
            ),
            Registration(
                "voxmesh.router.v1.RouterPeerService",
                peer,
                router_peer_service_pb2_grpc.add_RouterPeerServiceServicer_to_server,
            ),
        ],
        started_hooks=[router.bind, peer.bind],
        settings_listeners=[router.reconfigure],
        startup_hooks=[verifier.start, router.open],
        shutdown_hooks=[router.close, verifier.close],
        membership=membership,
        interceptors=[
            AuthInterceptor(verifier, [ROUTER_SERVICE]),
            CallLimitInterceptor(router.limits, [ROUTER_SERVICE]),
            # Every field of every unary request, before it goes anywhere (Send: the relay
            # checks its first frame and its end).
            FieldCheckInterceptor(field_rules.check_fields, [ROUTER_SERVICE]),
            SplicedUpdatesInterceptor(),
        ],
    )
