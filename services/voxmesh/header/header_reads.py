"""Reads and row conversions shared by the header store's rules (all within one transaction)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, TypeVar

from voxmesh.core.domain_errors import InvalidArgument, NotFound, PermissionDenied
from voxmesh.core.ids import require_id
from voxmesh.header.header_records import (
    TOMBSTONE_STATES,
    Header,
    Location,
    MarkKind,
    Member,
    MemberRole,
    MessageKind,
    MessageRef,
    MessageState,
    Thread,
    ThreadKind,
    UserState,
)
from voxmesh.header.header_storage import Key, ReadTxn, Row

E = TypeVar("E", bound=IntEnum)

MAX_SEQ = 2**63 - 1  # Spanner INT64
LIKED_BY_CAP = 100  # liked_by_user_ids per header (like_count stays exact)

THREAD_COLUMNS = (
    "ThreadId",
    "ThreadKind",
    "Title",
    "CreatedByUserId",
    "CreatedAt",
    "UpdatedAt",
    "ChangedAt",
    "LastSeq",
)
MEMBER_COLUMNS = ("ThreadId", "UserId", "MemberRole", "JoinedAt", "AddedByUserId")
MESSAGE_COLUMNS = (
    "ThreadId",
    "Seq",
    "MessageId",
    "SenderUserId",
    "SenderDeviceId",
    "MessageKind",
    "MessageState",
    "ContentType",
    "ClientCreatedAt",
    "StartedAt",
    "CompletedAt",
    "UpdatedAt",
    "DurationNanos",
    "SizeBytes",
    "ChunkCount",
    "Text",
    "Latitude",
    "Longitude",
    "AccuracyMeters",
    "LocationLabel",
    "FileName",
    "ForwardedFromThreadId",
    "ForwardedFromMessageId",
    "BodyThreadId",
    "BodyMessageId",
    "LikeCount",
)
MESSAGE_SELECT = ", ".join(f"m.{c}" for c in MESSAGE_COLUMNS)
# Leaves out the messages @viewer hid for themselves (no viewer: @viewer = '' matches none).
NOT_HIDDEN = (
    "NOT EXISTS (SELECT 1 FROM HiddenMessages AS h WHERE h.ThreadHash = m.ThreadHash "
    "AND h.ThreadId = m.ThreadId AND h.UserId = @viewer AND h.Seq = m.Seq)"
)


def key_hash(value: str) -> int:
    """The hash prefix of keys led by a thread or message id (see config/spanner.ddl)."""
    return int.from_bytes(hashlib.sha256(value.encode()).digest()[:8], "big") >> 1


def thread_key(thread_id: str) -> Key:
    return (key_hash(thread_id), thread_id)


def thread_params(thread_id: str) -> dict[str, Any]:
    """The @h and @t parameters of a query on one thread's rows."""
    return {"h": key_hash(thread_id), "t": thread_id}


def thread_columns(thread_id: str) -> Row:
    """The ThreadHash and ThreadId key columns of a row in one thread's key range."""
    return {"ThreadHash": key_hash(thread_id), "ThreadId": thread_id}


# -- validation ------------------------------------------------------------------------------


def parse_enum(enum: type[E], value: int, what: str, *, allow_unspecified: bool = False) -> E:
    try:
        parsed = enum(value)
    except ValueError:
        raise InvalidArgument(f"{what} {value} is not a known value") from None
    if parsed == 0 and not allow_unspecified:
        names = ", ".join(m.name for m in enum if m.value)
        raise InvalidArgument(f"{what} is required: one of {names}")
    return parsed


def optional_id(value: str, what: str) -> str:
    return require_id(value, what) if value else ""


def distinct_ids(values: Iterable[str], what: str) -> list[str]:
    """Validated ids in their first order, duplicates dropped."""
    return list(dict.fromkeys(require_id(v, f"{what}[{i}]") for i, v in enumerate(values)))


# -- threads and members ---------------------------------------------------------------------


def member_from_row(row: Row) -> Member:
    return Member(
        user_id=row["UserId"],
        role=MemberRole(row["MemberRole"]),
        joined_at=row["JoinedAt"],
        added_by_user_id=row["AddedByUserId"],
    )


def thread_from_rows(
    row: Row, members: Sequence[Member], user_state: UserState | None = None
) -> Thread:
    return Thread(
        thread_id=row["ThreadId"],
        kind=ThreadKind(row["ThreadKind"]),
        title=row["Title"],
        created_by_user_id=row["CreatedByUserId"],
        created_at=row["CreatedAt"],
        updated_at=row["UpdatedAt"],
        last_seq=row["LastSeq"],
        members=tuple(sorted(members, key=lambda m: m.user_id)),
        user_state=user_state,
    )


