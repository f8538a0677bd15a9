"""TLS material from files, re-read when the files change, and the credentials built on it.

Certificates come from files: `voxmesh up` writes them into the run directory; in production
they are a mounted Kubernetes secret or cert-manager's CSI driver volume, both of which
replace files on rotation. Servers use grpc's dynamic server credentials: before each new
TLS handshake a fetcher hands grpc the newest certificate and CA bundle. Clients cannot swap
credentials on a channel, so ``MeshClients`` builds new channels once ``generation`` moves
(established streams keep their connection until they end). A half-rotated pair (new
certificate, old key) is not loaded: the previous pair stays in use until both match.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from voxmesh.core.mesh_identity import server_name
from voxmesh.core.settings import ServiceKind, Settings
from voxmesh.core.structured_logging import get_logger

_log = get_logger(__name__)


class TlsFilesError(ValueError):
    """Certificate files missing, unreadable or not matching; the message names the file."""


@dataclass(frozen=True)
class TlsFiles:
    cert_file: Path
    key_file: Path
    ca_file: Path

    def signature(self) -> tuple[tuple[int, int, int], ...]:
        """What changes when any of the files is replaced (inode, mtime, size)."""
        signature = []
        for path in (self.cert_file, self.key_file, self.ca_file):
            try:
                st = os.stat(path)  # follows symlinks: Kubernetes swaps a ..data link
            except OSError:
                signature.append((0, 0, 0))
                continue
            signature.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(signature)


@dataclass(frozen=True)
class TlsMaterial:
    cert_chain: bytes
    private_key: bytes
    ca_bundle: bytes


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsFilesError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    if not data.strip():
        raise TlsFilesError(f"the {what} {path} is empty")
    return data


def read_material(files: TlsFiles) -> TlsMaterial:
    """Read and check the files: PEM, the key belongs to the certificate, a CA bundle."""
    cert_pem = _read(files.cert_file, "certificate")
    key_pem = _read(files.key_file, "private key")
    ca_pem = _read(files.ca_file, "CA bundle")
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError as exc:
        raise TlsFilesError(f"not a PEM certificate: {files.cert_file} / {files.ca_file}") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError) as exc:
        raise TlsFilesError(f"not an unencrypted PEM private key: {files.key_file}") from exc
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise TlsFilesError(f"{files.key_file} is not the key of {files.cert_file}")
    return TlsMaterial(cert_pem, key_pem, ca_pem)


class ReloadingTls:
    """The newest good material from ``files``, checked at most every ``check_s``.

    Thread-safe: grpc calls the server fetcher from its own threads.
    """

    def __init__(self, files: TlsFiles, check_s: float) -> None:
        self.files = files
        self._check_s = check_s
        self._lock = threading.Lock()
        self._signature = files.signature()
        self._material = read_material(files)  # at start-up, bad files are fatal
        self._checked = time.monotonic()
        self.generation = 0

    def current(self) -> TlsMaterial:
        now = time.monotonic()
        if now - self._checked < self._check_s:
            return self._material
        with self._lock:
            if now - self._checked < self._check_s:
                return self._material
            self._checked = now
            signature = self.files.signature()
            if signature == self._signature:
                return self._material
            try:
                material = read_material(self.files)
            except TlsFilesError as exc:
                # Mid-rotation (one file replaced, the other not yet) or broken: keep serving
                # with what works and look again at the next check.
                _log.warning("certificate files not reloaded", reason=str(exc))
                return self._material
            self._signature = signature
            if material != self._material:
                self._material = material
                self.generation += 1
                _log.info("certificates reloaded", cert_file=str(self.files.cert_file))
            return self._material

    def server_credentials(self, require_client_auth: bool) -> grpc.ServerCredentials:
        """Credentials whose certificate and CA bundle follow the files (new handshakes)."""
        served = [-1]

        def configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
            return grpc.ssl_server_certificate_configuration(
                [(material.private_key, material.cert_chain)],
                root_certificates=material.ca_bundle,
            )

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            material = self.current()
            if served[0] == self.generation:
                return None  # unchanged: grpc keeps the current configuration
            served[0] = self.generation
            return configuration(material)

        initial = configuration(self.current())
        served[0] = self.generation
        return grpc.dynamic_ssl_server_credentials(
            initial,
            fetch,  # type: ignore[arg-type]  # grpc-stubs omit that None means "unchanged"
            require_client_authentication=require_client_auth,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        material = self.current()
        return grpc.ssl_channel_credentials(
            root_certificates=material.ca_bundle,
            private_key=material.private_key,
            certificate_chain=material.cert_chain,
        )


# -- where the files are ---------------------------------------------------------------


def cert_dir(settings: Settings) -> Path:
    return Path(settings.tls.cert_dir) if settings.tls.cert_dir else settings.run_dir / "certs"


def _or(path: str, default: Path) -> Path:
    return Path(path) if path else default


def mesh_files(settings: Settings, kind: ServiceKind) -> TlsFiles:
    """This process's mesh identity: its certificate (for the internal port and its own
    calls) and the mesh CA bundle."""
    directory = cert_dir(settings)
    tls = settings.tls
    return TlsFiles(
        _or(tls.cert_file, directory / f"{kind}.pem"),
        _or(tls.key_file, directory / f"{kind}-key.pem"),
        _or(tls.ca_file, directory / "ca.pem"),
    )


def client_port_files(settings: Settings, kind: ServiceKind) -> TlsFiles:
    """The client port's certificate (default: the process's own) and key."""
    mesh = mesh_files(settings, kind)
    tls = settings.tls
    return TlsFiles(
        _or(tls.client_cert_file, mesh.cert_file),
        _or(tls.client_key_file, mesh.key_file),
        client_ca_file(settings),
    )


def client_ca_file(settings: Settings) -> Path:
    """What clients of the client port (Envoy, tools, tests) trust."""
    return _or(
        settings.tls.client_ca_file, _or(settings.tls.ca_file, cert_dir(settings) / "ca.pem")
    )


def gateway_files(settings: Settings) -> TlsFiles:
    directory = cert_dir(settings)
    return TlsFiles(
        _or(settings.tls.gateway_cert_file, directory / "gateway.pem"),
        _or(settings.tls.gateway_key_file, directory / "gateway-key.pem"),
        client_ca_file(settings),
    )


def client_channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """For a client of a client port (a device, a tool): None when it is plaintext."""
    if settings.tls.client_plaintext:
        return None
    return grpc.ssl_channel_credentials(root_certificates=_read(client_ca_file(settings), "CA"))


def client_channel(
    settings: Settings, address: str, options: Sequence[tuple[str, Any]] | None = None
) -> grpc.aio.Channel:
    """An asyncio channel to a client port, TLS unless the client port is plaintext."""
    credentials = client_channel_credentials(settings)
    if credentials is None:
        return grpc.aio.insecure_channel(address, options)
    return grpc.aio.secure_channel(address, credentials, options)


def mesh_target_options(settings: Settings, kind: str) -> list[tuple[str, object]]:
    """Channel options that make a mesh caller check the server is of ``kind``."""
    return [("grpc.ssl_target_name_override", server_name(settings.tls.trust_domain, kind))]
