"""Hypothesis strategies for any protobuf message, built from its descriptor.

Structure-aware: every field of the request type gets values of its type, with the edges
that break servers (0, -1, 2^63, 2^64-1, out-of-range timestamps, undefined enum numbers, NaN,
over-long strings, ids in and out of the alphabet), and fields named like ids mostly take
real ids of the world under test, so calls get past "not found" into the logic behind it.
A new RPC, or a new field, is covered without touching this file.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from voxmesh.common.v1 import body_pb2, message_pb2
from voxmesh.core.ids import new_uuid7

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_EDGE_U64 = [0, 1, 2, 3, 200, 2**31, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1]
_EDGE_I64 = [0, 1, -1, 2**63 - 1, -(2**63), 253_402_300_799, 253_402_300_800, -62_135_596_801]
_EDGE_I32 = [0, 1, -1, 50, 200, 201, 2**31 - 1, -(2**31)]
_EDGE_NANOS = [0, 1, -1, 999_999_999, 1_000_000_000, 2**31 - 1, -(2**31)]
_JUNK_STRINGS = [
    "",
    " ",
    "a b",
    "../etc/passwd",
    "x" * 129,
    "é",
    "\x00",
    "hello-x",
    "-leading",
    "d-",
    "%2e%2e",
    "a" * 2049,
]


@dataclass
class IdPool:
    """Real values of the world under test, for fields named like them."""

    thread_ids: list[str] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)
    user_ids: list[str] = field(default_factory=list)
    device_ids: list[str] = field(default_factory=lambda: ["phone", "web"])
    page_tokens: list[str] = field(default_factory=list)
    cursors: list[str] = field(default_factory=list)


def _junk() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(_JUNK_STRINGS), st.text(max_size=24))


def _pick(values: Callable[[], Sequence[str]]) -> st.SearchStrategy[str]:
    def pick(index: int) -> str:
        current = values()  # read at draw time: the world grows as calls create things
        return current[index % len(current)] if current else ""

    return st.integers(0, 2**16).map(pick)


def _uuid_like() -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds(new_uuid7),
        st.builds(lambda: str(uuid.uuid4())),
        st.builds(lambda: new_uuid7().upper()),
    )


_PLAIN_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20
)


def plausible_strings(name: str, pool: IdPool) -> st.SearchStrategy[str]:
    """Values a well-behaved client would send in a field of this name."""
    if name in ("thread_id", "target_thread_id"):
        return _pick(lambda: pool.thread_ids)
    if name == "message_id":
        return st.one_of(_pick(lambda: pool.message_ids), st.builds(new_uuid7))
    if name in ("user_id", "user_ids", "member_user_ids"):
        return _pick(lambda: pool.user_ids)
    if name == "device_id":
        return _pick(lambda: pool.device_ids)
    if name == "page_token":
        return st.one_of(st.just(""), _pick(lambda: pool.page_tokens))
    if name == "cursor":
        return st.one_of(st.just(""), _pick(lambda: pool.cursors))
    if name == "content_type":
        return st.sampled_from(["audio/ogg;codecs=opus", "audio/webm;codecs=opus", "image/png"])
    if name == "push_token":
        return st.sampled_from(["https://push.example/hook", "fcm-token-1"])
    return _PLAIN_TEXT


def hostile_strings(name: str, pool: IdPool) -> st.SearchStrategy[str]:
    """Values of the kind a field of this name holds, and what breaks parsers."""
    extra: list[st.SearchStrategy[str]] = []
    if name in ("thread_id", "target_thread_id"):
        extra = [st.builds(new_uuid7), st.just("d-" + "0" * 32)]
    elif name == "message_id":
        extra = [_uuid_like()]
    elif name in ("page_token", "cursor"):
        extra = [st.sampled_from(["eyJ2IjoxfQ", "eyJ2IjoxLCJjIjotMX0", "eyJ2IjoxLCJjIjoxZTMwfQ"])]
    elif name == "push_token":
        extra = [
            st.sampled_from(
                ["http://127.0.0.1:9/hook", "http://169.254.169.254/", "file:///etc/passwd"]
            )
        ]
    elif not name.endswith(("_id", "_ids")):
        extra = [st.text(max_size=40), st.sampled_from(["x" * 70_000, "line\nbreak", "\u202e"])]
    return st.one_of(st.sampled_from(_JUNK_STRINGS), st.text(max_size=24), *extra)


def _integers(kind: int, hostile: bool) -> st.SearchStrategy[int]:
    unsigned64 = kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)
    if not hostile:
        return st.integers(0, 5) if unsigned64 else st.integers(0, 60)
    if unsigned64:
        return st.one_of(st.sampled_from(_EDGE_U64), st.integers(0, 2**64 - 1))
    if kind in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return st.one_of(st.sampled_from(_EDGE_I64), st.integers(*_INT64))
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.one_of(st.sampled_from([0, 1, 2**32 - 1]), st.integers(0, 2**32 - 1))
    return st.one_of(st.sampled_from(_EDGE_I32), st.integers(*_INT32))


def _timestamp_like(cls: type[Message], hostile: bool) -> st.SearchStrategy[Message]:
    if hostile:
        seconds = st.one_of(st.sampled_from(_EDGE_I64), st.integers(*_INT64))
        nanos = st.one_of(st.sampled_from(_EDGE_NANOS), st.integers(*_INT32))
    else:  # around now, mostly ahead (muted_until must be in the future)
        now = int(time.time())
        seconds = st.integers(now - 86_400, now + 30 * 86_400)
        nanos = st.integers(0, 999_999_999)

    def build(s: int, n: int) -> Message:
        stamp = cls()
        if stamp.DESCRIPTOR.name == "Duration" and not hostile:
            s %= 3600
        stamp.seconds, stamp.nanos = s, n  # type: ignore[attr-defined]
        return stamp

    return st.builds(build, seconds, nanos)


def _chunk_runs() -> st.SearchStrategy[list[Message]]:
    """A plausible run of chunks from index 0 (so calls get past the chunk checks)."""

    def build(count: int, size: int) -> list[Message]:
        return [
            body_pb2.Chunk(index=i, offset=i * size, media_time_ms=i * 20, payload=b"\x01" * size)
            for i in range(count)
        ]

    return st.builds(build, st.integers(1, 4), st.integers(1, 64))


@dataclass
class MessageStrategies:
    """Strategies for every message type, cached by full name."""

    pool: IdPool
    # False: values a well-behaved client sends (calls get deep into the logic); True: each
    # field is mostly plausible, sometimes hostile (several bad fields in one request too).
    hostile: bool = False
    max_depth: int = 4
    _cache: dict[tuple[str, int], st.SearchStrategy[Message]] = field(default_factory=dict)

    def of(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        key = (descriptor.full_name, depth)
        if key not in self._cache:
            self._cache[key] = self._build(descriptor, depth)
        return self._cache[key]

    def _scalar(self, fd: FieldDescriptor, hostile: bool) -> st.SearchStrategy[Any]:
        if fd.type == FieldDescriptor.TYPE_STRING:
            if hostile:
                return hostile_strings(fd.name, self.pool)
            return plausible_strings(fd.name, self.pool)
        if fd.type == FieldDescriptor.TYPE_BYTES:
            if hostile:
                return st.one_of(st.binary(max_size=64), st.just(b"\x00" * 70_000))
            return st.binary(min_size=1, max_size=32)
        if fd.type == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            if not hostile:
                return st.floats(-89.0, 89.0)
            edges = [0.0, -1.0, 90.0, 90.0001, -180.5, 1e308, float("nan"), float("inf")]
            floats = st.floats(width=32) if fd.type == FieldDescriptor.TYPE_FLOAT else st.floats()
            return st.one_of(st.sampled_from(edges), floats)
        if fd.type == FieldDescriptor.TYPE_ENUM:
            assert fd.enum_type is not None
            defined = [v.number for v in fd.enum_type.values]
            if not hostile:
                return st.sampled_from([n for n in defined if n] or defined)
            return st.one_of(st.sampled_from(defined), st.integers(*_INT32))
        return _integers(fd.type, hostile)

    def _value(self, fd: FieldDescriptor, depth: int, hostile: bool) -> st.SearchStrategy[Any]:
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            assert fd.message_type is not None
            return self.of(fd.message_type, depth + 1)
        return self._scalar(fd, hostile)

    def _field(self, fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        plausible = self._value(fd, depth, False)
        if not self.hostile or fd.type == FieldDescriptor.TYPE_MESSAGE:
            return plausible
        return st.one_of(plausible, plausible, self._value(fd, depth, True))

    def _build(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
        cls = message_factory.GetMessageClass(descriptor)
        if descriptor.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
            if self.hostile:
                return st.one_of(_timestamp_like(cls, False), _timestamp_like(cls, True))
            return _timestamp_like(cls, False)
        if depth >= self.max_depth:
            return st.builds(cls)
        if descriptor.full_name == "voxmesh.common.v1.MessageStart" and not self.hostile:
            return _plausible_start(self.pool)
        fields = [(fd, self._field(fd, depth)) for fd in descriptor.fields]
        # Plausible requests set nearly everything; hostile ones leave more out.
        base = 5 if self.hostile else 8

        @st.composite
        def build(draw: st.DrawFn) -> Message:
            message = cls()
            oneof_choice = {
                oneof.name: draw(st.sampled_from([None, *[f.name for f in oneof.fields]]))
                for oneof in descriptor.oneofs
            }
            for fd, values in fields:
                oneof = fd.containing_oneof
                if oneof is not None and oneof_choice[oneof.name] != fd.name:
                    continue
                # Ids are set most of the time; other fields about half.
                odds = 9 if fd.name.endswith("_id") or fd.name in ("start", "source") else base
                if oneof is None and draw(st.integers(0, 9)) >= odds:
                    continue
                if fd.is_repeated:
                    lists = st.lists(values, max_size=3)
                    if fd.message_type is not None and fd.message_type.name == "Chunk":
                        lists = st.one_of(_chunk_runs(), lists)
                    getattr(message, fd.name).extend(draw(lists))
                elif fd.type == FieldDescriptor.TYPE_MESSAGE:
                    getattr(message, fd.name).CopyFrom(draw(values))
                else:
                    setattr(message, fd.name, draw(values))
            return message

        return build()


def _plausible_start(pool: IdPool) -> st.SearchStrategy[Message]:
    """A message start a client would send: the fields its kind needs, and only those."""

    def build(kind: int, thread_id: str, message_id: str, text: str, lat: float) -> Message:
        start = message_pb2.MessageStart(message_id=message_id, thread_id=thread_id, kind=kind)  # type: ignore[arg-type]
        if kind == message_pb2.MESSAGE_KIND_TEXT:
            start.text = text
        elif kind == message_pb2.MESSAGE_KIND_LOCATION:
            start.location.latitude, start.location.longitude = lat, lat
        else:
            start.content_type = "audio/ogg;codecs=opus"
            if kind in (message_pb2.MESSAGE_KIND_FILE, message_pb2.MESSAGE_KIND_IMAGE):
                start.content_type, start.file_name = "image/png", f"{text}.png"
        return start

    return st.builds(
        build,
        st.sampled_from([1, 1, 1, 2, 3, 4, 5]),
        plausible_strings("thread_id", pool),
        plausible_strings("message_id", pool),
        st.text(alphabet="abcdefgh", min_size=1, max_size=8),
        st.floats(-80.0, 80.0),
    )


def requests(descriptor: Descriptor, pool: IdPool) -> st.SearchStrategy[Message]:
    """Half plausible requests, half with hostile fields."""
    return st.one_of(
        MessageStrategies(pool, hostile=False).of(descriptor),
        MessageStrategies(pool, hostile=True).of(descriptor),
    )


def mutated_bytes(valid: bytes) -> st.SearchStrategy[bytes]:
    """Bytes near a valid encoding: flipped, cut, spliced; or no encoding at all."""

    def flip(data: bytes, at: int, mask: int) -> bytes:
        if not data:
            return bytes([mask])
        at %= len(data)
        return data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :]

    def splice(data: bytes, at: int, junk: bytes) -> bytes:
        at = at % (len(data) + 1)
        return data[:at] + junk + data[at:]

    positions = st.integers(0, 10_000)
    return st.one_of(
        st.builds(flip, st.just(valid), positions, st.integers(1, 255)),
        st.builds(lambda d, n: d[: n % (len(d) + 1)], st.just(valid), positions),
        st.builds(splice, st.just(valid), positions, st.binary(min_size=1, max_size=12)),
        st.builds(lambda d, j: d + j, st.just(valid), st.sampled_from([b"\xff", b"\x0a\xff"])),
        st.binary(max_size=64),
        st.sampled_from([b"\xff\xff\xff\xff", b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80"]),
    )
