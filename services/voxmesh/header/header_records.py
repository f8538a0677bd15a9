"""Plain records of the header store's domain: threads, members, headers, marks, likes.

The enums carry the numbers of the v1 proto enums (a unit test keeps them equal), so the
servicer translates by value. Timestamps are aware datetimes (UTC).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum


class ThreadKind(IntEnum):
    UNSPECIFIED = 0
    DIRECT = 1
    GROUP = 2


class MemberRole(IntEnum):
    UNSPECIFIED = 0
    ADMIN = 1
    MEMBER = 2


class MessageKind(IntEnum):
    UNSPECIFIED = 0
    VOICE = 1
    TEXT = 2
    IMAGE = 3
    FILE = 4
    LOCATION = 5


class MessageState(IntEnum):
    UNSPECIFIED = 0
    LIVE = 1
    COMPLETE = 2
    ABANDONED = 3
    RECALLED = 4
    DELETED = 5


class MarkKind(IntEnum):
    UNSPECIFIED = 0
    READ = 1
    LISTENED = 2


@dataclass(frozen=True)
class HeaderLimits:
    """The limits the rules enforce (from settings.limits)."""

    max_members_per_thread: int
    max_text_bytes: int


MAX_TITLE_CHARS = 200  # Threads.Title STRING(200)

# Kinds whose content is all in the header: complete as soon as they start.
BODYLESS_KINDS = frozenset({MessageKind.TEXT, MessageKind.LOCATION})
# Headers kept as tombstones: text, location and file name are gone.
TOMBSTONE_STATES = frozenset({MessageState.RECALLED, MessageState.DELETED})


@dataclass(frozen=True)
class Member:
    user_id: str
    role: MemberRole
    joined_at: datetime
    added_by_user_id: str


@dataclass(frozen=True)
class UserState:
    read_seq: int
    listened_seq: int
    muted: bool
    muted_until: datetime | None


@dataclass(frozen=True)
class Thread:
    thread_id: str
    kind: ThreadKind
    title: str
    created_by_user_id: str
    created_at: datetime
    updated_at: datetime
    last_seq: int
    members: tuple[Member, ...]
    user_state: UserState | None = None

    @property
    def member_user_ids(self) -> list[str]:
        return [m.user_id for m in self.members]

    def member(self, user_id: str) -> Member | None:
        return next((m for m in self.members if m.user_id == user_id), None)


@dataclass(frozen=True)
class Location:
    latitude: float
    longitude: float
    accuracy_meters: float
    label: str


@dataclass(frozen=True)
class MessageRef:
    thread_id: str
    message_id: str


@dataclass(frozen=True)
class NewMessage:
    """What a sender's client chooses when a message starts (MessageStart)."""

    message_id: str
    thread_id: str
    kind: int  # validated into MessageKind by the rules
    content_type: str = ""
    created_at: datetime | None = None
    text: str = ""
    location: Location | None = None
    file_name: str = ""


@dataclass(frozen=True)
class MessageTotals:
    """What a sender reports when a message ends (MessageEnd)."""

    chunk_count: int
    size_bytes: int
    duration_nanos: int


@dataclass(frozen=True)
class Header:
    thread_id: str
    message_id: str
    seq: int
    sender_user_id: str
    sender_device_id: str
    kind: MessageKind
    state: MessageState
    content_type: str
    created_at: datetime | None
    started_at: datetime
    completed_at: datetime | None
    updated_at: datetime
    duration_nanos: int
    size_bytes: int
    chunk_count: int
    text: str
    location: Location | None
    file_name: str
    forwarded_from: MessageRef | None
    body: MessageRef
    like_count: int
    liked_by_user_ids: tuple[str, ...] = ()

    @property
    def totals(self) -> MessageTotals:
        return MessageTotals(self.chunk_count, self.size_bytes, self.duration_nanos)


@dataclass(frozen=True)
class Mark:
    user_id: str
    device_id: str
    thread_id: str
    message_id: str
    seq: int
    kind: MarkKind
    marked_at: datetime


@dataclass(frozen=True)
class Like:
    thread_id: str
    message_id: str
    user_id: str
    liked_at: datetime


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatedThread:
    thread: Thread
    created: bool


@dataclass(frozen=True)
class AddedMembers:
    thread: Thread
    added_user_ids: tuple[str, ...]


@dataclass(frozen=True)
class ThreadPage:
    threads: tuple[Thread, ...]
    next_page_token: str


@dataclass(frozen=True)
class MemberList:
    user_ids: tuple[str, ...]
    last_seq: int


@dataclass(frozen=True)
class Membership:
    is_member: bool
    role: MemberRole


@dataclass(frozen=True)
class HeaderAndTargets:
    """A header after a write, and the member user ids to tell about it."""

    header: Header
    member_user_ids: tuple[str, ...]
    created: bool = False  # StartMessage / ForwardMessage: False when it already existed
    previous_state: MessageState = MessageState.UNSPECIFIED  # SetMessageState


@dataclass(frozen=True)
class HeaderPage:
    headers: tuple[Header, ...]
    next_page_token: str


@dataclass(frozen=True)
class MarkResult:
    mark: Mark
    advanced: bool


@dataclass(frozen=True)
class LikeResult:
    like: Like | None  # None after an unlike
    like_count: int
    changed: bool
    member_user_ids: tuple[str, ...]


@dataclass(frozen=True)
class TimelinePage:
    threads: tuple[Thread, ...]
    headers: tuple[Header, ...]
    removed_thread_ids: tuple[str, ...]
    next_page_token: str
    next_cursor: str
