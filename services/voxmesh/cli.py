"""The `voxmesh` command line: run the local stack, run one service, render configs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer

from voxmesh.core.settings import SERVICE_KINDS, Settings, SettingsError, load_settings
from voxmesh.stack.binaries import MissingBinary

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
gateway_app = typer.Typer(no_args_is_help=True, help="The Envoy gRPC-web gateway.")
app.add_typer(gateway_app, name="gateway")
token_app = typer.Typer(no_args_is_help=True, help="Client tokens (JWT) for local use.")
app.add_typer(token_app, name="token")
config_app = typer.Typer(
    no_args_is_help=True,
    help="Dynamic settings in etcd (limits, timeouts, vnodes), watched by every process.",
)
app.add_typer(config_app, name="config")

_state: dict[str, Path | None] = {"config": None}


@app.callback()
def _options(
    config: Annotated[
        Path | None,
        typer.Option(
            envvar="VOXMESH_CONFIG",
            help="A settings file (TOML or JSON) layered over config/defaults.toml.",
        ),
    ] = None,
) -> None:
    _state["config"] = config


def _settings() -> Settings:
    try:
        return load_settings(_state["config"])
    except SettingsError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from exc


def _running_settings() -> Settings:
    """The effective settings of the stack `voxmesh up` started, if one is running here."""
    settings = _settings()
    effective = settings.run_dir / "settings.json"
    if effective.exists():
        try:
            return load_settings(effective)
        except SettingsError:
            pass  # an older, incompatible run dir: fall back to the configured settings
    return settings


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(1)


@app.command()
def up(
    embedded: Annotated[
        bool, typer.Option(help="Run on SQLite and local files instead of the emulators.")
    ] = False,
    routers: Annotated[int | None, typer.Option(help="Router processes.")] = None,
    headers: Annotated[int | None, typer.Option(help="Header store processes.")] = None,
    bodies: Annotated[int | None, typer.Option(help="Body store processes.")] = None,
    notifiers: Annotated[int | None, typer.Option(help="Notification sender processes.")] = None,
) -> None:
    """Start etcd, Redis, the Spanner and GCS emulators, every service and Envoy."""
    from voxmesh.stack import binaries
    from voxmesh.stack.local_stack import LocalStack, StackError

    settings = _settings()
    counts = {"router": routers, "header": headers, "body": bodies, "notification": notifiers}
    for kind, count in counts.items():
        if count is not None:
            service = dataclasses.replace(settings.service(kind), instances=count)  # type: ignore[arg-type]
            settings = dataclasses.replace(settings, **{kind: service})  # type: ignore[arg-type]
    if not embedded and settings.stores.backend == "google":
        try:
            binaries.spanner_emulator(settings.spanner.emulator_binary)
        except MissingBinary as exc:
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                raise _fail(str(exc)) from exc
            typer.echo(f"Spanner emulator not found: running on the embedded stores ({exc})")
            embedded = True
    if embedded:
        settings = dataclasses.replace(
            settings, stores=dataclasses.replace(settings.stores, backend="embedded")
        )
        typer.echo("stores: embedded (SQLite headers, local-file bodies)")
    stack = LocalStack(settings)
    try:
        statuses = stack.up()
    except (StackError, MissingBinary) as exc:
        raise _fail(str(exc)) from exc
    _print_status(statuses)
    typer.echo(f"run directory: {stack.paths.run_dir}  (stop with `voxmesh down`)")


@app.command()
def down() -> None:
    """Stop everything `voxmesh up` started; nothing is left running."""
    from voxmesh.stack.local_stack import LocalStack

    stack = LocalStack(_running_settings())
    try:
        swept = stack.down()
    except MissingBinary as exc:
        raise _fail(str(exc)) from exc
    if swept:
        typer.echo(f"killed leftover process groups: {', '.join(swept)}")
    typer.echo("stack stopped")


@app.command()
def status() -> None:
    """Every component and service with its health. Exit status 1 if any is not healthy."""
    from voxmesh.stack.local_stack import LocalStack

    try:
        statuses = LocalStack(_running_settings()).status()
    except MissingBinary as exc:
        raise _fail(str(exc)) from exc
    _print_status(statuses)
    settings = _running_settings()
    if any(s.component.name == "etcd" and s.healthy for s in statuses):
        asyncio.run(_print_rings(settings))
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


async def _print_rings(settings: Settings) -> None:
    from voxmesh.core.ring_membership import RingMembership
    from voxmesh.core.structured_logging import configure_logging

    # A listing, not a service: only warnings (an unreachable etcd) belong on the console.
    configure_logging(dataclasses.replace(settings.log, level="warning", json=False), "cli")
    membership = RingMembership(settings, SERVICE_KINDS)
    await membership.start(None)
    try:
        await membership.wait_loaded()
        for kind in SERVICE_KINDS:
            shares = membership.ring(kind).shares()
            members = ", ".join(
                f"{m.node_id} {m.address} {shares.get(m.node_id, 0):.0%}"
                for m in membership.members(kind)
            )
            typer.echo(f"ring {kind:<13} {len(shares)} member(s): {members or '-'}")
    finally:
        await membership.close()


def _print_status(statuses: list) -> None:  # type: ignore[type-arg]
    typer.echo(f"{'component':<18}{'role':<9}{'state':<10}{'pid':>8}  {'ports':<28}health")
    for s in statuses:
        ports = " ".join(f"{label}={port}" for label, port in s.component.ports)
        mark = "healthy" if s.healthy else f"NOT healthy ({s.probe.detail})"
        typer.echo(
            f"{s.component.name:<18}{s.component.role:<9}{s.state:<10}{s.pid or '-':>8}  "
            f"{ports:<28}{mark}"
        )


@app.command()
def serve(
    kind: Annotated[str, typer.Argument(help="router | header | body | notification")],
    port: Annotated[int | None, typer.Option(help="Override the configured client port.")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Override the configured metrics port.")
    ] = None,
    internal_port: Annotated[
        int | None, typer.Option(help="Override the configured internal (mutual TLS) port.")
    ] = None,
) -> None:
    """Run one service in the foreground (what `voxmesh up` runs under supervision)."""
    if kind not in SERVICE_KINDS:
        raise _fail(f"unknown service {kind!r}: choose one of {', '.join(SERVICE_KINDS)}")
    import uvloop

    from voxmesh.core import telemetry
    from voxmesh.core.structured_logging import configure_logging
    from voxmesh.service_registry import build_runner

    settings = _settings()
    project = telemetry.trace_project(settings)
    telemetry.configure_tracing(settings, kind)
    configure_logging(
        settings.log,
        kind,
        trace_processor=None if project is None else telemetry.cloud_trace_fields(project),
    )
    runner = build_runner(
        kind,
        settings,
        port=port,
        metrics_port=metrics_port,
        join_ring=True,
        internal_port=internal_port,
    )
    try:
        uvloop.run(runner.serve_until_signalled())
    finally:
        telemetry.shutdown_tracing()


@gateway_app.command("serve")
def gateway_serve(
    port: Annotated[int | None, typer.Option(help="HTTP port (default web.port).")] = None,
) -> None:
    """Serve the web app and its sign-in behind Envoy; keep Envoy's routers on the router ring."""
    from voxmesh.core.structured_logging import configure_logging
    from voxmesh.gateway.web_gateway import serve_web_gateway

    settings = _settings()
    configure_logging(settings.log, "web")
    asyncio.run(serve_web_gateway(settings, port))


