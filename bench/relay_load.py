"""The live relay load generator: one process (of several) driving speakers and listeners.

The same workload against each system: every speaker has its own thread (topic) with
``listeners`` listening devices of other users; speakers stream one 160-byte frame every
20 ms, stamped with the send time (CLOCK_MONOTONIC, shared by every process on the machine)
just before it is handed to the stream; a listener's latency for a frame is its arrival
time minus that stamp. Frames of the warm-up are not measured. Every loop is bounded: by the
frame count, and by deadlines the orchestrator cannot miss (it kills a late process).

Systems: ``voxmesh`` (Send and Updates on the router), ``grpc-relay`` (the bare grpc.aio
relay of bench.grpc_relay_baseline) and ``redis-relay`` (PUBLISH per frame, one SUBSCRIBE
connection per listener); ``voxmesh-webrtc`` and ``voxmesh-grpc-web`` are voxmesh with the
browser's talkers (bench.webrtc_load, bench.grpc_web_load). A system's framing
(bench_parameters.framing) sets the frame interval and size: 100 ms recorder slices for
gRPC-web, whose stamp is the capture of the slice's first sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

import grpc
import redis.asyncio as aioredis
import uvloop

from bench.bench_parameters import FRAME_BYTES, Framing, System, framing
from bench.grpc_relay_baseline import PUBLISH, SUBSCRIBE
from bench.grpc_web_load import GrpcWebChannel, gateway_tls
from bench.grpc_web_load import start_speaker as start_grpc_web_speaker
from bench.mesh_client import (
    CHANNEL_OPTIONS,
    RouterChannels,
    TokenCache,
    chunk,
    read_sent,
    read_stamp,
    stamped_payload,
    uuid7,
)
from bench.webrtc_load import start_speaker, unwrap_pages
from voxmesh.common.v1 import message_pb2, thread_pb2
from voxmesh.core.settings import AuthSettings
from voxmesh.router.v1 import router_service_pb2 as pb

OnPayload = Callable[[bytes], bool]  # returns True once the listener has its last frame
OnAck = Callable[[int], None]


@dataclass(frozen=True)
class LoadTarget:
    system: System
    addresses: tuple[str, ...]  # routers (voxmesh), the relay, or the Redis server
    auth: AuthSettings | None = None
    ca_pem: bytes | None = None  # the routers' client ports speak TLS with this CA (voxmesh)
    gateway_url: str | None = None  # Envoy's gRPC-web listener (voxmesh-grpc-web talkers)


@dataclass(frozen=True)
class StepSpec:
    label: str  # unique per step and process: names users, threads, topics
    target: LoadTarget
    threads: tuple[int, ...]  # this process's threads (global indexes)
    total_threads: int  # in the whole step (spreads the speakers' phases evenly)
    listeners: int
    warmup_s: float
    measure_s: float
    drain_s: float
    channels: int
    setup_concurrency: int
    setup_timeout_s: float
    go_timeout_s: float

    @property
    def framing(self) -> Framing:
        return framing(self.target.system)

    @property
    def warm_frames(self) -> int:
        return round(self.warmup_s * 1000 / self.framing.ms)

    @property
    def measured_frames(self) -> int:
        return round(self.measure_s * 1000 / self.framing.ms)

    @property
    def total_frames(self) -> int:
        return self.warm_frames + self.measured_frames

    def measured(self, index: int) -> bool:
        return self.warm_frames <= index < self.total_frames


@dataclass
class StepResult:
    latencies_ms: list[float] = field(default_factory=list)  # stamp -> listener
    sent_latencies_ms: list[float] = field(default_factory=list)  # slices: call sent -> listener
    ack_latencies_ms: list[float] = field(default_factory=list)
    generator_lag_ms: list[float] = field(default_factory=list)  # frame sent after its due time
    write_block_ms: list[float] = field(default_factory=list)  # awaiting the stream (backpressure)
    loop_lag_ms: list[float] = field(default_factory=list)  # this process's event loop delay
    threads_ready: int = 0
    expected: int = 0  # measured frames * listeners * threads ready
    received: int = 0  # measured frames that reached a listener
    errors: list[str] = field(default_factory=list)
    setup_s: float = 0.0
    cpu_s: float = 0.0


class Speaker(Protocol):
    async def write(self, index: int, payload: bytes) -> None: ...

    async def end(self, frames: int) -> None: ...

    def abort(self) -> None: ...


class RelayClient(Protocol):
    def listen(self, thread: int, listener: int, ready: asyncio.Event) -> AsyncIterator[bytes]:
        """Payloads arriving for this listener; ``ready`` is set once it receives live data."""
        ...

    async def prepare_thread(self, thread: int) -> None: ...

    async def speaker(self, thread: int, on_ack: OnAck) -> Speaker: ...

    async def close(self) -> None: ...


# -- voxmesh --------------------------------------------------------------------------------


class _VoxmeshSpeaker:
    def __init__(self, call: Any, on_ack: OnAck) -> None:
        self._call = call
        self._on_ack = on_ack
        self._reader = asyncio.create_task(self._read_acks())

    async def _read_acks(self) -> None:
        while True:
            response = await self._call.read()
            if response is grpc.aio.EOF:  # type: ignore[attr-defined]
                return
            if response.HasField("ack"):
                self._on_ack(response.ack.durable_chunk_count)

    async def write(self, index: int, payload: bytes) -> None:
        await self._call.write(pb.SendRequest(chunks=[chunk(index, payload)]))

    async def end(self, frames: int) -> None:
        end = message_pb2.MessageEnd(chunk_count=frames, size_bytes=frames * FRAME_BYTES)
        await self._call.write(pb.SendRequest(end=end))
        await self._call.done_writing()
        await self._reader

    def abort(self) -> None:
        self._reader.cancel()
        self._call.cancel()


class VoxmeshClient:
    def __init__(self, label: str, target: LoadTarget, channels: int, listeners: int) -> None:
        assert target.auth is not None
        self._label = label
        self._listeners = listeners
        self._tokens = TokenCache(target.auth)
        self._pool = RouterChannels(list(target.addresses), channels, target.ca_pem)
        self._threads: dict[int, str] = {}
        self._calls: list[Any] = []

    def _user(self, thread: int, role: str) -> str:
        return f"{self._label}-t{thread}-{role}"

    async def prepare_thread(self, thread: int) -> None:
        speaker = self._user(thread, "s")
        metadata = self._tokens.metadata(speaker)
        stub = await self._pool.home_stub(speaker, metadata, thread)
        reply = await stub.CreateThread(
            pb.CreateThreadRequest(
                kind=thread_pb2.THREAD_KIND_GROUP,
                title=f"bench {thread}",
                member_user_ids=[self._user(thread, f"l{j}") for j in range(self._listeners)],
            ),
            metadata=metadata,
            timeout=60,
        )
        self._threads[thread] = str(reply.thread.thread_id)

    async def listen(
        self, thread: int, listener: int, ready: asyncio.Event
    ) -> AsyncIterator[bytes]:
        user = self._user(thread, f"l{listener}")
        metadata = self._tokens.metadata(user)
        stub = await self._pool.home_stub(user, metadata, thread * 7 + listener + 1)
        call = stub.Updates(pb.UpdatesRequest(device_id="phone"), metadata=metadata)
        self._calls.append(call)
        async for frame in call:
            for event in frame.events:
                if event.HasField("caught_up"):
                    ready.set()
                elif event.HasField("live_chunks"):
                    for received in event.live_chunks.chunks:
                        yield received.payload

    async def speaker(self, thread: int, on_ack: OnAck) -> Speaker:
        user = self._user(thread, "s")
        metadata = self._tokens.metadata(user)
        call = (await self._pool.home_stub(user, metadata, thread)).Send(metadata=metadata)
        self._calls.append(call)
        start = message_pb2.MessageStart(
            message_id=uuid7(),
            thread_id=self._threads[thread],
            kind=message_pb2.MESSAGE_KIND_VOICE,
            content_type="audio/ogg;codecs=opus",
        )
        await call.write(pb.SendRequest(start=start, device_id="phone"))
        accepted = await call.read()
        eof = grpc.aio.EOF  # type: ignore[attr-defined]
        if accepted is eof or not accepted.HasField("accepted"):
            raise RuntimeError(f"Send was not accepted: {accepted!r}")
        return _VoxmeshSpeaker(call, on_ack)

    async def close(self) -> None:
        for call in self._calls:
            call.cancel()
        await self._pool.close()


# -- the bare grpc.aio relay ----------------------------------------------------------------


class _GrpcSpeaker:
    def __init__(self, call: Any) -> None:
        self._call = call

    async def write(self, index: int, payload: bytes) -> None:
        await self._call.write(payload)

    async def end(self, frames: int) -> None:
        await self._call.done_writing()
        await self._call

    def abort(self) -> None:
        self._call.cancel()


class GrpcRelayClient:
    def __init__(self, label: str, target: LoadTarget, channels: int) -> None:
        self._label = label
        self._channels = [
            grpc.aio.insecure_channel(target.addresses[0], options=CHANNEL_OPTIONS)
            for _ in range(max(1, channels))
        ]
        self._calls: list[Any] = []

    def _topic(self, thread: int) -> bytes:
        return f"{self._label}-t{thread}".encode()

    def _channel(self, index: int) -> grpc.aio.Channel:
        return self._channels[index % len(self._channels)]

    async def prepare_thread(self, thread: int) -> None:
        return None

    async def listen(
        self, thread: int, listener: int, ready: asyncio.Event
    ) -> AsyncIterator[bytes]:
        subscribe = self._channel(thread * 7 + listener + 1).unary_stream(
            SUBSCRIBE, request_serializer=None, response_deserializer=None
        )
        call: Any = subscribe(self._topic(thread))
        self._calls.append(call)
        async for payload in call:
            if not payload:
                ready.set()  # subscribed
                continue
            yield payload

    async def speaker(self, thread: int, on_ack: OnAck) -> Speaker:
        publish = self._channel(thread).stream_unary(
            PUBLISH, request_serializer=None, response_deserializer=None
        )
        call: Any = publish()  # type: ignore[call-arg]  # written to, not iterated
        self._calls.append(call)
        await call.write(self._topic(thread))
        return _GrpcSpeaker(call)

    async def close(self) -> None:
        for call in self._calls:
            call.cancel()
        for channel in self._channels:
            await channel.close(None)


# -- the Redis pub/sub relay ----------------------------------------------------------------


class _RedisSpeaker:
    def __init__(self, client: aioredis.Redis, channel: str) -> None:
        self._client = client
        self._channel = channel

    async def write(self, index: int, payload: bytes) -> None:
        await self._client.publish(self._channel, payload)

    async def end(self, frames: int) -> None:
        return None

    def abort(self) -> None:
        return None


class RedisRelayClient:
    def __init__(self, label: str, target: LoadTarget, channels: int) -> None:
        host, _, port = target.addresses[0].rpartition(":")
        self._label = label
        self._host, self._port = host, int(port)
        # Speakers share a bounded pool; each listener holds its own subscription connection.
        self._publisher = aioredis.Redis(host=host, port=int(port), max_connections=256)
        self._subscribers: list[aioredis.Redis] = []

    def _channel(self, thread: int) -> str:
        return f"{self._label}-t{thread}"

    async def prepare_thread(self, thread: int) -> None:
        return None

    async def listen(
        self, thread: int, listener: int, ready: asyncio.Event
    ) -> AsyncIterator[bytes]:
        client = aioredis.Redis(host=self._host, port=self._port)
        self._subscribers.append(client)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self._channel(thread))
            async for message in pubsub.listen():
                if message["type"] == "subscribe":
                    ready.set()
                elif message["type"] == "message":
                    yield message["data"]
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]

    async def speaker(self, thread: int, on_ack: OnAck) -> Speaker:
        return _RedisSpeaker(self._publisher, self._channel(thread))

    async def close(self) -> None:
        for client in self._subscribers:
            with contextlib.suppress(Exception):
                await client.aclose()
        await self._publisher.aclose()


class WebRtcVoxmeshClient(VoxmeshClient):
    """Speakers talk over WebRTC (bench.webrtc_load); listeners are the same updates streams."""

    async def listen(
        self, thread: int, listener: int, ready: asyncio.Event
    ) -> AsyncIterator[bytes]:
        async for packet in unwrap_pages(super().listen(thread, listener, ready)):
            yield packet

    async def speaker(self, thread: int, on_ack: OnAck) -> Speaker:
        user = self._user(thread, "s")
        metadata = self._tokens.metadata(user)
        stub = await self._pool.home_stub(user, metadata, thread)
        return await start_speaker(stub, metadata, self._threads[thread], uuid7(), on_ack)


class GrpcWebVoxmeshClient(VoxmeshClient):
    """Speakers are browsers on the gRPC-web uplink through Envoy (bench.grpc_web_load), one
    connection each; listeners are the same updates streams (gRPC, on the home router)."""

    def __init__(self, label: str, target: LoadTarget, channels: int, listeners: int) -> None:
        super().__init__(label, target, channels, listeners)
        assert target.gateway_url is not None
        self._gateway_url = target.gateway_url
        self._tls = gateway_tls(target.ca_pem)
        self._tabs: list[GrpcWebChannel] = []

    async def speaker(self, thread: int, on_ack: OnAck) -> Speaker:
        user = self._user(thread, "s")
        tab = GrpcWebChannel(self._gateway_url, self._tokens.metadata(user), self._tls)
        self._tabs.append(tab)
        return await start_grpc_web_speaker(tab, self._threads[thread], uuid7(), on_ack)

    async def close(self) -> None:
        for tab in self._tabs:
            with contextlib.suppress(Exception):
                await tab.close()
        await super().close()


def make_client(spec: StepSpec) -> RelayClient:
    if spec.target.system == "voxmesh-grpc-web":
        return GrpcWebVoxmeshClient(spec.label, spec.target, spec.channels, spec.listeners)
    if spec.target.system == "voxmesh-webrtc":
        return WebRtcVoxmeshClient(spec.label, spec.target, spec.channels, spec.listeners)
    if spec.target.system == "voxmesh":
        return VoxmeshClient(spec.label, spec.target, spec.channels, spec.listeners)
    if spec.target.system == "grpc-relay":
        return GrpcRelayClient(spec.label, spec.target, spec.channels)
    return RedisRelayClient(spec.label, spec.target, spec.channels)


# -- the step -------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


class StepRun:
    def __init__(self, spec: StepSpec, client: RelayClient) -> None:
        self.spec = spec
        self.client = client
        self.result = StepResult()
        self.t0_ns = 0
        self._listen_tasks: list[asyncio.Task[None]] = []
        self._speakers: dict[int, Speaker] = {}
        self._sent_ns: dict[int, list[int]] = {}

    def _error(self, where: str, exc: BaseException) -> None:
        if len(self.result.errors) < 50:
            self.result.errors.append(f"{where}: {_describe(exc)}")

    async def _listener(self, thread: int, listener: int, ready: asyncio.Event) -> None:
        spec, result = self.spec, self.result
        last = spec.total_frames - 1
        latencies = result.latencies_ms
        sent_latencies = result.sent_latencies_ms if spec.framing.recorder_slices else None
        try:
            async for payload in self.client.listen(thread, listener, ready):
                now = time.monotonic_ns()
                stamp, index = read_stamp(payload)
                if spec.warm_frames <= index < spec.total_frames:
                    latencies.append((now - stamp) / 1e6)
                    if sent_latencies is not None:
                        sent_latencies.append((now - read_sent(payload)) / 1e6)
                    result.received += 1
                if index >= last:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._error(f"listener t{thread}/{listener}", exc)

    async def _prepare(self, thread: int, gate: asyncio.Semaphore) -> None:
        async with gate:
            await self.client.prepare_thread(thread)
            readies = []
            for listener in range(self.spec.listeners):
                ready = asyncio.Event()
                readies.append(ready)
                self._listen_tasks.append(
                    asyncio.create_task(self._listener(thread, listener, ready))
                )
            for ready in readies:
                await ready.wait()
            self._speakers[thread] = await self.client.speaker(thread, self._ack_handler(thread))

    def _ack_handler(self, thread: int) -> OnAck:
        sent = self._sent_ns.setdefault(thread, [0] * self.spec.total_frames)
        acked = [0]

        def on_ack(count: int) -> None:
            now = time.monotonic_ns()
            for index in range(acked[0], min(count, len(sent))):
                if self.spec.measured(index) and sent[index]:
                    self.result.ack_latencies_ms.append((now - sent[index]) / 1e6)
            acked[0] = max(acked[0], count)

        return on_ack

    async def setup(self) -> None:
        began = time.monotonic()
        gate = asyncio.Semaphore(self.spec.setup_concurrency)
        tasks = {t: asyncio.create_task(self._prepare(t, gate)) for t in self.spec.threads}
        _, pending = await asyncio.wait(tasks.values(), timeout=self.spec.setup_timeout_s)
        for task in pending:
            task.cancel()
        for thread, task in tasks.items():
            if task in pending:
                self.result.errors.append(f"setup t{thread}: not ready in time")
            elif task.exception() is not None:
                self._error(f"setup t{thread}", task.exception())  # type: ignore[arg-type]
        self.result.threads_ready = len(self._speakers)
        self.result.expected = len(self._speakers) * self.spec.listeners * self.spec.measured_frames
        self.result.setup_s = time.monotonic() - began

    async def _speak(self, thread: int, speaker: Speaker) -> None:
        spec, shape = self.spec, self.spec.framing
        phase = (thread % spec.total_threads) * shape.ns // max(1, spec.total_threads)
        begin = self.t0_ns + phase
        # A recorder slice is handed over when its last sample is captured: its stamp is
        # the capture of its first one. Other frames are stamped as they are handed over.
        captured_before_ns = shape.ns if shape.recorder_slices else 0
        sent = self._sent_ns[thread]
        lag = self.result.generator_lag_ms
        blocked = self.result.write_block_ms
        index = 0
        try:
            for index in range(spec.total_frames):
                due = begin + index * shape.ns
                wait = due - time.monotonic_ns()
                if wait > 0:
                    await asyncio.sleep(wait / 1e9)
                handed = time.monotonic_ns()
                payload = stamped_payload(index, shape.size, handed - captured_before_ns)
                sent[index] = handed
                await speaker.write(index, payload)
                if spec.measured(index):
                    lag.append((handed - due) / 1e6)
                    blocked.append((time.monotonic_ns() - handed) / 1e6)
            await speaker.end(spec.total_frames)
        except asyncio.CancelledError:
            speaker.abort()
            raise
        except Exception as exc:
            self._error(f"speaker t{thread} frame {index}", exc)
            speaker.abort()

    async def _watch_loop(self, end_ns: int) -> None:
        """How late this process's event loop wakes up: is the load generator saturated?"""
        start_ns = self.t0_ns + self.spec.warm_frames * self.spec.framing.ns
        tick_ns = 10_000_000
        while (now := time.monotonic_ns()) < end_ns:
            await asyncio.sleep(tick_ns / 1e9)
            woke = time.monotonic_ns()
            if woke >= start_ns:
                self.result.loop_lag_ms.append(max(0, woke - now - tick_ns) / 1e6)

    async def run(self) -> None:
        spec = self.spec
        speaking = [asyncio.create_task(self._speak(t, s)) for t, s in self._speakers.items()]
        end_ns = self.t0_ns + spec.total_frames * spec.framing.ns
        watcher = asyncio.create_task(self._watch_loop(end_ns))
        # Bounded: every frame sent by end_ns (give late writers the drain time too), then the
        # listeners get the drain time for the last frames.
        budget = (end_ns - time.monotonic_ns()) / 1e9 + spec.drain_s + 2.0 + 0.02 * len(speaking)
        _, late = await asyncio.wait(speaking, timeout=max(budget, 1.0)) if speaking else ((), ())
        for task in late:
            task.cancel()
        if late:
            self.result.errors.append(f"{len(late)} speakers did not finish in time")
        remaining = max(0.5, (end_ns - time.monotonic_ns()) / 1e9 + spec.drain_s)
        listening = [t for t in self._listen_tasks if not t.done()]
        if listening:
            await asyncio.wait(listening, timeout=remaining)
        watcher.cancel()

    async def close(self) -> None:
        for task in self._listen_tasks:
            task.cancel()
        await asyncio.gather(*self._listen_tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.close(), 10)


async def _await_go(conn: Connection, timeout_s: float) -> int | None:
    def wait() -> int | None:
        if not conn.poll(timeout_s):
            return None
        message = conn.recv()
        return int(message[1]) if message[0] == "go" else None

    return await asyncio.to_thread(wait)


async def run_step(spec: StepSpec, conn: Connection) -> None:
    before = os.times()
    run = StepRun(spec, make_client(spec))
    try:
        await run.setup()
        conn.send(("ready", run.result.threads_ready))
        t0 = await _await_go(conn, spec.go_timeout_s)
        if t0 is not None and run.result.threads_ready:
            run.t0_ns = t0
            await run.run()
    except Exception as exc:
        run.result.errors.append(f"step: {_describe(exc)}\n{traceback.format_exc(limit=5)}")
    finally:
        await run.close()
    after = os.times()
    run.result.cpu_s = after.user + after.system - before.user - before.system
    conn.send(("result", run.result))


def worker_main(conn: Connection) -> None:
    """A load generator process (multiprocessing, spawn): runs the steps it is sent, each
    on a fresh event loop, until told to stop or its parent goes away."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] != "step":
            return
        uvloop.run(run_step(message[1], conn))
