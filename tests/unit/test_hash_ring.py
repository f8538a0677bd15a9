from __future__ import annotations

import statistics
from collections import Counter

import pytest

from voxmesh.core.hash_ring import HashRing

KEYS = [f"user-{i}" for i in range(20_000)]


def _loads(ring: HashRing) -> Counter[str]:
    return Counter(ring.home(key) for key in KEYS)  # type: ignore[misc]


@pytest.mark.parametrize("members", [3, 5, 10])
def test_keys_are_balanced_across_members(members: int) -> None:
    ring = HashRing([f"router-{i}" for i in range(members)], vnodes=128)
    loads = _loads(ring)
    assert set(loads) == ring.members
    ratio = max(loads.values()) / statistics.mean(loads.values())
    assert ratio < 1.25, f"max/mean load {ratio:.3f}"
    assert sum(ring.shares().values()) == pytest.approx(1.0)


def test_a_joining_member_takes_only_its_share_and_only_for_itself() -> None:
    before = HashRing(["r1", "r2", "r3"])
    after = HashRing(["r1", "r2", "r3", "r4"])
    moved = [k for k in KEYS if before.home(k) != after.home(k)]
    assert all(after.home(k) == "r4" for k in moved)  # nothing moves between old members
    assert 0.15 < len(moved) / len(KEYS) < 0.35  # about 1/4


def test_a_leaving_member_hands_its_keys_out_and_nothing_else_moves() -> None:
    before = HashRing(["r1", "r2", "r3", "r4"])
    after = HashRing(["r1", "r2", "r4"])
    for key in KEYS[:5000]:
        if before.home(key) != "r3":
            assert after.home(key) == before.home(key)
        else:
            # The next member of the old preference list takes over.
            assert after.home(key) == before.preference_list(key, 2)[1]


def test_preference_lists_are_distinct_and_identical_across_processes() -> None:
    ring = HashRing(["a", "b", "c", "d"])
    same = HashRing(["d", "c", "b", "a"])
    for key in KEYS[:200]:
        prefs = ring.preference_list(key, 3)
        assert len(prefs) == len(set(prefs)) == 3
        assert prefs == same.preference_list(key, 3)
    assert HashRing(["only"]).preference_list("x", 3) == ["only"]
    assert HashRing().preference_list("x", 3) == []
