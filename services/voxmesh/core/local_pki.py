"""A local certificate authority for the mesh: what `voxmesh up` and the tests use.

Production reads certificates from files (a Kubernetes secret, cert-manager's CSI driver);
locally `voxmesh up` makes a CA in the run directory and one certificate per process, with
the same names and extensions a production issuer must give (see ``mesh_identity``):
a URI SAN ``spiffe://<trust domain>/<kind>/<node>`` (who the process is), the DNS SAN
``<kind>.<trust domain>.internal`` (what its callers check it is) and, for the client port
and the gateway, the host's address and ``localhost``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from voxmesh.core.mesh_identity import server_name, spiffe_id

CA_DAYS = 3650
LEAF_DAYS = 30


@dataclass(frozen=True)
class IssuedFiles:
    """A certificate and its key on disk (PEM)."""

    cert_file: Path
    key_file: Path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``path`` by rename, so a reader (a rotation watcher) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    temporary.chmod(mode)
    temporary.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class LocalCA:
    """An ECDSA P-256 CA kept as ``ca.pem`` / ``ca-key.pem`` in a directory."""

    def __init__(self, directory: Path, common_name: str = "voxmesh local CA") -> None:
        self.directory = directory
        self.cert_file = directory / "ca.pem"
        self.key_file = directory / "ca-key.pem"
        if self.cert_file.exists() and self.key_file.exists() and self._still_valid():
            self._cert = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
            key = serialization.load_pem_private_key(self.key_file.read_bytes(), None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            self._key = key
            return
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        write_atomically(self.key_file, _key_pem(self._key), 0o600)
        write_atomically(self.cert_file, self._cert.public_bytes(serialization.Encoding.PEM))

    def _still_valid(self) -> bool:
        cert = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        return cert.not_valid_after_utc > _now() + datetime.timedelta(days=LEAF_DAYS)

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        name: str,
        *,
        kind: str | None,
        node: str = "",
        trust_domain: str = "voxmesh",
        hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
        days: float = LEAF_DAYS,
        not_before: datetime.datetime | None = None,
        directory: Path | None = None,
    ) -> IssuedFiles:
        """``<name>.pem`` and ``<name>-key.pem``: a server and client certificate.

        ``kind``: a mesh process of that kind (SPIFFE id and kind DNS name); None: a plain
        TLS server (the gateway). ``hosts``: the IP addresses and DNS names it answers on.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        alt_names: list[x509.GeneralName] = []
        if kind is not None:
            alt_names.append(
                x509.UniformResourceIdentifier(spiffe_id(trust_domain, kind, node or name))
            )
            alt_names.append(x509.DNSName(server_name(trust_domain, kind)))
        for host in hosts:
            try:
                alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt_names.append(x509.DNSName(host))
        start = not_before or (_now() - datetime.timedelta(minutes=5))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        out = directory or self.directory
        issued = IssuedFiles(out / f"{name}.pem", out / f"{name}-key.pem")
        # Key first: a watcher that sees the new certificate finds its key already there.
        write_atomically(issued.key_file, _key_pem(key), 0o600)
        write_atomically(issued.cert_file, cert.public_bytes(serialization.Encoding.PEM))
        return issued
