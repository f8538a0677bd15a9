"""Bodies in Cloud Storage (fake-gcs-server locally), through gcloud-aio-storage.

An asyncio client (aiohttp underneath) on the node's own event loop: a small write costs one
HTTP request and no thread hop (measured with ``bench/gcs_client_cost.py``: about a third of
google-cloud-storage's CPU per write). Credentials are Application Default Credentials (a key
file, the metadata server, GKE workload identity) through gcloud-aio-auth; against an emulator
(``STORAGE_EMULATOR_HOST``) none are sent.

Segments and parts are created with ``ifGenerationMatch=0`` (a retry can never overwrite one);
parts carry their chunk table and log position in custom metadata, and are composed into
``body`` at most 32 sources per compose call, in stages for longer bodies.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import aiohttp

from voxmesh.body.body_storage import (
    BATCHES,
    BODY_OBJECT,
    COMPOSE_SCRATCH,
    INDEX_OBJECT,
    TOMBSTONE_OBJECT,
    BatchConflict,
    BodyIndex,
    BodyKey,
    ChunkTable,
    LogWriter,
    StorageNotFound,
    StoredBatch,
    StoredBody,
    parse_batch_name,
    parse_segment_seq,
)
from voxmesh.core.domain_errors import Unavailable
from voxmesh.core.structured_logging import get_logger

_log = get_logger(__name__)

T = TypeVar("T")

# Cloud Storage's limit on sources per compose call.
MAX_COMPOSE_SOURCES = 32
# Custom metadata keys.
CHUNKS_KEY = "voxmesh-chunks"
LOG_KEY = "voxmesh-log"
REASON_KEY = "voxmesh-reason"
KIND_KEY = "voxmesh-kind"
# Pooled HTTP connections, and how many requests one call (a delete of many) runs at once.
CONNECTIONS = 64
FAN_OUT = 16
TIMEOUT_S = 30


class GcsBodyStorage:
    def __init__(self, project: str, bucket: str) -> None:
        self.description = f"gs://{bucket}"
        self._project = project
        self._bucket = bucket
        self._session: aiohttp.ClientSession | None = None
        self._client: Any = None
        self._compose_ids = itertools.count()

    async def open(self) -> None:
        from gcloud.aio.storage import Storage

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONNECTIONS),
            timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
        )
        # Credentials are looked up on first use: an unreachable store or missing
        # credentials make operations fail (and be retried), never the node's start.
        # gcloud-aio's Session alias is aiohttp's ClientSession in its asyncio build.
        self._client = Storage(session=cast(Any, self._session))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._session is not None and not self._session.closed:
            await self._session.close()

    @property
    def _storage(self) -> Any:
        if self._client is None:
            raise Unavailable("Cloud Storage is not open")
        return self._client

    async def _gather(self, calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
        gate = asyncio.Semaphore(FAN_OUT)

        async def one(call: Callable[[], Awaitable[T]]) -> T:
            async with gate:
                return await call()

        return list(await asyncio.gather(*(one(c) for c in calls)))

    # -- writes ------------------------------------------------------------------------------

    async def _create(
        self, name: str, data: bytes, content_type: str, metadata: dict[str, str] | None
    ) -> bool:
        """Create-only upload; False if the object exists already."""
        try:
            await self._storage.upload(
                self._bucket,
                name,
                data,
                content_type=content_type,
                parameters={"ifGenerationMatch": "0"},
                metadata={"metadata": metadata} if metadata else None,
                timeout=TIMEOUT_S,
            )
        except aiohttp.ClientResponseError as exc:
            if exc.status == 412:
                return False
            raise
        return True

    async def _download(self, name: str, start: int | None = None, end: int | None = None) -> bytes:
        headers = {"Range": f"bytes={start}-{end}"} if start is not None else None
        try:
            data: bytes = await self._storage.download(
                self._bucket, name, headers=headers, timeout=TIMEOUT_S
            )
        except aiohttp.ClientResponseError as exc:
            if exc.status in (404, 416):
                raise StorageNotFound(name) from None
            raise
        return data

    async def _metadata(self, name: str) -> dict[str, str]:
        try:
            info = await self._storage.download_metadata(self._bucket, name, timeout=TIMEOUT_S)
        except aiohttp.ClientResponseError as exc:
            if exc.status == 404:
                raise StorageNotFound(name) from None
            raise
        return dict(info.get("metadata") or {})

    async def _list(self, prefix: str, start_offset: str | None = None) -> list[dict[str, Any]]:
        params = {"prefix": prefix, "maxResults": "1000"}
        if start_offset is not None:
            params["startOffset"] = start_offset
        items: list[dict[str, Any]] = []
        while True:
            page = await self._storage.list_objects(self._bucket, params=params, timeout=TIMEOUT_S)
            items.extend(page.get("items") or ())
            token = page.get("nextPageToken")
            if not token:
                return items
            params["pageToken"] = token

    async def _delete(self, name: str) -> None:
        try:
            await self._storage.delete(self._bucket, name, timeout=TIMEOUT_S)
        except aiohttp.ClientResponseError as exc:
            if exc.status != 404:
                raise

    # -- parts -------------------------------------------------------------------------------

    async def write_batch(self, key: BodyKey, batch: StoredBatch, data: bytes) -> None:
        name = key.prefix + batch.name
        metadata = {CHUNKS_KEY: batch.table.encode(), LOG_KEY: batch.log_position()}
        if await self._create(name, data, batch.content_type, metadata):
            return
        # It exists: our own earlier attempt (its response was lost) or another writer.
        stored = await self._download(name)
        table = (await self._metadata(name)).get(CHUNKS_KEY)
        if stored != data or table is None or ChunkTable.decode(table) != batch.table:
            raise BatchConflict(f"{name} exists with other contents")

    async def read_batch(self, key: BodyKey, batch: StoredBatch) -> bytes:
        return await self._download(key.prefix + batch.name)

    # -- the shared log ----------------------------------------------------------------------

    async def write_segment(self, name: str, data: bytes) -> None:
        # A multipart upload (it carries metadata): fake-gcs-server checks the generation
        # precondition on those, not on simple media uploads (Cloud Storage does on both).
        if await self._create(name, data, "application/octet-stream", {KIND_KEY: "segment"}):
            return
        if await self._download(name) != data:
            raise BatchConflict(f"{name} exists with other contents")

    async def list_segments(self, writer: LogWriter, from_seq: int) -> list[int]:
        items = await self._list(writer.prefix, start_offset=writer.segment(from_seq))
        seqs = (parse_segment_seq(str(item["name"])) for item in items)
        return sorted(seq for seq in seqs if seq is not None and seq >= from_seq)

    async def read_segment(self, name: str) -> bytes:
        return await self._download(name)

    async def delete_segments(self, names: Sequence[str]) -> None:
        await self._gather([functools.partial(self._delete, n) for n in names])

    # -- load --------------------------------------------------------------------------------

    async def load(self, key: BodyKey) -> StoredBody | None:
        items = await self._list(key.prefix)
        if not items:
            return None
        batches: list[StoredBatch] = []
        index: BodyIndex | None = None
        reason: str | None = None
        batch_prefix = key.prefix + BATCHES + "/"
        for item in items:
            name = str(item["name"])
            metadata = item.get("metadata") or {}
            if name == key.prefix + TOMBSTONE_OBJECT:
                reason = metadata.get(REASON_KEY, "DELETED")
            elif name == key.prefix + INDEX_OBJECT:
                try:
                    index = BodyIndex.decode(await self._download(name))
                except StorageNotFound:  # deleted between list and get
                    index = None
            elif name.startswith(batch_prefix):
                if parse_batch_name(name[len(batch_prefix) :]) is None:
                    continue
                table = metadata.get(CHUNKS_KEY)
                if table is None:
                    _log.warning("part without chunk table", object=name)
                    continue
                writer, next_seq = StoredBatch.parse_log_position(metadata.get(LOG_KEY, ""))
                batches.append(
                    StoredBatch(
                        ChunkTable.decode(table),
                        str(item.get("contentType") or ""),
                        writer,
                        next_seq,
                    )
                )
        batches.sort(key=lambda b: (b.table.first_index, b.table.last_index))
        return StoredBody(batches=batches, index=index, deleted_reason=reason)

    # -- finish ------------------------------------------------------------------------------

    async def compose(
        self, key: BodyKey, batches: Sequence[StoredBatch], content_type: str
    ) -> None:
        target = key.prefix + BODY_OBJECT
        sources = [key.prefix + b.name for b in batches]
        if not sources:
            await self._storage.upload(
                self._bucket, target, b"", content_type=content_type, timeout=TIMEOUT_S
            )
            return
        run = next(self._compose_ids)
        level = 0
        # Stages: compose groups of 32 into scratch objects until 32 or fewer remain.
        while len(sources) > MAX_COMPOSE_SOURCES:
            groups = [
                sources[i : i + MAX_COMPOSE_SOURCES]
                for i in range(0, len(sources), MAX_COMPOSE_SOURCES)
            ]
            names = [
                f"{key.prefix}{COMPOSE_SCRATCH}/{run}-{level}-{n:06d}" for n in range(len(groups))
            ]
            await self._gather(
                [
                    functools.partial(self._compose_one, n, g, content_type)
                    for n, g in zip(names, groups, strict=True)
                ]
            )
            sources = names
            level += 1
        await self._compose_one(target, sources, content_type)

    async def _compose_one(self, target: str, sources: list[str], content_type: str) -> None:
        await self._storage.compose(
            self._bucket, target, sources, content_type=content_type, timeout=TIMEOUT_S
        )

    async def write_index(self, key: BodyKey, index: BodyIndex) -> None:
        await self._storage.upload(
            self._bucket,
            key.prefix + INDEX_OBJECT,
            index.encode(),
            content_type="application/json",
            timeout=TIMEOUT_S,
        )

    async def read_body(self, key: BodyKey, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        return await self._download(key.prefix + BODY_OBJECT, offset, offset + length - 1)

    # -- clean-up ----------------------------------------------------------------------------

    async def remove_batches(self, key: BodyKey) -> int:
        names = [
            str(item["name"])
            for folder in (BATCHES, COMPOSE_SCRATCH)
            for item in await self._list(f"{key.prefix}{folder}/")
        ]
        await self._gather([functools.partial(self._delete, n) for n in names])
        return len(names)

    async def delete(self, key: BodyKey, reason: str) -> bool:
        tombstone = key.prefix + TOMBSTONE_OBJECT
        # The first reason stays: a repeated delete changes nothing.
        await self._create(tombstone, reason.encode(), "text/plain", {REASON_KEY: reason})
        names = [str(i["name"]) for i in await self._list(key.prefix) if i["name"] != tombstone]
        await self._gather([functools.partial(self._delete, n) for n in names])
        return bool(names)