@gateway_app.command("render")
def gateway_render(
    out: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
) -> None:
    """Print the Envoy gRPC-web configuration generated from config/."""
    from voxmesh.gateway.envoy_config import render_envoy_yaml

    text = render_envoy_yaml(_settings())
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)


@app.command()
def demo(
    out: Annotated[
        Path | None, typer.Option(help="Where to write the audio files (default: run dir/demo).")
    ] = None,
) -> None:
    """A scripted conversation with real speech over the running stack (`voxmesh up` first)."""
    from voxmesh.demo.conversation_demo import run_demo

    settings = _running_settings()
    try:
        asyncio.run(run_demo(settings, out or settings.run_dir / "demo", typer.echo))
    except grpc.aio.AioRpcError as exc:
        raise _fail(
            f"{exc.code().name}: {exc.details()} (is the mesh running? `voxmesh status`)"
        ) from exc


def _etcd(settings: Settings) -> Any:
    import aetcd

    return aetcd.Client(host=settings.etcd_host, port=settings.etcd.client_port, timeout=5)


def _config_key(key: str) -> str:
    from voxmesh.core.dynamic_config import check_key

    try:
        check_key(key)
    except SettingsError as exc:
        raise _fail(str(exc)) from exc
    return key


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw  # a bare string


@config_app.command("set")
def config_set(key: str, value: str) -> None:
    """Set KEY (e.g. limits.max_chunk_bytes) to VALUE (JSON, or a bare string)."""
    from voxmesh.core.dynamic_config import apply_overrides, config_prefix

    settings = _running_settings()
    parsed = _parse_value(value)
    try:
        apply_overrides(settings, {_config_key(key): parsed})  # refuse what would not validate
    except SettingsError as exc:
        raise _fail(str(exc)) from exc

    async def put() -> None:
        async with _etcd(settings) as etcd:
            await etcd.put(config_prefix(settings) + key.encode(), json.dumps(parsed).encode())

    asyncio.run(put())
    typer.echo(f"{key} = {json.dumps(parsed)}")