def read_thread_rows(txn: ReadTxn, thread_ids: Sequence[str]) -> dict[str, Row]:
    rows = txn.read("Threads", THREAD_COLUMNS, [thread_key(t) for t in thread_ids])
    return {r["ThreadId"]: r for r in rows}


def require_thread_row(txn: ReadTxn, thread_id: str) -> Row:
    row = read_thread_rows(txn, [thread_id]).get(thread_id)
    if row is None:
        raise NotFound(f"thread {thread_id} not found")
    return row


def read_members(txn: ReadTxn, thread_ids: Sequence[str]) -> dict[str, list[Member]]:
    members: dict[str, list[Member]] = {t: [] for t in thread_ids}
    for row in txn.read_prefixes(
        "ThreadMembers", MEMBER_COLUMNS, [thread_key(t) for t in thread_ids]
    ):
        members[row["ThreadId"]].append(member_from_row(row))
    return members


def require_thread(txn: ReadTxn, thread_id: str) -> tuple[Row, Thread]:
    """The thread's row and the thread with its members; NOT_FOUND if it does not exist."""
    row = require_thread_row(txn, thread_id)
    return row, thread_from_rows(row, read_members(txn, [thread_id])[thread_id])


def require_member(thread: Thread, user_id: str) -> Member:
    member = thread.member(user_id)
    if member is None:
        raise PermissionDenied(f"user {user_id} is not a member of thread {thread.thread_id}")
    return member


def read_user_states(
    txn: ReadTxn, user_id: str, thread_ids: Sequence[str], now: datetime | None = None
) -> dict[str, UserState]:
    """One user's marks and mute for each thread (defaults where nothing is stored)."""
    now = now or datetime.now(UTC)
    marks: dict[tuple[str, int], int] = {}
    mark_keys = [
        (*thread_key(t), user_id, kind.value)
        for t in thread_ids
        for kind in (MarkKind.READ, MarkKind.LISTENED)
    ]
    for row in txn.read("Marks", ("ThreadId", "MarkKind", "Seq"), mark_keys):
        marks[(row["ThreadId"], row["MarkKind"])] = row["Seq"]
    mutes = {
        row["ThreadId"]: row
        for row in txn.read(
            "UserThreads",
            ("ThreadId", "Muted", "MutedUntil"),
            [(user_id, t) for t in thread_ids],
        )
    }
    states = {}
    for thread_id in thread_ids:
        mute = mutes.get(thread_id)
        until = mute["MutedUntil"] if mute else None
        muted = bool(mute and mute["Muted"] and (until is None or until > now))
        states[thread_id] = UserState(
            read_seq=marks.get((thread_id, MarkKind.READ), 0),
            listened_seq=marks.get((thread_id, MarkKind.LISTENED), 0),
            muted=muted,
            muted_until=until if muted else None,
        )
    return states


def read_threads(
    txn: ReadTxn, thread_rows: Sequence[Row], viewer_user_id: str = ""
) -> list[Thread]:
    """Threads with their members (and the viewer's state), in the order of ``thread_rows``."""
    thread_ids = [r["ThreadId"] for r in thread_rows]
    members = read_members(txn, thread_ids)
    states = read_user_states(txn, viewer_user_id, thread_ids) if viewer_user_id else {}
    return [
        thread_from_rows(r, members[r["ThreadId"]], states.get(r["ThreadId"])) for r in thread_rows
    ]


# -- messages --------------------------------------------------------------------------------


def read_message_row(txn: ReadTxn, thread_id: str, message_id: str) -> Row | None:
    rows = txn.query(
        f"SELECT {MESSAGE_SELECT} FROM Messages AS m "
        f"WHERE m.ThreadHash = @h AND m.ThreadId = @t AND m.MessageId = @m",
        {**thread_params(thread_id), "m": message_id},
    )
    return rows[0] if rows else None


def require_message_row(txn: ReadTxn, thread_id: str, message_id: str) -> Row:
    row = read_message_row(txn, thread_id, message_id)
    if row is None:
        raise NotFound(f"message {message_id} not found in thread {thread_id}")
    return row


