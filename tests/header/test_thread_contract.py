"""Contract: threads, members, roles, mute and thread lists, on Spanner and SQLite alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.header.header_helpers import direct, group, text
from voxmesh.core.domain_errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from voxmesh.header.header_records import MemberRole, ThreadKind
from voxmesh.header.header_store import HeaderStore


async def test_direct_thread_is_created_once_per_pair(store: HeaderStore) -> None:
    first = await store.threads.create_thread("d-ab", ThreadKind.DIRECT, "", "alice", ["bob"])
    assert first.created
    assert first.thread.kind == ThreadKind.DIRECT
    assert [(m.user_id, m.role) for m in first.thread.members] == [
        ("alice", MemberRole.MEMBER),
        ("bob", MemberRole.MEMBER),
    ]
    assert first.thread.created_at == first.thread.updated_at
    assert first.thread.created_at > datetime(2020, 1, 1, tzinfo=UTC)

    again = await store.threads.create_thread("d-ab", ThreadKind.DIRECT, "", "alice", ["bob"])
    from_bob = await store.threads.create_thread(
        "d-ab", ThreadKind.DIRECT, "", "bob", ["alice", "bob"]
    )
    assert not again.created and not from_bob.created
    assert again.thread == first.thread == from_bob.thread

    with pytest.raises(AlreadyExists, match="d-ab already exists as a direct thread of other"):
        await store.threads.create_thread("d-ab", ThreadKind.DIRECT, "", "alice", ["carol"])
    with pytest.raises(AlreadyExists, match="d-ab already exists"):
        await store.threads.create_thread("d-ab", ThreadKind.GROUP, "", "alice", ["bob"])


async def test_group_creation_is_idempotent_for_its_creator(store: HeaderStore) -> None:
    thread = await group(store, "g1", "alice", "bob", "alice", "bob")
    assert thread.title == "group g1"
    assert {m.user_id: m.role for m in thread.members} == {
        "alice": MemberRole.ADMIN,
        "bob": MemberRole.MEMBER,
    }
    assert {m.added_by_user_id for m in thread.members} == {"alice"}
    retry = await store.threads.create_thread("g1", ThreadKind.GROUP, "group g1", "alice", ["bob"])
    assert not retry.created and retry.thread == thread
    with pytest.raises(AlreadyExists, match="g1 already exists as another group thread"):
        await store.threads.create_thread("g1", ThreadKind.GROUP, "x", "mallory", ["bob"])


@pytest.mark.parametrize(
    ("thread_id", "kind", "title", "members", "error"),
    [
        ("a b", ThreadKind.GROUP, "", ["bob"], "thread_id 'a b' is malformed"),
        ("", ThreadKind.GROUP, "", ["bob"], "thread_id is required"),
        ("t", ThreadKind.UNSPECIFIED, "", ["bob"], "kind is required"),
        ("t", 7, "", ["bob"], "kind 7 is not a known value"),
        ("t", ThreadKind.DIRECT, "", ["bob", "carol"], "exactly two distinct members"),
        ("t", ThreadKind.DIRECT, "", ["alice"], "exactly two distinct members"),
        ("t", ThreadKind.DIRECT, "hi", ["bob"], "a direct thread has no title"),
        ("t", ThreadKind.GROUP, "x" * 201, ["bob"], "title is 201 characters; the limit is 200"),
        ("t", ThreadKind.GROUP, "", ["bob", "bad id"], r"member_user_ids\[1\] 'bad id'"),
        ("t", ThreadKind.GROUP, "", ["b", "c", "d", "e", "f"], "6 members; the limit is 5"),
    ],
)
async def test_create_thread_validates_its_input(
    store: HeaderStore, thread_id: str, kind: int, title: str, members: list[str], error: str
) -> None:
    with pytest.raises(InvalidArgument, match=error):
        await store.threads.create_thread(thread_id, kind, title, "alice", members)
    with pytest.raises(NotFound):  # nothing half-written
        await store.threads.get_thread("t")


async def test_admins_manage_a_group(store: HeaderStore) -> None:
    await group(store, "g", "alice", "bob", "carol")

    with pytest.raises(PermissionDenied, match="only admins of thread g may rename it"):
        await store.threads.update_thread("g", "bob", "mine now")
    with pytest.raises(PermissionDenied, match="mallory is not a member of thread g"):
        await store.threads.update_thread("g", "mallory", "mine now")
    renamed = await store.threads.update_thread("g", "alice", "Team")
    assert renamed.title == "Team" and renamed.updated_at > renamed.created_at
    assert (await store.threads.get_thread("g")).title == "Team"

    with pytest.raises(PermissionDenied, match="only admins of thread g may add members"):
        await store.threads.add_members("g", "bob", ["dave"], MemberRole.MEMBER)
    added = await store.threads.add_members("g", "alice", ["dave", "bob", "dave"], 0)
    assert added.added_user_ids == ("dave",)
    assert added.thread.member("dave") is not None
    assert added.thread.member("dave").role == MemberRole.MEMBER  # type: ignore[union-attr]
    again = await store.threads.add_members("g", "alice", ["dave"], MemberRole.MEMBER)
    assert again.added_user_ids == ()
    with pytest.raises(FailedPrecondition, match=r"has 4 members; adding 2 would exceed .* 5"):
        await store.threads.add_members("g", "alice", ["erin", "frank"], MemberRole.MEMBER)
    with pytest.raises(InvalidArgument, match="role 9 is not a known value"):
        await store.threads.add_members("g", "alice", ["erin"], 9)
    with pytest.raises(InvalidArgument, match="user_ids is required"):
        await store.threads.add_members("g", "alice", [], MemberRole.MEMBER)

    with pytest.raises(PermissionDenied, match="may remove other members"):
        await store.threads.remove_member("g", "carol", "dave")
    left = await store.threads.remove_member("g", "bob", "bob")  # leaving needs no admin
    assert "bob" not in left.member_user_ids
    removed = await store.threads.remove_member("g", "alice", "dave")
    assert removed.member_user_ids == ["alice", "carol"]
    with pytest.raises(NotFound, match="user dave is not a member of thread g"):
        await store.threads.remove_member("g", "alice", "dave")
    rejoined = await store.threads.add_members("g", "alice", ["bob"], MemberRole.MEMBER)
    assert rejoined.added_user_ids == ("bob",)
    assert [t.thread_id for t in (await store.threads.list_threads_for_user("bob")).threads] == [
        "g"
    ]
    await store.threads.remove_member("g", "alice", "bob")
    assert (await store.threads.list_threads_for_user("bob")).threads == ()

    with pytest.raises(FailedPrecondition, match="alice is the last admin of thread g"):
        await store.threads.set_member_role("g", "alice", "alice", MemberRole.MEMBER)
    with pytest.raises(FailedPrecondition, match="alice is the last admin of thread g"):
        await store.threads.remove_member("g", "alice", "alice")
    with pytest.raises(InvalidArgument, match="role is required"):
        await store.threads.set_member_role("g", "alice", "carol", MemberRole.UNSPECIFIED)
    promoted = await store.threads.set_member_role("g", "alice", "carol", MemberRole.ADMIN)
    assert promoted.member("carol").role == MemberRole.ADMIN  # type: ignore[union-attr]
    await store.threads.remove_member("g", "alice", "alice")
    check = await store.threads.check_membership("g", "carol")
    assert check.is_member and check.role == MemberRole.ADMIN
    # The last member may leave: nobody is left without an admin.
    await store.threads.remove_member("g", "carol", "carol")
    assert (await store.threads.get_members("g")).user_ids == ()


async def test_a_direct_thread_keeps_its_two_members(store: HeaderStore) -> None:
    await direct(store, "d", "alice", "bob")
    with pytest.raises(FailedPrecondition, match="d is a direct thread"):
        await store.threads.add_members("d", "alice", ["carol"], MemberRole.MEMBER)
    with pytest.raises(FailedPrecondition, match="d is a direct thread"):
        await store.threads.remove_member("d", "alice", "alice")
    with pytest.raises(FailedPrecondition, match="d is a direct thread"):
        await store.threads.update_thread("d", "alice", "us")
    with pytest.raises(FailedPrecondition, match="d is a direct thread"):
        await store.threads.set_member_role("d", "alice", "bob", MemberRole.ADMIN)


async def test_members_membership_and_reads(store: HeaderStore) -> None:
    await group(store, "g", "alice", "bob")
    await text(store, "g", "m1", "bob", "hi")
    members = await store.threads.get_members("g")
    assert members.user_ids == ("alice", "bob") and members.last_seq == 1
    assert (await store.threads.check_membership("g", "bob")).role == MemberRole.MEMBER
    outsider = await store.threads.check_membership("g", "mallory")
    assert not outsider.is_member and outsider.role == MemberRole.UNSPECIFIED
    thread = await store.threads.get_thread("g", "bob")
    assert thread.last_seq == 1 and thread.user_state is not None
    assert thread.user_state.read_seq == 0 and not thread.user_state.muted
    assert (await store.threads.get_thread("g")).user_state is None
    with pytest.raises(PermissionDenied, match="mallory is not a member of thread g"):
        await store.threads.get_thread("g", "mallory")
    for call in (
        store.threads.get_members("nope"),
        store.threads.check_membership("nope", "bob"),
        store.threads.get_thread("nope"),
    ):
        with pytest.raises(NotFound, match="thread nope not found"):
            await call
    with pytest.raises(InvalidArgument, match=r"user_id '\.\./x' is malformed"):
        await store.threads.check_membership("g", "../x")


async def test_threads_for_a_user_page_most_recent_first(store: HeaderStore) -> None:
    for n in range(1, 6):
        await group(store, f"t{n}", "alice", "bob")
    await group(store, "other", "carol", "dave")
    await text(store, "t2", "m", "bob", "bump")  # t2 becomes the most recent
    await store.threads.remove_member("t4", "bob", "bob")  # bob left t4

    seen: list[list[str]] = []
    token = ""
    while True:
        page = await store.threads.list_threads_for_user("bob", 2, token)
        seen.append([t.thread_id for t in page.threads])
        assert all(t.user_state is not None for t in page.threads)
        token = page.next_page_token
        if not token:
            break
    assert seen == [["t2", "t5"], ["t3", "t1"]]
    everything = await store.threads.list_threads_for_user("alice")
    assert [t.thread_id for t in everything.threads] == ["t4", "t2", "t5", "t3", "t1"]
    assert everything.next_page_token == ""

    first = await store.threads.list_threads_for_user("bob", 1)
    with pytest.raises(InvalidArgument, match="page_token belongs to another listing"):
        await store.threads.list_threads_for_user("alice", 1, first.next_page_token)
    with pytest.raises(InvalidArgument, match="page_token is malformed"):
        await store.threads.list_threads_for_user("bob", 1, "not a token!")
    with pytest.raises(InvalidArgument, match="page_size must not be negative"):
        await store.threads.list_threads_for_user("bob", -1)
    with pytest.raises(InvalidArgument, match="page_size 201 is above the maximum of 200"):
        await store.threads.list_threads_for_user("bob", 201)
    assert (await store.threads.list_threads_for_user("nobody")).threads == ()


async def test_mute_is_per_user(store: HeaderStore) -> None:
    await group(store, "g", "alice", "bob")
    until = datetime.now(UTC) + timedelta(hours=1)
    state = await store.threads.mute_thread("g", "bob", True, until)
    assert state.muted and state.muted_until == until.replace(microsecond=until.microsecond)
    bob = (await store.threads.get_thread("g", "bob")).user_state
    alice = (await store.threads.get_thread("g", "alice")).user_state
    assert bob is not None and bob.muted and bob.muted_until == until
    assert alice is not None and not alice.muted
    forever = await store.threads.mute_thread("g", "bob", True, None)
    assert forever.muted and forever.muted_until is None
    unmuted = await store.threads.mute_thread("g", "bob", False, None)
    assert not unmuted.muted
    with pytest.raises(InvalidArgument, match="muted_until is only allowed with muted = true"):
        await store.threads.mute_thread("g", "bob", False, until)
    with pytest.raises(InvalidArgument, match="muted_until is in the past"):
        await store.threads.mute_thread("g", "bob", True, datetime.now(UTC) - timedelta(1))
    with pytest.raises(PermissionDenied, match="mallory is not a member"):
        await store.threads.mute_thread("g", "mallory", True, None)
