"""Timelines: what is new for a user since a cursor, and each device's acknowledged cursor.

A listing runs in one read snapshot. Its cursor (``next_cursor``) is the snapshot's read
timestamp S: every change committed at or before S is visible in the snapshot, and every
change committed later gets a commit timestamp above S (Spanner's commit timestamps are
externally consistent; the embedded store's commit clock is strictly increasing and taken
under its write lock). A listing from cursor T shows the changes with T < timestamp <= S,
so the next one, from S, cannot miss anything: no gap. It may repeat a header that changed
again, which clients apply as the newer state.

What counts as news for a user, per thread they are in (from the per-user thread index):
the thread changed after T (Threads.ChangedAt: new, completed, state-changed or liked
messages, title, members, roles), or their own relation to it did (UserThreads.UpdatedAt:
added to it, marks, mute). The headers listed are those with UpdatedAt after T, less the
ones the user hid. Threads the user left or was removed from after T are in
``removed_thread_ids`` (first page; not for the empty cursor, a device with no state).

Pages: threads by id, headers by seq within a thread; page_size caps headers (and threads)
per page. Later pages read the first page's snapshot where the store keeps history
(Spanner); the embedded store reads its latest data and leaves out changes after S, which
the next listing shows.
"""

from __future__ import annotations

from datetime import UTC, datetime

from voxmesh.core.domain_errors import OutOfRange
from voxmesh.core.ids import require_id
from voxmesh.header.header_reads import (
    MESSAGE_SELECT,
    NOT_HIDDEN,
    headers_with_likes_of_threads,
    optional_id,
    read_thread_rows,
    read_threads,
    threads_clause,
)
from voxmesh.header.header_records import Header, Thread, TimelinePage
from voxmesh.header.header_storage import (
    COMMIT_TS,
    EPOCH,
    HeaderStorage,
    ReadTxn,
    Row,
    WriteTxn,
    to_micros,
)
from voxmesh.header.header_tokens import (
    decode_cursor,
    decode_page_token,
    encode_cursor,
    encode_page_token,
    page_size,
    token_int,
    token_str,
    token_time,
)

# The upper bound of a first page: its snapshot already ends at S.
_END_OF_TIME = datetime(9999, 12, 31, tzinfo=UTC)
# Threads per messages query (Spanner allows 950 parameters in a statement).
_THREADS_PER_QUERY = 200


def _changed_messages(
    txn: ReadTxn,
    news: list[str],
    after_thread: str,
    after_seq: int,
    since: datetime,
    upper: datetime,
    viewer: str,
    wanted: int,
) -> list[Row]:
    """Up to ``wanted`` changed, unhidden message rows of the ``news`` threads (sorted ids),
    by thread id then seq, resuming after (after_thread, after_seq)."""
    rows: list[Row] = []
    for first in range(0, len(news), _THREADS_PER_QUERY):
        group = news[first : first + _THREADS_PER_QUERY]
        where, params = threads_clause(group, "m")
        rows.extend(
            txn.query(
                f"SELECT {MESSAGE_SELECT} FROM Messages AS m WHERE {where} "
                f"AND m.UpdatedAt > @since AND m.UpdatedAt <= @upper "
                f"AND (m.ThreadId <> @after_thread OR m.Seq > @after) AND {NOT_HIDDEN} "
                f"ORDER BY m.ThreadId, m.Seq LIMIT @n",
                {
                    **params,
                    "since": since,
                    "upper": upper,
                    "after_thread": after_thread,
                    "after": after_seq,
                    "viewer": viewer,
                    "n": wanted - len(rows),
                },
            )
        )
        if len(rows) >= wanted:
            break
    return rows


