"""Scenarios beyond the live sweep, over a running voxmesh stack: catch-up to live, replay of
a complete message, bytes stored, timeline reads, and the stores' own write latency (the
floor under durable acks). They are light, so they run in the bench process (not in the
stack's processes), on its own event loop."""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path
from typing import Any

import grpc

from bench.bench_parameters import FRAME_BYTES, FRAME_MS, BenchParameters
from bench.bench_stack import VoxmeshStack
from bench.latency_stats import summarize
from bench.mesh_client import RouterChannels, TokenCache, chunk, read_stamp, stamped_payload, uuid7
from voxmesh.body.body_storage import BATCHES, COMPOSE_SCRATCH
from voxmesh.common.v1 import body_pb2, message_pb2, thread_pb2
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.stack.provisioning import emulator_environment

FRAME_S = FRAME_MS / 1000
RAW_BYTES_PER_MINUTE = FRAME_BYTES * 60 * 1000 // FRAME_MS
READ_BUDGET_S = 60.0  # repeated timeline reads stop after this long (at least one is made)
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


class MeshUser:
    """One user's device, connected to the user's home router."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...], user_id: str) -> None:
        self.user_id = user_id
        self.device_id = "phone"
        self._stub = stub
        self._metadata = metadata

    async def call(self, method: str, request: Any, deadline_s: float = 60) -> Any:
        return await getattr(self._stub, method)(
            request, metadata=self._metadata, timeout=deadline_s
        )

    def stream(self, method: str, request: Any = None) -> Any:
        if request is None:
            return getattr(self._stub, method)(metadata=self._metadata)
        return getattr(self._stub, method)(request, metadata=self._metadata)

    async def group(self, members: list[str], title: str) -> str:
        reply = await self.call(
            "CreateThread",
            pb.CreateThreadRequest(
                kind=thread_pb2.THREAD_KIND_GROUP, title=title, member_user_ids=members
            ),
        )
        return str(reply.thread.thread_id)


class Session:
    def __init__(self, stack: VoxmeshStack, run_id: str) -> None:
        self.stack = stack
        self.run_id = run_id
        self.pool = RouterChannels(stack.router_addresses(), 4, stack.ca_pem)
        self.tokens = TokenCache(stack.settings.auth)
        self._slots = 0

    async def user(self, name: str) -> MeshUser:
        self._slots += 1
        user_id = f"{self.run_id}-{name}"
        metadata = self.tokens.metadata(user_id)
        stub = await self.pool.home_stub(user_id, metadata, self._slots)
        return MeshUser(stub, metadata, user_id)

    async def close(self) -> None:
        await self.pool.close()


async def _open_send(user: MeshUser, thread_id: str, message_id: str) -> Any:
    call = user.stream("Send")
    start = message_pb2.MessageStart(
        message_id=message_id,
        thread_id=thread_id,
        kind=message_pb2.MESSAGE_KIND_VOICE,
        content_type="audio/ogg;codecs=opus",
    )
    await call.write(pb.SendRequest(start=start, device_id=user.device_id))
    accepted = await call.read()
    if accepted is _EOF or not accepted.HasField("accepted"):
        raise RuntimeError(f"Send was not accepted: {accepted!r}")
    return call


async def _finish_send(call: Any, frames: int, timeout_s: float) -> None:
    end = message_pb2.MessageEnd(chunk_count=frames, size_bytes=frames * FRAME_BYTES)
    await call.write(pb.SendRequest(end=end))
    await call.done_writing()

    async def until_completed() -> None:
        while True:
            response = await call.read()
            if response is _EOF or response.HasField("completed"):
                return

    await asyncio.wait_for(until_completed(), timeout_s)


# -- bytes stored ---------------------------------------------------------------------------


def stored_bytes(stack: VoxmeshStack, thread_id: str, message_id: str) -> dict[str, int]:
    """Bytes and objects (files) the body store keeps for one message."""
    settings = stack.settings
    if stack.backend == "google":
        import google.cloud.storage as storage

        # Steady state, not a snapshot: after a finish the body store deletes its batch and
        # compose-scratch objects in the background; wait (bounded) for that to settle.
        transient = (f"/{BATCHES}/", f"/{COMPOSE_SCRATCH}")
        deadline = time.monotonic() + 15
        with emulator_environment(settings):
            client = storage.Client(project=settings.gcs.project)
            while True:
                blobs = list(
                    client.list_blobs(
                        settings.gcs.bucket, prefix=f"bodies/{thread_id}/{message_id}/"
                    )
                )
                settled = not any(t in b.name for b in blobs for t in transient)
                if settled or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        return {"bytes": sum(int(b.size or 0) for b in blobs), "objects": len(blobs)}
    total = count = 0
    for path in settings.files_root.rglob("*"):
        if message_id not in str(path):
            continue
        try:  # batch files are removed once the body is written as one file
            if path.is_file():
                total += path.stat().st_size
                count += 1
        except FileNotFoundError:
            continue
    return {"bytes": total, "objects": count}


def _per_minute(stored: dict[str, int], frames: int) -> dict[str, Any]:
    minutes = frames * FRAME_S / 60
    per_minute = stored["bytes"] / minutes if minutes else 0.0
    return {
        **stored,
        "audio_s": frames * FRAME_S,
        "bytes_per_audio_minute": round(per_minute),
        "raw_bytes_per_audio_minute": RAW_BYTES_PER_MINUTE,
        "overhead_ratio": round(per_minute / RAW_BYTES_PER_MINUTE, 3),
    }


# -- catch-up -------------------------------------------------------------------------------


async def catch_up(stack: VoxmeshStack, params: BenchParameters, run_id: str) -> dict[str, Any]:
    """A listener arrives ``catch_up_arrival_s`` into a live message and reads from chunk 0."""
    session = Session(stack, f"{run_id}-cu")
    try:
        speaker, listener = await session.user("speaker"), await session.user("listener")
        thread_id = await speaker.group([listener.user_id], "catch-up")
        message_id = uuid7()
        call = await _open_send(speaker, thread_id, message_id)
        arrival_frames = round(params.catch_up_arrival_s / FRAME_S)
        max_frames = arrival_frames + round(60 / FRAME_S)  # bounded even if it never catches up
        state: dict[str, Any] = {"last_sent": -1, "stop_at": max_frames}
        arrived = asyncio.Event()

        async def speak() -> int:
            begin = time.monotonic_ns()
            index = 0
            while index < state["stop_at"]:
                wait = begin + index * FRAME_MS * 1_000_000 - time.monotonic_ns()
                if wait > 0:
                    await asyncio.sleep(wait / 1e9)
                await call.write(pb.SendRequest(chunks=[chunk(index, stamped_payload(index))]))
                state["last_sent"] = index
                index += 1
                if index == arrival_frames:
                    arrived.set()
            await _finish_send(call, index, 60)
            return index

        speaking = asyncio.create_task(speak())
        await asyncio.wait_for(arrived.wait(), params.catch_up_arrival_s + 30)
        asked = time.monotonic()
        read = listener.stream(
            "ReadBody",
            pb.ReadBodyRequest(
                thread_id=thread_id,
                message_id=message_id,
                origin=body_pb2.READ_ORIGIN_INDEX,
                from_index=0,
            ),
        )
        first_s: float | None = None
        live_s: float | None = None
        server_live_s: float | None = None
        live_index = 0
        tail_ms: list[float] = []
        received = 0
        end_state = ""

        async def listen() -> None:
            nonlocal first_s, live_s, server_live_s, live_index, received, end_state
            async for frame in read:
                now = time.monotonic()
                if frame.HasField("end"):
                    end_state = message_pb2.MessageState.Name(frame.end.state)
                    return
                if not frame.HasField("chunks"):
                    continue
                if frame.chunks.live and server_live_s is None:
                    server_live_s = now - asked
                for got in frame.chunks.chunks:
                    received += 1
                    if first_s is None:
                        first_s = now - asked
                    if live_s is None and got.index >= state["last_sent"] - 1:
                        live_s, live_index = now - asked, int(got.index)
                        # Keep talking one more second, then end the message.
                        state["stop_at"] = min(state["stop_at"], got.index + round(1 / FRAME_S))
                    elif live_s is not None:
                        stamp, _ = read_stamp(got.payload)
                        tail_ms.append((time.monotonic_ns() - stamp) / 1e6)

        await asyncio.wait_for(listen(), 60 + params.catch_up_arrival_s + 60)
        frames = await asyncio.wait_for(speaking, 90)
        await asyncio.sleep(0.5)  # the body store tidies batches after the body is complete
        stored = await asyncio.to_thread(stored_bytes, stack, thread_id, message_id)
    finally:
        await session.close()
    caught_up_audio_s = live_index * FRAME_S
    return {
        "arrival_s": params.catch_up_arrival_s,
        "backlog_at_arrival_s": arrival_frames * FRAME_S,
        "time_to_first_chunk_ms": None if first_s is None else round(first_s * 1000, 2),
        "time_to_live_edge_s": None if live_s is None else round(live_s, 3),
        "server_live_flag_s": None if server_live_s is None else round(server_live_s, 3),
        "catch_up_speed_x_real_time": round(caught_up_audio_s / live_s, 1) if live_s else None,
        "live_tail_latency_ms": summarize(tail_ms),
        "chunks_received": received,
        "chunks_sent": frames,
        "end_state": end_state,
        "stored_live_paced": _per_minute(stored, frames),
        "live_edge_rule": "first chunk whose index >= the speaker's newest sent index - 1",
    }


# -- replay of a complete message -----------------------------------------------------------


async def replay(stack: VoxmeshStack, params: BenchParameters, run_id: str) -> dict[str, Any]:
    """A complete message of ``replay_message_s`` read back with ReadBody (and ReadBodyRange)."""
    session = Session(stack, f"{run_id}-rp")
    frames = round(params.replay_message_s / FRAME_S)
    try:
        speaker, listener = await session.user("speaker"), await session.user("listener")
        thread_id = await speaker.group([listener.user_id], "replay")
        message_id = uuid7()
        began = time.monotonic()
        call = await _open_send(speaker, thread_id, message_id)
        batch = 50  # 1 s of audio per Send frame: the message is stored faster than real time
        for first in range(0, frames, batch):
            chunks = [
                chunk(i, stamped_payload(i)) for i in range(first, min(frames, first + batch))
            ]
            await call.write(pb.SendRequest(chunks=chunks))
        await _finish_send(call, frames, 120 + frames * 0.01)
        store_s = time.monotonic() - began
        await asyncio.sleep(0.5)
        asked = time.monotonic()
        read = listener.stream(
            "ReadBody",
            pb.ReadBodyRequest(
                thread_id=thread_id, message_id=message_id, origin=body_pb2.READ_ORIGIN_INDEX
            ),
        )
        received = 0
        first_s: float | None = None

        async def read_all() -> None:
            nonlocal received, first_s
            async for frame in read:
                if frame.HasField("chunks"):
                    if first_s is None:
                        first_s = time.monotonic() - asked
                    received += len(frame.chunks.chunks)
                elif frame.HasField("end"):
                    return

        await asyncio.wait_for(read_all(), 120)
        read_s = time.monotonic() - asked
        asked = time.monotonic()
        whole = await listener.call(
            "ReadBodyRange", pb.ReadBodyRangeRequest(thread_id=thread_id, message_id=message_id)
        )
        range_s = time.monotonic() - asked
        await asyncio.sleep(0.5)
        stored = await asyncio.to_thread(stored_bytes, stack, thread_id, message_id)
    finally:
        await session.close()
    audio_s = frames * FRAME_S
    return {
        "message_audio_s": audio_s,
        "chunks": frames,
        "store_faster_than_real_time_s": round(store_s, 2),
        "read_body_s": round(read_s, 3),
        "read_body_first_chunk_ms": None if first_s is None else round(first_s * 1000, 2),
        "chunks_read": received,
        "replay_speed_x_real_time": round(audio_s / read_s, 1) if read_s else None,
        "read_body_range_s": round(range_s, 3),
        "read_body_range_bytes": len(whole.data),
        "stored_complete": _per_minute(stored, frames),
    }


# -- timeline -------------------------------------------------------------------------------


async def _bounded(coroutines: list[Any], concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(coroutine: Any) -> None:
        async with gate:
            await coroutine

    await asyncio.gather(*(one(c) for c in coroutines))


async def _list_since(user: MeshUser, cursor: str) -> tuple[int, int, int, str]:
    """Every page of the timeline since ``cursor``: (headers, threads, pages, next cursor)."""
    headers = threads = pages = 0
    token = ""
    next_cursor = cursor
    while True:
        reply = await user.call(
            "ListTimeline",
            pb.ListTimelineRequest(
                device_id=user.device_id, cursor=cursor, page_size=200, page_token=token
            ),
        )
        pages += 1
        headers += len(reply.headers)
        threads += len(reply.threads)
        token = reply.next_page_token
        if not token:
            return headers, threads, pages, reply.next_cursor or next_cursor
        if pages > 1000:
            raise RuntimeError("timeline paging did not end")


async def timeline(stack: VoxmeshStack, params: BenchParameters, run_id: str) -> dict[str, Any]:
    session = Session(stack, f"{run_id}-tl")
    rng = random.Random(6)
    try:
        owner, reader = await session.user("owner"), await session.user("reader")
        began = time.monotonic()
        thread_ids: list[str] = [""] * params.timeline_threads

        async def make(i: int) -> None:
            thread_ids[i] = await owner.group([reader.user_id], f"t{i}")

        await _bounded([make(i) for i in range(params.timeline_threads)], 8)
        create_s = time.monotonic() - began

        began = time.monotonic()
        _, threads_seen, sync_pages, cursor = await _list_since(reader, "")
        await reader.call(
            "AckTimeline", pb.AckTimelineRequest(device_id=reader.device_id, cursor=cursor)
        )
        initial_sync_s = time.monotonic() - began

        async def text(thread_id: str, body: str) -> None:
            await owner.call(
                "SendText",
                pb.SendTextRequest(
                    message_id=uuid7(), thread_id=thread_id, device_id="phone", text=body
                ),
            )

        targets = rng.sample(thread_ids, min(params.timeline_new_messages, len(thread_ids)))
        await _bounded([text(t, f"news {i}") for i, t in enumerate(targets)], 4)

        since_ms: list[float] = []
        found = pages = 0
        budget_ends = time.monotonic() + READ_BUDGET_S
        for _ in range(params.read_repeats):
            if since_ms and time.monotonic() > budget_ends:
                break  # a slow store: fewer repeats (the count is in the results)
            began = time.monotonic()
            found, _, pages, _ = await _list_since(reader, cursor)
            since_ms.append((time.monotonic() - began) * 1000)

        page_thread = thread_ids[0]
        await _bounded(
            [text(page_thread, f"page {i}") for i in range(params.thread_page_messages)], 4
        )
        page_ms: list[float] = []
        page_len = 0
        budget_ends = time.monotonic() + READ_BUDGET_S
        for _ in range(params.read_repeats):
            if page_ms and time.monotonic() > budget_ends:
                break
            began = time.monotonic()
            reply = await reader.call(
                "ListMessages",
                pb.ListMessagesRequest(
                    thread_id=page_thread, page_size=params.thread_page_messages
                ),
            )
            page_ms.append((time.monotonic() - began) * 1000)
            page_len = len(reply.headers)
    finally:
        await session.close()
    return {
        "threads": params.timeline_threads,
        "create_threads_s": round(create_s, 2),
        "initial_sync_s": round(initial_sync_s, 3),
        "initial_sync_pages": sync_pages,
        "initial_sync_threads_seen": threads_seen,
        "new_messages": len(targets),
        "since": summarize(since_ms),
        "since_headers_returned": found,
        "since_pages": pages,
        "thread_page": summarize(page_ms),
        "thread_page_size": params.thread_page_messages,
        "thread_page_returned": page_len,
        "repeats": params.read_repeats,
    }


# -- the store floor under durable acks -----------------------------------------------------


def store_floor(stack: VoxmeshStack, samples: int, run_id: str) -> dict[str, Any]:
    """One small batch written straight to the store, without the mesh: the GCS emulator
    (create-only upload, as the body store writes batches) or a local file (write, fsync,
    link into place, fsync the directory, as the embedded body store does)."""
    payload = stamped_payload(0)
    times_ms: list[float] = []
    settings = stack.settings
    if stack.backend == "google":
        import google.cloud.storage as storage

        with emulator_environment(settings):
            bucket = storage.Client(project=settings.gcs.project).bucket(settings.gcs.bucket)
            for i in range(samples + 3):  # the first calls open connections
                began = time.monotonic()
                bucket.blob(f"bench-floor/{run_id}/{i}").upload_from_string(
                    payload, if_generation_match=0
                )
                if i >= 3:
                    times_ms.append((time.monotonic() - began) * 1000)
        how = "GCS emulator: one create-only upload of a 160-byte object (google-cloud-storage)"
    else:
        directory = settings.files_root / "bench-floor" / run_id
        directory.mkdir(parents=True, exist_ok=True)
        for i in range(samples):
            began = time.monotonic()
            _durable_file(directory, f"{i}", payload)
            times_ms.append((time.monotonic() - began) * 1000)
        how = "local file: write a temp file, fsync, link into place, fsync the directory"
    return {"method": how, "latency_ms": summarize(times_ms)}


def _durable_file(directory: Path, name: str, data: bytes) -> None:
    temporary = directory / f".{name}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.link(temporary, directory / name)
    os.unlink(temporary)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
