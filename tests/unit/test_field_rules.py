"""The request field rules, as pure functions (no server)."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from voxmesh.common.v1 import body_pb2, message_pb2, thread_pb2
from voxmesh.core import field_rules
from voxmesh.core.domain_errors import InvalidArgument
from voxmesh.core.ids import new_uuid7
from voxmesh.core.structured_logging import LogRateLimit
from voxmesh.header.header_tokens import decode_cursor, decode_page_token, encode_page_token
from voxmesh.router.v1 import router_service_pb2 as pb

MAX_SECONDS = field_rules.MAX_TIMESTAMP_SECONDS
MIN_SECONDS = field_rules.MIN_TIMESTAMP_SECONDS


def _refused(fragment: str) -> pytest.RaisesExc[InvalidArgument]:
    return pytest.raises(InvalidArgument, match=fragment)


def test_timestamps_in_range_become_utc_datetimes() -> None:
    assert field_rules.timestamp(Timestamp(seconds=0, nanos=1500), "t") == datetime(
        1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC
    )
    assert field_rules.timestamp(Timestamp(seconds=MAX_SECONDS, nanos=999_999_999), "t") == (
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    )
    assert field_rules.timestamp(Timestamp(seconds=MIN_SECONDS), "t").year == 1


@pytest.mark.parametrize(
    ("stamp", "fragment"),
    [
        (Timestamp(seconds=MAX_SECONDS + 1), r"created_at\.seconds 253402300800 is outside"),
        (Timestamp(seconds=2**63 - 1), r"created_at\.seconds .* is outside"),
        (Timestamp(seconds=-(2**63)), r"created_at\.seconds .* is outside"),
        (Timestamp(seconds=MIN_SECONDS - 1), r"created_at\.seconds .* is outside"),
        (Timestamp(nanos=-1), r"created_at\.nanos -1 is outside 0\.\.999999999"),
        (Timestamp(nanos=1_000_000_000), r"created_at\.nanos 1000000000 is outside"),
    ],
)
def test_out_of_range_timestamps_name_the_field(stamp: Timestamp, fragment: str) -> None:
    with _refused(fragment):
        field_rules.timestamp(stamp, "created_at")


def test_durations_are_non_negative_and_fit_int64_nanoseconds() -> None:
    assert field_rules.duration_nanos(Duration(seconds=2, nanos=5), "d") == 2_000_000_005
    longest = Duration(seconds=field_rules.MAX_DURATION_SECONDS, nanos=999_999_999)
    assert field_rules.duration_nanos(longest, "d") <= field_rules.MAX_INT64
    for bad, fragment in [
        (Duration(seconds=-1), r"end\.duration\.seconds -1"),
        (Duration(nanos=-5), r"end\.duration\.nanos -5"),
        (Duration(seconds=field_rules.MAX_DURATION_SECONDS + 1), r"end\.duration\.seconds"),
        (Duration(seconds=315_576_000_000), r"end\.duration\.seconds"),
    ]:
        with _refused(fragment):
            field_rules.duration_nanos(bad, "end.duration")


def test_enums_must_be_defined_values() -> None:
    kinds = message_pb2.MessageKind.DESCRIPTOR
    assert field_rules.enum_value(message_pb2.MESSAGE_KIND_TEXT, kinds, "kind") == 2
    assert field_rules.enum_value(0, kinds, "kind") == 0  # required-ness is per RPC
    for bad in (6, 99, -1, 2**31 - 1):
        with _refused(rf"start\.kind {bad} is not a MessageKind value"):
            field_rules.enum_value(bad, kinds, "start.kind")


def test_sizes_fit_the_stores_int64() -> None:
    assert field_rules.size(2**63 - 1, "offset") == 2**63 - 1
    for bad in (2**63, 2**64 - 1, -1):
        with _refused(r"offset .* is outside 0\.\.9223372036854775807"):
            field_rules.size(bad, "offset")


def test_page_sizes() -> None:
    assert field_rules.page_size(0) == field_rules.DEFAULT_PAGE_SIZE
    assert field_rules.page_size(field_rules.MAX_PAGE_SIZE) == field_rules.MAX_PAGE_SIZE
    with _refused("page_size must not be negative"):
        field_rules.page_size(-1)
    with _refused("page_size 201 is above the maximum of 200"):
        field_rules.page_size(201)


def test_opaque_tokens_have_the_shape_the_server_hands_out() -> None:
    token = encode_page_token("threads", at=1, t="x")
    assert field_rules.opaque_token(token, "page_token") == token
    for bad in ("a b", "%00", "x" * 2049, "tok/en", "é"):
        with _refused("page_token is malformed"):
            field_rules.opaque_token(bad, "page_token")


def test_forged_tokens_with_out_of_range_values_are_invalid_not_internal() -> None:
    import base64
    import json

    def forged(payload: dict[str, object]) -> str:
        raw = json.dumps(payload).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    with _refused("cursor is malformed"):
        decode_cursor(forged({"v": 1, "c": 10**30}))
    with _refused("cursor is malformed"):
        decode_cursor(forged({"v": 1, "c": (MAX_SECONDS + 1) * 1_000_000}))
    payload = decode_page_token(forged({"v": 1, "l": "threads", "at": 2**70}), "threads")
    from voxmesh.header.header_tokens import token_int, token_time

    with _refused("page_token is malformed"):
        token_int(payload, "at")
    with _refused("page_token is malformed"):
        token_time({"at": 2**62}, "at")  # fits INT64, but past year 9999


def test_uuid7_is_the_canonical_form_only() -> None:
    fresh = new_uuid7()
    assert field_rules.uuid7(fresh, "message_id") == fresh
    parsed = uuid.UUID(fresh)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    v4 = str(uuid.uuid4())
    for bad in ("hello-x", v4, fresh.upper(), fresh.replace("-", ""), f"{{{fresh}}}", fresh[:-1]):
        with _refused("message_id .* is not a UUIDv7"):
            field_rules.uuid7(bad, "message_id")
    wrong_variant = fresh[:19] + "c" + fresh[20:]
    with _refused("is not a UUIDv7"):
        field_rules.uuid7(wrong_variant, "message_id")
    with _refused("message_id is required"):
        field_rules.uuid7("", "message_id")


def test_finite_numbers() -> None:
    assert field_rules.finite(1.5, "x") == 1.5
    for bad in (math.nan, math.inf, -math.inf):
        with _refused("location.latitude must be a finite number"):
            field_rules.finite(bad, "location.latitude")


# -- whole messages: every field by its type, the path in the message ----------------------


def test_a_valid_request_passes() -> None:
    start = message_pb2.MessageStart(
        message_id=new_uuid7(),
        thread_id="d-0123456789abcdef",
        kind=message_pb2.MESSAGE_KIND_VOICE,
        content_type="audio/ogg",
    )
    start.created_at.GetCurrentTime()
    field_rules.check_fields(pb.SendRequest(start=start, device_id="phone"))
    field_rules.check_fields(pb.ListThreadsRequest())  # nothing set: nothing to check


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (
            pb.SendTextRequest(created_at=Timestamp(seconds=MAX_SECONDS + 1)),
            r"^created_at\.seconds",
        ),
        (
            pb.MuteThreadRequest(muted_until=Timestamp(seconds=2**63 - 1)),
            r"^muted_until\.seconds",
        ),
        (pb.MuteThreadRequest(muted_until=Timestamp(nanos=-1)), r"^muted_until\.nanos -1"),
        (
            pb.StartMessageRequest(
                start=message_pb2.MessageStart(created_at=Timestamp(seconds=-(2**62)))
            ),
            r"^start\.created_at\.seconds",
        ),
        (
            pb.EndMessageRequest(end=message_pb2.MessageEnd(duration=Duration(seconds=-3))),
            r"^end\.duration\.seconds -3",
        ),
        (pb.EndMessageRequest(end=message_pb2.MessageEnd(size_bytes=2**64 - 1)), r"^end\.size"),
        (pb.ReadBodyRequest(origin=7), r"^origin 7 is not a ReadOrigin value"),  # type: ignore[arg-type]
        (pb.ReadBodyRangeRequest(offset=2**63), r"^offset 9223372036854775808 is outside"),
        (pb.ListMessagesRequest(before_seq=2**64 - 1), r"^before_seq"),
        (pb.ListMessagesRequest(page_size=-5), r"^page_size must not be negative"),
        (pb.ListThreadsRequest(page_size=10_000), r"^page_size 10000 is above"),
        (pb.ListThreadsRequest(page_token="not a token!"), r"^page_token is malformed"),
        (pb.ListTimelineRequest(cursor="a" * 3000), r"^cursor is malformed"),
        (pb.AddMembersRequest(user_ids=["ok", "no spaces"]), r"^user_ids\[1\] 'no spaces'"),
        (pb.AddMembersRequest(role=9), r"^role 9 is not a MemberRole value"),  # type: ignore[arg-type]
        (pb.GetThreadRequest(thread_id="../etc"), r"^thread_id '\.\./etc' is malformed"),
        (pb.GetMessageRequest(message_id="hello-x"), r"^message_id 'hello-x' is not a UUIDv7"),
        (
            pb.ForwardMessageRequest(source=message_pb2.MessageRef(message_id=str(uuid.uuid4()))),
            r"^source\.message_id .* is not a UUIDv7",
        ),
        (
            pb.SendRequest(
                start=message_pb2.MessageStart(location=message_pb2.Location(latitude=math.nan))
            ),
            r"^start\.location\.latitude must be a finite number",
        ),
        (pb.SetPresenceRequest(state=42), r"^state 42 is not a PresenceState value"),  # type: ignore[arg-type]
        (
            pb.DeleteMessageRequest(scope=3),  # type: ignore[arg-type]
            r"^scope 3 is not a DeleteScope value",
        ),
        (
            pb.CreateThreadRequest(kind=thread_pb2.THREAD_KIND_GROUP, member_user_ids=["a b"]),
            r"^member_user_ids\[0\]",
        ),
    ],
)
def test_each_bad_field_is_named_with_its_path(request_: object, fragment: str) -> None:
    with _refused(fragment):
        field_rules.check_fields(request_)  # type: ignore[arg-type]


def test_chunks_are_left_to_the_chunk_frame_rule() -> None:
    chunk = body_pb2.Chunk(index=2**64 - 1, offset=2**64 - 1, media_time_ms=2**64 - 1)
    field_rules.check_fields(pb.AppendChunksRequest(chunks=[chunk]))


def test_log_rate_limit_lets_a_burst_through_then_counts_what_it_left_out() -> None:
    clock = [100.0]
    limit = LogRateLimit(burst=3, interval_s=1.0, clock=lambda: clock[0])
    assert [limit.admit("k") for _ in range(5)] == [0, 0, 0, None, None]
    assert limit.admit("other") == 0  # keys are limited apart
    clock[0] += 1.0
    assert limit.admit("k") == 2  # the next window's first line says how many were left out
    assert limit.admit("k") == 0
