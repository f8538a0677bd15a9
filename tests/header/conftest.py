"""Header store fixtures: every contract test runs against Cloud Spanner (the real emulator of
the local stack, a fresh database per test) and against embedded SQLite (a fresh file)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from voxmesh.core.settings import Settings
from voxmesh.header.header_records import HeaderLimits
from voxmesh.header.header_storage import HeaderStorage
from voxmesh.header.header_store import HeaderStore
from voxmesh.header.spanner_header_storage import SpannerHeaderStorage
from voxmesh.header.sqlite_header_storage import SqliteHeaderStorage

BACKENDS = ["spanner", "sqlite"]

# Small limits, so the tests reach them cheaply.
LIMITS = HeaderLimits(max_members_per_thread=5, max_text_bytes=64)

StorageFactory = Callable[[], HeaderStorage]
NodeMaker = Callable[[], Awaitable[HeaderStore]]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage_factory(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> StorageFactory:
    """Makes storage adapters over one and the same database (a new one = another node)."""
    if backend == "spanner":
        settings: Settings = request.getfixturevalue("google_emulators")
        database: str = request.getfixturevalue("spanner_database")
        spanner = settings.spanner
        return lambda: SpannerHeaderStorage(spanner.project, spanner.instance, database)
    path = tmp_path / "headers.sqlite3"
    return lambda: SqliteHeaderStorage(path)


@pytest.fixture
async def new_node(storage_factory: StorageFactory) -> AsyncIterator[NodeMaker]:
    """Opens header store nodes on the test's database; closes them afterwards."""
    opened: list[HeaderStorage] = []

    async def make() -> HeaderStore:
        storage = storage_factory()
        await storage.open()
        opened.append(storage)
        return HeaderStore(storage, LIMITS)

    yield make
    for storage in opened:
        await storage.close()


@pytest.fixture
async def store(new_node: NodeMaker) -> HeaderStore:
    return await new_node()
