"""The local stack as data: every server and service, how it starts and how to probe it."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from voxmesh.core.mesh_tls import cert_dir, client_ca_file
from voxmesh.core.settings import SERVICE_KINDS, ServiceKind, Settings
from voxmesh.stack import binaries, readiness
from voxmesh.stack.readiness import ProbeResult

Role = Literal["server", "service", "gateway"]

# Start order, and reverse stop order: servers, then services, then the gateway.
PRIORITY: dict[Role, int] = {"server": 100, "service": 200, "gateway": 300}

SERVICE_PROTO_NAMES = {
    "router": "voxmesh.router.v1.RouterService",
    "header": "voxmesh.header.v1.HeaderService",
    "body": "voxmesh.body.v1.BodyService",
    "notification": "voxmesh.notification.v1.NotificationService",
}


@dataclass(frozen=True)
class Component:
    name: str
    role: Role
    command: tuple[str, ...]
    ports: tuple[tuple[str, int], ...]
    probe: Callable[[], ProbeResult]
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def priority(self) -> int:
        return PRIORITY[self.role]


@dataclass(frozen=True)
class StackPaths:
    run_dir: Path

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def data(self) -> Path:
        return self.run_dir / "data"

    @property
    def settings_file(self) -> Path:
        return self.run_dir / "settings.json"

    @property
    def envoy_config(self) -> Path:
        return self.run_dir / "envoy.yaml"

    @property
    def supervisor_config(self) -> Path:
        return self.run_dir / "supervisord.conf"

    @property
    def supervisor_socket(self) -> Path:
        return self.run_dir / "supervisor.sock"

    @property
    def supervisor_pid(self) -> Path:
        return self.run_dir / "supervisord.pid"

    @property
    def pids(self) -> Path:
        return self.run_dir / "pids.json"


def emulator_env(settings: Settings) -> dict[str, str]:
    """What the Google client libraries need to talk to the local emulators."""
    host = settings.host
    return {
        "SPANNER_EMULATOR_HOST": f"{host}:{settings.spanner.emulator_port}",
        "STORAGE_EMULATOR_HOST": f"http://{host}:{settings.gcs.port}",
        # The emulator fails concurrent transactions on multiplexed sessions.
        "GOOGLE_CLOUD_SPANNER_MULTIPLEXED_SESSIONS": "false",
        "GOOGLE_CLOUD_SPANNER_MULTIPLEXED_SESSIONS_FOR_RW": "false",
        "GOOGLE_CLOUD_SPANNER_MULTIPLEXED_SESSIONS_PARTITIONED_OPS": "false",
    }


def instance_name(kind: str, index: int) -> str:
    """``router`` for the first instance, ``router-2``, ``router-3`` … for the others."""
    return kind if index == 0 else f"{kind}-{index + 1}"


def node_id(settings: Settings, kind: str, port: int) -> str:
    """What a service process calls itself (ServiceRunner: kind, host, client port)."""
    return f"{kind}-{settings.host}-{port}"


def instance_cert_files(settings: Settings, kind: ServiceKind, index: int) -> tuple[Path, Path]:
    """(certificate, key) of a service instance, as `voxmesh up` issues them."""
    directory = cert_dir(settings)
    name = instance_name(kind, index)
    return directory / f"{name}.pem", directory / f"{name}-key.pem"


def issue_local_certificates(settings: Settings) -> None:
    """The local CA (kept while valid) and fresh certificates for every process and Envoy."""
    from voxmesh.core.local_pki import LocalCA

    directory = cert_dir(settings)
    ca = LocalCA(directory)
    hosts = tuple(dict.fromkeys((settings.host, "127.0.0.1", "localhost")))
    trust_domain = settings.tls.trust_domain
    for kind in SERVICE_KINDS:
        service = settings.service(kind)
        for index in range(service.instances):
            ca.issue(
                instance_name(kind, index),
                kind=kind,
                node=node_id(settings, kind, service.instance_ports(index)[0]),
                trust_domain=trust_domain,
                hosts=hosts,
            )
    ca.issue("gateway", kind=None, hosts=hosts)


def router_addresses(settings: Settings) -> list[tuple[str, int]]:
    router = settings.router
    return [(settings.host, router.instance_ports(i)[0]) for i in range(router.instances)]


def redis_command(settings: Settings, data_dir: Path) -> tuple[str, ...]:
    """Redis (Valkey) with persistence: every write is appended to an AOF under ``data_dir``
    and fsynced per ``redis.appendfsync`` before it is acknowledged ("always"), so device
    registrations, do-not-disturb, mutes and the push queue survive a restart or a kill -9."""
    return (
        str(binaries.redis_server()),
        *("--bind", settings.host, "--port", str(settings.redis.port)),
        *("--dir", str(data_dir), "--appenddirname", "redis-aof"),
        *("--appendonly", "yes", "--appendfsync", settings.redis.appendfsync),
        *("--save", ""),  # the AOF is the persistence; no RDB snapshots on top
    )


def plan_stack(settings: Settings, paths: StackPaths) -> list[Component]:
    """Every component of the local stack. Raises MissingBinary naming the fix.

    With the embedded stores (SQLite, local files) the Google emulators are not started.
    """
    host = settings.host
    etcd, redis, spanner, gcs, envoy = (
        settings.etcd,
        settings.redis,
        settings.spanner,
        settings.gcs,
        settings.envoy,
    )
    components = [
        Component(
            name="etcd",
            role="server",
            command=(
                str(binaries.etcd()),
                "--name=voxmesh",
                f"--data-dir={paths.data / 'etcd'}",
                f"--listen-client-urls=http://{host}:{etcd.client_port}",
                f"--advertise-client-urls=http://{host}:{etcd.client_port}",
                f"--listen-peer-urls=http://{host}:{etcd.peer_port}",
                f"--initial-advertise-peer-urls=http://{host}:{etcd.peer_port}",
                f"--initial-cluster=voxmesh=http://{host}:{etcd.peer_port}",
                "--log-level=warn",
            ),
            ports=(("client", etcd.client_port), ("peer", etcd.peer_port)),
            probe=lambda: readiness.http_get(
                f"http://{host}:{etcd.client_port}/health", expect_body='"health":"true"'
            ),
        ),
        Component(
            name="redis",
            role="server",
            command=redis_command(settings, paths.data),
            ports=(("redis", redis.port),),
            probe=lambda: readiness.redis_ping(host, redis.port),
        ),
    ]
    if settings.stores.backend == "google":
        components += [
            Component(
                name="spanner-emulator",
                role="server",
                command=(
                    str(binaries.spanner_emulator(spanner.emulator_binary)),
                    "--host_port",
                    f"{host}:{spanner.emulator_port}",
                ),
                ports=(("grpc", spanner.emulator_port),),
                probe=lambda: readiness.grpc_connects(host, spanner.emulator_port),
            ),
            Component(
                name="gcs-emulator",
                role="server",
                command=(
                    str(binaries.fake_gcs_server()),
                    "-scheme",
                    "http",
                    "-host",
                    host,
                    "-port",
                    str(gcs.port),
                    "-backend",
                    "memory",
                    "-external-url",
                    f"http://{host}:{gcs.port}",
                    "-log-level",
                    "warn",
                ),
                ports=(("http", gcs.port),),
                probe=lambda: readiness.http_get(f"http://{host}:{gcs.port}/storage/v1/b"),
            ),
        ]
    probe_ca = None if settings.tls.client_plaintext else client_ca_file(settings)
    for kind in SERVICE_KINDS:
        service = settings.service(kind)
        for index in range(service.instances):
            port, metrics_port = service.instance_ports(index)
            internal_port = service.instance_internal_port(index)
            cert_file, key_file = instance_cert_files(settings, kind, index)
            components.append(
                Component(
                    name=instance_name(kind, index),
                    role="service",
                    command=(
                        sys.executable,
                        "-m",
                        "voxmesh",
                        "--config",
                        str(paths.settings_file),
                        "serve",
                        kind,
                        "--port",
                        str(port),
                        "--internal-port",
                        str(internal_port),
                        "--metrics-port",
                        str(metrics_port),
                    ),
                    ports=(("grpc", port), ("internal", internal_port), ("metrics", metrics_port)),
                    # On the client port (health only on non-routers): the probe holds no
                    # mesh certificate, only the CA to check the server's.
                    probe=functools.partial(
                        readiness.grpc_health,
                        host,
                        port,
                        SERVICE_PROTO_NAMES[kind],
                        ca_file=probe_ca,
                    ),
                    env={
                        **emulator_env(settings),
                        "PYTHONUNBUFFERED": "1",
                        # grpc core logs each failed TLS handshake at INFO (a line per junk
                        # connection, not JSON): errors only.
                        "GRPC_VERBOSITY": "ERROR",
                        "VOXMESH__TLS__CERT_FILE": str(cert_file),
                        "VOXMESH__TLS__KEY_FILE": str(key_file),
                    },
                )
            )
    web = settings.web
    components.append(
        Component(
            name="web",
            role="gateway",
            command=(
                sys.executable,
                "-m",
                "voxmesh",
                "--config",
                str(paths.settings_file),
                "gateway",
                "serve",
            ),
            ports=(("http", web.port),),
            probe=lambda: readiness.http_get(f"http://{host}:{web.port}/config.json"),
            env={"PYTHONUNBUFFERED": "1"},
        )
    )
    components.append(
        Component(
            name="envoy",
            role="gateway",
            command=(
                str(binaries.envoy()),
                "-c",
                str(paths.envoy_config),
                # No shared memory: several Envoys (other stacks, tests) can share a machine.
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warn",
            ),
            ports=(("grpc-web", envoy.port), ("admin", envoy.admin_port)),
            probe=lambda: readiness.http_get(
                f"http://{host}:{envoy.admin_port}/ready", expect_body="LIVE"
            ),
        )
    )
    return components
