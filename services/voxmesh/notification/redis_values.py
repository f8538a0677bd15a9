"""Redis replies as the types we store (redis-py types them ``bytes | str``)."""

from __future__ import annotations

from typing import Any


def as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    """(id, fields) pairs of an XREADGROUP stream entry list or an XAUTOCLAIM reply."""
    return [(as_bytes(entry_id), fields) for entry_id, fields in reply]


def read_entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    """Every entry of an XREADGROUP reply (RESP2 list or RESP3 map of streams)."""
    streams = reply.items() if isinstance(reply, dict) else (reply or [])
    found: list[tuple[bytes, dict[bytes, bytes] | None]] = []
    for stream in streams:
        found += entries(stream[1])
    return found
