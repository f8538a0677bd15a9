"""A hostile client in its own process: floods a router with calls and chunks, ignoring every
RESOURCE_EXHAUSTED and its retry delay, then prints what it got as JSON.

    python -m tests.identity.flood_client ADDRESS TOKEN THREAD_ID DEVICE_ID SECONDS [CA_FILE]

With CA_FILE the router's client port is reached over TLS trusting it (plaintext without).
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time

import grpc
import uvloop

from tests.voxmesh_client import uuid7
from voxmesh.common.v1 import body_pb2, message_pb2
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.router.v1 import router_service_pb2_grpc as pb_grpc

# Between two requests of one task: the flood is still ~10x every limit it meets, without
# taking a whole core of the (shared, 2-core) test machine for the flooder itself.
PAUSE_S = 0.01


def _channel(address: str, ca_file: str) -> grpc.aio.Channel:
    if not ca_file:
        return grpc.aio.insecure_channel(address)
    with open(ca_file, "rb") as fh:
        credentials = grpc.ssl_channel_credentials(root_certificates=fh.read())
    return grpc.aio.secure_channel(address, credentials)


async def flood(
    address: str, token: str, thread_id: str, device_id: str, seconds: float, ca_file: str = ""
) -> None:
    metadata = (("authorization", f"Bearer {token}"),)
    codes: collections.Counter[str] = collections.Counter()
    retry_info = 0
    examples: dict[str, str] = {}
    deadline = time.monotonic() + seconds

    def count(error: grpc.aio.AioRpcError | None, what: str) -> None:
        if error is None:
            codes[f"{what}:OK"] += 1
        else:
            record(what, error.code(), error.trailing_metadata(), error.details() or "")

    def record(what: str, code: grpc.StatusCode, trailers: object, details: str = "") -> None:
        nonlocal retry_info
        codes[f"{what}:{code.name}"] += 1
        examples.setdefault(code.name, details)
        if any(k == "grpc-status-details-bin" for k, _ in trailers or ()):  # type: ignore[attr-defined]
            retry_info += 1

    async with _channel(address, ca_file) as channel:
        stub = pb_grpc.RouterServiceStub(channel)

        async def calls() -> None:
            while time.monotonic() < deadline:
                try:
                    await stub.Discover(pb.DiscoverRequest(user_id="flood"), metadata=metadata)
                    count(None, "call")
                except grpc.aio.AioRpcError as exc:
                    count(exc, "call")
                await asyncio.sleep(PAUSE_S)

        async def chunks() -> None:
            payload = b"\x00" * 160
            while time.monotonic() < deadline:
                start = message_pb2.MessageStart(
                    message_id=uuid7(),
                    thread_id=thread_id,
                    kind=message_pb2.MESSAGE_KIND_VOICE,
                    content_type="audio/ogg",
                )
                call = stub.Send(metadata=metadata)  # type: ignore[call-arg]
                index = 0
                try:
                    await call.write(pb.SendRequest(start=start, device_id=device_id))
                    while time.monotonic() < deadline:
                        frame = [
                            body_pb2.Chunk(index=index + i, payload=payload) for i in range(10)
                        ]
                        index += 10
                        await call.write(pb.SendRequest(chunks=frame))
                        await asyncio.sleep(PAUSE_S)
                    call.cancel()
                    count(None, "send")
                except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
                    record(
                        "send",
                        await call.code(),
                        await call.trailing_metadata(),
                        await call.details(),
                    )

        await asyncio.gather(*(calls() for _ in range(4)), chunks())
    print(json.dumps({"codes": dict(codes), "retry_info": retry_info, "examples": examples}))


if __name__ == "__main__":
    address, token, thread_id, device_id, seconds = sys.argv[1:6]
    ca_file = sys.argv[6] if len(sys.argv) > 6 else ""
    uvloop.run(flood(address, token, thread_id, device_id, float(seconds), ca_file))
