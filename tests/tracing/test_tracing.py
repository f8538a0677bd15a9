"""Tracing on the real stack: one trace for a voice message, across processes.

Two routers (so the message crosses a router peer link), a header node and a body node, all
exporting over OTLP/gRPC to a receiver this test runs. The sender's call carries a
``traceparent`` as Envoy forwards it; the test checks that the router, header store and body
store spans all land in that one trace, that the peer router's delivery joins it, and that
the router's log lines carry the trace in Cloud Logging's fields.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.conftest import require_spanner_emulator
from tests.ports import stack_overrides
from tests.voxmesh_client import Device, collect_updates, send_voice, uuid7, voice_chunks
from voxmesh.common.v1 import thread_pb2
from voxmesh.core.ring_membership import RingMembership
from voxmesh.core.settings import Settings, load_settings
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.stack.local_stack import LocalStack

pytestmark = pytest.mark.stack


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver (what an OpenTelemetry Collector listens with)."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                service = attributes.get("service.name", "")
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append(
                            ReceivedSpan(
                                service,
                                span.name,
                                span.trace_id.hex(),
                                span.span_id.hex(),
                                span.parent_span_id.hex(),
                            )
                        )
        return trace_service_pb2.ExportTraceServiceResponse()

    def in_trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]


@pytest.fixture(scope="module")
def otlp() -> Iterator[tuple[OtlpReceiver, int]]:
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, port
    server.stop(None)


@pytest.fixture(scope="module")
def traced_stack(
    tmp_path_factory: pytest.TempPathFactory, otlp: tuple[OtlpReceiver, int]
) -> Iterator[LocalStack]:
    require_spanner_emulator()
    overrides: dict[str, Any] = stack_overrides(str(tmp_path_factory.mktemp("traced")))
    overrides["router"]["instances"] = 2
    # Importing OpenTelemetry adds to each service's start; a loaded machine needs room.
    overrides["supervisor"]["ready_timeout_s"] = 120.0
    overrides["tracing"] = {
        "enabled": True,
        "otlp_endpoint": f"127.0.0.1:{otlp[1]}",
        "gcp_project": "voxmesh-trace-test",
    }
    with LocalStack(load_settings(overrides=overrides)) as stack:
        yield stack


@pytest.fixture
async def rings(traced_stack: LocalStack) -> AsyncIterator[RingMembership]:
    membership = RingMembership(traced_stack.settings, ("router",))
    await membership.start(None)
    await membership.wait_loaded()
    yield membership
    await membership.close()


def _users_on_two_routers(rings: RingMembership) -> tuple[str, str, str, str]:
    """(alice, her home router, bob, his home router) with different homes."""
    ring = rings.ring("router")
    suffix = secrets.token_hex(3)
    alice = f"trace-alice-{suffix}"
    alice_home = ring.home(alice)
    by_id = {m.node_id: m.address for m in rings.members("router")}
    assert alice_home in by_id, "two routers in the ring"
    for n in range(200):
        bob = f"trace-bob-{suffix}-{n}"
        bob_home = ring.home(bob)
        if bob_home is not None and bob_home != alice_home:
            return alice, by_id[alice_home], bob, by_id[bob_home]
    raise AssertionError("no user homed on the other router")


class TracedDevice(Device):
    """A device whose calls carry a W3C traceparent, as Envoy forwards a browser's."""

    traceparent = ""

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (*super().metadata, ("traceparent", self.traceparent))


# (service, span) pairs one voice message must leave in its trace, across four processes.
EXPECTED = {
    ("voxmesh-router", "/voxmesh.router.v1.RouterService/Send"),
    ("voxmesh-router", "/voxmesh.header.v1.HeaderService/StartMessage"),
    ("voxmesh-header", "/voxmesh.header.v1.HeaderService/StartMessage"),
    ("voxmesh-header", "/voxmesh.header.v1.HeaderService/CompleteMessage"),
    # The body link outlives messages: the first entry of this one carried its trace.
    ("voxmesh-body", "voxmesh.body.AppendEntry"),
    ("voxmesh-body", "/voxmesh.body.v1.BodyService/FinishBody"),
    # The peer link likewise: Bob's router delivered the start in the same trace.
    ("voxmesh-router", "voxmesh.router.RelayDeliver"),
}


