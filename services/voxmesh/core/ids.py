"""Identifier checks shared by every service (ids are opaque strings chosen by clients)."""

from __future__ import annotations

import re

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
