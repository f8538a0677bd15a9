"""Body store fixtures: every contract test runs against Cloud Storage (the real
fake-gcs-server of the local stack) and against local files."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import pytest

from voxmesh.body.body_domain import BodyDomain, BodyLimits
from voxmesh.body.body_storage import (
    BodyStorage,
)
from voxmesh.body.file_body_storage import FileBodyStorage
from voxmesh.body.gcs_body_storage import GcsBodyStorage
from voxmesh.core.settings import Settings, load_settings

StorageFactory = Callable[[], BodyStorage]

BACKENDS = ["gcs", "files"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage_factory(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> StorageFactory:
    """Makes storage adapters over one and the same place (a new one = a restarted node)."""
    if backend == "gcs":
        settings: Settings = request.getfixturevalue("google_emulators")
        bucket: str = request.getfixturevalue("gcs_bucket")
        return lambda: GcsBodyStorage(settings.gcs.project, bucket)
    root = tmp_path / "bodies-root"
    return lambda: FileBodyStorage(root)


@pytest.fixture
async def storage(storage_factory: StorageFactory) -> AsyncIterator[BodyStorage]:
    opened = storage_factory()
    await opened.open()
    yield opened
    await opened.close()


BASE_LIMITS = dataclasses.replace(
    BodyLimits.from_settings(load_settings(environ={})),
    group_commit_s=0.005,
    abandon_after_s=60.0,
)


class DomainMaker(Protocol):
    async def __call__(self, storage: BodyStorage | None = None, **limits: Any) -> BodyDomain: ...


@pytest.fixture
async def make_domain(storage_factory: StorageFactory) -> AsyncIterator[DomainMaker]:
    made: list[BodyDomain] = []

    async def make(storage: BodyStorage | None = None, **limits: Any) -> BodyDomain:
        domain = BodyDomain(
            storage or storage_factory(), dataclasses.replace(BASE_LIMITS, **limits)
        )
        await domain.start()
        made.append(domain)
        return domain

    yield make
    for domain in made:
        await domain.close(grace_s=1.0)
