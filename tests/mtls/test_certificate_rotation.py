"""Certificate rotation on disk, picked up without a restart, by a real header server (dynamic
server credentials) and by the mesh client of a router (``MeshClients`` rebuilds channels).

The rotation is the usual two-step one: the server trusts old and new CA while identities
move to the new CA, then the old CA is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.mesh_pki import mesh_channel
from voxmesh.core.local_pki import IssuedFiles, LocalCA, write_atomically
from voxmesh.core.mesh_clients import MeshClients
from voxmesh.core.mesh_tls import ReloadingTls, TlsFiles
from voxmesh.core.ring_membership import RingMembership
from voxmesh.core.service_runner import ServiceRunner
from voxmesh.core.settings import Settings, load_settings
from voxmesh.header.v1 import header_service_pb2 as pb
from voxmesh.header.v1 import header_service_pb2_grpc as pb_grpc
from voxmesh.service_registry import build_runner

CHECK_S = 0.2
# The handler ran and answered (no such thread): the caller got through TLS and the table.
REACHED = grpc.StatusCode.NOT_FOUND


def _settings(cert_dir: Path, tmp_path: Path) -> Settings:
    return load_settings(
        environ={},
        overrides={
            "stores": {"backend": "embedded", "sqlite_path": str(tmp_path / "h.db")},
            "tls": {"cert_dir": str(cert_dir), "reload_check_s": CHECK_S},
        },
    )


async def _check(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        await pb_grpc.HeaderServiceStub(channel).CheckMembership(
            pb.CheckMembershipRequest(thread_id="t-rot", user_id="u-rot"), timeout=10
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    raise AssertionError("an unknown thread must be NOT_FOUND")


async def _fresh(settings: Settings, address: str, files: IssuedFiles, roots: bytes) -> Any:
    """A new connection presenting ``files`` and trusting ``roots``."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=roots,
        private_key=files.key_file.read_bytes(),
        certificate_chain=files.cert_file.read_bytes(),
    )
    async with mesh_channel(settings, address, "header", "router", credentials) as channel:
        return await _check(channel)


@pytest.fixture
async def rotation(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    server_dir, client_dir = tmp_path / "server", tmp_path / "client"
    old, new = LocalCA(tmp_path / "old-ca"), LocalCA(tmp_path / "new-ca")
    old.issue("header", kind="header", directory=server_dir)
    write_atomically(server_dir / "ca.pem", old.cert_pem)
    old.issue("router", kind="router", directory=client_dir)
    write_atomically(client_dir / "ca.pem", old.cert_pem)
    server_settings = _settings(server_dir, tmp_path)
    runner: ServiceRunner = build_runner("header", server_settings, port=0, metrics_port=0)
    await runner.start()
    client_settings = _settings(client_dir, tmp_path)
    mesh = MeshClients(client_settings, RingMembership(client_settings, ()), "router")
    try:
        yield {
            "old": old,
            "new": new,
            "server_dir": server_dir,
            "client_dir": client_dir,
            "runner": runner,
            "mesh": mesh,
            "settings": client_settings,
        }
    finally:
        await mesh.close()
        await runner.drain(grace_s=0)


async def test_server_and_mesh_client_pick_up_rotated_certificates_without_restart(
    rotation: dict[str, Any], tmp_path: Path
) -> None:
    old: LocalCA = rotation["old"]
    new: LocalCA = rotation["new"]
    server_dir: Path = rotation["server_dir"]
    client_dir: Path = rotation["client_dir"]
    mesh: MeshClients = rotation["mesh"]
    settings: Settings = rotation["settings"]
    address = rotation["runner"].internal_address
    router_files = IssuedFiles(client_dir / "router.pem", client_dir / "router-key.pem")
    first = mesh.channel(address, "header")
    assert await _check(first) == REACHED

    # Step 1: the server trusts both CAs and moves its own certificate to the new one.
    write_atomically(server_dir / "ca.pem", old.cert_pem + new.cert_pem)
    new.issue("header", kind="header", directory=server_dir)
    await asyncio.sleep(CHECK_S * 2)
    # A new handshake sees the new server certificate: trusting the old CA only now fails,
    # trusting the new one works (with the client's old certificate, still trusted).
    assert await _fresh(settings, address, router_files, old.cert_pem) == (
        grpc.StatusCode.UNAVAILABLE
    )
    assert await _fresh(settings, address, router_files, new.cert_pem) == REACHED

    # Step 2: the router's files move to the new CA; its next call uses a new channel.
    new.issue("router", kind="router", directory=client_dir)
    write_atomically(client_dir / "ca.pem", new.cert_pem)
    await asyncio.sleep(CHECK_S * 2)
    second = mesh.channel(address, "header")
    assert second is not first
    assert await _check(second) == REACHED

    # Step 3: the server drops the old CA: a certificate from it is refused from now on,
    # while the router (already on the new one) keeps working.
    stale = old.issue("router-stale", kind="router", directory=tmp_path)
    write_atomically(server_dir / "ca.pem", new.cert_pem)
    await asyncio.sleep(CHECK_S * 2)
    assert await _fresh(settings, address, stale, new.cert_pem) == grpc.StatusCode.UNAVAILABLE
    assert await _check(mesh.channel(address, "header")) == REACHED
    assert await _fresh(settings, address, router_files, new.cert_pem) == REACHED


def test_a_half_rotated_pair_is_not_loaded(tmp_path: Path) -> None:
    """A new certificate whose key has not been written yet: the old pair stays in use."""
    ca = LocalCA(tmp_path)
    issued = ca.issue("router", kind="router")
    tls = ReloadingTls(TlsFiles(issued.cert_file, issued.key_file, ca.cert_file), check_s=0.0)
    before = tls.current()
    replacement = ca.issue("router-next", kind="router")
    write_atomically(issued.cert_file, replacement.cert_file.read_bytes())  # key still old
    assert tls.current() == before and tls.generation == 0
    write_atomically(issued.key_file, replacement.key_file.read_bytes())
    assert tls.current().cert_chain == replacement.cert_file.read_bytes()
    assert tls.generation == 1
