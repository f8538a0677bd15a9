"""Test helpers for the body store: chunk factories and storage wrappers that hold or fail
single calls of a real adapter underneath."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from voxmesh.body.body_model import ChunkLike, StoredChunk
from voxmesh.body.body_storage import (
    BodyIndex,
    BodyKey,
    BodyStorage,
    LogWriter,
    StoredBatch,
    StoredBody,
    decode_segment,
)


def make_chunks(
    count: int, *, seed: str = "m", size: int = 40, start_offset: int = 0, first: int = 0
) -> list[StoredChunk]:
    """Chunks ``first..first+count-1`` with distinct payloads of varying length."""
    chunks = []
    offset = start_offset
    for index in range(first, first + count):
        payload = (f"<{seed}:{index}>".encode() * size)[: size + index % 7]
        chunks.append(StoredChunk(index, offset, index * 20, payload))
        offset += len(payload)
    return chunks


def body_bytes(chunks: Sequence[ChunkLike]) -> bytes:
    return b"".join(c.payload for c in chunks)


class DelegatingStorage:
    """A real adapter underneath; tests override single methods to hold or fail them."""

    def __init__(self, inner: BodyStorage) -> None:
        self.inner = inner
        self.description = inner.description

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def write_batch(self, key: BodyKey, batch: StoredBatch, data: bytes) -> None:
        await self.inner.write_batch(key, batch, data)

    async def load(self, key: BodyKey) -> StoredBody | None:
        return await self.inner.load(key)

    async def read_batch(self, key: BodyKey, batch: StoredBatch) -> bytes:
        return await self.inner.read_batch(key, batch)

    async def write_segment(self, name: str, data: bytes) -> None:
        await self.inner.write_segment(name, data)

    async def list_segments(self, writer: LogWriter, from_seq: int) -> list[int]:
        return await self.inner.list_segments(writer, from_seq)

    async def read_segment(self, name: str) -> bytes:
        return await self.inner.read_segment(name)

    async def delete_segments(self, names: Sequence[str]) -> None:
        await self.inner.delete_segments(names)

    async def compose(
        self, key: BodyKey, batches: Sequence[StoredBatch], content_type: str
    ) -> None:
        await self.inner.compose(key, batches, content_type)

    async def write_index(self, key: BodyKey, index: BodyIndex) -> None:
        await self.inner.write_index(key, index)

    async def read_body(self, key: BodyKey, offset: int, length: int) -> bytes:
        return await self.inner.read_body(key, offset, length)

    async def remove_batches(self, key: BodyKey) -> int:
        return await self.inner.remove_batches(key)

    async def delete(self, key: BodyKey, reason: str) -> bool:
        return await self.inner.delete(key, reason)


Written = tuple[str, str, int, int]  # (kind: "segment" | "part", message id, first, last)


class GatedStorage(DelegatingStorage):
    """Commit writes (segments and parts) wait until the gate opens; ``objects`` lists what
    each write that got through held, ``writes`` the same flattened."""

    def __init__(self, inner: BodyStorage) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()
        self.objects: list[list[Written]] = []

    @property
    def writes(self) -> list[Written]:
        return [w for obj in self.objects for w in obj]

    def spans(self, message_id: str) -> list[tuple[int, int]]:
        """(first, last) of each write that held chunks of ``message_id``, in order."""
        return [(f, last) for _, m, f, last in self.writes if m == message_id]

    async def write_batch(self, key: BodyKey, batch: StoredBatch, data: bytes) -> None:
        self.waiting.set()
        await self.gate.wait()
        await self.inner.write_batch(key, batch, data)
        table = batch.table
        self.objects.append([("part", key.message_id, table.first_index, table.last_index)])

    async def write_segment(self, name: str, data: bytes) -> None:
        self.waiting.set()
        await self.gate.wait()
        await self.inner.write_segment(name, data)
        self.objects.append(
            [
                ("segment", e.message_id, e.table.first_index, e.table.last_index)
                for e, _ in decode_segment(data)
            ]
        )


class FlakyStorage(DelegatingStorage):
    """The first ``failures`` commit writes (segments, parts) fail as a network error would."""

    def __init__(self, inner: BodyStorage, failures: int) -> None:
        super().__init__(inner)
        self.failures = failures
        self.attempts = 0

    def _attempt(self) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionError("injected: connection reset")

    async def write_batch(self, key: BodyKey, batch: StoredBatch, data: bytes) -> None:
        self._attempt()
        await self.inner.write_batch(key, batch, data)

    async def write_segment(self, name: str, data: bytes) -> None:
        self._attempt()
        await self.inner.write_segment(name, data)
