from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.voxmesh_client import Device
from voxmesh.core.settings import Settings
from voxmesh.stack.local_stack import LocalStack

_users = itertools.count()


@pytest.fixture
async def devices(local_stack: LocalStack) -> AsyncIterator[Callable[[str], Awaitable[Device]]]:
    """Make devices of fresh users (names get a unique suffix) connected to the router."""
    settings: Settings = local_stack.settings
    made: list[Device] = []
    suffix = next(_users)

    async def make(name: str) -> Device:
        user, _, device = name.partition("/")
        device_obj = Device(
            settings,
            f"{user}-{suffix}",
            device or "phone",
            f"{settings.host}:{settings.router.port}",
        )
        made.append(device_obj)
        return device_obj

    yield make
    for device in made:
        await device.close()
