"""Create what the Google-backed stores need: the Spanner instance and database (from the one
DDL file in config/) and the media bucket. Idempotent; used by `voxmesh up` and test fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from voxmesh.core.settings import Settings, config_dir
from voxmesh.stack.components import emulator_env

DDL_FILE = "spanner.ddl"


def spanner_ddl(path: Path | None = None) -> list[str]:
    """The statements of config/spanner.ddl (`--` comments dropped, split on `;`)."""
    path = path or config_dir() / DDL_FILE
    lines = [line.split("--", 1)[0] for line in path.read_text().splitlines()]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


@contextmanager
def emulator_environment(settings: Settings) -> Iterator[None]:
    """Point Google's client libraries at the local emulators for the duration."""
    saved: Mapping[str, str | None] = {k: os.environ.get(k) for k in emulator_env(settings)}
    os.environ.update(emulator_env(settings))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ensure_spanner_database(settings: Settings, database_id: str | None = None) -> str:
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import spanner

    spanner_settings = settings.spanner
    database_id = database_id or spanner_settings.database
    client = spanner.Client(project=spanner_settings.project)
    instance = client.instance(
        spanner_settings.instance,
        configuration_name=(f"projects/{spanner_settings.project}/instanceConfigs/emulator-config"),
        node_count=1,
    )
    if not instance.exists():
        try:
            instance.create().result(timeout=60)
        except AlreadyExists:
            pass
    database = instance.database(database_id, ddl_statements=spanner_ddl())
    if not database.exists():
        try:
            database.create().result(timeout=120)
        except AlreadyExists:
            pass
    return database_id


def ensure_bucket(settings: Settings, bucket_name: str | None = None) -> str:
    import google.cloud.storage as storage
    from google.api_core.exceptions import Conflict

    bucket_name = bucket_name or settings.gcs.bucket
    client = storage.Client(project=settings.gcs.project)
    try:
        client.create_bucket(bucket_name)
    except Conflict:
        pass
    return bucket_name
