"""Every RouterService method x every way of not being allowed, on the real stack.

Columns: each bad-token kind (``token_kinds``: no token, forged signature, ``alg: none``,
expired, wrong audience, ...), claiming to be the victim itself: UNAUTHENTICATED. A
non-member of the victim's thread: PERMISSION_DENIED on every thread method, and the
methods on one's own data answer without anything of the victim's. A plain member on what
only admins (or the sender) may do: PERMISSION_DENIED. Every refusal carries no data, and
the victim's threads and messages are as before.

Each method's request is one that succeeds for the victim (checked first), so a refusal is
the caller's fault, not the request's. A method missing from ``ACCESS`` (a new RPC) still
gets every token kind, with a request filled from its descriptor.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from tests.conftest import require_spanner_emulator
from tests.security.router_world import (
    METHODS,
    Outcome,
    World,
    assert_precise,
    call,
    request_class,
)
from tests.security.token_kinds import bad_token_kinds
from voxmesh.common.v1 import body_pb2, device_pb2, message_pb2, presence_pb2, thread_pb2
from voxmesh.core.ids import new_uuid7
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.stack.local_stack import LocalStack

pytestmark = pytest.mark.stack


class Access(enum.Enum):
    OWN = "the caller's own data"
    MEMBER = "members of the thread"
    ADMIN = "admins of the thread, or the message's sender"


@dataclass
class Victim:
    world: World
    third: str  # a plain member, for admin actions on someone else
    fourth: str  # a plain member, for the admin to remove
    spare_group: str  # another group of the owner's, to leave
    text_id: str  # the owner's text message in the group
    voice_id: str  # the owner's complete voice message in the group
    live_id: str  # the owner's live voice message in the group
    talk_offer: str  # SDP offers of a real WebRTC peer (aiortc): sending audio, receiving it
    listen_offer: str


Build = Callable[[Victim], list[Message]]


def _one(request: Message) -> list[Message]:
    return [request]


def _ref(v: Victim, message_id: str) -> dict[str, Any]:
    return {"thread_id": v.world.group_id, "message_id": message_id}


def _voice_start(v: Victim) -> message_pb2.MessageStart:
    return message_pb2.MessageStart(
        message_id=new_uuid7(),
        thread_id=v.world.group_id,
        kind=message_pb2.MESSAGE_KIND_VOICE,
        content_type="audio/ogg;codecs=opus",
    )


# What each method is, and a request that succeeds for the victim (the group's admin).
ACCESS: dict[str, tuple[Access, Build]] = {
    "Discover": (Access.OWN, lambda v: _one(pb.DiscoverRequest(user_id=v.world.owner))),
    "Send": (
        Access.MEMBER,
        lambda v: [
            pb.SendRequest(
                start=_voice_start(v),
                device_id="phone",
                chunks=[body_pb2.Chunk(index=0, payload=b"\x01" * 8)],
                end=message_pb2.MessageEnd(chunk_count=1, size_bytes=8),
            )
        ],
    ),
    "StartMessage": (
        Access.MEMBER,
        lambda v: _one(pb.StartMessageRequest(start=_voice_start(v), device_id="phone")),
    ),
    "AppendChunks": (
        Access.ADMIN,  # the sender only
        lambda v: _one(pb.AppendChunksRequest(**_ref(v, v.live_id))),
    ),
    "EndMessage": (
        Access.ADMIN,  # the sender only
        lambda v: _one(pb.EndMessageRequest(**_ref(v, v.live_id), end=message_pb2.MessageEnd())),
    ),
    "SendText": (
        Access.MEMBER,
        lambda v: _one(pb.SendTextRequest(**_ref(v, new_uuid7()), device_id="phone", text="mine")),
    ),
    "Updates": (Access.OWN, lambda v: _one(pb.UpdatesRequest(device_id="phone"))),
    "ReadBody": (Access.MEMBER, lambda v: _one(pb.ReadBodyRequest(**_ref(v, v.voice_id)))),
    "ReadBodyRange": (
        Access.MEMBER,
        lambda v: _one(pb.ReadBodyRangeRequest(**_ref(v, v.voice_id))),
    ),
    "ListTimeline": (Access.OWN, lambda v: _one(pb.ListTimelineRequest(device_id="phone"))),
    "AckTimeline": (Access.OWN, lambda v: _one(pb.AckTimelineRequest(device_id="phone"))),
    "CreateThread": (
        Access.OWN,
        lambda v: _one(
            pb.CreateThreadRequest(
                kind=thread_pb2.THREAD_KIND_GROUP, title="x", member_user_ids=[v.world.peer]
            )
        ),
    ),
    "GetThread": (Access.MEMBER, lambda v: _one(pb.GetThreadRequest(thread_id=v.world.group_id))),
    "ListThreads": (Access.OWN, lambda v: _one(pb.ListThreadsRequest())),
    "UpdateThread": (
        Access.ADMIN,
        lambda v: _one(pb.UpdateThreadRequest(thread_id=v.world.group_id, title="renamed")),
    ),
    "AddMembers": (
        Access.ADMIN,
        lambda v: _one(pb.AddMembersRequest(thread_id=v.world.group_id, user_ids=[v.third])),
    ),
    "RemoveMember": (
        Access.ADMIN,
        lambda v: _one(pb.RemoveMemberRequest(thread_id=v.world.group_id, user_id=v.fourth)),
    ),
    "SetMemberRole": (
        Access.ADMIN,
        lambda v: _one(
            pb.SetMemberRoleRequest(
                thread_id=v.world.group_id, user_id=v.third, role=thread_pb2.MEMBER_ROLE_MEMBER
            )
        ),
    ),
    "LeaveThread": (
        Access.MEMBER,
        lambda v: _one(pb.LeaveThreadRequest(thread_id=v.spare_group)),
    ),
    "MuteThread": (
        Access.MEMBER,
        lambda v: _one(pb.MuteThreadRequest(thread_id=v.world.group_id, muted=False)),
    ),
    "ListMessages": (
        Access.MEMBER,
        lambda v: _one(pb.ListMessagesRequest(thread_id=v.world.group_id)),
    ),
    "GetMessage": (Access.MEMBER, lambda v: _one(pb.GetMessageRequest(**_ref(v, v.text_id)))),
    "MarkRead": (
        Access.MEMBER,
        lambda v: _one(pb.MarkReadRequest(**_ref(v, v.text_id), device_id="phone")),
    ),
    "MarkListened": (
        Access.MEMBER,
        lambda v: _one(pb.MarkListenedRequest(**_ref(v, v.voice_id), device_id="phone")),
    ),
    "LikeMessage": (Access.MEMBER, lambda v: _one(pb.LikeMessageRequest(**_ref(v, v.text_id)))),
    "UnlikeMessage": (
        Access.MEMBER,
        lambda v: _one(pb.UnlikeMessageRequest(**_ref(v, v.text_id))),
    ),
    "ForwardMessage": (
        Access.MEMBER,
        lambda v: _one(
            pb.ForwardMessageRequest(
                source=message_pb2.MessageRef(**_ref(v, v.voice_id)),
                target_thread_id=v.world.group_id,
                message_id=new_uuid7(),
                device_id="phone",
            )
        ),
    ),
    "RecallMessage": (
        Access.ADMIN,  # the sender only
        lambda v: _one(pb.RecallMessageRequest(**_ref(v, v.text_id))),
    ),
    "DeleteMessage": (
        Access.ADMIN,  # the sender or an admin, for everyone
        lambda v: _one(
            pb.DeleteMessageRequest(
                **_ref(v, v.text_id), scope=message_pb2.DELETE_SCOPE_FOR_EVERYONE
            )
        ),
    ),
    "SetTyping": (
        Access.MEMBER,
        lambda v: _one(pb.SetTypingRequest(thread_id=v.world.group_id, typing=True)),
    ),
    "SetPresence": (
        Access.OWN,
        lambda v: _one(
            pb.SetPresenceRequest(device_id="phone", state=presence_pb2.PRESENCE_STATE_ONLINE)
        ),
    ),
    "RegisterDevice": (
        Access.OWN,
        lambda v: _one(
            pb.RegisterDeviceRequest(
                device=device_pb2.Device(
                    device_id="phone",
                    platform=device_pb2.PLATFORM_FCM,
                    push_token="fcm-token",
                )
            )
        ),
    ),
    "StartWebRtcTalk": (
        Access.MEMBER,
        lambda v: _one(
            pb.StartWebRtcTalkRequest(
                device_id="phone", start=_voice_start(v), offer_sdp=v.talk_offer
            )
        ),
    ),
    "ListenWebRtc": (
        Access.MEMBER,
        lambda v: _one(pb.ListenWebRtcRequest(**_ref(v, v.voice_id), offer_sdp=v.listen_offer)),
    ),
    "UnregisterDevice": (
        Access.OWN,
        lambda v: _one(pb.UnregisterDeviceRequest(device_id="tablet")),
    ),
}


def _inferred(method: MethodDescriptor) -> tuple[Access, Build]:
    """A new RPC: fill the fields it has from the victim's world."""

    def build(v: Victim) -> list[Message]:
        request = request_class(method)()
        values = {
            "thread_id": v.world.group_id,
            "message_id": v.text_id,
            "device_id": "phone",
            "user_id": v.world.owner,
        }
        for name, value in values.items():
            if name in request.DESCRIPTOR.fields_by_name:
                setattr(request, name, value)
        return [request]

    has_thread = "thread_id" in method.input_type.fields_by_name
    return (Access.MEMBER if has_thread else Access.OWN), build


