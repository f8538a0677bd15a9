"""Identifier checks shared by every service (ids are opaque strings chosen by clients), and
the UUIDv7 that clients choose message ids with."""

from __future__ import annotations

import re
import secrets
import time
import uuid

from voxmesh.core.domain_errors import InvalidArgument

# Ids travel in etcd keys, storage object names and logs: keep them to a safe alphabet.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


def require_id(value: str, what: str) -> str:
    if not value:
        raise InvalidArgument(f"{what} is required")
    if not _ID.fullmatch(value):
        raise InvalidArgument(
            f"{what} {value[:40]!r} is malformed: 1-128 characters of A-Z a-z 0-9 . _ : @ -, "
            f"starting with a letter or digit"
        )
    return value


def new_uuid7() -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, version 7, 74 random bits."""
    millis = time.time_ns() // 1_000_000
    rand = secrets.randbits(74)
    value = (
        (millis & ((1 << 48) - 1)) << 80
        | 0x7 << 76
        | (rand >> 62) << 64  # rand_a: 12 bits
        | 0b10 << 62  # the variant
        | (rand & ((1 << 62) - 1))  # rand_b: 62 bits
    )
    return str(uuid.UUID(int=value))
