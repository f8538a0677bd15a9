"""Session fixtures: the real local stack (etcd, Redis, Spanner emulator, fake-gcs-server,
the four services and Envoy) on free loopback ports, started and stopped by LocalStack."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from tests.ports import stack_overrides
from voxmesh.core.settings import Settings, load_settings
from voxmesh.stack import binaries
from voxmesh.stack.local_stack import LocalStack


def require_spanner_emulator() -> None:
    """In CI the emulator tests must run: a missing emulator fails there, and skips elsewhere."""
    try:
        binaries.spanner_emulator(os.environ.get("VOXMESH__SPANNER__EMULATOR_BINARY", ""))
    except binaries.MissingBinary as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI requires the Spanner emulator: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    run_dir = tmp_path_factory.mktemp("stack")
    return load_settings(overrides=stack_overrides(str(run_dir)))


@pytest.fixture(scope="session")
def local_stack(stack_settings: Settings) -> Iterator[LocalStack]:
    require_spanner_emulator()
    with LocalStack(stack_settings) as stack:
        yield stack


@pytest.fixture(scope="session")
def google_emulators(local_stack: LocalStack) -> Iterator[Settings]:
    """The stack's Spanner and GCS emulators, with Google's client libraries pointed at them."""
    from voxmesh.stack.provisioning import emulator_environment

    with emulator_environment(local_stack.settings):
        yield local_stack.settings


_counter = itertools.count()


@pytest.fixture
def spanner_database(google_emulators: Settings) -> str:
    """A fresh database with the schema of config/spanner.ddl, on the emulator."""
    from voxmesh.stack.provisioning import ensure_spanner_database

    return ensure_spanner_database(google_emulators, f"t{os.getpid()}-{next(_counter)}")


@pytest.fixture
def gcs_bucket(google_emulators: Settings) -> str:
    """A fresh, empty bucket on fake-gcs-server."""
    from voxmesh.stack.provisioning import ensure_bucket

    return ensure_bucket(google_emulators, f"test-{os.getpid()}-{next(_counter)}")