def _access(method: MethodDescriptor) -> tuple[Access, Build]:
    return ACCESS.get(method.name) or _inferred(method)


@pytest.fixture(scope="module")
def victim(local_stack: LocalStack) -> Iterator[Victim]:
    require_spanner_emulator()
    world = World(local_stack).build()
    third, fourth = f"third-{world.owner}", f"fourth-{world.owner}"
    world.unary(
        "AddMembers", pb.AddMembersRequest(thread_id=world.group_id, user_ids=[third, fourth])
    )
    spare = world.unary(
        "CreateThread",
        pb.CreateThreadRequest(kind=thread_pb2.THREAD_KIND_GROUP, member_user_ids=[world.peer]),
    ).thread.thread_id
    world.unary(  # so that the owner may leave it
        "SetMemberRole",
        pb.SetMemberRoleRequest(
            thread_id=spare, user_id=world.peer, role=thread_pb2.MEMBER_ROLE_ADMIN
        ),
    )
    live = new_uuid7()
    start = message_pb2.MessageStart(
        message_id=live,
        thread_id=world.group_id,
        kind=message_pb2.MESSAGE_KIND_VOICE,
        content_type="audio/ogg;codecs=opus",
    )
    world.unary("StartMessage", pb.StartMessageRequest(start=start, device_id="phone"))
    text_id, voice_id = world.pool.message_ids[:2]
    talk, listen = asyncio.run(_offer("sendonly")), asyncio.run(_offer("recvonly"))
    yield Victim(world, third, fourth, spare, text_id, voice_id, live, talk, listen)
    world.channel.close()


