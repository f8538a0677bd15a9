"""Contract: timelines (no gap, paging, removals) and acknowledged cursors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.header.conftest import NodeMaker
from tests.header.header_helpers import direct, group, text, voice
from voxmesh.core.domain_errors import InvalidArgument, OutOfRange
from voxmesh.header.header_records import MarkKind, MessageState, MessageTotals, TimelinePage
from voxmesh.header.header_storage import HeaderStorage
from voxmesh.header.header_store import HeaderStore
from voxmesh.header.header_tokens import decode_cursor, encode_cursor
from voxmesh.header.timeline_rules import TimelineRules


async def listing(
    store: HeaderStore, user: str, cursor: str, size: int = 0, device: str = ""
) -> tuple[list[TimelinePage], str]:
    """Every page of one listing, and its next_cursor (the same on every page)."""
    pages, token = [], ""
    while True:
        page = await store.timeline.list_timeline(user, device, cursor, size, token)
        pages.append(page)
        token = page.next_page_token
        if not token:
            break
    assert len({p.next_cursor for p in pages}) == 1
    return pages, pages[0].next_cursor


def headers_of(pages: list[TimelinePage]) -> list[tuple[str, str, MessageState]]:
    return [(h.thread_id, h.message_id, h.state) for p in pages for h in p.headers]


def threads_of(pages: list[TimelinePage]) -> set[str]:
    return {t.thread_id for p in pages for t in p.threads}


async def test_a_listing_from_its_cursor_shows_exactly_what_changed(store: HeaderStore) -> None:
    await group(store, "g0", "alice", "bob")
    await store.threads.remove_member("g0", "bob", "bob")  # before any cursor of bob's
    await group(store, "g1", "alice", "bob")
    await group(store, "g2", "alice", "bob")
    await direct(store, "d", "carol", "dave")  # not bob's
    await voice(store, "g1", "a", "alice", complete=True)
    await voice(store, "g2", "b", "alice")
    await text(store, "g2", "c", "bob", "hi")

    first, cursor = await listing(store, "bob", "")
    assert threads_of(first) == {"g1", "g2"}
    assert headers_of(first) == [
        ("g1", "a", MessageState.COMPLETE),
        ("g2", "b", MessageState.LIVE),
        ("g2", "c", MessageState.COMPLETE),
    ]
    assert first[0].removed_thread_ids == ()
    state = next(t for t in first[0].threads if t.thread_id == "g1").user_state
    assert state is not None and state.read_seq == 0

    # More changes after the listing: a new message, a completion, a like, a new thread,
    # a removal, and bob's own mark (for his other devices).
    await text(store, "g1", "e", "alice", "new")
    await store.messages.complete_message("g2", "b", MessageTotals(2, 320, 40_000_000))
    await store.messages.like_message("g2", "c", "alice")
    await group(store, "g3", "carol", "bob")
    await group(store, "g4", "alice", "bob")
    await store.threads.remove_member("g4", "alice", "bob")
    await store.messages.set_mark("bob", "phone", "g1", "a", MarkKind.READ)
    await text(store, "d", "x", "carol", "not for bob")

    second, cursor2 = await listing(store, "bob", cursor, size=1)
    assert headers_of(second) == [
        ("g1", "e", MessageState.COMPLETE),
        ("g2", "b", MessageState.COMPLETE),
        ("g2", "c", MessageState.COMPLETE),
    ]
    liked = next(h for p in second for h in p.headers if h.message_id == "c")
    assert liked.like_count == 1
    assert threads_of(second) == {"g1", "g2", "g3"}
    g1 = next(t for p in second for t in p.threads if t.thread_id == "g1")
    assert g1.user_state is not None and g1.user_state.read_seq == 1
    assert [p.removed_thread_ids for p in second] == [("g4",)] + [()] * (len(second) - 1)
    assert decode_cursor(cursor2) > decode_cursor(cursor)

    third, cursor3 = await listing(store, "bob", cursor2)
    assert headers_of(third) == [] and threads_of(third) == set()
    assert third[0].removed_thread_ids == ()
    assert decode_cursor(cursor3) >= decode_cursor(cursor2)


async def test_no_gap_while_writers_race_the_listings(
    store: HeaderStore, new_node: NodeMaker
) -> None:
    """Messages started on another node while bob keeps listing from his last cursor: every
    one of them shows up in some listing, and the listings stop when the writers do."""
    writer = await new_node()
    await group(store, "g", "alice", "bob")
    expected = {f"m{n:02}" for n in range(16)}
    done = asyncio.Event()

    async def write() -> None:
        for n in range(16):
            await text(writer, "g", f"m{n:02}", "alice", f"n{n}")
            await asyncio.sleep(0)  # let the reader interleave (not a synchronisation)
        done.set()

    seen: list[str] = []
    cursor = ""
    task = asyncio.create_task(write())
    while True:
        finished = done.is_set()
        pages, cursor = await listing(store, "bob", cursor, size=4)
        seen += [message_id for _, message_id, _ in headers_of(pages)]
        if finished:
            break
    await task
    assert set(seen) == expected
    assert len(seen) == len(expected)  # messages never change here, so never twice


async def test_pages_share_one_snapshot(store: HeaderStore) -> None:
    await group(store, "g1", "alice", "bob")
    await group(store, "g2", "alice", "bob")
    for n in range(4):
        await text(store, "g1", f"a{n}", "alice", "x")
        await text(store, "g2", f"b{n}", "alice", "y")

    page1 = await store.timeline.list_timeline("bob", "", "", 3)
    assert [h.message_id for h in page1.headers] == ["a0", "a1", "a2"]
    assert [t.thread_id for t in page1.threads] == ["g1"]
    # Written after the first page: belongs to the next listing, not to this one.
    await text(store, "g1", "late", "alice", "z")
    await text(store, "g2", "late2", "alice", "z")
    rest = [page1]
    token = page1.next_page_token
    while token:
        page = await store.timeline.list_timeline("bob", "", "", 3, token)
        assert page.next_cursor == page1.next_cursor
        rest.append(page)
        token = page.next_page_token
    assert [[h.message_id for h in p.headers] for p in rest] == [
        ["a0", "a1", "a2"],
        ["a3", "b0", "b1"],
        ["b2", "b3"],
    ]
    assert [t.thread_id for t in rest[1].threads] == ["g1", "g2"]
    after, _ = await listing(store, "bob", page1.next_cursor)
    assert [m for _, m, _ in headers_of(after)] == ["late", "late2"]

    with pytest.raises(InvalidArgument, match="page_token belongs to another listing"):
        await store.timeline.list_timeline("alice", "", "", 3, page1.next_page_token)


async def test_timeline_leaves_out_hidden_messages(store: HeaderStore) -> None:
    await group(store, "g", "alice", "bob")
    await text(store, "g", "keep", "alice", "a")
    await text(store, "g", "hide", "alice", "b")
    await store.messages.hide_message("g", "hide", "bob")
    pages, _ = await listing(store, "bob", "")
    assert [m for _, m, _ in headers_of(pages)] == ["keep"]
    pages, _ = await listing(store, "alice", "")
    assert [m for _, m, _ in headers_of(pages)] == ["keep", "hide"]


async def test_cursors_are_validated(store: HeaderStore) -> None:
    await group(store, "g", "alice", "bob")
    _, cursor = await listing(store, "bob", "")
    future = encode_cursor(decode_cursor(cursor).replace(year=2999))
    with pytest.raises(OutOfRange, match="cursor is ahead of this header store"):
        await store.timeline.list_timeline("bob", "", future)
    with pytest.raises(OutOfRange, match="cursor is ahead"):
        await store.timeline.ack_timeline("bob", "phone", future)
    for bad in ("%%%", "bm90IGpzb24", encode_cursor(decode_cursor(cursor))[:-3] + "AAA"):
        with pytest.raises(InvalidArgument, match="cursor is malformed"):
            await store.timeline.list_timeline("bob", "", bad)
    with pytest.raises(InvalidArgument, match="page_size must not be negative"):
        await store.timeline.list_timeline("bob", "", "", -5)
    with pytest.raises(InvalidArgument, match="device_id 'a/b' is malformed"):
        await store.timeline.list_timeline("bob", "a/b")


async def test_acked_cursor_only_moves_forward(store: HeaderStore) -> None:
    await group(store, "g", "alice", "bob")
    await text(store, "g", "m1", "alice", "one")
    _, early = await listing(store, "bob", "")
    await text(store, "g", "m2", "alice", "two")
    _, late = await listing(store, "bob", early)

    assert await store.timeline.ack_timeline("bob", "phone", "") == ""  # nothing acked yet
    assert await store.timeline.ack_timeline("bob", "phone", late) == late
    assert await store.timeline.ack_timeline("bob", "phone", early) == late
    assert await store.timeline.ack_timeline("bob", "phone", "") == late
    assert await store.timeline.ack_timeline("bob", "laptop", early) == early

    # With no cursor, a device's listing starts from its acknowledged cursor.
    await text(store, "g", "m3", "alice", "three")
    phone, _ = await listing(store, "bob", "", device="phone")
    laptop, _ = await listing(store, "bob", "", device="laptop")
    assert [m for _, m, _ in headers_of(phone)] == ["m3"]
    assert [m for _, m, _ in headers_of(laptop)] == ["m2", "m3"]

    with pytest.raises(InvalidArgument, match="device_id is required"):
        await store.timeline.ack_timeline("bob", "", late)
    with pytest.raises(InvalidArgument, match="cursor is malformed"):
        await store.timeline.ack_timeline("bob", "phone", "garbage!")


class _CountingTxn:
    """A read transaction that counts the statements and reads it is asked for."""

    def __init__(self, inner: Any, counter: list[int]) -> None:
        self._inner = inner
        self._counter = counter

    def query(self, *args: Any) -> Any:
        self._counter[0] += 1
        return self._inner.query(*args)

    def read(self, *args: Any) -> Any:
        self._counter[0] += 1
        return self._inner.read(*args)

    def read_prefixes(self, *args: Any) -> Any:
        self._counter[0] += 1
        return self._inner.read_prefixes(*args)


class _CountingStorage:
    def __init__(self, inner: HeaderStorage) -> None:
        self._inner = inner
        self.counter = [0]

    async def read(self, work: Any, at: Any = None) -> Any:
        return await self._inner.read(lambda txn: work(_CountingTxn(txn, self.counter)), at=at)


async def test_a_timeline_page_is_a_bounded_number_of_reads(store: HeaderStore) -> None:
    """However many threads have news, a page costs the same few reads (not one per thread)."""
    counting = _CountingStorage(store.storage)
    timeline = TimelineRules(counting)  # type: ignore[arg-type]
    reads = []
    made = 0
    for threads in (2, 12):
        _, cursor = await listing(store, "bob", "")
        before = made
        while made < threads:
            await group(store, f"n{made}", "alice", "bob")
            await voice(store, f"n{made}", f"m{made}", "alice", complete=True)
            await store.messages.like_message(f"n{made}", f"m{made}", "bob")
            made += 1
        counting.counter[0] = 0
        page = await timeline.list_timeline("bob", "", cursor)
        assert len(page.headers) == threads - before and not page.next_page_token
        assert all(h.liked_by_user_ids == ("bob",) for h in page.headers)
        reads.append(counting.counter[0])
    assert reads[0] == reads[1], f"reads per page grew with the threads: {reads}"
