"""Property-based fuzz of every RouterService method on the real stack.

Two kinds of input per method, both built from the proto descriptors (a new RPC is covered
automatically): structure-aware random requests, and raw bytes mutated from a valid
encoding. Every answer must be a precise status (never INTERNAL or UNKNOWN) with a message;
undecodable bytes must be INVALID_ARGUMENT; a refused call must leave nothing behind (the
owner's threads, members, marks and messages as before); and at the end every service is
still the same process, with no traceback in its log.

`make test` runs a bounded number of examples per method. ``VOXMESH_FUZZ_SECONDS=120``
instead fuzzes every method round-robin for that long and prints the counts.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import require_spanner_emulator
from tests.mesh_pki import client_port_channel_sync
from tests.security.proto_strategies import mutated_bytes, requests
from tests.security.router_world import (
    METHODS,
    World,
    assert_alive,
    assert_precise,
    call,
    decodes,
)
from voxmesh.common.v1 import message_pb2
from voxmesh.core.ids import new_uuid7
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.stack.local_stack import LocalStack

pytestmark = pytest.mark.stack

FUZZ_SECONDS = float(os.environ.get("VOXMESH_FUZZ_SECONDS", "0"))
STRUCTURED_EXAMPLES = int(os.environ.get("VOXMESH_FUZZ_EXAMPLES", "8"))
RAW_EXAMPLES = max(1, STRUCTURED_EXAMPLES // 2)


@pytest.fixture(scope="module")
def world(local_stack: LocalStack) -> Iterator[World]:
    require_spanner_emulator()
    built = World(local_stack).build()
    offsets = built.log_offsets()
    pids = built.service_pids()
    yield built
    # Whatever ran: every service is the process it was, and logged no traceback.
    assert_alive(pids)
    assert built.service_pids() == pids
    for name, text in built.log_since(offsets):
        assert "Traceback" not in text, f"{name} logged a traceback:\n{text[-4000:]}"
    built.channel.close()


def _exercise(world: World, method: MethodDescriptor, frames: list[bytes], shown: object) -> None:
    before = world.last_snapshot or world.snapshot()
    outcome = call(world.channel, method, frames, world.metadata())
    world.counts[(method.name, outcome.code.name)] += 1
    if os.environ.get("VOXMESH_FUZZ_VERBOSE"):  # every answer, to see how deep calls get
        print(method.name, outcome.code.name, outcome.details[:150])
    assert_precise(method, outcome, shown)
    if not decodes(method, frames[0]):
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, (method.name, outcome.details)
        assert "does not decode as" in outcome.details
    refused = outcome.code != grpc.StatusCode.OK and not outcome.accepted_a_send
    if refused:
        after = world.snapshot()
        assert after == before, f"{method.name} was refused ({outcome.details}) but changed state"
        world.last_snapshot = after
    else:
        world.last_snapshot = None
        world.still_a_member()


def _run(world: World, method: MethodDescriptor, examples: int, raw: bool) -> None:
    drawn = requests(method.input_type, world.pool)
    more = requests(method.input_type, world.pool)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(data=st.data())
    def property_(data: st.DataObject) -> None:
        request = data.draw(drawn, label="request")
        frames = [request.SerializeToString()]
        if method.client_streaming:
            frames += [
                r.SerializeToString() for r in data.draw(st.lists(more, max_size=2), label="more")
            ]
        if raw:
            frames[0] = data.draw(mutated_bytes(frames[0]), label="bytes")
        _exercise(world, method, frames, frames if raw else request)

    property_()


@pytest.mark.skipif(FUZZ_SECONDS > 0, reason="the timed fuzz runs instead")
@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_structured_requests_get_precise_statuses(world: World, method: MethodDescriptor) -> None:
    _run(world, method, STRUCTURED_EXAMPLES, raw=False)


@pytest.mark.skipif(FUZZ_SECONDS > 0, reason="the timed fuzz runs instead")
@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_mutated_bytes_get_precise_statuses(world: World, method: MethodDescriptor) -> None:
    _run(world, method, RAW_EXAMPLES, raw=True)


@pytest.mark.skipif(FUZZ_SECONDS <= 0, reason="set VOXMESH_FUZZ_SECONDS for the timed fuzz")
def test_timed_fuzz_of_every_method(world: World) -> None:
    offsets = world.log_offsets()
    deadline = time.monotonic() + FUZZ_SECONDS
    # Beside the property-based calls, a flood of undecodable bytes on every method (what
    # once cost a traceback per request).
    junk_counts: Counter[str] = Counter()
    flood = threading.Thread(target=_junk_flood, args=(world, deadline, junk_counts))
    flood.start()
    rounds = 0
    while time.monotonic() < deadline:
        for method in METHODS:
            _run(world, method, 4, raw=False)
            _run(world, method, 2, raw=True)
            if time.monotonic() >= deadline:
                break
        rounds += 1
    flood.join()
    by_code: Counter[str] = Counter()
    for (_, code), count in world.counts.items():
        by_code[code] += count
    print(f"\nfuzzed {sum(by_code.values())} calls in {FUZZ_SECONDS:g} s ({rounds} rounds)")
    print("by status:", dict(by_code.most_common()))
    for method in METHODS:
        row = {c: n for (m, c), n in sorted(world.counts.items()) if m == method.name}
        print(f"  {method.name}: {row}")
    print(f"junk flood: {sum(junk_counts.values())} calls, by status: {dict(junk_counts)}")
    logged = dict(world.log_since(offsets))
    print("log bytes written meanwhile:", {n: len(t.encode()) for n, t in logged.items()})
    for name, text in logged.items():
        events = Counter(_event(line) for line in text.splitlines())
        print(f"  {name} log lines by event:", dict(events.most_common(6)))
    assert not {c for c in by_code if c in ("INTERNAL", "UNKNOWN")}
    assert set(junk_counts) == {"INVALID_ARGUMENT"}, junk_counts


def _event(line: str) -> str:
    try:
        return str(json.loads(line).get("event", "?"))
    except ValueError:
        return line[:60]


def _junk_flood(world: World, deadline: float, counts: Counter[str]) -> None:
    """Undecodable requests, round-robin over every method, until ``deadline``."""
    channel = client_port_channel_sync(
        world.settings, f"{world.settings.host}:{world.settings.router.port}"
    )
    # Many users, each well within the per-user call limit (a limit is a precise answer
    # too, but this flood is about decoding).
    tokens = [world.metadata(f"junk-{n}") for n in range(500)]
    try:
        index = 0
        while time.monotonic() < deadline:
            method = METHODS[index % len(METHODS)]
            junk = b"\xff\xff\xff" + os.urandom(index % 16)
            # Refused at once, however loaded the machine: wait for the status.
            outcome = call(channel, method, [junk], tokens[index % len(tokens)], follow_s=10)
            counts[outcome.code.name] += 1
            index += 1
    finally:
        channel.close()


@pytest.mark.skipif(FUZZ_SECONDS > 0, reason="the timed fuzz runs instead")
def test_out_of_range_timestamps_are_refused_naming_the_field(world: World) -> None:
    """What once reached the header store and came back INTERNAL."""
    year_10000 = Timestamp(seconds=253_402_300_800)
    start = message_pb2.MessageStart(
        message_id=new_uuid7(),
        thread_id=world.group_id,
        kind=message_pb2.MESSAGE_KIND_VOICE,
        content_type="audio/ogg",
        created_at=year_10000,
    )
    cases = [
        (
            "SendText",
            pb.SendTextRequest(
                message_id=new_uuid7(),
                thread_id=world.group_id,
                device_id="phone",
                text="hi",
                created_at=year_10000,
            ),
            "created_at.seconds",
        ),
        (
            "StartMessage",
            pb.StartMessageRequest(start=start, device_id="phone"),
            "start.created_at",
        ),
        (
            "MuteThread",
            pb.MuteThreadRequest(
                thread_id=world.group_id, muted=True, muted_until=Timestamp(seconds=2**63 - 1)
            ),
            "muted_until.seconds",
        ),
        (
            "MuteThread",
            pb.MuteThreadRequest(
                thread_id=world.group_id,
                muted=True,
                muted_until=Timestamp(seconds=2_000_000_000, nanos=-1),
            ),
            "muted_until.nanos",
        ),
    ]
    before = world.snapshot()
    for name, request, field in cases:
        method = next(m for m in METHODS if m.name == name)
        outcome = call(world.channel, method, [request.SerializeToString()], world.metadata())
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, (name, outcome)
        assert outcome.details.startswith(field), (name, outcome.details)
    assert world.snapshot() == before
    world.last_snapshot = None