@config_app.command("unset")
def config_unset(key: str) -> None:
    """Remove KEY from etcd: processes go back to their start-up value."""
    from voxmesh.core.dynamic_config import config_prefix

    settings = _running_settings()

    async def delete() -> None:
        async with _etcd(settings) as etcd:
            await etcd.delete(config_prefix(settings) + _config_key(key).encode())

    asyncio.run(delete())
    typer.echo(f"{key} unset")


async def _config_values(settings: Settings) -> dict[str, Any]:
    from voxmesh.core.dynamic_config import config_prefix

    prefix = config_prefix(settings)
    async with _etcd(settings) as etcd:
        listing = await etcd.get_prefix(prefix)
        return {kv.key[len(prefix) :].decode(): json.loads(kv.value) for kv in listing}


@config_app.command("get")
def config_get(key: str) -> None:
    """Print KEY's value: from etcd if set there, else the start-up value."""
    settings = _running_settings()
    values = asyncio.run(_config_values(settings))
    section, _, name = _config_key(key).partition(".")
    value = values.get(key, getattr(getattr(settings, section), name))
    source = "etcd" if key in values else "config files"
    typer.echo(f"{key} = {json.dumps(value)}  ({source})")


@config_app.command("list")
def config_list() -> None:
    """Every dynamic setting set in etcd."""
    values = asyncio.run(_config_values(_running_settings()))
    for key in sorted(values):
        typer.echo(f"{key} = {json.dumps(values[key])}")
    if not values:
        typer.echo("(no dynamic settings in etcd)")


@config_app.command("watch")
def config_watch(
    count: Annotated[int, typer.Option(help="Stop after this many changes (0 = never).")] = 0,
) -> None:
    """Print each change to the dynamic settings as it happens."""
    from voxmesh.core.dynamic_config import config_prefix

    settings = _running_settings()
    prefix = config_prefix(settings)

    async def watch() -> None:
        seen = 0
        async with _etcd(settings) as etcd:
            listing = await etcd.get_prefix(prefix)
            stream = await etcd.watch_prefix(prefix, start_revision=listing.header.revision + 1)
            typer.echo("watching (Ctrl-C to stop)")
            async for event in stream:
                key = event.kv.key[len(prefix) :].decode()
                if event.kind == "DELETE":
                    typer.echo(f"{key} unset")
                else:
                    typer.echo(f"{key} = {event.kv.value.decode()}")
                seen += 1
                if count and seen >= count:
                    await stream.cancel()
                    return

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watch())


@config_app.command("import")
def config_import(file: Path) -> None:
    """Import a legacy JSON cluster file (host lists and settings) into etcd."""
    from voxmesh.core.dynamic_config import apply_overrides, config_prefix
    from voxmesh.core.legacy_cluster import parse_legacy_cluster

    settings = _running_settings()
    try:
        cluster = parse_legacy_cluster(file)
        for key in cluster.settings:
            _config_key(key)
        apply_overrides(settings, cluster.settings)
    except SettingsError as exc:
        raise _fail(str(exc)) from exc

    async def write() -> None:
        legacy = f"{settings.etcd.prefix}/legacy/".encode()
        async with _etcd(settings) as etcd:
            for key, value in cluster.settings.items():
                await etcd.put(config_prefix(settings) + key.encode(), json.dumps(value).encode())
            for host in cluster.hosts:
                record = {"weight": host.weight, "zone": host.zone, "cluster": cluster.name}
                await etcd.put(
                    legacy + f"{host.kind}/{host.address}".encode(), json.dumps(record).encode()
                )

    asyncio.run(write())
    kinds = ", ".join(f"{sum(h.kind == k for h in cluster.hosts)} {k}" for k in SERVICE_KINDS)
    typer.echo(
        f"imported {cluster.name or file.name}: {len(cluster.settings)} settings, hosts: {kinds}"
    )


@token_app.command("issue")
def token_issue(
    user: Annotated[str, typer.Option(help="The user id (the token's subject).")],
    ttl: Annotated[int | None, typer.Option(help="Lifetime in seconds.")] = None,
) -> None:
    """Print a signed client token for USER (send it as `authorization: Bearer <token>`)."""
    from voxmesh.core.client_auth import issue_token
    from voxmesh.core.domain_errors import InvalidArgument

    try:
        typer.echo(issue_token(_settings().auth, user, ttl))
    except (InvalidArgument, ValueError) as exc:
        raise _fail(str(exc)) from exc


def main() -> None:
    app()