def header_from_row(row: Row, liked_by: Sequence[str] = ()) -> Header:
    state = MessageState(row["MessageState"])
    tombstone = state in TOMBSTONE_STATES
    location = None
    if row["Latitude"] is not None and not tombstone:
        location = Location(
            latitude=row["Latitude"],
            longitude=row["Longitude"],
            accuracy_meters=row["AccuracyMeters"] or 0.0,
            label=row["LocationLabel"] or "",
        )
    forwarded_from = None
    if row["ForwardedFromThreadId"] is not None:
        forwarded_from = MessageRef(row["ForwardedFromThreadId"], row["ForwardedFromMessageId"])
    return Header(
        thread_id=row["ThreadId"],
        message_id=row["MessageId"],
        seq=row["Seq"],
        sender_user_id=row["SenderUserId"],
        sender_device_id=row["SenderDeviceId"],
        kind=MessageKind(row["MessageKind"]),
        state=state,
        content_type=row["ContentType"],
        created_at=row["ClientCreatedAt"],
        started_at=row["StartedAt"],
        completed_at=row["CompletedAt"],
        updated_at=row["UpdatedAt"],
        duration_nanos=row["DurationNanos"],
        size_bytes=row["SizeBytes"],
        chunk_count=row["ChunkCount"],
        text="" if tombstone else row["Text"],
        location=location,
        file_name="" if tombstone else row["FileName"],
        forwarded_from=forwarded_from,
        body=MessageRef(row["BodyThreadId"], row["BodyMessageId"]),
        like_count=row["LikeCount"],
        liked_by_user_ids=tuple(liked_by),
    )


def read_liked_by(txn: ReadTxn, thread_id: str, seqs: Sequence[int]) -> dict[int, list[str]]:
    """Who likes each of these messages (at most LIKED_BY_CAP each)."""
    if not seqs:
        return {}
    wanted = set(seqs)
    liked_by: dict[int, list[str]] = {s: [] for s in wanted}
    for row in txn.query(
        "SELECT Seq, UserId FROM Likes WHERE ThreadHash = @h AND ThreadId = @t "
        "AND Seq BETWEEN @lo AND @hi ORDER BY Seq, UserId",
        {**thread_params(thread_id), "lo": min(wanted), "hi": max(wanted)},
    ):
        users = liked_by.get(row["Seq"])
        if users is not None and len(users) < LIKED_BY_CAP:
            users.append(row["UserId"])
    return liked_by


def headers_with_likes(txn: ReadTxn, thread_id: str, rows: Sequence[Row]) -> list[Header]:
    liked_by = read_liked_by(txn, thread_id, [r["Seq"] for r in rows if r["LikeCount"]])
    return [header_from_row(r, liked_by.get(r["Seq"], ())) for r in rows]


def threads_clause(thread_ids: Sequence[str], alias: str = "") -> tuple[str, dict[str, Any]]:
    """A WHERE clause matching the key ranges of these threads (key seeks, one query) and its
    parameters @h<i>/@t<i>; the same SQL runs on Spanner and SQLite."""
    prefix = f"{alias}." if alias else ""
    params: dict[str, Any] = {}
    terms = []
    for position, thread_id in enumerate(thread_ids):
        params[f"h{position}"] = key_hash(thread_id)
        params[f"t{position}"] = thread_id
        terms.append(f"({prefix}ThreadHash = @h{position} AND {prefix}ThreadId = @t{position})")
    return "(" + " OR ".join(terms) + ")", params


def headers_with_likes_of_threads(txn: ReadTxn, rows: Sequence[Row]) -> list[Header]:
    """Headers of message rows from any threads, likes read in one query for all of them."""
    liked = [r for r in rows if r["LikeCount"]]
    liked_by: dict[tuple[str, int], list[str]] = {(r["ThreadId"], r["Seq"]): [] for r in liked}
    if liked:
        threads = sorted({r["ThreadId"] for r in liked})
        where, params = threads_clause(threads)
        wanted = sorted(liked_by)
        params["lo"] = min(seq for _, seq in wanted)
        params["hi"] = max(seq for _, seq in wanted)
        for row in txn.query(
            f"SELECT ThreadId, Seq, UserId FROM Likes WHERE {where} "
            f"AND Seq BETWEEN @lo AND @hi ORDER BY ThreadId, Seq, UserId",
            params,
        ):
            users = liked_by.get((row["ThreadId"], row["Seq"]))
            if users is not None and len(users) < LIKED_BY_CAP:
                users.append(row["UserId"])
    return [header_from_row(r, liked_by.get((r["ThreadId"], r["Seq"]), ())) for r in rows]


def read_header(txn: ReadTxn, thread_id: str, message_id: str) -> Header:
    return headers_with_likes(txn, thread_id, [require_message_row(txn, thread_id, message_id)])[0]
