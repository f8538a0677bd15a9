"""Bodies as local files (the embedded store), with the same layout as Cloud Storage.

``<root>/segments/<node>/<epoch>/<seq>`` are the shared log's segments (bytes as encoded by
``encode_segment``). ``<root>/bodies/<thread>/<message>/batches/<first>-<last>_<writer>`` (a
part) holds a small header (magic, header length, JSON with the content type, chunk table and
log position) followed by the raw payloads.
Every file is written to a temporary name, fsynced, then linked (new batches: a link never
replaces an existing file) or renamed (body, index) into place, and the directory fsynced, so
a crash leaves either the old state or the new one. Blocking calls run on a thread pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import os
import shutil
import struct
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from voxmesh.body.body_storage import (
    BATCHES,
    BODIES_PREFIX,
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
)

T = TypeVar("T")

MAGIC = b"VXB1"
_HEADER = struct.Struct(">4sI")  # magic, JSON header length
TMP_PREFIX = ".tmp-"
WORKERS = 8
# Directories known to exist (saves a stat per batch); forgotten wholesale beyond this many.
KNOWN_DIRS_MAX = 10_000


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tmp(directory: Path, data: bytes) -> Path:
    tmp = directory / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def _batch_header(batch: StoredBatch) -> bytes:
    header = json.dumps(
        {
            "content_type": batch.content_type,
            "chunks": batch.table.as_dict(),
            "log": batch.log_position(),
        },
        separators=(",", ":"),
    ).encode()
    return _HEADER.pack(MAGIC, len(header)) + header


def _read_batch_file(path: Path, with_payload: bool) -> tuple[StoredBatch, bytes]:
    try:
        with path.open("rb") as fh:
            magic, length = _HEADER.unpack(fh.read(_HEADER.size))
            if magic != MAGIC:
                raise ValueError(f"{path} is not a voxmesh batch file")
            raw = json.loads(fh.read(length))
            payload = fh.read() if with_payload else b""
    except FileNotFoundError:
        raise StorageNotFound(str(path)) from None
    table = ChunkTable.from_dict(raw["chunks"])
    writer, next_seq = StoredBatch.parse_log_position(str(raw.get("log", "")))
    return StoredBatch(table, str(raw.get("content_type", "")), writer, next_seq), payload


class FileBodyStorage:
    def __init__(self, root: Path) -> None:
        self.description = f"files under {root}"
        self._root = root
        self._pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="file-body")
        self._known_dirs: set[Path] = set()

    async def open(self) -> None:
        await self._run(self._ensure_dir, self._root / BODIES_PREFIX)

    async def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def _dir(self, key: BodyKey) -> Path:
        return self._root / key.prefix

    def _ensure_dir(self, path: Path) -> None:
        """Create ``path`` and any missing parents, each one durably (parent fsynced)."""
        if path in self._known_dirs:
            return
        missing: list[Path] = []
        probe = path
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for directory in reversed(missing):
            try:
                directory.mkdir()
            except FileExistsError:
                pass
            _fsync_dir(directory.parent)
        if len(self._known_dirs) >= KNOWN_DIRS_MAX:
            self._known_dirs.clear()
        self._known_dirs.add(path)

    def _replace(self, path: Path, data: bytes) -> None:
        self._ensure_dir(path.parent)
        tmp = _write_tmp(path.parent, data)
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    # -- batches -----------------------------------------------------------------------------

    async def write_batch(self, key: BodyKey, batch: StoredBatch, data: bytes) -> None:
        await self._run(self._write_batch, self._dir(key) / batch.name, batch, data)

    def _write_batch(self, path: Path, batch: StoredBatch, data: bytes) -> None:
        self._ensure_dir(path.parent)
        tmp = _write_tmp(path.parent, _batch_header(batch) + data)
        try:
            os.link(tmp, path)  # unlike rename, never replaces an existing batch
        except FileExistsError:
            stored, payload = _read_batch_file(path, with_payload=True)
            if payload != data or stored.table != batch.table:
                raise BatchConflict(f"{path} exists with other contents") from None
        finally:
            os.unlink(tmp)
        _fsync_dir(path.parent)

    async def read_batch(self, key: BodyKey, batch: StoredBatch) -> bytes:
        _, payload = await self._run(_read_batch_file, self._dir(key) / batch.name, True)
        return payload

    # -- the shared log ----------------------------------------------------------------------

    async def write_segment(self, name: str, data: bytes) -> None:
        await self._run(self._write_segment, self._root / name, data)

    def _write_segment(self, path: Path, data: bytes) -> None:
        self._ensure_dir(path.parent)
        tmp = _write_tmp(path.parent, data)
        try:
            os.link(tmp, path)  # never replaces an existing segment
        except FileExistsError:
            if path.read_bytes() != data:
                raise BatchConflict(f"{path} exists with other contents") from None
        finally:
            os.unlink(tmp)
        _fsync_dir(path.parent)

    async def list_segments(self, writer: LogWriter, from_seq: int) -> list[int]:
        return await self._run(self._list_segments, self._root / writer.prefix, from_seq)

    @staticmethod
    def _list_segments(directory: Path, from_seq: int) -> list[int]:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isdigit() and int(n) >= from_seq)

    async def read_segment(self, name: str) -> bytes:
        return await self._run(self._read_segment, self._root / name)

    @staticmethod
    def _read_segment(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StorageNotFound(str(path)) from None

    async def delete_segments(self, names: Sequence[str]) -> None:
        await self._run(self._delete_segments, [self._root / n for n in names])

    @staticmethod
    def _delete_segments(paths: list[Path]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    # -- load --------------------------------------------------------------------------------

    async def load(self, key: BodyKey) -> StoredBody | None:
        return await self._run(self._load, self._dir(key))

    def _load(self, directory: Path) -> StoredBody | None:
        if not directory.is_dir():
            return None
        reason: str | None = None
        index: BodyIndex | None = None
        try:
            reason = (directory / TOMBSTONE_OBJECT).read_text().strip() or "DELETED"
        except FileNotFoundError:
            pass
        try:
            index = BodyIndex.decode((directory / INDEX_OBJECT).read_bytes())
        except FileNotFoundError:
            pass
        batches: list[StoredBatch] = []
        batch_dir = directory / BATCHES
        if batch_dir.is_dir():
            for entry in os.scandir(batch_dir):
                if entry.name.startswith(TMP_PREFIX) or parse_batch_name(entry.name) is None:
                    continue
                try:
                    batches.append(_read_batch_file(Path(entry.path), with_payload=False)[0])
                except StorageNotFound:
                    continue
        if reason is None and index is None and not batches:
            return None
        batches.sort(key=lambda b: (b.table.first_index, b.table.last_index))
        return StoredBody(batches=batches, index=index, deleted_reason=reason)

    # -- finish ------------------------------------------------------------------------------

    async def compose(
        self, key: BodyKey, batches: Sequence[StoredBatch], content_type: str
    ) -> None:
        await self._run(self._compose, self._dir(key), list(batches))

    def _compose(self, directory: Path, batches: list[StoredBatch]) -> None:
        self._ensure_dir(directory)
        tmp = directory / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        with tmp.open("wb") as out:
            for batch in batches:
                _, payload = _read_batch_file(directory / batch.name, with_payload=True)
                out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, directory / BODY_OBJECT)
        _fsync_dir(directory)

    async def write_index(self, key: BodyKey, index: BodyIndex) -> None:
        await self._run(self._replace, self._dir(key) / INDEX_OBJECT, index.encode())

    async def read_body(self, key: BodyKey, offset: int, length: int) -> bytes:
        return await self._run(self._read_body, self._dir(key) / BODY_OBJECT, offset, length)

    @staticmethod
    def _read_body(path: Path, offset: int, length: int) -> bytes:
        try:
            with path.open("rb") as fh:
                fh.seek(offset)
                return fh.read(length)
        except FileNotFoundError:
            raise StorageNotFound(str(path)) from None

    # -- clean-up ----------------------------------------------------------------------------

    async def remove_batches(self, key: BodyKey) -> int:
        return await self._run(self._remove_batches, self._dir(key))

    def _remove_batches(self, directory: Path) -> int:
        removed = 0
        for folder in (BATCHES, COMPOSE_SCRATCH):
            path = directory / folder
            if path.is_dir():
                removed += sum(1 for name in os.listdir(path) if not name.startswith(TMP_PREFIX))
                shutil.rmtree(path, ignore_errors=True)
                self._known_dirs.discard(path)
        _fsync_dir(directory)
        return removed

    async def delete(self, key: BodyKey, reason: str) -> bool:
        return await self._run(self._delete, self._dir(key), reason)

    def _delete(self, directory: Path, reason: str) -> bool:
        tombstone = directory / TOMBSTONE_OBJECT
        if not tombstone.exists():  # the first reason stays
            self._replace(tombstone, reason.encode())
        existed = False
        for entry in os.scandir(directory):
            if entry.name == TOMBSTONE_OBJECT:
                continue
            existed = existed or not entry.name.startswith(TMP_PREFIX)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
                self._known_dirs.discard(Path(entry.path))
            else:
                os.unlink(entry.path)
        _fsync_dir(directory)
        return existed
