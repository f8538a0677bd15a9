"""Translation between the header store's records and the v1 protos (nothing else)."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from voxmesh.common.v1 import mark_pb2, message_pb2, thread_pb2
from voxmesh.core import field_rules
from voxmesh.header.header_records import (
    Header,
    Like,
    Location,
    Mark,
    Member,
    MessageRef,
    MessageTotals,
    NewMessage,
    Thread,
    UserState,
)

_NANOS = 1_000_000_000


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def from_timestamp(message: object, field: str) -> datetime | None:
    """The datetime of an optional Timestamp field (None when unset); out of range is
    INVALID_ARGUMENT naming the field."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    return field_rules.timestamp(getattr(message, field), field)


def location_pb(location: Location | None) -> message_pb2.Location | None:
    if location is None:
        return None
    return message_pb2.Location(
        latitude=location.latitude,
        longitude=location.longitude,
        accuracy_meters=location.accuracy_meters,
        label=location.label,
    )


def ref_pb(ref: MessageRef | None) -> message_pb2.MessageRef | None:
    if ref is None:
        return None
    return message_pb2.MessageRef(thread_id=ref.thread_id, message_id=ref.message_id)


def header_pb(header: Header) -> message_pb2.MessageHeader:
    duration = None
    if header.duration_nanos:
        duration = Duration(
            seconds=header.duration_nanos // _NANOS, nanos=header.duration_nanos % _NANOS
        )
    return message_pb2.MessageHeader(
        thread_id=header.thread_id,
        message_id=header.message_id,
        seq=header.seq,
        sender_user_id=header.sender_user_id,
        sender_device_id=header.sender_device_id,
        kind=header.kind.value,  # type: ignore[arg-type]
        state=header.state.value,  # type: ignore[arg-type]
        content_type=header.content_type,
        created_at=timestamp(header.created_at),
        started_at=timestamp(header.started_at),
        completed_at=timestamp(header.completed_at),
        updated_at=timestamp(header.updated_at),
        duration=duration,
        size_bytes=header.size_bytes,
        chunk_count=header.chunk_count,
        text=header.text,
        location=location_pb(header.location),
        file_name=header.file_name,
        forwarded_from=ref_pb(header.forwarded_from),
        body=ref_pb(header.body),
        like_count=header.like_count,
        liked_by_user_ids=header.liked_by_user_ids,
    )


def user_state_pb(state: UserState) -> thread_pb2.ThreadUserState:
    return thread_pb2.ThreadUserState(
        read_seq=state.read_seq,
        listened_seq=state.listened_seq,
        muted=state.muted,
        muted_until=timestamp(state.muted_until),
    )


def member_pb(member: Member) -> thread_pb2.Member:
    return thread_pb2.Member(
        user_id=member.user_id,
        role=member.role.value,  # type: ignore[arg-type]
        joined_at=timestamp(member.joined_at),
        added_by_user_id=member.added_by_user_id,
    )


def thread_pb(thread: Thread) -> thread_pb2.Thread:
    return thread_pb2.Thread(
        thread_id=thread.thread_id,
        kind=thread.kind.value,  # type: ignore[arg-type]
        title=thread.title,
        members=[member_pb(m) for m in thread.members],
        created_by_user_id=thread.created_by_user_id,
        created_at=timestamp(thread.created_at),
        updated_at=timestamp(thread.updated_at),
        last_seq=thread.last_seq,
        user_state=user_state_pb(thread.user_state) if thread.user_state else None,
    )


def mark_pb(mark: Mark) -> mark_pb2.Mark:
    return mark_pb2.Mark(
        user_id=mark.user_id,
        device_id=mark.device_id,
        thread_id=mark.thread_id,
        message_id=mark.message_id,
        seq=mark.seq,
        kind=mark.kind.value,  # type: ignore[arg-type]
        marked_at=timestamp(mark.marked_at),
    )


def like_pb(like: Like) -> message_pb2.Like:
    return message_pb2.Like(
        thread_id=like.thread_id,
        message_id=like.message_id,
        user_id=like.user_id,
        liked_at=timestamp(like.liked_at),
    )


def new_message(start: message_pb2.MessageStart) -> NewMessage:
    location = None
    if start.HasField("location"):
        location = Location(
            latitude=start.location.latitude,
            longitude=start.location.longitude,
            accuracy_meters=start.location.accuracy_meters,
            label=start.location.label,
        )
    return NewMessage(
        message_id=start.message_id,
        thread_id=start.thread_id,
        kind=start.kind,
        content_type=start.content_type,
        created_at=from_timestamp(start, "created_at"),
        text=start.text,
        location=location,
        file_name=start.file_name,
    )


def message_totals(end: message_pb2.MessageEnd) -> MessageTotals:
    return MessageTotals(
        chunk_count=end.chunk_count,
        size_bytes=end.size_bytes,
        duration_nanos=field_rules.duration_nanos(end.duration, "end.duration"),
    )
