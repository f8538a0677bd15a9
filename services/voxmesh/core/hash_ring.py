"""A consistent-hash ring with virtual nodes: the same members give the same ring everywhere.

Each member owns ``vnodes`` points on a 64-bit circle (BLAKE2b of "<node>#<i>"); a key
belongs to the first point clockwise from its own hash. A key's preference list is the
first N distinct members clockwise. When a member joins or leaves, only the keys next to
its points move.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable

_HOME_CACHE_MAX = 100_000


def ring_hash(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")


class HashRing:
    def __init__(self, members: Iterable[str] = (), vnodes: int = 128) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be positive")
        self.vnodes = vnodes
        self.members: frozenset[str] = frozenset(members)
        points = sorted(
            (ring_hash(f"{member}#{i}"), member) for member in self.members for i in range(vnodes)
        )
        self._hashes = [h for h, _ in points]
        self._owners = [m for _, m in points]
        # Homes are looked up per chunk on the live path; a ring never changes (a new one
        # replaces it), so they can be remembered. Bounded: cleared when it grows too big.
        self._homes: dict[str, str | None] = {}

    def __len__(self) -> int:
        return len(self.members)

    def preference_list(self, key: str, count: int) -> list[str]:
        """The first ``count`` distinct members clockwise from ``key`` (home first)."""
        if not self._hashes:
            return []
        wanted = min(count, len(self.members))
        start = bisect.bisect_right(self._hashes, ring_hash(key))
        found: list[str] = []
        for step in range(len(self._hashes)):
            owner = self._owners[(start + step) % len(self._owners)]
            if owner not in found:
                found.append(owner)
                if len(found) == wanted:
                    break
        return found

    def home(self, key: str) -> str | None:
        try:
            return self._homes[key]
        except KeyError:
            pass
        found = self.preference_list(key, 1)
        home = found[0] if found else None
        if len(self._homes) >= _HOME_CACHE_MAX:
            self._homes.clear()
        self._homes[key] = home
        return home

    def shares(self) -> dict[str, float]:
        """Fraction of the key space each member is home for."""
        if not self._hashes:
            return {}
        size = 1 << 64
        shares = dict.fromkeys(self.members, 0.0)
        for i, owner in enumerate(self._owners):
            previous = self._hashes[i - 1] if i else self._hashes[-1] - size
            shares[owner] += (self._hashes[i] - previous) / size
        return shares
