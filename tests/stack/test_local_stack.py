"""The real local stack, as `voxmesh up` runs it, on free ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests import grpc_web
from tests.conftest import require_spanner_emulator
from tests.mesh_pki import client_port_channel, mesh_channel
from tests.ports import stack_overrides
from voxmesh.core.client_auth import issue_token
from voxmesh.core.settings import SERVICE_KINDS, Settings, load_settings
from voxmesh.router.v1 import router_service_pb2 as router_pb
from voxmesh.stack.components import SERVICE_PROTO_NAMES
from voxmesh.stack.local_stack import LocalStack, StackError

pytestmark = pytest.mark.stack


def test_every_component_is_running_and_healthy(local_stack: LocalStack) -> None:
    statuses = {s.component.name: s for s in local_stack.status()}
    assert set(statuses) == {
        "etcd",
        "redis",
        "spanner-emulator",
        "gcs-emulator",
        "router",
        "header",
        "body",
        "notification",
        "web",
        "envoy",
    }
    unhealthy = {n: (s.state, s.probe.detail) for n, s in statuses.items() if not s.healthy}
    assert unhealthy == {}
    assert all(s.pid > 0 for s in statuses.values())


@pytest.mark.parametrize("kind", SERVICE_KINDS)
async def test_each_service_answers_health_over_a_real_channel(
    local_stack: LocalStack, kind: str
) -> None:
    settings = local_stack.settings
    service = getattr(settings, kind)
    # The client port (TLS, no client certificate) and the internal port (mutual TLS).
    for channel in (
        client_port_channel(settings, f"{settings.host}:{service.port}"),
        mesh_channel(settings, f"{settings.host}:{service.internal_port}", kind, "router"),
    ):
        async with channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE_PROTO_NAMES[kind]), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _gateway(settings: Settings) -> str:
    return grpc_web.gateway_url(settings)


def test_grpc_web_through_envoy_reaches_a_router(local_stack: LocalStack) -> None:
    settings = local_stack.settings
    reply = grpc_web.call(
        _gateway(settings),
        "voxmesh.router.v1.RouterService/Discover",
        router_pb.DiscoverRequest(user_id="alice"),
        token=issue_token(settings.auth, "alice"),
        context=grpc_web.tls_context(settings),
    )
    assert _gateway(settings).startswith("https://")  # the tests' stack runs TLS for real
    assert reply.http_status == 200
    assert reply.grpc_status == 0, reply.grpc_message
    assert reply.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "grpc-status" in reply.headers["access-control-expose-headers"]
    (message,) = reply.messages
    routers = router_pb.DiscoverResponse.FromString(message).routers
    assert [r.address for r in routers] == [f"{settings.host}:{settings.router.port}"]
    assert reply.trailers.get("x-request-id")  # Envoy's request id reached the router's logs


def test_grpc_web_errors_come_back_with_status_and_message(local_stack: LocalStack) -> None:
    settings = local_stack.settings
    token = issue_token(settings.auth, "alice")
    unauthenticated = grpc_web.call(
        _gateway(settings),
        "voxmesh.router.v1.RouterService/Discover",
        router_pb.DiscoverRequest(user_id="alice"),
        context=grpc_web.tls_context(settings),
    )
    assert unauthenticated.grpc_status == grpc.StatusCode.UNAUTHENTICATED.value[0]
    invalid = grpc_web.call(
        _gateway(settings),
        "voxmesh.router.v1.RouterService/Discover",
        router_pb.DiscoverRequest(user_id=""),
        token=token,
        context=grpc_web.tls_context(settings),
    )
    assert invalid.grpc_status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "user_id is required" in invalid.grpc_message
    typing = grpc_web.call(
        _gateway(settings),
        "voxmesh.router.v1.RouterService/SetTyping",
        router_pb.SetTypingRequest(),
        token=token,
        context=grpc_web.tls_context(settings),
    )
    assert typing.grpc_status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "thread_id is required" in typing.grpc_message


def test_cors_preflight_allows_configured_origins_only(local_stack: LocalStack) -> None:
    settings = local_stack.settings

    def preflight(origin: str) -> dict[str, str]:
        request = urllib.request.Request(
            f"{_gateway(settings)}/voxmesh.router.v1.RouterService/Discover",
            method="OPTIONS",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,x-grpc-web,authorization",
            },
        )
        with urllib.request.urlopen(
            request, timeout=5, context=grpc_web.tls_context(settings)
        ) as response:
            return {k.lower(): v for k, v in response.headers.items()}

    allowed = preflight("http://localhost:5173")
    assert allowed["access-control-allow-origin"] == "http://localhost:5173"
    assert "authorization" in allowed["access-control-allow-headers"]
    assert "access-control-allow-origin" not in preflight("https://evil.example")


def test_the_web_app_and_its_settings_are_served_through_envoy(local_stack: LocalStack) -> None:
    import json
    import urllib.error

    base = _gateway(local_stack.settings)
    tls = grpc_web.tls_context(local_stack.settings)
    with urllib.request.urlopen(base + "/config.json", timeout=10, context=tls) as response:
        assert json.load(response)["devSignIn"] is True
    # The app itself when it is built (make web), else a page that says how to build it.
    try:
        with urllib.request.urlopen(base + "/", timeout=10, context=tls) as response:
            assert b'<div id="app">' in response.read()
    except urllib.error.HTTPError as exc:
        assert exc.code == 503 and b"make web" in exc.read()


def test_envoy_admin_is_on_loopback_and_sees_healthy_routers(local_stack: LocalStack) -> None:
    settings = local_stack.settings
    url = f"http://{settings.host}:{settings.envoy.admin_port}/clusters"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert f"routers::{settings.host}:{settings.router.port}::health_flags::healthy" in text


async def test_real_clients_reach_etcd_and_redis(local_stack: LocalStack) -> None:
    import aetcd
    import redis.asyncio as aioredis

    settings = local_stack.settings
    async with aetcd.Client(host=settings.host, port=settings.etcd.client_port) as etcd:
        await etcd.put(b"/voxmesh/v1/test/key", b"value")
        got = await etcd.get(b"/voxmesh/v1/test/key")
        assert got is not None and got.value == b"value"
    client = aioredis.Redis(host=settings.host, port=settings.redis.port)
    try:
        assert await client.ping()
        await client.set("voxmesh:test", "1", ex=10)
        assert await client.get("voxmesh:test") == b"1"
    finally:
        await client.aclose()


def test_real_clients_reach_the_spanner_and_gcs_emulators(
    local_stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import google.cloud.storage as storage
    from google.cloud import spanner

    from voxmesh.stack.components import emulator_env

    settings = local_stack.settings
    for key, value in emulator_env(settings).items():
        monkeypatch.setenv(key, value)
    client = spanner.Client(project=settings.spanner.project)
    instance = client.instance(
        "smoke",
        configuration_name=f"projects/{settings.spanner.project}/instanceConfigs/emulator-config",
        node_count=1,
    )
    instance.create().result(timeout=30)
    database = instance.database(
        "smoke-db", ddl_statements=["CREATE TABLE T (K STRING(36)) PRIMARY KEY (K)"]
    )
    database.create().result(timeout=30)
    with database.batch() as batch:
        batch.insert("T", ("K",), [("a",)])
    with database.snapshot() as snapshot:
        assert list(snapshot.execute_sql("SELECT K FROM T")) == [["a"]]

    gcs = storage.Client(project=settings.gcs.project)
    bucket = gcs.create_bucket("smoke-bucket")
    bucket.blob("bodies/t/m/0").upload_from_string(b"chunk", if_generation_match=0)
    assert bucket.blob("bodies/t/m/0").download_as_bytes() == b"chunk"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_dead(pid: int, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _voxmesh(settings_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voxmesh", "--config", str(settings_file), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_cli_up_status_down_leaves_no_process_behind(tmp_path: Path) -> None:
    require_spanner_emulator()
    import json

    overrides = stack_overrides(str(tmp_path / "run"))
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(overrides))

    up = _voxmesh(settings_file, "up")
    assert up.returncode == 0, up.stderr
    stack = LocalStack(load_settings(settings_file))
    pids = stack.recorded_pids()
    assert set(pids) >= {"etcd", "redis", "envoy", "router", "supervisord"}
    status = _voxmesh(settings_file, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("healthy") == 10 and "NOT healthy" not in status.stdout

    again = _voxmesh(settings_file, "up")
    assert again.returncode == 1 and "already running" in again.stderr

    down = _voxmesh(settings_file, "down")
    assert down.returncode == 0, down.stderr
    assert "killed leftover" not in down.stdout  # supervisord stopped everything itself
    alive = [name for name, pid in pids.items() if _alive(pid)]
    assert alive == []
    run_dir = str(tmp_path / "run")
    leftovers = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if any(run_dir in part for part in (p.info["cmdline"] or []))
    ]
    assert leftovers == []
    after = _voxmesh(settings_file, "status")
    assert after.returncode == 1 and "DOWN" in after.stdout


def test_down_sweeps_children_even_if_supervisord_was_killed(tmp_path: Path) -> None:
    require_spanner_emulator()
    overrides = stack_overrides(str(tmp_path / "run"))
    stack = LocalStack(load_settings(overrides=overrides))
    stack.up()
    pids = stack.recorded_pids()
    os.kill(pids["supervisord"], 9)
    assert _wait_dead(pids["supervisord"])
    assert _alive(pids["etcd"]) and _alive(pids["router"])  # orphaned, still running
    swept = stack.down()
    assert "etcd" in swept and "router" in swept
    still_alive = [name for name, pid in pids.items() if not _wait_dead(pid)]
    assert still_alive == []


def test_a_taken_port_is_named_with_the_fix(tmp_path: Path) -> None:
    import socket

    overrides = stack_overrides(str(tmp_path / "run"))
    settings = load_settings(overrides=overrides)
    with socket.socket() as holder:
        holder.bind((settings.host, settings.redis.port))
        holder.listen()
        with pytest.raises(StackError) as caught:
            LocalStack(settings).check_ports()
    message = str(caught.value)
    assert f"{settings.redis.port} (redis redis)" in message
    assert "VOXMESH__" in message and "voxmesh down" in message
