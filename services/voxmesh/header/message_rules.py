"""Message headers: seq assignment, the state machine, history, forwards, marks and likes.

State machine (SetMessageState / CompleteMessage):

    LIVE -> COMPLETE                      CompleteMessage (idempotent with the same totals)
    LIVE -> ABANDONED                     the system (or the sender) when the sender vanished
    LIVE | COMPLETE | ABANDONED -> RECALLED                      the sender
    LIVE | COMPLETE | ABANDONED | RECALLED -> DELETED            the sender or a group admin

Setting the state a message already has is an idempotent no-op; anything else is
FAILED_PRECONDITION naming both states. RECALLED and DELETED headers stay as tombstones:
their text, location and file name are erased. Text and location messages have no body, so
they are COMPLETE from the start.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from voxmesh.core.domain_errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from voxmesh.core.ids import require_id
from voxmesh.header.header_reads import (
    MAX_SEQ,
    MESSAGE_SELECT,
    NOT_HIDDEN,
    distinct_ids,
    header_from_row,
    headers_with_likes,
    key_hash,
    optional_id,
    parse_enum,
    read_message_row,
    require_member,
    require_thread,
    require_thread_row,
    thread_columns,
    thread_key,
    thread_params,
)
from voxmesh.header.header_records import (
    BODYLESS_KINDS,
    TOMBSTONE_STATES,
    Header,
    HeaderAndTargets,
    HeaderLimits,
    HeaderPage,
    Like,
    LikeResult,
    Location,
    Mark,
    MarkKind,
    MarkResult,
    MemberRole,
    MessageKind,
    MessageRef,
    MessageState,
    MessageTotals,
    NewMessage,
    Thread,
    ThreadKind,
)
from voxmesh.header.header_storage import (
    COMMIT_TS,
    HeaderStorage,
    ReadTxn,
    Row,
    WriteTxn,
    stamp_commit_ts,
)
from voxmesh.header.header_tokens import (
    decode_page_token,
    encode_page_token,
    page_size,
    token_int,
)
from voxmesh.header.thread_rules import touch_thread

MAX_CONTENT_TYPE_CHARS = 255
MAX_FILE_NAME_CHARS = 1024  # Messages.FileName STRING(1024)

_ALLOWED_FROM = {
    MessageState.ABANDONED: frozenset({MessageState.LIVE}),
    MessageState.RECALLED: frozenset(
        {MessageState.LIVE, MessageState.COMPLETE, MessageState.ABANDONED}
    ),
    MessageState.DELETED: frozenset(
        {
            MessageState.LIVE,
            MessageState.COMPLETE,
            MessageState.ABANDONED,
            MessageState.RECALLED,
        }
    ),
}
_ERASED: Row = {
    "Text": "",
    "FileName": "",
    "Latitude": None,
    "Longitude": None,
    "AccuracyMeters": None,
    "LocationLabel": None,
}


def _message_key(thread_id: str, seq: int) -> Row:
    return {**thread_columns(thread_id), "Seq": seq}


def _require_message(txn: ReadTxn, thread_id: str, message_id: str) -> Row:
    row = read_message_row(txn, thread_id, message_id)
    if row is None:
        require_thread_row(txn, thread_id)  # NOT_FOUND names the thread when that is missing
        raise NotFound(f"message {message_id} not found in thread {thread_id}")
    return row


def _read_claim(txn: ReadTxn, message_id: str) -> Row | None:
    rows = txn.read("MessageIds", ("ThreadId", "Seq"), [(key_hash(message_id), message_id)])
    return rows[0] if rows else None


def _claim(txn: WriteTxn, message_id: str, thread_id: str, seq: int) -> None:
    txn.insert(
        "MessageIds",
        {
            "MessageHash": key_hash(message_id),
            "MessageId": message_id,
            "ThreadId": thread_id,
            "Seq": seq,
        },
    )


def _targets(thread: Thread) -> tuple[str, ...]:
    return tuple(thread.member_user_ids)


def _check_location(location: Location) -> None:
    values = (location.latitude, location.longitude, location.accuracy_meters)
    if not all(math.isfinite(v) for v in values):
        raise InvalidArgument("location values must be finite numbers")
    if not -90.0 <= location.latitude <= 90.0:
        raise InvalidArgument(f"location.latitude {location.latitude} is outside -90..90")
    if not -180.0 <= location.longitude <= 180.0:
        raise InvalidArgument(f"location.longitude {location.longitude} is outside -180..180")
    if location.accuracy_meters < 0:
        raise InvalidArgument("location.accuracy_meters must not be negative")


def _check_totals(totals: MessageTotals) -> None:
    for name in ("chunk_count", "size_bytes", "duration_nanos"):
        value = getattr(totals, name)
        if not 0 <= value <= MAX_SEQ:
            raise InvalidArgument(f"end.{name.removesuffix('_nanos')} {value} is out of range")


class MessageRules:
    def __init__(self, storage: HeaderStorage, limits: HeaderLimits) -> None:
        self._storage = storage
        self._limits = limits

    # -- validation ------------------------------------------------------------------------

    def _check_new(self, new: NewMessage) -> MessageKind:
        require_id(new.message_id, "message_id")
        require_id(new.thread_id, "thread_id")
        kind = parse_enum(MessageKind, new.kind, "kind")
        size = len(new.text.encode())
        if size > self._limits.max_text_bytes:
            raise InvalidArgument(
                f"text is {size} bytes; the limit is {self._limits.max_text_bytes}"
            )
        if kind == MessageKind.TEXT and not new.text.strip():
            raise InvalidArgument("a text message needs a non-empty text")
        if kind == MessageKind.LOCATION:
            if new.location is None:
                raise InvalidArgument("a location message needs a location")
            _check_location(new.location)
            if len(new.location.label.encode()) > self._limits.max_text_bytes:
                raise InvalidArgument("location.label is too long")
        elif new.location is not None:
            raise InvalidArgument(f"a {kind.name.lower()} message carries no location")
        if len(new.content_type) > MAX_CONTENT_TYPE_CHARS or any(
            ord(c) < 0x20 for c in new.content_type
        ):
            raise InvalidArgument("content_type is malformed (at most 255 printable characters)")
        if new.file_name:
            if kind not in (MessageKind.FILE, MessageKind.IMAGE):
                raise InvalidArgument(f"a {kind.name.lower()} message has no file_name")
            if len(new.file_name) > MAX_FILE_NAME_CHARS or any(
                ord(c) < 0x20 or c in "/\\" for c in new.file_name
            ):
                raise InvalidArgument(
                    "file_name is malformed: a name of at most 1024 characters, with no path "
                    "separators or control characters"
                )
        return kind

    # -- starting and completing -----------------------------------------------------------

    async def start_message(
        self, new: NewMessage, sender_user_id: str, sender_device_id: str
    ) -> HeaderAndTargets:
        """Store a new header with the thread's next seq, or return the existing one (a retry).

        The seq comes from Threads.LastSeq, read and raised in the same read-write
        transaction as the Messages and MessageIds inserts: concurrent starts on one thread,
        from any number of header nodes, serialise on that row and never share a seq."""
        kind = self._check_new(new)
        require_id(sender_user_id, "sender_user_id")
        require_id(sender_device_id, "sender_device_id")
        thread_id, message_id = new.thread_id, new.message_id

        def unit(txn: WriteTxn) -> HeaderAndTargets:
            thread_row, thread = require_thread(txn, thread_id)
            require_member(thread, sender_user_id)
            claim = _read_claim(txn, message_id)
            if claim is not None:
                if claim["ThreadId"] != thread_id:
                    raise AlreadyExists(
                        f"message id {message_id} is already used in another thread"
                    )
                existing = _require_message(txn, thread_id, message_id)
                if existing["SenderUserId"] != sender_user_id:
                    raise AlreadyExists(
                        f"message id {message_id} is already used by another sender"
                    )
                header = headers_with_likes(txn, thread_id, [existing])[0]
                return HeaderAndTargets(header, _targets(thread), created=False)
            seq = thread_row["LastSeq"] + 1
            complete = kind in BODYLESS_KINDS
            location = new.location
            row: Row = {
                **_message_key(thread_id, seq),
                "MessageId": message_id,
                "SenderUserId": sender_user_id,
                "SenderDeviceId": sender_device_id,
                "MessageKind": kind.value,
                "MessageState": (MessageState.COMPLETE if complete else MessageState.LIVE).value,
                # The MIME type of the body: text and location messages have none (a client's
                # "text/plain" is dropped rather than refused).
                "ContentType": "" if complete else new.content_type,
                "ClientCreatedAt": new.created_at,
                "StartedAt": COMMIT_TS,
                "CompletedAt": COMMIT_TS if complete else None,
                "UpdatedAt": COMMIT_TS,
                "DurationNanos": 0,
                "SizeBytes": 0,
                "ChunkCount": 0,
                "Text": new.text,
                "Latitude": location.latitude if location else None,
                "Longitude": location.longitude if location else None,
                "AccuracyMeters": location.accuracy_meters if location else None,
                "LocationLabel": location.label if location else None,
                "FileName": new.file_name,
                "ForwardedFromThreadId": None,
                "ForwardedFromMessageId": None,
                "BodyThreadId": thread_id,
                "BodyMessageId": message_id,
                "LikeCount": 0,
            }
            txn.insert("Messages", row)
            _claim(txn, message_id, thread_id, seq)
            touch_thread(txn, thread_id, thread_itself=True, LastSeq=seq)
            return HeaderAndTargets(header_from_row(row), _targets(thread), created=True)

        result, commit_ts = await self._storage.write(unit)
        return stamp_commit_ts(result, commit_ts)

    async def complete_message(
        self, thread_id: str, message_id: str, totals: MessageTotals
    ) -> HeaderAndTargets:
        require_id(thread_id, "thread_id")
        require_id(message_id, "message_id")
        _check_totals(totals)

        def unit(txn: WriteTxn) -> HeaderAndTargets:
            row = _require_message(txn, thread_id, message_id)
            _, thread = require_thread(txn, thread_id)
            header = headers_with_likes(txn, thread_id, [row])[0]
            if header.state == MessageState.COMPLETE:
                if header.totals != totals:
                    raise FailedPrecondition(
                        f"message {message_id} is already COMPLETE with other totals "
                        f"({header.totals}, not {totals})"
                    )
                return HeaderAndTargets(header, _targets(thread))
            if header.state != MessageState.LIVE:
                raise FailedPrecondition(
                    f"message {message_id} cannot go from {header.state.name} to COMPLETE"
                )
            changes: Row = {
                "MessageState": MessageState.COMPLETE.value,
                "CompletedAt": COMMIT_TS,
                "UpdatedAt": COMMIT_TS,
                "ChunkCount": totals.chunk_count,
                "SizeBytes": totals.size_bytes,
                "DurationNanos": totals.duration_nanos,
            }
            txn.update("Messages", {**_message_key(thread_id, header.seq), **changes})
            touch_thread(txn, thread_id, thread_itself=False)
            completed = header_from_row({**row, **changes}, header.liked_by_user_ids)
            return HeaderAndTargets(completed, _targets(thread))

        result, commit_ts = await self._storage.write(unit)
        return stamp_commit_ts(result, commit_ts)

    async def set_message_state(
        self,
        thread_id: str,
        message_id: str,
        state: int,
        actor_user_id: str,
        kept: MessageTotals | None = None,
    ) -> HeaderAndTargets:
        require_id(thread_id, "thread_id")
        require_id(message_id, "message_id")
        optional_id(actor_user_id, "actor_user_id")
        target = parse_enum(MessageState, state, "state")
        if target not in _ALLOWED_FROM:
            raise InvalidArgument(
                f"state {target.name} cannot be set here: use ABANDONED, RECALLED or DELETED "
                f"(CompleteMessage completes a message)"
            )
        if target != MessageState.ABANDONED and not actor_user_id:
            raise InvalidArgument(f"actor_user_id is required to set {target.name}")
        if kept is not None and target == MessageState.ABANDONED:
            _check_totals(kept)

        def unit(txn: WriteTxn) -> HeaderAndTargets:
            row = _require_message(txn, thread_id, message_id)
            _, thread = require_thread(txn, thread_id)
            sender = row["SenderUserId"]
            if target == MessageState.ABANDONED:
                if actor_user_id and actor_user_id != sender:
                    raise PermissionDenied("only the system or the sender may abandon a message")
            else:
                actor = require_member(thread, actor_user_id)
                is_admin = thread.kind == ThreadKind.GROUP and actor.role == MemberRole.ADMIN
                if target == MessageState.RECALLED and actor_user_id != sender:
                    raise PermissionDenied(f"only the sender may recall message {message_id}")
                if target == MessageState.DELETED and actor_user_id != sender and not is_admin:
                    raise PermissionDenied(
                        f"only the sender or a group admin may delete message {message_id} "
                        f"for everyone"
                    )
            current = MessageState(row["MessageState"])
            if current == target:
                header = headers_with_likes(txn, thread_id, [row])[0]
                return HeaderAndTargets(header, _targets(thread), previous_state=current)
            if current not in _ALLOWED_FROM[target]:
                raise FailedPrecondition(
                    f"message {message_id} cannot go from {current.name} to {target.name}"
                )
            changes: Row = {"MessageState": target.value, "UpdatedAt": COMMIT_TS}
            if target == MessageState.ABANDONED:
                changes["CompletedAt"] = COMMIT_TS
                if kept is not None:  # the header states the body that stays
                    changes["ChunkCount"] = kept.chunk_count
                    changes["SizeBytes"] = kept.size_bytes
                    changes["DurationNanos"] = kept.duration_nanos
            if target in TOMBSTONE_STATES:
                changes.update(_ERASED)
            txn.update("Messages", {**_message_key(thread_id, row["Seq"]), **changes})
            touch_thread(txn, thread_id, thread_itself=False)
            header = headers_with_likes(txn, thread_id, [{**row, **changes}])[0]
            return HeaderAndTargets(header, _targets(thread), previous_state=current)

        result, commit_ts = await self._storage.write(unit)
        return stamp_commit_ts(result, commit_ts)

    # -- one user's view -------------------------------------------------------------------

    async def hide_message(self, thread_id: str, message_id: str, user_id: str) -> Header:
        require_id(thread_id, "thread_id")
        require_id(message_id, "message_id")
        require_id(user_id, "user_id")

        def unit(txn: WriteTxn) -> Header:
            _, thread = require_thread(txn, thread_id)
            require_member(thread, user_id)
            row = _require_message(txn, thread_id, message_id)
            key = (*thread_key(thread_id), user_id, row["Seq"])
            if not txn.read("HiddenMessages", ("Seq",), [key]):
                txn.insert(
                    "HiddenMessages",
                    {
                        **thread_columns(thread_id),
                        "UserId": user_id,
                        "Seq": row["Seq"],
                        "HiddenAt": COMMIT_TS,
                    },
                )
            return headers_with_likes(txn, thread_id, [row])[0]

        result, _ = await self._storage.write(unit)
        return result

    async def get_message(self, thread_id: str, message_id: str) -> Header:
        require_id(thread_id, "thread_id")
        require_id(message_id, "message_id")

        def unit(txn: ReadTxn) -> Header:
            return headers_with_likes(
                txn, thread_id, [_require_message(txn, thread_id, message_id)]
            )[0]

        result, _ = await self._storage.read(unit)
        return result

    async def list_messages(
        self,
        thread_id: str,
        viewer_user_id: str = "",
        size: int = 0,
        page_token: str = "",
        before_seq: int | None = None,
        after_seq: int | None = None,
    ) -> HeaderPage:
        """A page of a thread's headers: newest first from the end or below before_seq, or
        oldest first above after_seq; the viewer's hidden messages are left out."""
        require_id(thread_id, "thread_id")
        optional_id(viewer_user_id, "viewer_user_id")
        limit = page_size(size)
        if before_seq is not None and after_seq is not None:
            raise InvalidArgument("set at most one of before_seq and after_seq")
        ascending = after_seq is not None
        bound = after_seq if after_seq is not None else before_seq
        if bound is None:
            bound = MAX_SEQ
        if page_token:
            token = decode_page_token(page_token, "messages", t=thread_id, w=viewer_user_id)
            ascending = token.get("d") == "asc"
            bound = token_int(token, "s")
        bound = min(bound, MAX_SEQ)

        def unit(txn: ReadTxn) -> tuple[list[Header], bool]:
            _, thread = require_thread(txn, thread_id)
            if viewer_user_id:
                require_member(thread, viewer_user_id)
            rows = txn.query(
                f"SELECT {MESSAGE_SELECT} FROM Messages AS m "
                f"WHERE m.ThreadHash = @h AND m.ThreadId = @t "
                f"AND m.Seq {'>' if ascending else '<'} @bound AND {NOT_HIDDEN} "
                f"ORDER BY m.Seq {'ASC' if ascending else 'DESC'} LIMIT @n",
                {
                    **thread_params(thread_id),
                    "bound": bound,
                    "viewer": viewer_user_id,
                    "n": limit + 1,
                },
            )
            return headers_with_likes(txn, thread_id, rows[:limit]), len(rows) > limit

        (headers, more), _ = await self._storage.read(unit)
        next_token = ""
        if more:
            next_token = encode_page_token(
                "messages",
                t=thread_id,
                w=viewer_user_id,
                d="asc" if ascending else "desc",
                s=headers[-1].seq,
            )
        return HeaderPage(tuple(headers), next_token)

    # -- forwarding ------------------------------------------------------------------------

    async def forward_message(
        self,
        source: MessageRef,
        target_thread_id: str,
        message_id: str,
        sender_user_id: str,
        sender_device_id: str,
    ) -> HeaderAndTargets:
        """A new header in the target thread whose body is the source's body (not a copy)."""
        require_id(source.thread_id, "source.thread_id")
        require_id(source.message_id, "source.message_id")
        require_id(target_thread_id, "target_thread_id")
        require_id(message_id, "message_id")
        require_id(sender_user_id, "sender_user_id")
        require_id(sender_device_id, "sender_device_id")

        def unit(txn: WriteTxn) -> HeaderAndTargets:
            _, source_thread = require_thread(txn, source.thread_id)
            require_member(source_thread, sender_user_id)
            target_row, target = require_thread(txn, target_thread_id)
            require_member(target, sender_user_id)
            original = _require_message(txn, source.thread_id, source.message_id)
            claim = _read_claim(txn, message_id)
            if claim is not None:
                existing = (
                    read_message_row(txn, target_thread_id, message_id)
                    if claim["ThreadId"] == target_thread_id
                    else None
                )
                if (
                    existing is None
                    or existing["SenderUserId"] != sender_user_id
                    or existing["ForwardedFromMessageId"] != source.message_id
                ):
                    raise AlreadyExists(
                        f"message id {message_id} is already used for another message"
                    )
                header = headers_with_likes(txn, target_thread_id, [existing])[0]
                return HeaderAndTargets(header, _targets(target), created=False)
            state = MessageState(original["MessageState"])
            if state != MessageState.COMPLETE:
                raise FailedPrecondition(
                    f"message {source.message_id} is {state.name}: only COMPLETE messages can "
                    f"be forwarded"
                )
            seq = target_row["LastSeq"] + 1
            row: Row = {
                **original,
                **_message_key(target_thread_id, seq),
                "MessageId": message_id,
                "SenderUserId": sender_user_id,
                "SenderDeviceId": sender_device_id,
                "ClientCreatedAt": None,
                "StartedAt": COMMIT_TS,
                "CompletedAt": COMMIT_TS,
                "UpdatedAt": COMMIT_TS,
                "ForwardedFromThreadId": source.thread_id,
                "ForwardedFromMessageId": source.message_id,
                "LikeCount": 0,
                # BodyThreadId/BodyMessageId stay the original's: a forward of a forward
                # still points at the bytes' one owner.
            }
            txn.insert("Messages", row)
            _claim(txn, message_id, target_thread_id, seq)
            touch_thread(txn, target_thread_id, thread_itself=True, LastSeq=seq)
            return HeaderAndTargets(header_from_row(row), _targets(target), created=True)

        result, commit_ts = await self._storage.write(unit)
        return stamp_commit_ts(result, commit_ts)

    # -- marks -----------------------------------------------------------------------------

    async def set_mark(
        self, user_id: str, device_id: str, thread_id: str, message_id: str, kind: int
    ) -> MarkResult:
        """Raise a user's read or listened mark to a message's seq; never lowers it.
        Listened implies read, so a listened mark raises the read mark too."""
        require_id(user_id, "mark.user_id")
        require_id(device_id, "mark.device_id")
        require_id(thread_id, "mark.thread_id")
        require_id(message_id, "mark.message_id")
        mark_kind = parse_enum(MarkKind, kind, "mark.kind")
        kinds = [mark_kind] + ([MarkKind.READ] if mark_kind == MarkKind.LISTENED else [])

        def unit(txn: WriteTxn) -> MarkResult:
            _, thread = require_thread(txn, thread_id)
            require_member(thread, user_id)
            seq = _require_message(txn, thread_id, message_id)["Seq"]
            stored = {
                MarkKind(r["MarkKind"]): r
                for r in txn.read(
                    "Marks",
                    ("MarkKind", "Seq", "MessageId", "DeviceId", "MarkedAt"),
                    [(*thread_key(thread_id), user_id, k.value) for k in kinds],
                )
            }
            current = stored.get(mark_kind)
            if current is not None and current["Seq"] >= seq:
                mark = Mark(
                    user_id=user_id,
                    device_id=current["DeviceId"],
                    thread_id=thread_id,
                    message_id=current["MessageId"],
                    seq=current["Seq"],
                    kind=mark_kind,
                    marked_at=current["MarkedAt"],
                )
                return MarkResult(mark, advanced=False)
            for k in kinds:
                existing = stored.get(k)
                if existing is not None and existing["Seq"] >= seq:
                    continue
                row: Row = {
                    **thread_columns(thread_id),
                    "UserId": user_id,
                    "MarkKind": k.value,
                    "Seq": seq,
                    "MessageId": message_id,
                    "DeviceId": device_id,
                    "MarkedAt": COMMIT_TS,
                }
                (txn.insert if existing is None else txn.update)("Marks", row)
            # The user's state changed: their other devices see it in their timelines.
            txn.update(
                "UserThreads", {"UserId": user_id, "ThreadId": thread_id, "UpdatedAt": COMMIT_TS}
            )
            mark = Mark(user_id, device_id, thread_id, message_id, seq, mark_kind, COMMIT_TS)
            return MarkResult(mark, advanced=True)

        result, commit_ts = await self._storage.write(unit)
        return stamp_commit_ts(result, commit_ts)

    async def list_marks(
        self, thread_id: str, user_ids: Sequence[str] = (), kind: int = 0
    ) -> list[Mark]:
        require_id(thread_id, "thread_id")
        wanted = distinct_ids(user_ids, "user_ids")
        mark_kind = parse_enum(MarkKind, kind, "kind", allow_unspecified=True)

        def unit(txn: ReadTxn) -> list[Mark]:
            _, thread = require_thread(txn, thread_id)
            users = set(wanted or thread.member_user_ids)
            rows = txn.read_prefixes(
                "Marks",
                ("UserId", "MarkKind", "Seq", "MessageId", "DeviceId", "MarkedAt"),
                [thread_key(thread_id)],
            )
            return [
                Mark(
                    user_id=r["UserId"],
                    device_id=r["DeviceId"],
                    thread_id=thread_id,
                    message_id=r["MessageId"],
                    seq=r["Seq"],
                    kind=MarkKind(r["MarkKind"]),
                    marked_at=r["MarkedAt"],
                )
                for r in rows
                if r["UserId"] in users and (not mark_kind or r["MarkKind"] == mark_kind)
            ]

        result, _ = await self._storage.read(unit)
        return result

    # -- likes -----------------------------------------------------------------------------

    async def like_message(self, thread_id: str, message_id: str, user_id: str) -> LikeResult:
        return await self._set_like(thread_id, message_id, user_id, like=True)

    async def unlike_message(self, thread_id: str, message_id: str, user_id: str) -> LikeResult:
        return await self._set_like(thread_id, message_id, user_id, like=False)

    async def _set_like(
        self, thread_id: str, message_id: str, user_id: str, *, like: bool
    ) -> LikeResult:
        require_id(thread_id, "thread_id")
        require_id(message_id, "message_id")
        require_id(user_id, "user_id")

        def unit(txn: WriteTxn) -> LikeResult:
            _, thread = require_thread(txn, thread_id)
            require_member(thread, user_id)
            row = _require_message(txn, thread_id, message_id)
            state = MessageState(row["MessageState"])
            if like and state in TOMBSTONE_STATES:
                raise FailedPrecondition(
                    f"message {message_id} is {state.name}: it cannot be liked"
                )
            key = (*thread_key(thread_id), row["Seq"], user_id)
            existing = txn.read("Likes", ("LikedAt",), [key])
            count = row["LikeCount"]
            if bool(existing) == like:  # already in the wanted state
                stored = (
                    Like(thread_id, message_id, user_id, existing[0]["LikedAt"]) if like else None
                )
                return LikeResult(stored, count, changed=False, member_user_ids=_targets(thread))
            count += 1 if like else -1
            if like:
                txn.insert(
                    "Likes",
                    {
                        **_message_key(thread_id, row["Seq"]),
                        "UserId": user_id,
                        "LikedAt": COMMIT_TS,
                    },
                )
            else:
                txn.delete("Likes", key)
            txn.update(
                "Messages",
                {**_message_key(thread_id, row["Seq"]), "LikeCount": count, "UpdatedAt": COMMIT_TS},
            )
            touch_thread(txn, thread_id, thread_itself=False)
            stored = Like(thread_id, message_id, user_id, COMMIT_TS) if like else None
            return LikeResult(stored, count, changed=True, member_user_ids=_targets(thread))

        result, commit_ts = await self._storage.write(unit)
        return stamp_commit_ts(result, commit_ts)