async def _offer(direction: str) -> str:
    peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        peer.addTransceiver("audio", direction=direction)
        await peer.setLocalDescription(await peer.createOffer())
        return str(peer.localDescription.sdp)
    finally:
        await peer.close()


def _frames(requests: list[Message]) -> list[bytes]:
    return [r.SerializeToString() for r in requests]


def _revealed(v: Victim, outcome: Outcome, sent: list[bytes]) -> list[str]:
    """Which of the victim's values the caller got back without having sent them."""
    secrets = [v.world.group_id, v.text_id, v.voice_id, v.live_id, "fuzz", v.third, v.fourth]
    blob = b"".join(outcome.responses) + outcome.details.encode()
    asked = b"".join(sent)
    return [s for s in secrets if s.encode() in blob and s.encode() not in asked]


def test_every_method_is_in_the_access_table_or_inferred() -> None:
    # A new RPC is still covered (by inference); naming its access here makes it exact.
    for method in METHODS:
        access, build = _access(method)
        assert isinstance(access, Access) and callable(build), method.name


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_bad_tokens_are_refused_on_every_method(victim: Victim, method: MethodDescriptor) -> None:
    world = victim.world
    _, build = _access(method)
    before = world.snapshot()
    for kind in bad_token_kinds(world.settings.auth):
        frames = _frames(build(victim))
        outcome = call(
            world.channel, method, frames, kind.metadata(world.settings.auth, world.owner)
        )
        cell = f"{method.name} x {kind.name}"
        assert outcome.code == grpc.StatusCode.UNAUTHENTICATED, (cell, outcome)
        assert not outcome.responses, f"{cell}: data came back"
        assert not _revealed(victim, outcome, frames), cell
    assert world.snapshot() == before, f"{method.name}: a refused call wrote something"


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_non_members_and_non_admins_are_refused(victim: Victim, method: MethodDescriptor) -> None:
    world = victim.world
    access, build = _access(method)
    before = world.snapshot()
    stranger = world.metadata(world.stranger)
    frames = _frames(build(victim))
    outcome = call(world.channel, method, frames, stranger)
    assert_precise(method, outcome, "as a non-member")
    if access == Access.OWN:
        # One's own data: answered, with nothing of the victim's in it.
        assert outcome.code == grpc.StatusCode.OK or outcome.client_stopped, outcome
        assert not _revealed(victim, outcome, frames), f"{method.name} showed the victim's"
    else:
        assert outcome.code == grpc.StatusCode.PERMISSION_DENIED, (method.name, outcome)
        assert not outcome.responses and not _revealed(victim, outcome, frames), method.name
    if access == Access.ADMIN:
        member = world.metadata(world.peer)
        outcome = call(world.channel, method, _frames(build(victim)), member)
        assert outcome.code == grpc.StatusCode.PERMISSION_DENIED, (method.name, outcome)
        assert not outcome.responses, method.name
    assert world.snapshot() == before, f"{method.name}: a refused call wrote something"


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_the_same_requests_succeed_for_the_victim(victim: Victim, method: MethodDescriptor) -> None:
    """The requests above are valid: the refusals were the callers', not the requests'."""
    world = victim.world
    _, build = _access(method)
    outcome = call(world.channel, method, _frames(build(victim)), world.metadata())
    assert outcome.code == grpc.StatusCode.OK, (method.name, outcome.code, outcome.details)
