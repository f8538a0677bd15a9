"""gRPC-web talkers for the live sweep (system ``voxmesh-grpc-web``): the web app's fallback
uplink, as a browser sends it. Each talker is one browser tab: its own connection to Envoy's
gRPC-web listener (https, trusting the stack's CA, as a browser would), a ``StartMessage``,
then one unary ``AppendChunks`` per MediaRecorder slice (100 ms, 400 bytes: Opus at 32 kb/s)
with one call in flight at a time, slices that pile up meanwhile going together in the next
call (``gateway/web/src/audio/uplink.ts``), and ``EndMessage`` once everything is durable.
Listeners are the same gRPC updates streams as for ``voxmesh``.

The connection is HTTP/1.1 keep-alive (aiohttp), where a browser would negotiate HTTP/2: with
one call in flight per tab they carry the same requests, and aiohttp costs the load generator
~1.1-1.4 ms of CPU per call against httpx's HTTP/2 ~4.3-4.9 ms (sequential AppendChunks calls
through the bench stack's Envoy on a shared 2-core machine), CPU that on a small machine
would show up as the load generator's latency, not the gateway's.

A slice's payload carries the capture time of its first sample (the slice is handed over when
its last sample is captured: hand-over - 100 ms) and the time the call carrying it was sent,
so a listener measures mouth-to-ear and call-sent-to-ear. Not modelled: the Opus encoder's and
MediaRecorder's own delay, the WebM header in the first slice, the listener's playback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TypeVar

import aiohttp
from google.protobuf import duration_pb2
from google.protobuf.message import Message

from bench.bench_parameters import SLICE_BYTES, SLICE_MS
from bench.mesh_client import chunk, stamp_sent
from voxmesh.common.v1 import message_pb2
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.router.v1.router_service_pb2 import DESCRIPTOR as _ROUTER_FILE

ROUTER_SERVICE = _ROUTER_FILE.services_by_name["RouterService"].full_name
CONTENT_TYPE = "audio/webm;codecs=opus"  # what MediaRecorder records in the web app
MAX_BATCH_BYTES = 256 * 1024  # the web app's ChunkUplink.maxBatchBytes
CALL_TIMEOUT_S = 30.0
OnAck = Callable[[int], None]  # the durable chunk count after a call
Reply = TypeVar("Reply", bound=Message)


class GrpcWebError(RuntimeError):
    def __init__(self, method: str, status: int, message: str) -> None:
        super().__init__(f"{method}: grpc-status {status}: {message}")
        self.status = status


def gateway_tls(ca_pem: bytes | None) -> ssl.SSLContext | bool:
    """What a browser would need to trust the gateway: the stack's CA (False: plaintext).
    Its own context: an HTTP/2 client that shared it could set ALPN h2 on it."""
    if ca_pem is None:
        return False
    return ssl.create_default_context(cadata=ca_pem.decode())


def encode_frame(request: Message) -> bytes:
    payload = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def decode_frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """(messages, trailers) of a gRPC-web response body."""
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    offset = 0
    while offset + 5 <= len(body):
        flags, length = body[offset], struct.unpack_from(">I", body, offset + 1)[0]
        data = body[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if flags & 0x80:  # the trailer frame: HTTP/1-style header lines
            for line in data.decode().split("\r\n"):
                key, _, value = line.partition(":")
                if key:
                    trailers[key.strip().lower()] = value.strip()
        else:
            messages.append(data)
    return messages, trailers


class GrpcWebChannel:
    """One browser tab's connection to the gateway, for unary gRPC-web calls (made in a
    running event loop)."""

    def __init__(
        self, base_url: str, metadata: Iterable[tuple[str, str]], tls: ssl.SSLContext | bool
    ) -> None:
        self._base_url = base_url
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls, limit=1),
            timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S),
            trust_env=False,  # loopback only: no proxy from the environment
        )
        self._headers = {
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "x-user-agent": "voxmesh-bench grpc-web",
            "origin": base_url,  # the app and its API are one origin
            **dict(metadata),
        }

    async def unary(self, method: str, request: Message, reply: type[Reply]) -> Reply:
        async with self._session.post(
            f"{self._base_url}/{ROUTER_SERVICE}/{method}",
            data=encode_frame(request),
            headers=self._headers,
        ) as response:
            body = await response.read()
        messages, trailers = decode_frames(body)
        # Trailers-only errors carry the status in the HTTP headers instead.
        status = trailers.get("grpc-status", response.headers.get("grpc-status", "-1"))
        if response.status != 200 or status != "0" or not messages:
            detail = trailers.get("grpc-message", response.headers.get("grpc-message", ""))
            raise GrpcWebError(method, int(status), f"HTTP {response.status} {detail}")
        return reply.FromString(messages[0])

    async def close(self) -> None:
        if not self._session.closed:
            await self._session.close()


class GrpcWebSpeaker:
    """A talker's uplink: slices are queued as the recorder hands them over (never blocking
    it) and posted by one pump, one AppendChunks call at a time."""

    def __init__(
        self, channel: GrpcWebChannel, thread_id: str, message_id: str, on_ack: OnAck
    ) -> None:
        self._channel = channel
        self._thread_id = thread_id
        self._message_id = message_id
        self._on_ack = on_ack
        self._queue: deque[tuple[int, bytearray]] = deque()
        self._pump: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._closing: asyncio.Future[None] | None = None

    async def write(self, index: int, payload: bytes) -> None:
        if self._failure is not None:
            raise self._failure
        self._queue.append((index, bytearray(payload)))
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._post())

    async def _post(self) -> None:
        try:
            while self._queue:
                batch = [self._queue.popleft()]
                size = len(batch[0][1])
                while self._queue and size + len(self._queue[0][1]) <= MAX_BATCH_BYTES:
                    size += len(self._queue[0][1])
                    batch.append(self._queue.popleft())
                sent = time.monotonic_ns()
                chunks = []
                for index, payload in batch:
                    stamp_sent(payload, sent)
                    chunks.append(chunk(index, bytes(payload), SLICE_MS, SLICE_BYTES))
                request = pb.AppendChunksRequest(
                    thread_id=self._thread_id, message_id=self._message_id, chunks=chunks
                )
                reply = await self._channel.unary("AppendChunks", request, pb.AppendChunksResponse)
                self._on_ack(reply.ack.durable_chunk_count)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next write or the end reports it
            self._failure = exc

    async def end(self, frames: int) -> None:
        while self._pump is not None and not self._pump.done():
            await self._pump  # every slice durable (the web app's finish())
        if self._failure is not None:
            raise self._failure
        duration = duration_pb2.Duration()
        duration.FromMilliseconds(frames * SLICE_MS)
        end = message_pb2.MessageEnd(
            chunk_count=frames, size_bytes=frames * SLICE_BYTES, duration=duration
        )
        request = pb.EndMessageRequest(
            thread_id=self._thread_id, message_id=self._message_id, end=end
        )
        await self._channel.unary("EndMessage", request, pb.EndMessageResponse)
        await self._channel.close()

    def abort(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        self._closing = asyncio.ensure_future(self._channel.close())


async def start_speaker(
    channel: GrpcWebChannel, thread_id: str, message_id: str, on_ack: OnAck
) -> GrpcWebSpeaker:
    """StartMessage through the gateway (the talk button pressed), then the uplink."""
    start = message_pb2.MessageStart(
        message_id=message_id,
        thread_id=thread_id,
        kind=message_pb2.MESSAGE_KIND_VOICE,
        content_type=CONTENT_TYPE,
    )
    request = pb.StartMessageRequest(start=start, device_id="browser")
    try:
        await channel.unary("StartMessage", request, pb.StartMessageResponse)
    except BaseException:
        with contextlib.suppress(Exception):
            await channel.close()
        raise
    return GrpcWebSpeaker(channel, thread_id, message_id, on_ack)
