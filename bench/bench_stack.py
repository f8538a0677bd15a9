"""What the benchmark runs against: the voxmesh local stack on free loopback ports, and the
baseline servers (the bare grpc.aio relay, a Redis server). Every process started here is
stopped here, by its own pid (or by LocalStack.down for the stack)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.bench_parameters import Backend
from voxmesh.core.mesh_tls import client_ca_file
from voxmesh.core.settings import INSTANCE_PORT_STRIDE, Settings, load_settings
from voxmesh.stack import binaries
from voxmesh.stack.components import router_addresses
from voxmesh.stack.local_stack import LocalStack

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
_handed_out: set[int] = set()
# The body node's counter of object-store writes (segments, parts, bodies, indexes, ...).
BODY_WRITES_METRIC = "voxmesh_body_object_writes"


class BenchUnsupported(RuntimeError):
    """A requested configuration this checkout cannot run yet (the message says why)."""


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return port not in _handed_out


def free_port_block(instances: int) -> int:
    """A port P with P + 10·i free for every instance i (the local stack's port layout)."""
    for _ in range(200):
        base = free_port()
        others = [base + INSTANCE_PORT_STRIDE * i for i in range(1, instances)]
        if all(port < 65536 and _is_free(port) for port in others):
            _handed_out.update(others)
            return base
    raise RuntimeError(f"no block of {instances} free ports 10 apart on {HOST}")


def stack_overrides(run_dir: Path, backend: Backend, routers: int = 1) -> dict[str, object]:
    overrides: dict[str, object] = {
        "host": HOST,
        "run_dir": str(run_dir),
        "etcd": {"client_port": free_port(), "peer_port": free_port()},
        "redis": {"port": free_port()},
        "spanner": {"emulator_port": free_port()},
        "gcs": {"port": free_port()},
        "envoy": {
            "port": free_port(),
            "admin_port": free_port(),
            # Every gRPC-web talker stands for a browser with its own address; here they all
            # come from 127.0.0.1, one per-IP bucket: a bucket that lets them all through.
            "requests_per_ip_per_s": 1_000_000,
            "requests_per_ip_burst": 1_000_000,
        },
        **{
            kind: {
                "port": free_port_block(count),
                "internal_port": free_port_block(count),
                "metrics_port": free_port_block(count),
                "instances": count,
                # Nothing to drain for: the benchmark stops its stacks between scenarios.
                "drain_grace_s": 1.0,
                "drain_delay_s": 0.0,
            }
            for kind, count in (
                ("router", routers),
                ("header", 1),
                ("body", 1),
                ("notification", 1),
            )
        },
        # A stack is thrown away after its scenarios: no need to wait long for a clean stop.
        "supervisor": {"ready_timeout_s": 60.0, "stop_timeout_s": 3.0},
        # The limiter stays on (its cost is on the live path) but the scenarios' set-up is
        # one user making hundreds of calls and texts at once: buckets that let it through.
        "rate_limits": {
            table: {
                "user_per_s": 100_000.0,
                "user_burst": 100_000,
                "device_per_s": 100_000.0,
                "device_burst": 100_000,
            }
            for table in ("calls", "message_starts", "texts")
        },
    }
    if backend == "embedded":
        overrides["stores"] = {"backend": "embedded", "sqlite_path": "", "files_root": ""}
    return overrides


@dataclass
class VoxmeshStack:
    stack: LocalStack
    backend: Backend
    routers: int

    @property
    def settings(self) -> Settings:
        return self.stack.settings

    @property
    def ca_pem(self) -> bytes | None:
        """What load clients trust on the routers' client ports (None: plaintext)."""
        if self.settings.tls.client_plaintext:
            return None
        return client_ca_file(self.settings).read_bytes()

    @property
    def gateway_url(self) -> str:
        """Envoy's gRPC-web listener: https (trusting ``ca_pem``) unless plaintext."""
        scheme = "http" if self.settings.tls.client_plaintext else "https"
        return f"{scheme}://{self.settings.host}:{self.settings.envoy.port}"

    def router_addresses(self) -> list[str]:
        """Every router of the stack (devices Discover their home router among them)."""
        return [f"{host}:{port}" for host, port in router_addresses(self.settings)]

    def service_pids(self) -> dict[str, int]:
        return {n: p for n, p in self.stack.recorded_pids().items() if n != "supervisord"}

    def body_object_writes(self) -> float | None:
        """Object-store writes the (first) body node has made so far, from its /metrics."""
        _, metrics_port = self.settings.body.instance_ports(0)
        url = f"http://{self.settings.host}:{metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return None
        total, found = 0.0, False
        for family in text_string_to_metric_families(text):
            if family.name == BODY_WRITES_METRIC:
                found = True  # before its first write a labelled counter has no samples
                total += sum(
                    sample.value
                    for sample in family.samples
                    if sample.name == BODY_WRITES_METRIC + "_total"
                )
        return total if found else None


def spanner_emulator_available() -> bool:
    try:
        binaries.spanner_emulator(os.environ.get("VOXMESH__SPANNER__EMULATOR_BINARY", ""))
    except binaries.MissingBinary:
        return False
    return True


@contextlib.contextmanager
def voxmesh_stack(run_dir: Path, backend: Backend, routers: int) -> Iterator[VoxmeshStack]:
    if not 1 <= routers <= 9:
        raise BenchUnsupported(f"{routers} routers: the local stack runs 1 to 9")
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = load_settings(overrides=stack_overrides(run_dir, backend, routers))
    stack = LocalStack(settings)
    stack.up()
    try:
        yield VoxmeshStack(stack, backend, routers)
    finally:
        stack.down()


@dataclass
class BaselineServer:
    name: str
    process: subprocess.Popen[bytes]
    address: str

    @property
    def pid(self) -> int:
        return self.process.pid


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _wait_port(port: int, process: subprocess.Popen[bytes], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} while starting")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {HOST}:{port} within {timeout_s:g} s")


@contextlib.contextmanager
def grpc_relay(log_dir: Path, timeout_s: float = 30.0) -> Iterator[BaselineServer]:
    """The bare grpc.aio relay (bench.grpc_relay_baseline) in its own process."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "grpc-relay.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.grpc_relay_baseline", "--port", str(port)],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_port(port, process, "the grpc.aio relay", timeout_s)
        yield BaselineServer("grpc-relay", process, f"{HOST}:{port}")
    finally:
        _stop(process)


@contextlib.contextmanager
def redis_server(log_dir: Path, timeout_s: float = 30.0) -> Iterator[BaselineServer]:
    """A Redis-protocol server (Valkey, as in the stack) for the pub/sub relay baseline."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "redis-relay.log", "wb") as log:
        process = subprocess.Popen(
            [
                str(binaries.redis_server()),
                "--bind",
                HOST,
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_port(port, process, "the Redis server", timeout_s)
        yield BaselineServer("redis-server", process, f"{HOST}:{port}")
    finally:
        _stop(process)
