"""Contract: message headers, seqs, the state machine, history, forwards, marks and likes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from tests.header.conftest import NodeMaker
from tests.header.header_helpers import direct, group, place, text, voice
from voxmesh.core.domain_errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from voxmesh.header.header_records import (
    Location,
    MarkKind,
    MemberRole,
    MessageKind,
    MessageRef,
    MessageState,
    MessageTotals,
    NewMessage,
)
from voxmesh.header.header_store import HeaderStore

TOTALS = MessageTotals(chunk_count=3, size_bytes=480, duration_nanos=60_000_000)


async def test_concurrent_starts_on_two_nodes_get_seqs_1_to_n(
    store: HeaderStore, new_node: NodeMaker
) -> None:
    """20 starts at once on one thread, split over two header nodes sharing the database."""
    other_node = await new_node()
    await group(store, "g", "alice", "bob")
    starts = [
        (store if n % 2 else other_node).messages.start_message(
            NewMessage(f"m{n:02}", "g", MessageKind.VOICE, "audio/ogg"), "alice", "phone"
        )
        for n in range(20)
    ]
    results = await asyncio.gather(*starts)
    assert sorted(r.header.seq for r in results) == list(range(1, 21))
    assert all(r.created and r.member_user_ids == ("alice", "bob") for r in results)
    assert (await store.threads.get_members("g")).last_seq == 20
    page = await other_node.messages.list_messages("g", "", 50, after_seq=0)
    assert [h.seq for h in page.headers] == list(range(1, 21))
    assert sorted(h.message_id for h in page.headers) == [f"m{n:02}" for n in range(20)]


async def test_start_is_idempotent_by_message_id(store: HeaderStore) -> None:
    await group(store, "g", "alice", "bob")
    await group(store, "h", "alice", "bob")
    first = await store.messages.start_message(
        NewMessage("m1", "g", MessageKind.VOICE, "audio/webm"), "alice", "phone"
    )
    assert first.created and first.header.seq == 1 and first.header.state == MessageState.LIVE
    assert first.header.body == MessageRef("g", "m1") and first.header.forwarded_from is None
    assert first.header.started_at == first.header.updated_at
    assert first.header.completed_at is None
    retry = await store.messages.start_message(
        NewMessage("m1", "g", MessageKind.VOICE, "audio/webm"), "alice", "laptop"
    )
    assert not retry.created and retry.header == first.header
    with pytest.raises(AlreadyExists, match="message id m1 is already used in another thread"):
        await store.messages.start_message(NewMessage("m1", "h", MessageKind.VOICE), "alice", "p")
    with pytest.raises(AlreadyExists, match="m1 is already used by another sender"):
        await store.messages.start_message(NewMessage("m1", "g", MessageKind.VOICE), "bob", "p")
    assert (await store.threads.get_members("g")).last_seq == 1
    assert (await store.threads.get_members("h")).last_seq == 0


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (NewMessage("m", "g", MessageKind.UNSPECIFIED), "kind is required"),
        (NewMessage("m", "g", 42), "kind 42 is not a known value"),
        (NewMessage("m x", "g", MessageKind.VOICE), "message_id 'm x' is malformed"),
        (NewMessage("m", "g", MessageKind.TEXT, text="  "), "a text message needs a non-empty"),
        (
            NewMessage("m", "g", MessageKind.TEXT, text="é" * 33),
            "text is 66 bytes; the limit is 64",
        ),
        (NewMessage("m", "g", MessageKind.LOCATION), "a location message needs a location"),
        (
            NewMessage("m", "g", MessageKind.LOCATION, location=place(latitude=91)),
            "latitude 91 is outside -90..90",
        ),
        (
            NewMessage("m", "g", MessageKind.LOCATION, location=place(longitude=float("nan"))),
            "location values must be finite",
        ),
        (NewMessage("m", "g", MessageKind.VOICE, location=place()), "voice message carries no"),
        (NewMessage("m", "g", MessageKind.VOICE, "audio/\x00"), "content_type is malformed"),
        (NewMessage("m", "g", MessageKind.VOICE, file_name="a.ogg"), "voice message has no file"),
        (
            NewMessage("m", "g", MessageKind.FILE, file_name="../etc/passwd"),
            "file_name is malformed",
        ),
    ],
)
async def test_start_validates_its_input(
    store: HeaderStore, message: NewMessage, error: str
) -> None:
    await group(store, "g", "alice", "bob")
    with pytest.raises(InvalidArgument, match=error):
        await store.messages.start_message(message, "alice", "phone")
    assert (await store.threads.get_members("g")).last_seq == 0


async def test_start_checks_thread_and_sender(store: HeaderStore) -> None:
    await group(store, "g", "alice", "bob")
    with pytest.raises(NotFound, match="thread nope not found"):
        await store.messages.start_message(NewMessage("m", "nope", MessageKind.VOICE), "alice", "p")
    with pytest.raises(PermissionDenied, match="user mallory is not a member of thread g"):
        await store.messages.start_message(NewMessage("m", "g", MessageKind.VOICE), "mallory", "p")
    with pytest.raises(InvalidArgument, match="sender_device_id is required"):
        await store.messages.start_message(NewMessage("m", "g", MessageKind.VOICE), "alice", "")
    assert (await store.threads.get_members("g")).last_seq == 0


async def test_text_and_location_are_complete_at_start(store: HeaderStore) -> None:
    await group(store, "g", "alice", "bob")
    written = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
    note = await store.messages.start_message(
        NewMessage("t1", "g", MessageKind.TEXT, "text/plain", created_at=written, text="héllo"),
        "alice",
        "p",
    )
    pin = await store.messages.start_message(
        NewMessage("l1", "g", MessageKind.LOCATION, location=place()), "alice", "p"
    )
    assert note.header.state == pin.header.state == MessageState.COMPLETE
    assert note.header.completed_at == note.header.started_at
    assert note.header.text == "héllo" and note.header.created_at == written
    assert note.header.content_type == ""  # no body, so no body MIME type
    assert pin.header.location == Location(52.37, 4.89, 5.0, "Dam")
    stored = await store.messages.get_message("g", "l1")
    assert stored == pin.header
    # Completing a bodyless message again with no totals is a harmless retry.
    again = await store.messages.complete_message("g", "t1", MessageTotals(0, 0, 0))
    assert again.header == note.header


async def test_complete_message(store: HeaderStore) -> None:
    await group(store, "g", "alice", "bob")
    live = await voice(store, "g", "m1", "alice")
    done = await store.messages.complete_message("g", "m1", TOTALS)
    assert done.member_user_ids == ("alice", "bob")
    header = done.header
    assert header.state == MessageState.COMPLETE and header.totals == TOTALS
    assert header.completed_at is not None and header.completed_at == header.updated_at
    assert header.updated_at > live.updated_at and header.seq == live.seq
    assert await store.messages.get_message("g", "m1") == header
    assert (await store.messages.complete_message("g", "m1", TOTALS)).header == header
    with pytest.raises(FailedPrecondition, match="already COMPLETE with other totals"):
        await store.messages.complete_message("g", "m1", MessageTotals(4, 480, 60_000_000))
    await voice(store, "g", "m2", "alice")
    await store.messages.set_message_state("g", "m2", MessageState.ABANDONED, "")
    with pytest.raises(FailedPrecondition, match="m2 cannot go from ABANDONED to COMPLETE"):
        await store.messages.complete_message("g", "m2", TOTALS)
    with pytest.raises(NotFound, match="message m9 not found in thread g"):
        await store.messages.complete_message("g", "m9", TOTALS)
    with pytest.raises(NotFound, match="thread nope not found"):
        await store.messages.complete_message("nope", "m1", TOTALS)
    with pytest.raises(InvalidArgument, match=r"end\.duration -1 is out of range"):
        await store.messages.complete_message("g", "m1", MessageTotals(1, 1, -1))


async def test_state_machine(store: HeaderStore) -> None:
    await group(store, "g", "alice", "bob", "carol", "dave")
    await store.threads.set_member_role("g", "alice", "carol", MemberRole.ADMIN)
    states = store.messages

    await voice(store, "g", "live", "bob")
    abandoned = await states.set_message_state("g", "live", MessageState.ABANDONED, "")
    assert abandoned.previous_state == MessageState.LIVE
    assert abandoned.header.state == MessageState.ABANDONED
    assert abandoned.header.completed_at is not None
    again = await states.set_message_state("g", "live", MessageState.ABANDONED, "")
    assert again.previous_state == MessageState.ABANDONED and again.header == abandoned.header

    await voice(store, "g", "done", "bob", complete=True)
    with pytest.raises(FailedPrecondition, match="done cannot go from COMPLETE to ABANDONED"):
        await states.set_message_state("g", "done", MessageState.ABANDONED, "")
    with pytest.raises(PermissionDenied, match="only the sender may recall message done"):
        await states.set_message_state("g", "done", MessageState.RECALLED, "carol")
    await text(store, "g", "note", "bob", "secret")
    recalled = await states.set_message_state("g", "note", MessageState.RECALLED, "bob")
    assert recalled.previous_state == MessageState.COMPLETE
    assert recalled.header.state == MessageState.RECALLED and recalled.header.text == ""
    assert (await states.get_message("g", "note")).text == ""  # a tombstone
    repeat = await states.set_message_state("g", "note", MessageState.RECALLED, "bob")
    assert repeat.previous_state == MessageState.RECALLED

    with pytest.raises(PermissionDenied, match="only the sender or a group admin may delete"):
        await states.set_message_state("g", "done", MessageState.DELETED, "dave")
    deleted = await states.set_message_state("g", "done", MessageState.DELETED, "carol")  # admin
    assert deleted.header.state == MessageState.DELETED
    deleted_note = await states.set_message_state("g", "note", MessageState.DELETED, "bob")
    assert deleted_note.previous_state == MessageState.RECALLED
    with pytest.raises(FailedPrecondition, match="note cannot go from DELETED to RECALLED"):
        await states.set_message_state("g", "note", MessageState.RECALLED, "bob")

    await voice(store, "g", "bobs", "bob", complete=True)
    with pytest.raises(PermissionDenied, match="only the sender or a group admin may delete"):
        await states.set_message_state("g", "bobs", MessageState.DELETED, "dave")
    with pytest.raises(PermissionDenied, match="mallory is not a member of thread g"):
        await states.set_message_state("g", "bobs", MessageState.DELETED, "mallory")
    await direct(store, "d", "alice", "bob")
    await text(store, "d", "dm", "bob", "hi")
    with pytest.raises(PermissionDenied, match="only the sender or a group admin"):
        await states.set_message_state("d", "dm", MessageState.DELETED, "alice")

    for bad, error in [
        (MessageState.LIVE, "state LIVE cannot be set here"),
        (MessageState.COMPLETE, "state COMPLETE cannot be set here"),
        (MessageState.UNSPECIFIED, "state is required"),
        (17, "state 17 is not a known value"),
    ]:
        with pytest.raises(InvalidArgument, match=error):
            await states.set_message_state("g", "bobs", bad, "bob")
    with pytest.raises(InvalidArgument, match="actor_user_id is required to set RECALLED"):
        await states.set_message_state("g", "bobs", MessageState.RECALLED, "")
    assert (await states.get_message("g", "bobs")).state == MessageState.COMPLETE


async def test_history_pages_by_seq_and_hides_for_one_viewer(store: HeaderStore) -> None:
    await group(store, "g", "alice", "bob")
    for n in range(1, 8):
        await text(store, "g", f"m{n}", "alice", f"message {n}")
    messages = store.messages

    async def seqs(viewer: str = "", size: int = 3, **position: int) -> list[list[int]]:
        pages, token = [], ""
        while True:
            page = await messages.list_messages("g", viewer, size, token, **position)
            pages.append([h.seq for h in page.headers])
            token = page.next_page_token
            if not token:
                return pages

    assert await seqs() == [[7, 6, 5], [4, 3, 2], [1]]
    assert await seqs(after_seq=2) == [[3, 4, 5], [6, 7]]
    assert await seqs(before_seq=4) == [[3, 2, 1]]
    assert await seqs(before_seq=0) == [[]]
    assert await seqs(after_seq=2**64 - 1) == [[]]

    hidden = await messages.hide_message("g", "m6", "bob")
    assert hidden.seq == 6
    await messages.hide_message("g", "m6", "bob")  # idempotent
    assert await seqs("bob", 10) == [[7, 5, 4, 3, 2, 1]]
    assert await seqs("alice", 10) == [[7, 6, 5, 4, 3, 2, 1]]

    await messages.set_message_state("g", "m5", MessageState.RECALLED, "alice")
    page = await messages.list_messages("g", "bob", 2, after_seq=4)
    assert [(h.seq, h.state, h.text) for h in page.headers] == [
        (5, MessageState.RECALLED, ""),
        (7, MessageState.COMPLETE, "message 7"),
    ]

    with pytest.raises(PermissionDenied, match="mallory is not a member of thread g"):
        await messages.list_messages("g", "mallory")
    with pytest.raises(PermissionDenied, match="mallory is not a member"):
        await messages.hide_message("g", "m1", "mallory")
    with pytest.raises(NotFound, match="thread nope not found"):
        await messages.list_messages("nope")
    with pytest.raises(InvalidArgument, match="set at most one of before_seq and after_seq"):
        await messages.list_messages("g", before_seq=3, after_seq=1)
    await group(store, "h", "alice", "bob")
    token = (await messages.list_messages("g", "alice", 1)).next_page_token
    with pytest.raises(InvalidArgument, match="page_token belongs to another listing"):
        await messages.list_messages("h", "alice", 1, token)
    with pytest.raises(InvalidArgument, match="page_token belongs to another listing"):
        await messages.list_messages("g", "bob", 1, token)
    with pytest.raises(InvalidArgument, match="page_size 500 is above the maximum of 200"):
        await messages.list_messages("g", "alice", 500)


async def test_forward_points_at_the_original_body(store: HeaderStore) -> None:
    await group(store, "src", "alice", "bob")
    await group(store, "dst", "bob", "carol")
    await group(store, "far", "carol", "dave")
    original = await voice(store, "src", "orig", "alice", complete=True)
    await text(store, "dst", "chat", "carol", "before")

    forward = await store.messages.forward_message(
        MessageRef("src", "orig"), "dst", "fwd1", "bob", "bob-phone"
    )
    header = forward.header
    assert forward.created and forward.member_user_ids == ("bob", "carol")
    assert (header.thread_id, header.seq, header.sender_user_id) == ("dst", 2, "bob")
    assert header.state == MessageState.COMPLETE and header.totals == original.totals
    assert header.kind == MessageKind.VOICE and header.content_type == original.content_type
    assert header.body == MessageRef("src", "orig")
    assert header.forwarded_from == MessageRef("src", "orig")
    assert await store.messages.get_message("dst", "fwd1") == header
    retry = await store.messages.forward_message(
        MessageRef("src", "orig"), "dst", "fwd1", "bob", "bob-phone"
    )
    assert not retry.created and retry.header == header

    onward = await store.messages.forward_message(
        MessageRef("dst", "fwd1"), "far", "fwd2", "carol", "carol-phone"
    )
    assert onward.header.body == MessageRef("src", "orig")  # the bytes' one owner
    assert onward.header.forwarded_from == MessageRef("dst", "fwd1")

    await voice(store, "src", "live", "alice")
    with pytest.raises(FailedPrecondition, match="live is LIVE: only COMPLETE messages"):
        await store.messages.forward_message(MessageRef("src", "live"), "dst", "f3", "bob", "p")
    with pytest.raises(PermissionDenied, match="alice is not a member of thread dst"):
        await store.messages.forward_message(MessageRef("src", "orig"), "dst", "f4", "alice", "p")
    with pytest.raises(PermissionDenied, match="carol is not a member of thread src"):
        await store.messages.forward_message(MessageRef("src", "orig"), "dst", "f5", "carol", "p")
    with pytest.raises(AlreadyExists, match="message id chat is already used"):
        await store.messages.forward_message(MessageRef("src", "orig"), "dst", "chat", "bob", "p")
    with pytest.raises(NotFound, match="message gone not found in thread src"):
        await store.messages.forward_message(MessageRef("src", "gone"), "dst", "f6", "bob", "p")
    with pytest.raises(NotFound, match="thread nope not found"):
        await store.messages.forward_message(MessageRef("src", "orig"), "nope", "f7", "bob", "p")
    assert (await store.threads.get_members("dst")).last_seq == 2


async def test_marks_only_move_forward(store: HeaderStore) -> None:
    await group(store, "g", "alice", "bob")
    for n in range(1, 6):
        await voice(store, "g", f"m{n}", "alice", complete=True)
    marks = store.messages

    read3 = await marks.set_mark("bob", "phone", "g", "m3", MarkKind.READ)
    assert read3.advanced and read3.mark.seq == 3 and read3.mark.device_id == "phone"
    older = await marks.set_mark("bob", "laptop", "g", "m2", MarkKind.READ)
    assert not older.advanced and older.mark == read3.mark
    same = await marks.set_mark("bob", "laptop", "g", "m3", MarkKind.READ)
    assert not same.advanced
    listened = await marks.set_mark("bob", "laptop", "g", "m4", MarkKind.LISTENED)
    assert listened.advanced and listened.mark.kind == MarkKind.LISTENED
    state = (await store.threads.get_thread("g", "bob")).user_state
    assert state is not None and (state.read_seq, state.listened_seq) == (4, 4)  # implies read
    await marks.set_mark("alice", "desk", "g", "m5", MarkKind.READ)

    everyone = await marks.list_marks("g")
    assert sorted((m.user_id, m.kind, m.seq) for m in everyone) == [
        ("alice", MarkKind.READ, 5),
        ("bob", MarkKind.READ, 4),
        ("bob", MarkKind.LISTENED, 4),
    ]
    bob_listened = await marks.list_marks("g", ["bob"], MarkKind.LISTENED)
    assert [(m.message_id, m.device_id) for m in bob_listened] == [("m4", "laptop")]

    with pytest.raises(PermissionDenied, match="mallory is not a member"):
        await marks.set_mark("mallory", "p", "g", "m1", MarkKind.READ)
    with pytest.raises(NotFound, match="message m9 not found in thread g"):
        await marks.set_mark("bob", "p", "g", "m9", MarkKind.READ)
    with pytest.raises(InvalidArgument, match=r"mark\.kind is required"):
        await marks.set_mark("bob", "p", "g", "m1", MarkKind.UNSPECIFIED)
    with pytest.raises(InvalidArgument, match=r"mark\.device_id is required"):
        await marks.set_mark("bob", "", "g", "m1", MarkKind.READ)
    with pytest.raises(NotFound, match="thread nope not found"):
        await marks.list_marks("nope")


async def test_likes_are_idempotent_and_counted(store: HeaderStore) -> None:
    await group(store, "g", "alice", "bob", "carol")
    before = await voice(store, "g", "m1", "alice", complete=True)
    likes = store.messages

    first = await likes.like_message("g", "m1", "bob")
    assert first.changed and first.like_count == 1 and first.like is not None
    assert first.like.user_id == "bob" and first.member_user_ids == ("alice", "bob", "carol")
    again = await likes.like_message("g", "m1", "bob")
    assert not again.changed and again.like_count == 1 and again.like == first.like
    assert (await likes.like_message("g", "m1", "carol")).like_count == 2
    header = await likes.get_message("g", "m1")
    assert header.like_count == 2 and header.liked_by_user_ids == ("bob", "carol")
    assert header.updated_at > before.updated_at

    unliked = await likes.unlike_message("g", "m1", "bob")
    assert unliked.changed and unliked.like_count == 1 and unliked.like is None
    assert not (await likes.unlike_message("g", "m1", "bob")).changed
    assert (await likes.get_message("g", "m1")).liked_by_user_ids == ("carol",)

    with pytest.raises(PermissionDenied, match="mallory is not a member"):
        await likes.like_message("g", "m1", "mallory")
    with pytest.raises(NotFound, match="message m9 not found"):
        await likes.like_message("g", "m9", "bob")
    await likes.set_message_state("g", "m1", MessageState.RECALLED, "alice")
    with pytest.raises(FailedPrecondition, match="m1 is RECALLED: it cannot be liked"):
        await likes.like_message("g", "m1", "bob")
