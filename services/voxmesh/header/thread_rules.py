"""Threads and their members: creation, titles, membership, roles, mute, per-user lists.

Rules (the proto comments are the contract):
- a direct thread has exactly two distinct members, both MEMBER, no title, and never changes
  membership; CreateThread is idempotent for the same pair;
- a group's creator is its first admin; only admins rename, add, remove others and change
  roles; anyone may leave; a group that still has members always keeps an admin;
- a thread has at most limits.max_members_per_thread members.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime

from voxmesh.core.domain_errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from voxmesh.core.ids import require_id
from voxmesh.header.header_reads import (
    distinct_ids,
    parse_enum,
    read_members,
    read_thread_rows,
    read_threads,
    read_user_states,
    require_member,
    require_thread,
    thread_columns,
    thread_from_rows,
    thread_key,
    thread_params,
)
from voxmesh.header.header_records import (
    MAX_TITLE_CHARS,
    AddedMembers,
    CreatedThread,
    HeaderLimits,
    Member,
    MemberList,
    MemberRole,
    Membership,
    Thread,
    ThreadKind,
    ThreadPage,
    UserState,
)
from voxmesh.header.header_storage import (
    COMMIT_TS,
    HeaderStorage,
    ReadTxn,
    Row,
    WriteTxn,
    stamp_commit_ts,
    to_micros,
)
from voxmesh.header.header_tokens import (
    decode_page_token,
    encode_page_token,
    page_size,
    token_int,
    token_str,
    token_time,
)


def touch_thread(txn: WriteTxn, thread_id: str, *, thread_itself: bool, **columns: object) -> None:
    """Record a change for the members' timelines (ChangedAt); ``thread_itself`` (the thread,
    its members or a new message) also moves the thread up in thread lists (UpdatedAt).
    ``columns`` are other Threads columns to set in the same mutation."""
    row: Row = {**thread_columns(thread_id), **columns, "ChangedAt": COMMIT_TS}
    if thread_itself:
        row["UpdatedAt"] = COMMIT_TS
    txn.update("Threads", row)


def _check_title(title: str) -> None:
    if len(title) > MAX_TITLE_CHARS:
        raise InvalidArgument(f"title is {len(title)} characters; the limit is {MAX_TITLE_CHARS}")
    if any(ord(c) < 0x20 for c in title):
        raise InvalidArgument("title must not contain control characters")


def _require_group(thread: Thread, what: str) -> None:
    if thread.kind != ThreadKind.GROUP:
        raise FailedPrecondition(
            f"thread {thread.thread_id} is a direct thread: {what} only in group threads"
        )


def _require_admin(thread: Thread, actor_user_id: str, what: str) -> Member:
    actor = require_member(thread, actor_user_id)
    if actor.role != MemberRole.ADMIN:
        raise PermissionDenied(
            f"only admins of thread {thread.thread_id} may {what}; {actor_user_id} is a member"
        )
    return actor


def _with_members(thread: Thread, members: Sequence[Member]) -> Thread:
    return dataclasses.replace(
        thread,
        members=tuple(sorted(members, key=lambda m: m.user_id)),
        updated_at=COMMIT_TS,
    )


def _join(txn: WriteTxn, thread_id: str, member: Member, user_thread: Row | None) -> None:
    """Write a new member's rows: ThreadMembers, and the user's thread index entry."""
    txn.insert(
        "ThreadMembers",
        {
            **thread_columns(thread_id),
            "UserId": member.user_id,
            "MemberRole": member.role.value,
            "JoinedAt": COMMIT_TS,
            "AddedByUserId": member.added_by_user_id,
        },
    )
    index_row: Row = {
        "UserId": member.user_id,
        "ThreadId": thread_id,
        "IsMember": True,
        "UpdatedAt": COMMIT_TS,
    }
    if user_thread is None:
        txn.insert("UserThreads", {**index_row, "Muted": False})
    else:  # re-joining: keeps their mute
        txn.update("UserThreads", index_row)


class ThreadRules:
    def __init__(self, storage: HeaderStorage, limits: HeaderLimits) -> None:
        self._storage = storage
        self._limits = limits

    def _check_member_count(self, count: int, thread_id: str) -> None:
        limit = self._limits.max_members_per_thread
        if count > limit:
            raise InvalidArgument(
                f"thread {thread_id} would have {count} members; the limit is {limit}"
            )

    # -- creation --------------------------------------------------------------------------

    async def create_thread(
        self,
        thread_id: str,
        kind: int,
        title: str,
        creator_user_id: str,
        member_user_ids: Sequence[str],
    ) -> CreatedThread:
        require_id(thread_id, "thread_id")
        require_id(creator_user_id, "creator_user_id")
        thread_kind = parse_enum(ThreadKind, kind, "kind")
        others = [
            u for u in distinct_ids(member_user_ids, "member_user_ids") if u != creator_user_id
        ]
        if thread_kind == ThreadKind.DIRECT:
            if len(others) != 1:
                raise InvalidArgument(
                    f"a direct thread has exactly two distinct members, the creator and one "
                    f"other user; got {len(others)} other(s)"
                )
            if title:
                raise InvalidArgument("a direct thread has no title")
        _check_title(title)
        self._check_member_count(1 + len(others), thread_id)

        def unit(txn: WriteTxn) -> CreatedThread:
            existing = read_thread_rows(txn, [thread_id]).get(thread_id)
            if existing is not None:
                thread = thread_from_rows(existing, read_members(txn, [thread_id])[thread_id])
                if thread.kind == ThreadKind.DIRECT and thread_kind == ThreadKind.DIRECT:
                    if set(thread.member_user_ids) == {creator_user_id, *others}:
                        return CreatedThread(thread, created=False)
                    raise AlreadyExists(
                        f"thread {thread_id} already exists as a direct thread of other users"
                    )
                if thread.kind == thread_kind and thread.created_by_user_id == creator_user_id:
                    return CreatedThread(thread, created=False)
                raise AlreadyExists(
                    f"thread {thread_id} already exists as another "
                    f"{thread.kind.name.lower()} thread"
                )
            creator_role = (
                MemberRole.ADMIN if thread_kind == ThreadKind.GROUP else MemberRole.MEMBER
            )
            members = [
                Member(creator_user_id, creator_role, COMMIT_TS, creator_user_id),
                *(Member(u, MemberRole.MEMBER, COMMIT_TS, creator_user_id) for u in others),
            ]
            txn.insert(
                "Threads",
                {
                    **thread_columns(thread_id),
                    "ThreadKind": thread_kind.value,
                    "Title": title,
                    "CreatedByUserId": creator_user_id,
                    "CreatedAt": COMMIT_TS,
                    "UpdatedAt": COMMIT_TS,
                    "ChangedAt": COMMIT_TS,
                    "LastSeq": 0,
                },
            )
            for member in members:
                _join(txn, thread_id, member, None)
            thread = Thread(
                thread_id=thread_id,
                kind=thread_kind,
                title=title,
                created_by_user_id=creator_user_id,
                created_at=COMMIT_TS,
                updated_at=COMMIT_TS,
                last_seq=0,
                members=tuple(sorted(members, key=lambda m: m.user_id)),
            )
            return CreatedThread(thread, created=True)

        result, commit_ts = await self._storage.write(unit)
        return stamp_commit_ts(result, commit_ts)

    # -- reads -----------------------------------------------------------------------------

    async def get_thread(self, thread_id: str, viewer_user_id: str = "") -> Thread:
        require_id(thread_id, "thread_id")
        if viewer_user_id:
            require_id(viewer_user_id, "viewer_user_id")

        def unit(txn: ReadTxn) -> Thread:
            _, thread = require_thread(txn, thread_id)
            if viewer_user_id:
                require_member(thread, viewer_user_id)
                state = read_user_states(txn, viewer_user_id, [thread_id])[thread_id]
                thread = dataclasses.replace(thread, user_state=state)
            return thread

        thread, _ = await self._storage.read(unit)
        return thread

    async def list_threads_for_user(
        self, user_id: str, size: int = 0, page_token: str = ""
    ) -> ThreadPage:
        """A user's threads, most recently active first, paged by (updated_at, thread_id).
        Later pages read the snapshot of the first where the store keeps history (Spanner),
        so the order cannot shift between pages."""
        require_id(user_id, "user_id")
        limit = page_size(size)
        at: datetime | None = None
        after: tuple[int, str] | None = None
        if page_token:
            token = decode_page_token(page_token, "threads", u=user_id)
            at = token_time(token, "at")
            after = (token_int(token, "ut"), token_str(token, "t"))

        def unit(txn: ReadTxn) -> tuple[list[Thread], bool]:
            thread_ids = [
                r["ThreadId"]
                for r in txn.query(
                    "SELECT ThreadId FROM UserThreads WHERE UserId = @u AND IsMember = TRUE",
                    {"u": user_id},
                )
            ]
            rows = sorted(
                read_thread_rows(txn, thread_ids).values(),
                key=lambda r: (-to_micros(r["UpdatedAt"]), r["ThreadId"]),
            )
            if after is not None:
                rows = [
                    r
                    for r in rows
                    if (-to_micros(r["UpdatedAt"]), r["ThreadId"]) > (-after[0], after[1])
                ]
            return read_threads(txn, rows[:limit], user_id), len(rows) > limit

        (threads, more), snapshot = await self._storage.read(unit, at=at)
        next_token = ""
        if more:
            last = threads[-1]
            next_token = encode_page_token(
                "threads",
                u=user_id,
                at=to_micros(at or snapshot),
                ut=to_micros(last.updated_at),
                t=last.thread_id,
            )
        return ThreadPage(tuple(threads), next_token)

    async def get_members(self, thread_id: str) -> MemberList:
        require_id(thread_id, "thread_id")

        def unit(txn: ReadTxn) -> MemberList:
            rows = txn.query(
                "SELECT t.LastSeq, m.UserId FROM Threads AS t LEFT JOIN ThreadMembers AS m "
                "ON m.ThreadHash = t.ThreadHash AND m.ThreadId = t.ThreadId "
                "WHERE t.ThreadHash = @h AND t.ThreadId = @t ORDER BY m.UserId",
                thread_params(thread_id),
            )
            if not rows:
                raise NotFound(f"thread {thread_id} not found")
            users = tuple(r["UserId"] for r in rows if r["UserId"] is not None)
            return MemberList(users, rows[0]["LastSeq"])

        result, _ = await self._storage.read(unit)
        return result

    async def check_membership(self, thread_id: str, user_id: str) -> Membership:
        require_id(thread_id, "thread_id")
        require_id(user_id, "user_id")

        def unit(txn: ReadTxn) -> Membership:
            rows = txn.query(
                "SELECT t.ThreadId, m.MemberRole FROM Threads AS t LEFT JOIN ThreadMembers AS m "
                "ON m.ThreadHash = t.ThreadHash AND m.ThreadId = t.ThreadId AND m.UserId = @u "
                "WHERE t.ThreadHash = @h AND t.ThreadId = @t",
                {**thread_params(thread_id), "u": user_id},
            )
            if not rows:
                raise NotFound(f"thread {thread_id} not found")
            role = rows[0]["MemberRole"]
            if role is None:
                return Membership(False, MemberRole.UNSPECIFIED)
            return Membership(True, MemberRole(role))

        result, _ = await self._storage.read(unit)
        return result

    # -- changes ---------------------------------------------------------------------------

    async def update_thread(self, thread_id: str, actor_user_id: str, title: str) -> Thread:
        require_id(thread_id, "thread_id")
        require_id(actor_user_id, "actor_user_id")
        _check_title(title)

        def unit(txn: WriteTxn) -> Thread:
            _, thread = require_thread(txn, thread_id)
            _require_group(thread, "titles exist")
            _require_admin(thread, actor_user_id, "rename it")
            if title == thread.title:
                return thread
            touch_thread(txn, thread_id, thread_itself=True, Title=title)
            return dataclasses.replace(thread, title=title, updated_at=COMMIT_TS)

        result, commit_ts = await self._storage.write(unit)
        return stamp_commit_ts(result, commit_ts)

    async def add_members(
        self, thread_id: str, actor_user_id: str, user_ids: Sequence[str], role: int
    ) -> AddedMembers:
        require_id(thread_id, "thread_id")
        require_id(actor_user_id, "actor_user_id")
        wanted = distinct_ids(user_ids, "user_ids")
        if not wanted:
            raise InvalidArgument("user_ids is required: the users to add")
        new_role = parse_enum(MemberRole, role, "role", allow_unspecified=True)
        new_role = new_role or MemberRole.MEMBER

        def unit(txn: WriteTxn) -> AddedMembers:
            _, thread = require_thread(txn, thread_id)
            _require_group(thread, "members are added")
            _require_admin(thread, actor_user_id, "add members")
            added = [u for u in wanted if thread.member(u) is None]
            if not added:
                return AddedMembers(thread, ())
            total = len(thread.members) + len(added)
            limit = self._limits.max_members_per_thread
            if total > limit:
                raise FailedPrecondition(
                    f"thread {thread_id} has {len(thread.members)} members; adding "
                    f"{len(added)} would exceed the limit of {limit}"
                )
            index = {
                r["UserId"]: r
                for r in txn.read("UserThreads", ("UserId",), [(u, thread_id) for u in added])
            }
            members = [Member(u, new_role, COMMIT_TS, actor_user_id) for u in added]
            for member in members:
                _join(txn, thread_id, member, index.get(member.user_id))
            touch_thread(txn, thread_id, thread_itself=True)
            return AddedMembers(_with_members(thread, [*thread.members, *members]), tuple(added))

        result, commit_ts = await self._storage.write(unit)
        return stamp_commit_ts(result, commit_ts)

    async def remove_member(self, thread_id: str, actor_user_id: str, user_id: str) -> Thread:
        require_id(thread_id, "thread_id")
        require_id(actor_user_id, "actor_user_id")
        require_id(user_id, "user_id")

        def unit(txn: WriteTxn) -> Thread:
            _, thread = require_thread(txn, thread_id)
            _require_group(thread, "members are removed or leave")
            target = thread.member(user_id)
            if actor_user_id != user_id:
                _require_admin(thread, actor_user_id, "remove other members")
            if target is None:
                raise NotFound(f"user {user_id} is not a member of thread {thread_id}")
            remaining = [m for m in thread.members if m.user_id != user_id]
            if (
                target.role == MemberRole.ADMIN
                and remaining
                and not any(m.role == MemberRole.ADMIN for m in remaining)
            ):
                raise FailedPrecondition(
                    f"user {user_id} is the last admin of thread {thread_id}: make another "
                    f"member an admin first"
                )
            txn.delete("ThreadMembers", (*thread_key(thread_id), user_id))
            txn.update(
                "UserThreads",
                {
                    "UserId": user_id,
                    "ThreadId": thread_id,
                    "IsMember": False,
                    "UpdatedAt": COMMIT_TS,
                },
            )
            touch_thread(txn, thread_id, thread_itself=True)
            return _with_members(thread, remaining)

        result, commit_ts = await self._storage.write(unit)
        return stamp_commit_ts(result, commit_ts)

    async def set_member_role(
        self, thread_id: str, actor_user_id: str, user_id: str, role: int
    ) -> Thread:
        require_id(thread_id, "thread_id")
        require_id(actor_user_id, "actor_user_id")
        require_id(user_id, "user_id")
        new_role = parse_enum(MemberRole, role, "role")

        def unit(txn: WriteTxn) -> Thread:
            _, thread = require_thread(txn, thread_id)
            _require_group(thread, "roles change")
            _require_admin(thread, actor_user_id, "change roles")
            target = thread.member(user_id)
            if target is None:
                raise NotFound(f"user {user_id} is not a member of thread {thread_id}")
            if target.role == new_role:
                return thread
            others = [m for m in thread.members if m.user_id != user_id]
            if target.role == MemberRole.ADMIN and not any(
                m.role == MemberRole.ADMIN for m in others
            ):
                raise FailedPrecondition(
                    f"user {user_id} is the last admin of thread {thread_id}: make another "
                    f"member an admin first"
                )
            txn.update(
                "ThreadMembers",
                {**thread_columns(thread_id), "UserId": user_id, "MemberRole": new_role.value},
            )
            touch_thread(txn, thread_id, thread_itself=True)
            return _with_members(thread, [*others, dataclasses.replace(target, role=new_role)])

        result, commit_ts = await self._storage.write(unit)
        return stamp_commit_ts(result, commit_ts)

    async def mute_thread(
        self, thread_id: str, user_id: str, muted: bool, muted_until: datetime | None
    ) -> UserState:
        require_id(thread_id, "thread_id")
        require_id(user_id, "user_id")
        if muted_until is not None:
            if not muted:
                raise InvalidArgument("muted_until is only allowed with muted = true")
            if muted_until <= datetime.now(UTC):
                raise InvalidArgument("muted_until is in the past")

        def unit(txn: WriteTxn) -> UserState:
            _, thread = require_thread(txn, thread_id)
            require_member(thread, user_id)
            state = read_user_states(txn, user_id, [thread_id])[thread_id]
            txn.update(
                "UserThreads",
                {
                    "UserId": user_id,
                    "ThreadId": thread_id,
                    "Muted": muted,
                    "MutedUntil": muted_until,
                    "UpdatedAt": COMMIT_TS,
                },
            )
            return dataclasses.replace(state, muted=muted, muted_until=muted_until)

        result, _ = await self._storage.write(unit)
        return result
