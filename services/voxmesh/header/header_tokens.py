"""Opaque strings the header store hands out: page tokens and timeline cursors.

Both are URL-safe base64 of a small JSON object with a version, so their contents can change
without breaking clients that treat them as opaque (as they must). A token names the listing
it belongs to; a token from another listing, or a damaged one, is INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from voxmesh.core import field_rules
from voxmesh.core.domain_errors import InvalidArgument
from voxmesh.core.field_rules import MAX_INT64, page_size
from voxmesh.header.header_storage import EPOCH, from_micros, to_micros

__all__ = [
    "decode_cursor",
    "decode_page_token",
    "encode_cursor",
    "encode_page_token",
    "page_size",
    "token_int",
    "token_str",
    "token_time",
]

_VERSION = 1
# Microseconds since the epoch of the last instant a Timestamp can name.
_MAX_MICROS = (field_rules.MAX_TIMESTAMP_SECONDS + 1) * 1_000_000 - 1


def _encode(payload: dict[str, Any]) -> str:
    assert "v" not in payload, '"v" is the version'
    raw = json.dumps({"v": _VERSION, **payload}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(value: str, what: str) -> dict[str, Any]:
    field_rules.opaque_token(value, what)
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument(f"{what} is malformed: pass back the value returned") from exc
    if not isinstance(payload, dict) or payload.get("v") != _VERSION:
        raise InvalidArgument(f"{what} is malformed or from another version")
    return payload


def encode_page_token(listing: str, **fields: Any) -> str:
    return _encode({"l": listing, **fields})


def decode_page_token(token: str, listing: str, **expected: Any) -> dict[str, Any]:
    """The fields of ``token``; it must belong to ``listing`` with the ``expected`` fields."""
    payload = _decode(token, "page_token")
    if payload.get("l") != listing or any(payload.get(k) != v for k, v in expected.items()):
        raise InvalidArgument("page_token belongs to another listing: repeat the same request")
    return payload


def token_int(payload: dict[str, Any], key: str) -> int:
    """A non-negative 64-bit integer of a token (a forged one may hold anything)."""
    value = payload.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_INT64:
        raise InvalidArgument("page_token is malformed: pass back the value returned")
    return value


def token_time(payload: dict[str, Any], key: str) -> datetime:
    """An instant of a token, stored as microseconds since the epoch."""
    micros = token_int(payload, key)
    if micros > _MAX_MICROS:
        raise InvalidArgument("page_token is malformed: pass back the value returned")
    return from_micros(micros)


def token_str(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str):
        raise InvalidArgument("page_token is malformed: pass back the value returned")
    return value


def encode_cursor(at: datetime) -> str:
    return _encode({"c": to_micros(at)})


def decode_cursor(cursor: str) -> datetime:
    """The timestamp of a timeline cursor; the empty cursor is the beginning of time."""
    if not cursor:
        return EPOCH
    micros = _decode(cursor, "cursor").get("c")
    if not isinstance(micros, int) or isinstance(micros, bool) or not 0 <= micros <= _MAX_MICROS:
        raise InvalidArgument("cursor is malformed: pass back a next_cursor value")
    return from_micros(micros)
