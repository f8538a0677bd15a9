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

from voxmesh.core.domain_errors import InvalidArgument
from voxmesh.header.header_storage import EPOCH, from_micros, to_micros

_VERSION = 1
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
_MAX_TOKEN_CHARS = 2048


def _encode(payload: dict[str, Any]) -> str:
    assert "v" not in payload, '"v" is the version'
    raw = json.dumps({"v": _VERSION, **payload}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(value: str, what: str) -> dict[str, Any]:
    if len(value) > _MAX_TOKEN_CHARS:
        raise InvalidArgument(f"{what} is malformed (too long): pass back the value returned")
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
    value = payload.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument("page_token is malformed: pass back the value returned")
    return value


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
    if not isinstance(micros, int) or isinstance(micros, bool) or micros < 0:
        raise InvalidArgument("cursor is malformed: pass back a next_cursor value")
    return from_micros(micros)


def page_size(value: int, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    if value < 0:
        raise InvalidArgument(f"page_size must not be negative (got {value})")
    if value > maximum:
        raise InvalidArgument(f"page_size {value} is above the maximum of {maximum}")
    return value or default
