"""Checks of field values a client sends: pure functions, each error naming the field.

The router runs ``check_fields`` on every request before it goes anywhere, and the header
store calls the same rules where it receives these values from other services. What is
checked, by field type (so a new RPC is covered without new code):

- ``google.protobuf.Timestamp``: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z
  (the range the type documents, and Spanner's), nanos 0..999,999,999;
- ``google.protobuf.Duration``: 0 to about 292 years (INT64 nanoseconds, what the stores
  hold), nanos 0..999,999,999 (requests only carry lengths of time);
- enums: a value the enum defines (proto3 lets any integer through the wire);
- 64-bit integers (sizes, offsets, indexes, seqs): at most 2^63-1, what the stores hold;
- ``page_size``: 0 (the default) up to ``MAX_PAGE_SIZE``;
- ``page_token``, ``cursor``: an opaque token as the server hands them out (URL-safe
  base64, at most ``MAX_TOKEN_CHARS``); what is inside is checked by the header store;
- string fields named ``*_id`` / ``*_ids``: the id alphabet of ``core.ids``, and
  ``message_id``: a UUIDv7 (every message id is chosen by its sender's client);
- ``double``: a finite number.

Chunk frames (``voxmesh.common.v1.Chunk``) are left to the chunk-frame rule of the live path.
Whether a field is required, and cross-field rules, stay with each RPC.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from voxmesh.core.domain_errors import InvalidArgument
from voxmesh.core.ids import require_id

MIN_TIMESTAMP_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_TIMESTAMP_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_INT64 = 2**63 - 1  # Spanner INT64, SQLite INTEGER
MAX_DURATION_SECONDS = MAX_INT64 // 1_000_000_000 - 1  # ~292 years: nanos fit an INT64
MAX_NANOS = 999_999_999
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_TOKEN_CHARS = 2048

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TOKEN = re.compile(r"[A-Za-z0-9_-]*={0,2}")
# RFC 9562 UUIDv7, canonical (lowercase, hyphenated): version 7, variant 10xx.
_UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

_TIMESTAMP = Timestamp.DESCRIPTOR.full_name
_DURATION = Duration.DESCRIPTOR.full_name
# Left to the chunk-frame rule (index, offset, media time, payload size).
_NOT_WALKED = frozenset({"voxmesh.common.v1.Chunk"})
_TOKEN_FIELDS = frozenset({"page_token", "cursor"})
_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


# -- one value -----------------------------------------------------------------------------


def timestamp(value: Timestamp, field: str) -> datetime:
    """The instant of ``value`` (UTC, microseconds), or INVALID_ARGUMENT naming ``field``."""
    if not 0 <= value.nanos <= MAX_NANOS:
        raise InvalidArgument(f"{field}.nanos {value.nanos} is outside 0..{MAX_NANOS}")
    if not MIN_TIMESTAMP_SECONDS <= value.seconds <= MAX_TIMESTAMP_SECONDS:
        raise InvalidArgument(
            f"{field}.seconds {value.seconds} is outside 0001-01-01T00:00:00Z.."
            f"9999-12-31T23:59:59Z ({MIN_TIMESTAMP_SECONDS}..{MAX_TIMESTAMP_SECONDS})"
        )
    return _EPOCH + timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def duration_nanos(value: Duration, field: str) -> int:
    """A length of time in nanoseconds: 0 to 10,000 years."""
    if not 0 <= value.seconds <= MAX_DURATION_SECONDS:
        raise InvalidArgument(
            f"{field}.seconds {value.seconds} is outside 0..{MAX_DURATION_SECONDS}"
        )
    if not 0 <= value.nanos <= MAX_NANOS:
        raise InvalidArgument(f"{field}.nanos {value.nanos} is outside 0..{MAX_NANOS}")
    return value.seconds * 1_000_000_000 + value.nanos


def enum_value(value: int, enum: EnumDescriptor, field: str) -> int:
    """``value`` if ``enum`` defines it (UNSPECIFIED included: required-ness is per RPC)."""
    if value not in enum.values_by_number:
        raise InvalidArgument(f"{field} {value} is not a {enum.name} value")
    return value


def size(value: int, field: str) -> int:
    """A count, size, offset, index or seq: 0..2^63-1 (what the stores can hold)."""
    if not 0 <= value <= MAX_INT64:
        raise InvalidArgument(f"{field} {value} is outside 0..{MAX_INT64}")
    return value


def page_size(
    value: int,
    field: str = "page_size",
    default: int = DEFAULT_PAGE_SIZE,
    maximum: int = MAX_PAGE_SIZE,
) -> int:
    """The page size to use: 0 means ``default``; negative or above ``maximum`` is refused."""
    if value < 0:
        raise InvalidArgument(f"{field} must not be negative (got {value})")
    if value > maximum:
        raise InvalidArgument(f"{field} {value} is above the maximum of {maximum}")
    return value or default


def opaque_token(value: str, field: str) -> str:
    """A page token or cursor as the server hands them out (its contents are the store's)."""
    if len(value) > MAX_TOKEN_CHARS:
        raise InvalidArgument(f"{field} is malformed (too long): pass back the value returned")
    if not _TOKEN.fullmatch(value):
        raise InvalidArgument(f"{field} is malformed: pass back the value returned")
    return value


def uuid7(value: str, field: str) -> str:
    """A client-chosen id: a UUIDv7 in canonical form (lowercase, hyphenated)."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    if not _UUID7.fullmatch(value):
        raise InvalidArgument(
            f"{field} {value[:40]!r} is not a UUIDv7: 36 characters, lowercase hex, "
            f"as xxxxxxxx-xxxx-7xxx-[89ab]xxx-xxxxxxxxxxxx"
        )
    return value


def finite(value: float, field: str) -> float:
    if not math.isfinite(value):
        raise InvalidArgument(f"{field} must be a finite number (got {value})")
    return value


# -- a whole message -----------------------------------------------------------------------


def _check_string(value: str, name: str, path: str) -> None:
    if not value:
        return  # required-ness is per RPC
    if name in _TOKEN_FIELDS:
        opaque_token(value, path)
    elif name == "message_id":
        uuid7(value, path)
    elif name.endswith(("_id", "_ids")):
        require_id(value, path)


def _check_scalar(field: FieldDescriptor, value: object, path: str) -> None:
    if field.type == FieldDescriptor.TYPE_STRING:
        _check_string(value, field.name, path)  # type: ignore[arg-type]
    elif field.type == FieldDescriptor.TYPE_ENUM:
        enum_value(value, field.enum_type, path)  # type: ignore[arg-type]
    elif field.type in _INT64_TYPES:
        size(value, path)  # type: ignore[arg-type]
    elif field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        finite(value, path)  # type: ignore[arg-type]
    elif field.type == FieldDescriptor.TYPE_INT32 and field.name == "page_size":
        page_size(value, path)  # type: ignore[arg-type]


def check_fields(message: Message, path: str = "") -> None:
    """Every field set in ``message`` (recursively) against the rules above."""
    name = message.DESCRIPTOR.full_name
    if name == _TIMESTAMP:
        timestamp(message, path)  # type: ignore[arg-type]
        return
    if name == _DURATION:
        duration_nanos(message, path)  # type: ignore[arg-type]
        return
    if name in _NOT_WALKED:
        return
    for field, value in message.ListFields():
        field_path = f"{path}.{field.name}" if path else field.name
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type is None or field.message_type.GetOptions().map_entry:
                continue  # no maps in the client API; nothing to walk
            for index, item in enumerate(value if repeated else [value]):
                check_fields(item, f"{field_path}[{index}]" if repeated else field_path)
        elif repeated:
            for index, item in enumerate(value):
                _check_scalar(field, item, f"{field_path}[{index}]")
        else:
            _check_scalar(field, value, field_path)
