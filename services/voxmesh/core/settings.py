"""Settings: frozen dataclasses, built once at start-up from layered TOML and the environment.

``config/defaults.toml`` is the single source of defaults (the dataclasses carry none, so a
setting cannot silently differ between code and file). Validation and coercion of file and
environment values is pydantic's, applied to plain stdlib dataclasses.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic

ENV_PREFIX = "VOXMESH__"
CONFIG_DIR_ENV = "VOXMESH_CONFIG_DIR"

ServiceKind = Literal["router", "header", "body", "notification"]
SERVICE_KINDS: tuple[ServiceKind, ...] = ("router", "header", "body", "notification")

_STRICT = pydantic.ConfigDict(extra="forbid")

Port = Annotated[int, pydantic.Field(ge=0, le=65535)]
INSTANCE_PORT_STRIDE = 10


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class EtcdSettings:
    host: str
    client_port: Port
    peer_port: int
    prefix: str


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class RedisSettings:
    host: str
    port: Port
    appendfsync: Literal["always", "everysec"]
    password_file: str
    tls_ca_file: str


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class SpannerSettings:
    emulator_port: Port
    project: str
    instance: str
    database: Annotated[str, pydantic.Field(min_length=2, max_length=30)]
    emulator_binary: str


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class GcsSettings:
    port: Port
    project: str
    bucket: str


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class EnvoySettings:
    port: Port
    admin_port: int
    routers_host: str
    cors_allow_origin_regex: tuple[str, ...]
    requests_per_ip_per_s: Annotated[int, pydantic.Field(ge=1)]
    requests_per_ip_burst: Annotated[int, pydantic.Field(ge=1)]
    rate_limit_max_tracked_ips: Annotated[int, pydantic.Field(ge=1)]


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class WebSettings:
    port: Port
    static_dir: str
    oidc_scope: str
    endpoints_file: str


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class SupervisorSettings:
    ready_timeout_s: Annotated[float, pydantic.Field(gt=0)]
    stop_timeout_s: Annotated[float, pydantic.Field(gt=0)]
    autorestart: bool


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class LogSettings:
    level: Literal["debug", "info", "warning", "error"]
    json: bool


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class ServiceSettings:
    # Client port: RouterService on routers; health and reflection on every process.
    port: Port
    # Internal port: mesh services over mutual TLS (router peers, header, body, notification).
    internal_port: Port
    metrics_port: Annotated[int, pydantic.Field(ge=0, le=65535)]
    max_concurrent_rpcs: Annotated[int, pydantic.Field(gt=0)]
    # Calls and streams one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_
    # STREAMS): a client beyond it waits for one of its own to finish; others are not affected.
    max_streams_per_connection: Annotated[int, pydantic.Field(gt=0)]
    drain_grace_s: Annotated[float, pydantic.Field(ge=0)]
    # After leaving the ring and reporting NOT_SERVING, keep serving this long so callers
    # (Envoy's health checks, other nodes' ring watches) move away before the port closes.
    drain_delay_s: Annotated[float, pydantic.Field(ge=0)]
    # Processes of this kind in the local stack; instance i listens on port + 10·i.
    instances: Annotated[int, pydantic.Field(ge=1, le=9)]

    def instance_internal_port(self, index: int) -> int:
        """Internal (mutual TLS) port of instance ``index`` (0-based) in the local stack."""
        return self.internal_port + INSTANCE_PORT_STRIDE * index

    def instance_ports(self, index: int) -> tuple[int, int]:
        """(gRPC port, metrics port) of instance ``index`` (0-based) in the local stack."""
        return self.port + INSTANCE_PORT_STRIDE * index, self.metrics_port + (
            INSTANCE_PORT_STRIDE * index
        )


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class LimitSettings:
    max_chunk_bytes: Annotated[int, pydantic.Field(gt=0)]
    max_message_bytes: Annotated[int, pydantic.Field(gt=0)]
    max_text_bytes: Annotated[int, pydantic.Field(gt=0)]
    max_members_per_thread: Annotated[int, pydantic.Field(ge=2)]
    max_grpc_message_bytes: Annotated[int, pydantic.Field(gt=0)]


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class BucketSettings:
    """A token bucket: a sustained rate per second and a burst, per user and per device."""

    user_per_s: Annotated[float, pydantic.Field(gt=0)]
    user_burst: Annotated[int, pydantic.Field(ge=1)]
    device_per_s: Annotated[float, pydantic.Field(gt=0)]
    device_burst: Annotated[int, pydantic.Field(ge=1)]


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class RateLimitSettings:
    enabled: bool
    calls: BucketSettings
    message_starts: BucketSettings
    chunks: BucketSettings
    texts: BucketSettings
    max_tracked_buckets: Annotated[int, pydantic.Field(ge=1)]


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class StoreSettings:
    backend: Literal["google", "embedded"]
    sqlite_path: str
    files_root: str


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class BodyStoreSettings:
    group_commit_ms: Annotated[int, pydantic.Field(ge=0)]
    group_commit_max_chunks: Annotated[int, pydantic.Field(gt=0)]
    max_concurrent_writes: Annotated[int, pydantic.Field(gt=0)]
    abandon_after_s: Annotated[float, pydantic.Field(gt=0)]
    send_stop_grace_s: Annotated[float, pydantic.Field(ge=0)]
    read_batch_max_chunks: Annotated[int, pydantic.Field(gt=0)]
    failover_wait_s: Annotated[float, pydantic.Field(gt=0)]
    link_linger_ms: Annotated[float, pydantic.Field(ge=0, le=100)]
    part_interval_s: Annotated[float, pydantic.Field(gt=0)]
    part_max_bytes: Annotated[int, pydantic.Field(gt=0)]


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class RingSettings:
    lease_ttl_s: Annotated[int, pydantic.Field(ge=2)]
    vnodes: Annotated[int, pydantic.Field(gt=0)]
    preference_list_size: Annotated[int, pydantic.Field(gt=0)]
    probe_interval_s: Annotated[float, pydantic.Field(gt=0)]
    probe_timeout_s: Annotated[float, pydantic.Field(gt=0)]
    probe_misses_to_suspect: Annotated[int, pydantic.Field(ge=1)]
    max_attempts: Annotated[int, pydantic.Field(ge=1, le=5)]
    retry_budget_tokens: Annotated[float, pydantic.Field(gt=0, le=1000)]
    retry_budget_ratio: Annotated[float, pydantic.Field(gt=0, le=1)]


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class UpdatesSettings:
    queue_max: Annotated[int, pydantic.Field(gt=0)]
    heartbeat_s: Annotated[float, pydantic.Field(gt=0)]
    resync_s: Annotated[float, pydantic.Field(gt=0)]


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class NotificationSenderSettings:
    webhook_connect_timeout_s: Annotated[float, pydantic.Field(gt=0)]
    webhook_timeout_s: Annotated[float, pydantic.Field(gt=0)]
    push_attempts: Annotated[int, pydantic.Field(ge=1)]
    retry_initial_backoff_s: Annotated[float, pydantic.Field(gt=0)]
    retry_max_backoff_s: Annotated[float, pydantic.Field(gt=0)]
    max_in_flight_pushes: Annotated[int, pydantic.Field(gt=0)]
    claim_idle_s: Annotated[float, pydantic.Field(gt=0)]
    dedup_ttl_s: Annotated[int, pydantic.Field(gt=0)]
    dead_letter_ttl_s: Annotated[int, pydantic.Field(gt=0)]
    dead_letter_stream_max: Annotated[int, pydantic.Field(gt=0)]
    unread_rebuild_max_per_thread: Annotated[int, pydantic.Field(gt=0)]
    max_live_report_ttl_s: Annotated[float, pydantic.Field(gt=0)]
    allow_private_webhooks: bool
    fcm_endpoint: str
    fcm_project: str
    fcm_credentials_file: str
    apns_endpoint: str
    apns_topic: str
    apns_key_file: str
    apns_key_id: str
    apns_team_id: str


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class PresenceSettings:
    live_report_ttl_s: Annotated[float, pydantic.Field(gt=0)]
    away_after_s: Annotated[float, pydantic.Field(gt=0)]
    typing_ttl_s: Annotated[float, pydantic.Field(gt=0)]
    fanout_interval_s: Annotated[float, pydantic.Field(gt=0)]
    fanout_max_events: Annotated[int, pydantic.Field(gt=0)]
    contacts_cache_s: Annotated[float, pydantic.Field(ge=0)]
    notices_queue_max: Annotated[int, pydantic.Field(gt=0)]
    notices_concurrency: Annotated[int, pydantic.Field(gt=0)]
    notices_call_timeout_s: Annotated[float, pydantic.Field(gt=0)]
    notices_retry_deadline_s: Annotated[float, pydantic.Field(gt=0)]


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class TracingSettings:
    enabled: bool
    otlp_endpoint: str
    otlp_insecure: bool
    sample_ratio: Annotated[float, pydantic.Field(ge=0, le=1)]
    gcp_project: str


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class AuthSettings:
    provider: Literal["local", "oidc"]
    issuer: Annotated[str, pydantic.Field(min_length=1)]
    audience: Annotated[str, pydantic.Field(min_length=1)]
    leeway_s: Annotated[int, pydantic.Field(ge=0, le=300)]
    hs256_secret: str
    token_ttl_s: Annotated[int, pydantic.Field(gt=0)]
    oidc_algorithms: Annotated[tuple[Literal["RS256", "ES256"], ...], pydantic.Field(min_length=1)]
    jwks_uri: str
    jwks_refresh_s: Annotated[float, pydantic.Field(gt=0)]
    jwks_min_refetch_s: Annotated[float, pydantic.Field(ge=0)]
    jwks_fetch_timeout_s: Annotated[float, pydantic.Field(gt=0)]


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class IceServerSettings:
    urls: tuple[str, ...]
    username: str = ""
    credential: str = ""


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class WebRtcSettings:
    enabled: bool
    host_addresses: tuple[str, ...]
    announced_address: str
    udp_port_min: Port
    udp_port_max: Port
    ice_servers: tuple[IceServerSettings, ...]
    max_peer_connections: Annotated[int, pydantic.Field(ge=0)]
    max_listen_seconds: Annotated[float, pydantic.Field(gt=0)]


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class TlsSettings:
    trust_domain: Annotated[str, pydantic.Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")]
    client_plaintext: bool
    cert_dir: str
    ca_file: str
    cert_file: str
    key_file: str
    client_cert_file: str
    client_key_file: str
    client_ca_file: str
    gateway_cert_file: str
    gateway_key_file: str
    reload_check_s: Annotated[float, pydantic.Field(gt=0)]


@pydantic.dataclasses.dataclass(frozen=True, config=_STRICT)
class Settings:
    environment: str
    host: str
    advertise_host: str
    zone: str
    run_dir: Path
    etcd: EtcdSettings
    redis: RedisSettings
    spanner: SpannerSettings
    gcs: GcsSettings
    envoy: EnvoySettings
    web: WebSettings
    supervisor: SupervisorSettings
    log: LogSettings
    router: ServiceSettings
    header: ServiceSettings
    body: ServiceSettings
    notification: ServiceSettings
    limits: LimitSettings
    rate_limits: RateLimitSettings
    stores: StoreSettings
    body_store: BodyStoreSettings
    auth: AuthSettings
    tls: TlsSettings
    updates: UpdatesSettings
    rings: RingSettings
    notification_sender: NotificationSenderSettings
    presence: PresenceSettings
    webrtc: WebRtcSettings
    tracing: TracingSettings

    @property
    def etcd_host(self) -> str:
        return self.etcd.host or self.host

    @property
    def redis_host(self) -> str:
        return self.redis.host or self.host

    @property
    def reachable_host(self) -> str:
        """The host other processes reach this one at (what the rings record)."""
        return self.advertise_host or self.host

    @property
    def sqlite_path(self) -> Path:
        path = self.stores.sqlite_path
        return Path(path) if path else self.run_dir / "data" / "headers.sqlite3"

    @property
    def files_root(self) -> Path:
        path = self.stores.files_root
        return Path(path) if path else self.run_dir / "data" / "bodies"

    @property
    def web_static_dir(self) -> Path:
        return Path(self.web.static_dir)

    @property
    def router_endpoints_file(self) -> Path:
        path = self.web.endpoints_file
        return Path(path) if path else self.run_dir / "eds" / "routers.json"

    def service(self, kind: ServiceKind) -> ServiceSettings:
        value: ServiceSettings = getattr(self, kind)
        return value


class SettingsError(ValueError):
    """The configuration cannot be loaded; the message says which file or key is wrong."""


def config_dir() -> Path:
    """``$VOXMESH_CONFIG_DIR``, else ``config/`` of the source tree this package sits in."""
    explicit = os.environ.get(CONFIG_DIR_ENV)
    if explicit:
        return Path(explicit)
    return Path(__file__).resolve().parents[3] / "config"


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path) -> dict[str, Any]:
    """Read a settings layer: TOML, or JSON (what `voxmesh up` hands its services)."""
    try:
        with path.open("rb") as fh:
            data: dict[str, Any] = json.load(fh) if path.suffix == ".json" else tomllib.load(fh)
            return data
    except FileNotFoundError as exc:
        raise SettingsError(f"config file not found: {path}") from exc
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise SettingsError(f"{path}: {exc}") from exc


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        value: Any = raw
        if raw.startswith(
            "["
        ):  # lists come as JSON: VOXMESH__ENVOY__CORS_ALLOW_ORIGIN_REGEX='["..."]'
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise SettingsError(f"{name}: not a JSON list: {exc}") from exc
        node = layer
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return layer


def _check_auth(settings: Settings) -> None:
    """The local development issuer is for ``environment = "local"`` only; OIDC over https."""
    auth = settings.auth
    if settings.environment == "local":
        return
    if auth.provider == "local":
        raise SettingsError(
            f"environment {settings.environment!r} cannot use the local development token "
            f'issuer: set auth.provider = "oidc" with auth.issuer and auth.audience '
            f"(VOXMESH__AUTH__PROVIDER=oidc)"
        )
    for name, url in (("auth.issuer", auth.issuer), ("auth.jwks_uri", auth.jwks_uri)):
        if url and not url.startswith("https://"):
            raise SettingsError(
                f"{name} must be an https URL outside environment 'local', not {url!r}"
            )


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the one Settings object of a process. ``overrides`` win over everything (tests)."""
    environ = os.environ if environ is None else environ
    directory = config_dir()
    data = _read_toml(directory / "defaults.toml")
    env_layer = _env_layer(environ)
    environment = str(env_layer.get("environment", data.get("environment", "local")))
    per_env = directory / f"{environment}.toml"
    if per_env.exists():
        data = _merge(data, _read_toml(per_env))
    if config_file is not None:
        data = _merge(data, _read_toml(config_file))
    data = _merge(data, env_layer)
    if overrides:
        data = _merge(data, overrides)
    try:
        settings = pydantic.TypeAdapter(Settings).validate_python(data)
    except pydantic.ValidationError as exc:
        raise SettingsError(f"invalid settings: {exc}") from exc
    _check_auth(settings)
    if settings.environment != "local" and settings.tls.client_plaintext:
        raise SettingsError(
            f"environment {settings.environment!r} sets tls.client_plaintext: plaintext client "
            f"ports are for environment = 'local' only; configure tls.client_cert_file"
        )
    relative: dict[str, Any] = {}
    if not settings.run_dir.is_absolute():
        # A relative run dir is relative to the project root, not to wherever a command runs.
        relative["run_dir"] = str(directory.parent / settings.run_dir)
    if not Path(settings.web.static_dir).is_absolute():
        relative["web"] = {"static_dir": str(directory.parent / settings.web.static_dir)}
    if relative:
        settings = pydantic.TypeAdapter(Settings).validate_python(_merge(data, relative))
    return settings
