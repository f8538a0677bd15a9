"""Per-chunk cost of tracing on the live path with tracing off (`python -m bench.tracing_overhead`).

With tracing off no gRPC interceptor is installed (server or channel) and no span is made;
what remains on the chunk path is what the relay does per fan-out to a peer router: choosing
the entry's traceparent (never for live chunks) and the field itself, and on the peer the
check of that field. This times exactly those steps against the same entry without them.
"""

from __future__ import annotations

import timeit

from voxmesh.common.v1 import body_pb2, update_pb2
from voxmesh.core.telemetry import client_interceptors, current_traceparent, server_interceptors
from voxmesh.router.v1 import router_peer_service_pb2 as peer_pb

ROUNDS = 200_000


def main() -> None:
    assert not server_interceptors() and not client_interceptors(), "tracing must be off"
    event = update_pb2.UpdateEvent(
        live_chunks=update_pb2.LiveChunks(
            thread_id="t" * 36,
            message_id="m" * 36,
            chunks=[body_pb2.Chunk(index=7, offset=1120, payload=b"\x00" * 160)],
        )
    ).SerializeToString()
    users = ["user-1", "user-2"]

    def without() -> peer_pb.RelayEntry:
        return peer_pb.RelayEntry(user_ids=users, event=event, exclude_device_id="", ephemeral=True)

    def with_field(ephemeral: bool = True) -> peer_pb.RelayEntry:
        traceparent = "" if ephemeral else current_traceparent()
        return peer_pb.RelayEntry(
            user_ids=users,
            event=event,
            exclude_device_id="",
            ephemeral=ephemeral,
            traceparent=traceparent,
        )

    entry = with_field()

    def check() -> bool:
        return entry.ephemeral or not entry.traceparent

    base = min(timeit.repeat(without, number=ROUNDS, repeat=5)) / ROUNDS
    traced = min(timeit.repeat(with_field, number=ROUNDS, repeat=5)) / ROUNDS
    receive = min(timeit.repeat(check, number=ROUNDS, repeat=5)) / ROUNDS
    print(f"relay entry for a live chunk, before: {base * 1e9:7.0f} ns")
    print(f"relay entry for a live chunk, now:    {traced * 1e9:7.0f} ns")
    print(f"peer-side traceparent check:          {receive * 1e9:7.0f} ns")
    added = traced - base + receive
    print(f"added per chunk per peer link:        {added * 1e9:7.0f} ns")


if __name__ == "__main__":
    main()
