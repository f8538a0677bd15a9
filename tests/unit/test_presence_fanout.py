"""The per-recipient throttle of presence, typing and "talking now" events."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from voxmesh.common.v1 import presence_pb2, update_pb2
from voxmesh.router.presence_tracker import EphemeralFanout


def _typing(user: str, typing: bool) -> update_pb2.UpdateEvent:
    return update_pb2.UpdateEvent(
        typing=presence_pb2.Typing(thread_id="t", user_id=user, typing=typing)
    )


async def test_a_busy_group_cannot_flood_a_recipient() -> None:
    loop = asyncio.get_running_loop()
    got: list[tuple[float, str, update_pb2.UpdateEvent]] = []
    everyone_seen = asyncio.Event()
    subjects = [f"user-{i}" for i in range(40)]

    def deliver(users: Sequence[str], event: update_pb2.UpdateEvent) -> None:
        for user in users:
            got.append((loop.time(), user, event))
        if {e.typing.user_id for _, _, e in got} == set(subjects):
            everyone_seen.set()

    interval, most = 0.05, 8
    fanout = EphemeralFanout(deliver, interval, most)
    began = loop.time()
    for round_ in range(5):  # every subject toggles typing five times, all at once
        for subject in subjects:
            fanout.publish(["bob"], ("typing", "t", subject), _typing(subject, round_ % 2 == 0))
    assert len(got) == 1  # the first goes out at once; the rest wait for the window
    await asyncio.wait_for(everyone_seen.wait(), 5)
    fanout.close()

    # Coalesced: each subject's newest state (typing after round 4), once, not 5 times.
    assert len(got) == 1 + len(subjects) - 1 + 1  # subject 0 went at once, then its latest
    latest = {e.typing.user_id: e.typing.typing for _, _, e in got}
    assert all(latest.values())
    # Bounded: never more than `most` in one window after the first.
    windows: dict[int, int] = {}
    for at, _, _ in got[1:]:
        windows[int((at - began) / interval + 1e-6)] = (
            windows.get(int((at - began) / interval + 1e-6), 0) + 1
        )
    assert max(windows.values()) <= most
    assert all(user == "bob" for _, user, _ in got)


async def test_an_idle_recipient_gets_each_event_at_once() -> None:
    got: list[str] = []
    fanout = EphemeralFanout(lambda users, e: got.append(e.typing.user_id), 0.01, 4)
    fanout.publish(["bob"], ("typing", "t", "a"), _typing("a", True))
    fanout.publish(["carol"], ("typing", "t", "a"), _typing("a", True))
    assert got == ["a", "a"]  # different recipients do not share a window
    fanout.close()
