"""The bare grpc.aio relay baseline: one process forwarding each speaker's client stream to
the server streams subscribed to its topic. Nothing is stored, nothing is decoded (payloads
are raw bytes: no protobuf, no auth, no validation), one uvloop event loop: the floor of a
Python gRPC relay on this machine.

    python -m bench.grpc_relay_baseline --port P     (binds 127.0.0.1 only)

Publish (client stream): first message is the topic, then payloads; answers b"" at the end.
Subscribe (server stream): request is the topic; answers b"" once subscribed, then payloads.
A subscriber that falls QUEUE_MAX payloads behind is dropped (like voxmesh's device queue).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
import uvloop

SERVICE = "bench.Relay"
PUBLISH = f"/{SERVICE}/Publish"
SUBSCRIBE = f"/{SERVICE}/Subscribe"
QUEUE_MAX = 2048
_END = b""


class Relay:
    def __init__(self) -> None:
        self._subscribers: dict[bytes, set[asyncio.Queue[bytes]]] = {}

    async def publish(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        topic: bytes | None = None
        async for payload in requests:
            if topic is None:
                topic = payload
                continue
            for queue in list(self._subscribers.get(topic, ())):
                if queue.qsize() >= QUEUE_MAX:
                    self._drop(topic, queue)
                    continue
                queue.put_nowait(payload)
        return b""

    def _drop(self, topic: bytes, queue: asyncio.Queue[bytes]) -> None:
        subscribers = self._subscribers.get(topic)
        if subscribers is not None:
            subscribers.discard(queue)
        queue.put_nowait(_END)

    async def subscribe(
        self, topic: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._subscribers.setdefault(topic, set()).add(queue)
        try:
            yield b""  # subscribed
            while True:
                payload = await queue.get()
                if payload == _END:
                    return
                yield payload
        finally:
            subscribers = self._subscribers.get(topic)
            if subscribers is not None:
                subscribers.discard(queue)
                if not subscribers:
                    del self._subscribers[topic]


def _handler(relay: Relay) -> grpc.GenericRpcHandler[Any, Any]:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Publish": grpc.stream_unary_rpc_method_handler(relay.publish),
            "Subscribe": grpc.unary_stream_rpc_method_handler(relay.subscribe),
        },
    )


async def serve(port: int, ready_file: str | None) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handler(Relay()),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    if ready_file:
        with open(ready_file, "w") as out:  # noqa: ASYNC230 (once, before any load)
            out.write(str(bound))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-file")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.ready_file))


if __name__ == "__main__":
    main()