class TimelineRules:
    def __init__(self, storage: HeaderStorage) -> None:
        self._storage = storage

    async def list_timeline(
        self,
        user_id: str,
        device_id: str = "",
        cursor: str = "",
        size: int = 0,
        page_token: str = "",
    ) -> TimelinePage:
        require_id(user_id, "user_id")
        optional_id(device_id, "device_id")
        limit = page_size(size)
        at: datetime | None = None  # the snapshot of a later page
        after_thread, after_seq = "", 0
        since = decode_cursor(cursor)
        if page_token:
            token = decode_page_token(page_token, "timeline", u=user_id)
            since = token_time(token, "c")
            at = token_time(token, "s")
            after_thread, after_seq = token_str(token, "t"), token_int(token, "q")
        use_ack = not cursor and not page_token and bool(device_id)

        def unit(txn: ReadTxn) -> tuple[datetime, list[Thread], list[Header], list[str], str, int]:
            start = since
            if use_ack:
                acks = txn.read("TimelineAcks", ("CursorAt",), [(user_id, device_id)])
                start = acks[0]["CursorAt"] if acks else EPOCH
            index = txn.query(
                "SELECT ThreadId, IsMember, UpdatedAt FROM UserThreads WHERE UserId = @u",
                {"u": user_id},
            )
            removed = []
            if at is None and start > EPOCH:
                removed = sorted(
                    r["ThreadId"] for r in index if not r["IsMember"] and r["UpdatedAt"] > start
                )
            mine: dict[str, Row] = {r["ThreadId"]: r for r in index if r["IsMember"]}
            thread_rows = read_thread_rows(txn, list(mine))
            news = sorted(
                t
                for t, row in thread_rows.items()
                if (row["ChangedAt"] > start or mine[t]["UpdatedAt"] > start) and t >= after_thread
            )
            upper = at or _END_OF_TIME
            # The page's headers in one query over all its threads (thread id, then seq), not
            # one per thread: a page is a bounded number of reads however many threads changed.
            found: dict[str, list[Row]] = {}
            for row in _changed_messages(
                txn, news, after_thread, after_seq, start, upper, user_id, limit + 1
            ):
                found.setdefault(row["ThreadId"], []).append(row)
            page_rows: list[Row] = []
            chosen: list[Row] = []
            next_thread, next_seq = "", 0
            for thread_id in news:
                resume = after_seq if thread_id == after_thread else 0
                room = limit - len(chosen)
                if len(page_rows) == limit or room == 0:
                    next_thread, next_seq = thread_id, resume
                    break
                rows = found.get(thread_id, [])
                page_rows.append(thread_rows[thread_id])
                chosen.extend(rows[:room])
                if len(rows) > room:
                    next_thread, next_seq = thread_id, rows[room - 1]["Seq"]
                    break
            headers = headers_with_likes_of_threads(txn, chosen)
            threads = read_threads(txn, page_rows, user_id)
            return start, threads, headers, removed, next_thread, next_seq

        (
            (start, threads, headers, removed, next_thread, next_seq),
            snapshot,
        ) = await self._storage.read(unit, at=at)
        high_water = at or snapshot
        if start > high_water:
            raise OutOfRange(
                "cursor is ahead of this header store: pass back a next_cursor it returned"
            )
        next_token = ""
        if next_thread:
            next_token = encode_page_token(
                "timeline",
                u=user_id,
                c=to_micros(start),
                s=to_micros(high_water),
                t=next_thread,
                q=next_seq,
            )
        return TimelinePage(
            threads=tuple(threads),
            headers=tuple(headers),
            removed_thread_ids=tuple(removed),
            next_page_token=next_token,
            next_cursor=encode_cursor(high_water),
        )

    async def ack_timeline(self, user_id: str, device_id: str, cursor: str) -> str:
        """Store a device's acknowledged cursor if it is newer; returns the stored cursor.
        An empty cursor stores nothing: it reads the device's cursor ("" if it has none)."""
        require_id(user_id, "user_id")
        require_id(device_id, "device_id")
        acked = decode_cursor(cursor)
        key = (user_id, device_id)

        def check(txn: ReadTxn) -> datetime | None:
            rows = txn.read("TimelineAcks", ("CursorAt",), [key])
            return rows[0]["CursorAt"] if rows else None

        stored, snapshot = await self._storage.read(check)
        if not cursor:
            return encode_cursor(stored) if stored is not None else ""
        stored = stored or EPOCH
        if acked > snapshot:
            raise OutOfRange("cursor is ahead of this header store: pass back a next_cursor")
        if stored >= acked:
            return encode_cursor(stored)

        def unit(txn: WriteTxn) -> datetime:
            rows = txn.read("TimelineAcks", ("CursorAt",), [key])
            if rows and rows[0]["CursorAt"] >= acked:
                return rows[0]["CursorAt"]  # type: ignore[no-any-return]
            row: Row = {"UserId": user_id, "DeviceId": device_id, "CursorAt": acked}
            (txn.update if rows else txn.insert)("TimelineAcks", {**row, "UpdatedAt": COMMIT_TS})
            return acked

        result, _ = await self._storage.write(unit)
        return encode_cursor(result)
