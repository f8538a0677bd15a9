"""Readiness probes: each asks a component in its own protocol whether it can serve."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass(frozen=True)
class ProbeResult:
    ready: bool
    detail: str


def http_get(url: str, expect_body: str | None = None, timeout_s: float = 1.0) -> ProbeResult:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = response.read(4096).decode(errors="replace").strip()
            if expect_body is not None and expect_body not in body:
                return ProbeResult(False, f"{url}: {body[:80]!r}")
            return ProbeResult(True, f"HTTP {response.status}")
    except (urllib.error.URLError, OSError) as exc:
        return ProbeResult(False, f"{url}: {exc}")


def redis_ping(host: str, port: int, timeout_s: float = 1.0) -> ProbeResult:
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError as exc:
        return ProbeResult(False, str(exc))
    return ProbeResult(reply.startswith(b"+PONG"), reply.decode(errors="replace").strip())


def grpc_connects(host: str, port: int, timeout_s: float = 1.0) -> ProbeResult:
    """For gRPC servers without a health service (the Spanner emulator)."""
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            return ProbeResult(False, "gRPC channel not ready")
    return ProbeResult(True, "gRPC channel ready")


def _channel(address: str, ca_file: Path | None) -> grpc.Channel:
    if ca_file is None:
        return grpc.insecure_channel(address)
    try:
        roots = ca_file.read_bytes()
    except OSError:
        roots = b""  # not written yet: the handshake fails and the probe says so
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=roots))


def grpc_health(
    host: str,
    port: int,
    service: str = "",
    timeout_s: float = 1.0,
    ca_file: Path | None = None,
) -> ProbeResult:
    """Health of a gRPC server; over TLS trusting ``ca_file`` when given."""
    with _channel(f"{host}:{port}", ca_file) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            return ProbeResult(False, f"{exc.code().name}: {exc.details()}")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return ProbeResult(reply.status == health_pb2.HealthCheckResponse.SERVING, status)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a port in TIME_WAIT after our own last run is free; a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
