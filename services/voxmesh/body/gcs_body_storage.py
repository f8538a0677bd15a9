"""Bodies in Cloud Storage (fake-gcs-server locally), through Google's synchronous client.

Every call runs on a small thread pool of this adapter, so the event loop only waits. Batches
are created with ``if_generation_match=0`` (a retry can never overwrite one), carry their chunk
table in custom metadata, and are composed into ``body`` at most 32 sources per compose call,
in stages for longer bodies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

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
    StorageNotFound,
    StoredBatch,
    StoredBody,
    batch_name,
    parse_batch_name,
)
from voxmesh.core.domain_errors import Unavailable
from voxmesh.core.structured_logging import get_logger

_log = get_logger(__name__)

T = TypeVar("T")

# Cloud Storage's limit on sources per compose call.
MAX_COMPOSE_SOURCES = 32
# Custom metadata keys.
CHUNKS_KEY = "voxmesh-chunks"
REASON_KEY = "voxmesh-reason"
# Threads, and as many pooled HTTP connections (requests keeps only 10 per host by default).
WORKERS = 16


class GcsBodyStorage:
    def __init__(self, project: str, bucket: str) -> None:
        self.description = f"gs://{bucket}"
        self._project = project
        self._bucket_name = bucket
        self._pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="gcs-body")
        self._bucket: Any = None
        self._client_error: str | None = None
        self._compose_ids = itertools.count()

    async def open(self) -> None:
        await self._run(self._connect)

    def _connect(self) -> None:
        import google.cloud.storage as storage

        try:
            client = storage.Client(project=self._project)
        except Exception as exc:  # e.g. no credentials: report on use, keep serving health
            self._client_error = f"Cloud Storage client: {exc}"
            _log.warning("body storage unavailable", storage=self.description, error=str(exc))
            return
        import requests.adapters

        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=WORKERS)
        client._http.mount("https://", adapter)
        client._http.mount("http://", adapter)
        self._bucket = client.bucket(self._bucket_name)

    async def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def _blob(self, name: str) -> Any:
        if self._bucket is None:
            raise Unavailable(self._client_error or "Cloud Storage is not open")
        return self._bucket.blob(name)

    # -- batches -----------------------------------------------------------------------------

    async def write_batch(self, key: BodyKey, batch: StoredBatch, data: bytes) -> None:
        await self._run(self._write_batch, key.prefix + batch.name, batch, data)

    def _write_batch(self, name: str, batch: StoredBatch, data: bytes) -> None:
        from google.api_core.exceptions import PreconditionFailed

        blob = self._blob(name)
        blob.metadata = {CHUNKS_KEY: batch.table.encode()}
        try:
            blob.upload_from_string(data, content_type=batch.content_type, if_generation_match=0)
        except PreconditionFailed:
            # It exists: our own earlier attempt (its response was lost) or another writer.
            existing = self._blob(name)
            stored = existing.download_as_bytes()
            existing.reload()
            table = (existing.metadata or {}).get(CHUNKS_KEY)
            if stored != data or table is None or ChunkTable.decode(table) != batch.table:
                raise BatchConflict(f"{name} exists with other contents") from None

    async def read_batch(self, key: BodyKey, table: ChunkTable) -> bytes:
        name = key.prefix + batch_name(table.first_index, table.last_index)
        return await self._run(self._download, name, None, None)

    def _download(self, name: str, start: int | None, end: int | None) -> bytes:
        from google.api_core.exceptions import NotFound

        try:
            data: bytes = self._blob(name).download_as_bytes(start=start, end=end)
        except NotFound:
            raise StorageNotFound(name) from None
        return data

    # -- load --------------------------------------------------------------------------------

    async def load(self, key: BodyKey) -> StoredBody | None:
        return await self._run(self._load, key)

    def _load(self, key: BodyKey) -> StoredBody | None:
        if self._bucket is None:
            raise Unavailable(self._client_error or "Cloud Storage is not open")
        blobs = list(self._bucket.client.list_blobs(self._bucket, prefix=key.prefix))
        if not blobs:
            return None
        batches: list[StoredBatch] = []
        index: BodyIndex | None = None
        reason: str | None = None
        batch_prefix = key.prefix + BATCHES + "/"
        for blob in blobs:
            name: str = blob.name
            if name == key.prefix + TOMBSTONE_OBJECT:
                reason = (blob.metadata or {}).get(REASON_KEY, "DELETED")
            elif name == key.prefix + INDEX_OBJECT:
                try:
                    index = BodyIndex.decode(self._download(name, None, None))
                except StorageNotFound:  # deleted between list and get
                    index = None
            elif name.startswith(batch_prefix):
                if parse_batch_name(name[len(batch_prefix) :]) is None:
                    continue
                table = (blob.metadata or {}).get(CHUNKS_KEY)
                if table is None:
                    _log.warning("batch without chunk table", object=name)
                    continue
                batches.append(StoredBatch(ChunkTable.decode(table), blob.content_type or ""))
        batches.sort(key=lambda b: (b.table.first_index, b.table.last_index))
        return StoredBody(batches=batches, index=index, deleted_reason=reason)

    # -- finish ------------------------------------------------------------------------------

    async def compose(
        self, key: BodyKey, batches: Sequence[StoredBatch], content_type: str
    ) -> None:
        sources = [key.prefix + b.name for b in batches]
        await self._run(self._compose_all, key.prefix, sources, content_type)

    def _compose_all(self, prefix: str, sources: list[str], content_type: str) -> None:
        target = prefix + BODY_OBJECT
        if not sources:
            self._blob(target).upload_from_string(b"", content_type=content_type)
            return
        run = next(self._compose_ids)
        level = 0
        # Stages: compose groups of 32 into scratch objects until 32 or fewer remain.
        while len(sources) > MAX_COMPOSE_SOURCES:
            groups = [
                sources[i : i + MAX_COMPOSE_SOURCES]
                for i in range(0, len(sources), MAX_COMPOSE_SOURCES)
            ]
            names = [f"{prefix}{COMPOSE_SCRATCH}/{run}-{level}-{n:06d}" for n in range(len(groups))]
            list(self._pool_map(self._compose_one, names, groups, content_type))
            sources = names
            level += 1
        self._compose_one(target, sources, content_type)

    def _pool_map(
        self,
        fn: Callable[[str, list[str], str], None],
        names: list[str],
        groups: list[list[str]],
        content_type: str,
    ) -> list[None]:
        # Already on a pool thread: compose the groups of one stage one after another would be
        # slow for very long bodies, and waiting on the same pool could deadlock, so a short-
        # lived pool of its own.
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda n, g: fn(n, g, content_type), names, groups))

    def _compose_one(self, target: str, sources: list[str], content_type: str) -> None:
        destination = self._blob(target)
        destination.content_type = content_type
        destination.compose([self._blob(name) for name in sources])

    async def write_index(self, key: BodyKey, index: BodyIndex) -> None:
        await self._run(self._upload, key.prefix + INDEX_OBJECT, index.encode(), "application/json")

    def _upload(self, name: str, data: bytes, content_type: str) -> None:
        self._blob(name).upload_from_string(data, content_type=content_type)

    async def read_body(self, key: BodyKey, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        return await self._run(
            self._download, key.prefix + BODY_OBJECT, offset, offset + length - 1
        )

    # -- clean-up ----------------------------------------------------------------------------

    async def remove_batches(self, key: BodyKey) -> int:
        return await self._run(self._remove_batches, key.prefix)

    def _remove_batches(self, prefix: str) -> int:
        names = [
            blob.name
            for folder in (BATCHES, COMPOSE_SCRATCH)
            for blob in self._bucket.client.list_blobs(self._bucket, prefix=f"{prefix}{folder}/")
        ]
        self._delete_names(names)
        return len(names)

    def _delete_names(self, names: list[str]) -> None:
        from google.api_core.exceptions import NotFound

        def delete(name: str) -> None:
            try:
                self._blob(name).delete()
            except NotFound:
                pass

        if len(names) <= 1:
            for name in names:
                delete(name)
            return
        with concurrent.futures.ThreadPoolExecutor(min(8, len(names))) as pool:
            list(pool.map(delete, names))

    async def delete(self, key: BodyKey, reason: str) -> bool:
        return await self._run(self._delete, key.prefix, reason)

    def _delete(self, prefix: str, reason: str) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        if self._bucket is None:
            raise Unavailable(self._client_error or "Cloud Storage is not open")
        tombstone_name = prefix + TOMBSTONE_OBJECT
        tombstone = self._blob(tombstone_name)
        tombstone.metadata = {REASON_KEY: reason}
        try:  # the first reason stays: a repeated delete changes nothing
            tombstone.upload_from_string(
                reason.encode(), content_type="text/plain", if_generation_match=0
            )
        except PreconditionFailed:
            pass
        names = [
            blob.name
            for blob in self._bucket.client.list_blobs(self._bucket, prefix=prefix)
            if blob.name != tombstone_name
        ]
        self._delete_names(names)
        return bool(names)
