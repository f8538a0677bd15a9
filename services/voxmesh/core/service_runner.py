"""One runner for every voxmesh service: grpc.aio servers with the shared machinery.

Two ports per process, each its own grpc server: the **client port** serves the services
registered as ``Exposure.CLIENT`` (RouterService) plus health and reflection, over TLS (or
plaintext where ``tls.client_plaintext`` allows it: local only); the **internal port** serves
the mesh services over mutual TLS, each call's caller checked against the one table in
``mesh_identity``. Health checking, reflection, a Prometheus endpoint, the interceptors,
bounded concurrency and graceful drain on SIGTERM: NOT_SERVING first, then stop accepting,
let streams finish within the grace period, exit.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from voxmesh.core.dynamic_config import DynamicSettings, SettingsListener
from voxmesh.core.mesh_identity import CallerIdentityInterceptor
from voxmesh.core.mesh_tls import ReloadingTls, client_port_files, mesh_files
from voxmesh.core.metrics_endpoint import start_metrics_endpoint
from voxmesh.core.ring_membership import Member, RingMembership
from voxmesh.core.rpc_interceptors import (
    ErrorMappingInterceptor,
    MetricsInterceptor,
    RequestContextInterceptor,
    RequestDecodingInterceptor,
    ServerInterceptor,
)
from voxmesh.core.settings import ServiceKind, Settings
from voxmesh.core.structured_logging import get_logger
from voxmesh.core.telemetry import server_interceptors

_log = get_logger(__name__)
# A draining server stops once no new call has reached it for this long.
_DRAIN_QUIET_S = 0.5


class Exposure(enum.Enum):
    """Which port serves a service."""

    CLIENT = "client"  # the client port: users (through Envoy or directly), TLS
    INTERNAL = "internal"  # the internal port: mesh processes only, mutual TLS


@dataclass(frozen=True)
class Registration:
    """A servicer and the generated function that adds it to a server."""

    service_name: str  # full proto name, for health and reflection
    servicer: object
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    public: bool = True  # reported by health under its own name
    exposure: Exposure = Exposure.INTERNAL


DrainHook = Callable[[], Awaitable[None]]
StartedHook = Callable[[str, str], None]  # (node id, "host:port") once the port is bound
LifecycleHook = Callable[[], Awaitable[None]]


@dataclass
class ServiceParts:
    """What a service module hands the runner: servicers and their lifecycle."""

    registrations: list[Registration]
    started_hooks: list[StartedHook] = field(default_factory=list)
    # Before the port opens (open stores, connect peers) / after the drain (close them).
    startup_hooks: list[LifecycleHook] = field(default_factory=list)
    shutdown_hooks: list[LifecycleHook] = field(default_factory=list)
    # Run inside the error mapping (so their domain errors become statuses), e.g. auth.
    interceptors: list[ServerInterceptor] = field(default_factory=list)
    # The service's ring membership, if it watches rings; else the runner registers it alone.
    membership: RingMembership | None = None
    # Called with the new settings when dynamic settings in etcd change.
    settings_listeners: list[SettingsListener] = field(default_factory=list)


@dataclass
class ServiceRunner:
    kind: ServiceKind
    settings: Settings
    registrations: Sequence[Registration]
    port: int | None = None  # None: the configured port; 0: any free port (tests)
    metrics_port: int | None = None
    # None: the configured internal port, or any free port when ``port`` is 0.
    internal_port: int | None = None
    drain_hooks: list[DrainHook] = field(default_factory=list)
    started_hooks: list[StartedHook] = field(default_factory=list)
    startup_hooks: list[LifecycleHook] = field(default_factory=list)
    shutdown_hooks: list[LifecycleHook] = field(default_factory=list)
    # Run inside the error mapping (so their domain errors become statuses), e.g. auth.
    interceptors: list[ServerInterceptor] = field(default_factory=list)
    # Registered in etcd once serving, left first on drain; None = not in any ring (tests).
    membership: RingMembership | None = None
    # False: watch the rings (a router must) without registering this process in them.
    register_in_ring: bool = True
    settings_listeners: list[SettingsListener] = field(default_factory=list)
    # Watch <prefix>/config in etcd and apply dynamic settings (real processes, not tests).
    dynamic: DynamicSettings | None = None

    def __post_init__(self) -> None:
        self._server: grpc.aio.Server | None = None
        self._internal_server: grpc.aio.Server | None = None
        self.mesh_tls: ReloadingTls | None = None  # this process's identity, once started
        # The grpc stubs predate grpc_health's asyncio servicer.
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._metrics_server: Any = None
        self._serving = False  # /healthz on the metrics port
        self._stopped = asyncio.Event()
        self.bound_port = 0
        self.bound_internal_port = 0
        self.bound_metrics_port = 0
        self._metrics = MetricsInterceptor(self.kind)
        self.address = ""  # the client port
        self.internal_address = ""
        self.node_id = ""

    @property
    def service_names(self) -> list[str]:
        return [r.service_name for r in self.registrations]

    def _grpc_server(
        self, exposure: Exposure, extra: Sequence[grpc.aio.ServerInterceptor[Any, Any]]
    ) -> grpc.aio.Server:
        """A server with the shared interceptors and the services of ``exposure``."""
        limit = self.settings.limits.max_grpc_message_bytes
        service_settings = self.settings.service(self.kind)
        server = grpc.aio.server(
            interceptors=[
                # Tracing first (when on), so every later interceptor and log line is in the span.
                *server_interceptors(),
                RequestContextInterceptor(),
                self._metrics,
                ErrorMappingInterceptor(self.kind),
                *extra,
                *self.interceptors,
                # Innermost: undecodable bytes are refused after authentication.
                RequestDecodingInterceptor(),
            ],
            # Beyond this grpc answers RESOURCE_EXHAUSTED instead of queueing: bounded work.
            maximum_concurrent_rpcs=service_settings.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.max_concurrent_streams", service_settings.max_streams_per_connection),
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
        )
        served = [r for r in self.registrations if r.exposure is exposure]
        for registration in served:
            registration.add_to_server(registration.servicer, server)
        # One health servicer on both ports: the client port reports the internal services'
        # health too (for probes that hold no mesh certificate).
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [*(r.service_name for r in served), health.SERVICE_NAME, reflection.SERVICE_NAME],
            server,
        )
        return server

    def _bind(self, server: grpc.aio.Server, port: int, credentials: Any) -> int:
        address = f"{self.settings.host}:{port}"
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
        if bound == 0:
            raise OSError(f"cannot bind {address}: the port is in use or the host is wrong")
        return bound

    def _credentials(self) -> tuple[grpc.ServerCredentials | None, grpc.ServerCredentials]:
        """(client port, internal port) credentials; certificate files are re-read on change."""
        tls = self.settings.tls
        self.mesh_tls = ReloadingTls(mesh_files(self.settings, self.kind), tls.reload_check_s)
        internal = self.mesh_tls.server_credentials(require_client_auth=True)
        if tls.client_plaintext:
            return None, internal
        files = client_port_files(self.settings, self.kind)
        own = files.cert_file == self.mesh_tls.files.cert_file
        client_tls = self.mesh_tls if own else ReloadingTls(files, tls.reload_check_s)
        return client_tls.server_credentials(require_client_auth=False), internal

    async def start(self) -> int:
        service_settings = self.settings.service(self.kind)
        client_credentials, internal_credentials = self._credentials()
        for startup in self.startup_hooks:
            await startup()
        server = self._grpc_server(Exposure.CLIENT, [])
        internal_server = self._grpc_server(
            Exposure.INTERNAL, [CallerIdentityInterceptor(self.settings.tls.trust_domain)]
        )
        port = service_settings.port if self.port is None else self.port
        internal_port = self.internal_port
        if internal_port is None:
            internal_port = 0 if self.port == 0 else service_settings.internal_port
        self.bound_port = self._bind(server, port, client_credentials)
        self.bound_internal_port = self._bind(internal_server, internal_port, internal_credentials)
        metrics_port = (
            service_settings.metrics_port if self.metrics_port is None else self.metrics_port
        )
        self._metrics_server = start_metrics_endpoint(
            self.settings.host, metrics_port, lambda: self._serving
        )
        self.bound_metrics_port = self._metrics_server.server_port
        self.address = f"{self.settings.reachable_host}:{self.bound_port}"
        self.internal_address = f"{self.settings.reachable_host}:{self.bound_internal_port}"
        self.node_id = f"{self.kind}-{self.settings.reachable_host}-{self.bound_port}"
        for hook in self.started_hooks:
            hook(self.node_id, self.address)
        await internal_server.start()
        self._internal_server = internal_server
        await server.start()
        self._server = server
        for name in ["", *self.service_names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._serving = True
        if self.membership is not None:
            me = Member(
                self.kind, self.node_id, self.address, self.settings.zone, self.internal_address
            )
            await self.membership.start(me if self.register_in_ring else None)
        if self.dynamic is not None:
            for listener in self.settings_listeners:
                self.dynamic.on_change(listener)
            await self.dynamic.start()
        _log.info(
            "serving",
            kind=self.kind,
            port=self.bound_port,
            internal_port=self.bound_internal_port,
            metrics_port=self.bound_metrics_port,
            client_tls=not self.settings.tls.client_plaintext,
            services=self.service_names,
        )
        return self.bound_port

    async def drain(self, grace_s: float | None = None) -> None:
        """Leave rings (hooks), report NOT_SERVING, stop accepting, finish streams, close."""
        if self._server is None or self._stopped.is_set():
            return
        grace = self.settings.service(self.kind).drain_grace_s if grace_s is None else grace_s
        _log.info("draining", grace_s=grace)
        if self.membership is not None:
            await self.membership.leave()  # first: new traffic goes elsewhere from now on
        for hook in self.drain_hooks:
            await hook()
        await self._health.enter_graceful_shutdown()
        self._serving = False
        delay = self.settings.service(self.kind).drain_delay_s if grace_s is None else 0.0
        if delay:
            # Still serving: Envoy's health checks and the rings' watchers move callers away.
            await asyncio.sleep(delay)
            # Then until they have (no new call for a moment), for at most another delay: a
            # call arriving as the server stops would be cancelled.
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                quiet_for = time.monotonic() - self._metrics.last_call_started
                if quiet_for >= _DRAIN_QUIET_S:
                    break
                await asyncio.sleep(min(_DRAIN_QUIET_S - quiet_for, deadline - time.monotonic()))
        stopping = [self._server.stop(grace)]
        if self._internal_server is not None:
            stopping.append(self._internal_server.stop(grace))
        await asyncio.gather(*stopping)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        for shutdown in self.shutdown_hooks:
            await shutdown()
        if self.membership is not None:
            await self.membership.close()
        if self.dynamic is not None:
            await self.dynamic.close()
        self._stopped.set()
        _log.info("stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def serve_until_signalled(self) -> None:
        """Start, then drain on the first SIGTERM or SIGINT."""
        await self.start()
        # Everything alive now (modules, descriptors, the servers) lives as long as the process:
        # move it out of the collector's reach. A full collection of it took ~45 ms on an idle
        # core (more under load), a stall every live stream on the process felt each time.
        gc.freeze()
        loop = asyncio.get_running_loop()
        drain_task: list[asyncio.Task[None]] = []

        def on_signal(signum: int) -> None:
            _log.info("signal", signal=signal.Signals(signum).name)
            if not drain_task:
                drain_task.append(loop.create_task(self.drain()))

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        await self.wait_stopped()
