"""Certificates for tests: a local CA with one certificate per mesh kind, and channels that
present them (as the mesh does) to in-process servers.

``voxmesh up`` writes the same layout into a stack's run directory (``certs/``, instance 0 of
each kind named after the kind), so these helpers work for a stack's processes too.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import grpc

from voxmesh.core.local_pki import IssuedFiles, LocalCA
from voxmesh.core.mesh_identity import MESH_KINDS, server_name
from voxmesh.core.mesh_tls import cert_dir, client_channel, client_channel_credentials
from voxmesh.core.settings import Settings


@functools.cache
def pki_dir() -> Path:
    """A CA and ``<kind>.pem`` / ``<kind>-key.pem`` for every kind (made once per run)."""
    directory = Path(tempfile.mkdtemp(prefix="voxmesh-test-certs-"))
    ca = LocalCA(directory)
    for kind in MESH_KINDS:
        ca.issue(kind, kind=kind, node=f"{kind}-test")
    ca.issue("gateway", kind=None)
    return directory


def tls_overrides() -> dict[str, Any]:
    """Settings overrides that give in-process servers the test certificates."""
    return {"tls": {"cert_dir": str(pki_dir())}}


def identity(settings: Settings, kind: str) -> IssuedFiles:
    directory = cert_dir(settings)
    return IssuedFiles(directory / f"{kind}.pem", directory / f"{kind}-key.pem")


def mesh_credentials(
    settings: Settings, as_kind: str, files: IssuedFiles | None = None
) -> grpc.ChannelCredentials:
    """What a mesh process of ``as_kind`` presents (or the given certificate)."""
    files = files or identity(settings, as_kind)
    return grpc.ssl_channel_credentials(
        root_certificates=(cert_dir(settings) / "ca.pem").read_bytes(),
        private_key=files.key_file.read_bytes(),
        certificate_chain=files.cert_file.read_bytes(),
    )


def mesh_channel(
    settings: Settings,
    address: str,
    server_kind: str,
    as_kind: str,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """A channel to the internal port of a ``server_kind`` process, calling as ``as_kind``."""
    return grpc.aio.secure_channel(
        address,
        credentials or mesh_credentials(settings, as_kind),
        [
            ("grpc.ssl_target_name_override", server_name(settings.tls.trust_domain, server_kind)),
            ("grpc.use_local_subchannel_pool", 1),
        ],
    )


def client_port_channel(settings: Settings, address: str) -> grpc.aio.Channel:
    """A channel to a client port, as a device or a tool makes it (TLS with the CA)."""
    return client_channel(settings, address, [("grpc.use_local_subchannel_pool", 1)])


def client_port_channel_sync(settings: Settings, address: str) -> grpc.Channel:
    """The blocking-API twin of ``client_port_channel`` (for drivers such as hypothesis)."""
    credentials = client_channel_credentials(settings)
    if credentials is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, credentials)
