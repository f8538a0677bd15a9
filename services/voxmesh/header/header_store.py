"""HeaderService: threads, members, message headers and timelines (Spanner / SQLite).

The servicer is thin: it translates protos to the plain arguments of the rules classes
(thread_rules, message_rules, timeline_rules), which validate, authorise and run the
transactions on a HeaderStorage adapter picked by settings.stores.backend.
"""

from __future__ import annotations

from typing import Any

import grpc

from voxmesh.core.service_runner import Registration, ServiceParts
from voxmesh.core.settings import Settings
from voxmesh.header.header_protos import (
    from_timestamp,
    header_pb,
    like_pb,
    mark_pb,
    message_totals,
    new_message,
    thread_pb,
    user_state_pb,
)
from voxmesh.header.header_records import HeaderLimits, MessageRef
from voxmesh.header.header_storage import HeaderStorage
from voxmesh.header.message_rules import MessageRules
from voxmesh.header.thread_rules import ThreadRules
from voxmesh.header.timeline_rules import TimelineRules
from voxmesh.header.v1 import header_service_pb2 as pb
from voxmesh.header.v1 import header_service_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class HeaderStore(pb_grpc.HeaderServiceServicer):
    def __init__(self, storage: HeaderStorage, limits: HeaderLimits) -> None:
        self.storage = storage
        self.threads = ThreadRules(storage, limits)
        self.messages = MessageRules(storage, limits)
        self.timeline = TimelineRules(storage)

    def reconfigure(self, settings: Settings) -> None:
        """Adopt new limits (dynamic settings) in every rules object."""
        limits = HeaderLimits(
            max_members_per_thread=settings.limits.max_members_per_thread,
            max_text_bytes=settings.limits.max_text_bytes,
        )
        for rules in (self.threads, self.messages):
            rules._limits = limits

    # -- messages --------------------------------------------------------------------------

    async def StartMessage(
        self, request: pb.StartMessageRequest, context: Context
    ) -> pb.StartMessageResponse:
        result = await self.messages.start_message(
            new_message(request.start), request.sender_user_id, request.sender_device_id
        )
        return pb.StartMessageResponse(
            header=header_pb(result.header),
            member_user_ids=result.member_user_ids,
            created=result.created,
        )

    async def CompleteMessage(
        self, request: pb.CompleteMessageRequest, context: Context
    ) -> pb.CompleteMessageResponse:
        result = await self.messages.complete_message(
            request.thread_id, request.message_id, message_totals(request.end)
        )
        return pb.CompleteMessageResponse(
            header=header_pb(result.header), member_user_ids=result.member_user_ids
        )

    async def SetMessageState(
        self, request: pb.SetMessageStateRequest, context: Context
    ) -> pb.SetMessageStateResponse:
        result = await self.messages.set_message_state(
            request.thread_id,
            request.message_id,
            request.state,
            request.actor_user_id,
            kept=message_totals(request.kept) if request.HasField("kept") else None,
        )
        return pb.SetMessageStateResponse(
            header=header_pb(result.header),
            previous_state=result.previous_state.value,  # type: ignore[arg-type]
            member_user_ids=result.member_user_ids,
        )

    async def HideMessage(
        self, request: pb.HideMessageRequest, context: Context
    ) -> pb.HideMessageResponse:
        header = await self.messages.hide_message(
            request.thread_id, request.message_id, request.user_id
        )
        return pb.HideMessageResponse(header=header_pb(header))

    async def GetMessage(
        self, request: pb.GetMessageRequest, context: Context
    ) -> pb.GetMessageResponse:
        header = await self.messages.get_message(request.thread_id, request.message_id)
        return pb.GetMessageResponse(header=header_pb(header))

    async def ListMessages(
        self, request: pb.ListMessagesRequest, context: Context
    ) -> pb.ListMessagesResponse:
        page = await self.messages.list_messages(
            request.thread_id,
            request.viewer_user_id,
            request.page_size,
            request.page_token,
            before_seq=request.before_seq if request.HasField("before_seq") else None,
            after_seq=request.after_seq if request.HasField("after_seq") else None,
        )
        return pb.ListMessagesResponse(
            headers=[header_pb(h) for h in page.headers], next_page_token=page.next_page_token
        )

    async def ForwardMessage(
        self, request: pb.ForwardMessageRequest, context: Context
    ) -> pb.ForwardMessageResponse:
        result = await self.messages.forward_message(
            MessageRef(request.source.thread_id, request.source.message_id),
            request.target_thread_id,
            request.message_id,
            request.sender_user_id,
            request.sender_device_id,
        )
        return pb.ForwardMessageResponse(
            header=header_pb(result.header), member_user_ids=result.member_user_ids
        )

    # -- threads ---------------------------------------------------------------------------

    async def CreateThread(
        self, request: pb.CreateThreadRequest, context: Context
    ) -> pb.CreateThreadResponse:
        result = await self.threads.create_thread(
            request.thread_id,
            request.kind,
            request.title,
            request.creator_user_id,
            request.member_user_ids,
        )
        return pb.CreateThreadResponse(thread=thread_pb(result.thread), created=result.created)

    async def GetThread(
        self, request: pb.GetThreadRequest, context: Context
    ) -> pb.GetThreadResponse:
        thread = await self.threads.get_thread(request.thread_id, request.viewer_user_id)
        return pb.GetThreadResponse(thread=thread_pb(thread))

    async def ListThreadsForUser(
        self, request: pb.ListThreadsForUserRequest, context: Context
    ) -> pb.ListThreadsForUserResponse:
        page = await self.threads.list_threads_for_user(
            request.user_id, request.page_size, request.page_token
        )
        return pb.ListThreadsForUserResponse(
            threads=[thread_pb(t) for t in page.threads], next_page_token=page.next_page_token
        )

    async def UpdateThread(
        self, request: pb.UpdateThreadRequest, context: Context
    ) -> pb.UpdateThreadResponse:
        thread = await self.threads.update_thread(
            request.thread_id, request.actor_user_id, request.title
        )
        return pb.UpdateThreadResponse(thread=thread_pb(thread))

    async def AddMembers(
        self, request: pb.AddMembersRequest, context: Context
    ) -> pb.AddMembersResponse:
        result = await self.threads.add_members(
            request.thread_id, request.actor_user_id, request.user_ids, request.role
        )
        return pb.AddMembersResponse(
            thread=thread_pb(result.thread), added_user_ids=result.added_user_ids
        )

    async def RemoveMember(
        self, request: pb.RemoveMemberRequest, context: Context
    ) -> pb.RemoveMemberResponse:
        thread = await self.threads.remove_member(
            request.thread_id, request.actor_user_id, request.user_id
        )
        return pb.RemoveMemberResponse(thread=thread_pb(thread))

    async def SetMemberRole(
        self, request: pb.SetMemberRoleRequest, context: Context
    ) -> pb.SetMemberRoleResponse:
        thread = await self.threads.set_member_role(
            request.thread_id, request.actor_user_id, request.user_id, request.role
        )
        return pb.SetMemberRoleResponse(thread=thread_pb(thread))

    async def GetMembers(
        self, request: pb.GetMembersRequest, context: Context
    ) -> pb.GetMembersResponse:
        members = await self.threads.get_members(request.thread_id)
        return pb.GetMembersResponse(user_ids=members.user_ids, last_seq=members.last_seq)

    async def CheckMembership(
        self, request: pb.CheckMembershipRequest, context: Context
    ) -> pb.CheckMembershipResponse:
        membership = await self.threads.check_membership(request.thread_id, request.user_id)
        return pb.CheckMembershipResponse(
            is_member=membership.is_member,
            role=membership.role.value,  # type: ignore[arg-type]
        )

    async def MuteThread(
        self, request: pb.MuteThreadRequest, context: Context
    ) -> pb.MuteThreadResponse:
        state = await self.threads.mute_thread(
            request.thread_id,
            request.user_id,
            request.muted,
            from_timestamp(request, "muted_until"),
        )
        return pb.MuteThreadResponse(user_state=user_state_pb(state))

    # -- timeline --------------------------------------------------------------------------

    async def ListTimeline(
        self, request: pb.ListTimelineRequest, context: Context
    ) -> pb.ListTimelineResponse:
        page = await self.timeline.list_timeline(
            request.user_id,
            request.device_id,
            request.cursor,
            request.page_size,
            request.page_token,
        )
        return pb.ListTimelineResponse(
            threads=[thread_pb(t) for t in page.threads],
            headers=[header_pb(h) for h in page.headers],
            removed_thread_ids=page.removed_thread_ids,
            next_page_token=page.next_page_token,
            next_cursor=page.next_cursor,
        )

    async def AckTimeline(
        self, request: pb.AckTimelineRequest, context: Context
    ) -> pb.AckTimelineResponse:
        cursor = await self.timeline.ack_timeline(
            request.user_id, request.device_id, request.cursor
        )
        return pb.AckTimelineResponse(cursor=cursor)

    # -- marks and likes -------------------------------------------------------------------

    async def SetMark(self, request: pb.SetMarkRequest, context: Context) -> pb.SetMarkResponse:
        mark = request.mark
        result = await self.messages.set_mark(
            mark.user_id, mark.device_id, mark.thread_id, mark.message_id, mark.kind
        )
        return pb.SetMarkResponse(mark=mark_pb(result.mark), advanced=result.advanced)

    async def ListMarks(
        self, request: pb.ListMarksRequest, context: Context
    ) -> pb.ListMarksResponse:
        marks = await self.messages.list_marks(request.thread_id, request.user_ids, request.kind)
        return pb.ListMarksResponse(marks=[mark_pb(m) for m in marks])

    async def LikeMessage(
        self, request: pb.LikeMessageRequest, context: Context
    ) -> pb.LikeMessageResponse:
        result = await self.messages.like_message(
            request.thread_id, request.message_id, request.user_id
        )
        return pb.LikeMessageResponse(
            like=like_pb(result.like) if result.like else None,
            like_count=result.like_count,
            changed=result.changed,
            member_user_ids=result.member_user_ids,
        )

    async def UnlikeMessage(
        self, request: pb.UnlikeMessageRequest, context: Context
    ) -> pb.UnlikeMessageResponse:
        result = await self.messages.unlike_message(
            request.thread_id, request.message_id, request.user_id
        )
        return pb.UnlikeMessageResponse(
            like_count=result.like_count,
            changed=result.changed,
            member_user_ids=result.member_user_ids,
        )


def create_header_storage(settings: Settings) -> HeaderStorage:
    """The storage adapter for settings.stores.backend."""
    if settings.stores.backend == "embedded":
        from voxmesh.header.sqlite_header_storage import SqliteHeaderStorage

        return SqliteHeaderStorage(settings.sqlite_path)
    from voxmesh.header.spanner_header_storage import SpannerHeaderStorage

    spanner = settings.spanner
    return SpannerHeaderStorage(spanner.project, spanner.instance, spanner.database)


def create_header_service(settings: Settings) -> ServiceParts:
    storage = create_header_storage(settings)
    limits = HeaderLimits(
        max_members_per_thread=settings.limits.max_members_per_thread,
        max_text_bytes=settings.limits.max_text_bytes,
    )
    servicer = HeaderStore(storage, limits)
    return ServiceParts(
        [
            Registration(
                "voxmesh.header.v1.HeaderService",
                servicer,
                pb_grpc.add_HeaderServiceServicer_to_server,
            )
        ],
        startup_hooks=[storage.open],
        shutdown_hooks=[storage.close],
        settings_listeners=[servicer.reconfigure],
    )