async def _wait_for(receiver: OtlpReceiver, trace_id: str) -> list[Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        spans = receiver.in_trace(trace_id)
        if EXPECTED <= {(s.service, s.name) for s in spans}:
            return spans
        await asyncio.sleep(0.2)
    found = {(s.service, s.name) for s in receiver.in_trace(trace_id)}
    raise AssertionError(f"trace {trace_id} lacks {sorted(EXPECTED - found)}; has {sorted(found)}")


async def test_one_trace_spans_router_header_and_body(
    traced_stack: LocalStack, rings: RingMembership, otlp: tuple[OtlpReceiver, int]
) -> None:
    settings: Settings = traced_stack.settings
    receiver = otlp[0]
    alice_id, alice_router, bob_id, bob_router = _users_on_two_routers(rings)
    alice = TracedDevice(settings, alice_id, "phone", alice_router)
    bob = Device(settings, bob_id, "phone", bob_router)
    try:
        reply = await alice.call(
            "CreateThread",
            pb.CreateThreadRequest(kind=thread_pb2.THREAD_KIND_GROUP, member_user_ids=[bob_id]),
        )
        thread_id = reply.thread.thread_id
        updates = bob.updates()
        await collect_updates(updates, lambda e: e.HasField("caught_up"))

        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        alice.traceparent = f"00-{trace_id}-{parent_id}-01"
        message_id = uuid7()
        heard = asyncio.create_task(
            collect_updates(
                updates,
                lambda e: (
                    e.HasField("message_state_changed")
                    and e.message_state_changed.header.message_id == message_id
                ),
            )
        )
        await send_voice(alice, thread_id, message_id, voice_chunks(20))
        await asyncio.wait_for(heard, 30)
        updates.cancel()

        spans = await _wait_for(receiver, trace_id)
        names = {(s.service, s.name) for s in spans}
        send = [s for s in spans if s.name == "/voxmesh.router.v1.RouterService/Send"]
        assert len(send) == 1 and send[0].service == "voxmesh-router", names
        # The trace starts from the caller's traceparent: Send's parent is the caller's span.
        assert send[0].parent_span_id == parent_id
        delivered = [s for s in spans if s.name == "voxmesh.router.RelayDeliver"]
        appended = [s for s in spans if s.name == "voxmesh.body.AppendEntry"]
        span_ids = {s.span_id for s in spans}
        assert all(s.parent_span_id in span_ids for s in delivered + appended), "children"
        # The long-lived links themselves are in no message's trace.
        assert not [s for s in spans if s.name.endswith(("/Relay", "/AppendLink"))], names

        # A refused call logs "rpc refused" in the caller's trace, in Cloud Logging's fields.
        refused_trace = secrets.token_hex(16)
        alice.traceparent = f"00-{refused_trace}-{secrets.token_hex(8)}-01"
        call = alice.send_call()
        await call.write(pb.SendRequest(device_id="phone"))
        await call.done_writing()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in call:
                pass
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        wanted = f"projects/voxmesh-trace-test/traces/{refused_trace}"
        lines = await _log_lines_with(traced_stack, "logging.googleapis.com/trace", wanted)
        assert lines[0]["severity"] == "INFO" and lines[0]["message"] == "rpc refused"
        assert len(lines[0]["logging.googleapis.com/spanId"]) == 16
    finally:
        await alice.close()
        await bob.close()


async def _log_lines_with(stack: LocalStack, key: str, value: str) -> list[dict[str, Any]]:
    logs = stack.paths.logs
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = []
        for path in logs.glob("router*.log"):
            for line in path.read_text().splitlines():
                if value in line:
                    record = json.loads(line)
                    if record.get(key) == value:
                        found.append(record)
        if found:
            return found
        await asyncio.sleep(0.1)
    listing = {p.name: os.path.getsize(p) for p in logs.glob("*.log")}
    raise AssertionError(f"no router log line has {key}={value} ({listing})")
