"""`voxmesh up / down / status`: the local stack under supervisord.

supervisord (a well-kept process supervisor) owns every process: each runs in its own
process group, is stopped with SIGTERM then SIGKILL of the whole group, and logs to the run
directory. voxmesh adds what supervisord does not know: start order by role, readiness
probes in each component's own protocol, port and binary checks with the fix named, and a
last sweep that kills any recorded process group still alive after `down`, so nothing is
ever left behind even if supervisord itself was killed.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pydantic
from supervisor.xmlrpc import SupervisorTransport

from voxmesh.core.settings import Settings
from voxmesh.gateway.envoy_config import render_envoy_yaml
from voxmesh.gateway.router_endpoints import write_endpoints
from voxmesh.stack.components import (
    Component,
    StackPaths,
    issue_local_certificates,
    plan_stack,
    router_addresses,
)
from voxmesh.stack.readiness import ProbeResult, port_is_free


class StackError(RuntimeError):
    """The stack cannot start or stop; the message says what and how to fix it."""


@dataclass(frozen=True)
class ComponentStatus:
    component: Component
    state: str  # supervisord's state name, or DOWN when supervisord is not running
    pid: int
    probe: ProbeResult

    @property
    def healthy(self) -> bool:
        return self.state == "RUNNING" and self.probe.ready


def _escape(value: str) -> str:
    return value.replace("%", "%%")  # supervisord expands %(name)s in its config


class LocalStack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.paths = StackPaths(settings.run_dir)
        self._components: list[Component] | None = None

    # -- plan ------------------------------------------------------------------------------

    @property
    def components(self) -> list[Component]:
        if self._components is None:
            self._components = plan_stack(self.settings, self.paths)
        return self._components

    def _by_role(self, role: str) -> list[Component]:
        return [c for c in self.components if c.role == role]

    # -- supervisord -----------------------------------------------------------------------

    def _rpc(self) -> Any:
        transport = SupervisorTransport(None, None, f"unix://{self.paths.supervisor_socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def supervisor_running(self) -> bool:
        if not self.paths.supervisor_socket.exists():
            return False
        try:
            return bool(self._rpc().supervisor.getState()["statename"] == "RUNNING")
        except (OSError, xmlrpc.client.Error):
            return False

    def _write_supervisor_config(self) -> None:
        p = self.paths
        lines = [
            "[unix_http_server]",
            f"file={_escape(str(p.supervisor_socket))}",
            "chmod=0700",
            "",
            "[supervisord]",
            f"logfile={_escape(str(p.logs / 'supervisord.log'))}",
            f"pidfile={_escape(str(p.supervisor_pid))}",
            f"childlogdir={_escape(str(p.logs))}",
            f"directory={_escape(str(p.run_dir))}",
            "loglevel=info",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{_escape(str(p.supervisor_socket))}",
            "",
        ]
        stop_s = max(1, round(self.settings.supervisor.stop_timeout_s))
        for component in self.components:
            env = ",".join(f'{k}="{_escape(v)}"' for k, v in component.env.items())
            lines += [
                f"[program:{component.name}]",
                f"command={_escape(shlex.join(component.command))}",
                f"priority={component.priority}",
                "autostart=false",
                "autorestart="
                + (
                    "unexpected"
                    if self.settings.supervisor.autorestart or component.role != "service"
                    else "false"
                ),
                "startsecs=0",
                "startretries=0",
                "stopsignal=TERM",
                f"stopwaitsecs={stop_s}",
                "stopasgroup=true",
                "killasgroup=true",
                "redirect_stderr=true",
                f"stdout_logfile={_escape(str(p.logs / (component.name + '.log')))}",
                "stdout_logfile_maxbytes=20MB",
                "stdout_logfile_backups=1",
            ]
            if env:
                lines.append(f"environment={env}")
            lines.append("")
        p.supervisor_config.write_text("\n".join(lines))

    def _start_supervisor(self) -> None:
        supervisord = Path(sys.executable).parent / "supervisord"
        command = [str(supervisord) if supervisord.exists() else "supervisord"]
        result = subprocess.run(
            [*command, "-c", str(self.paths.supervisor_config)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"supervisord did not start: {result.stderr.strip()}")
        deadline = time.monotonic() + 10
        while not self.supervisor_running():
            if time.monotonic() > deadline:
                raise StackError(
                    f"supervisord did not answer on {self.paths.supervisor_socket} within 10 s; "
                    f"see {self.paths.logs / 'supervisord.log'}"
                )
            time.sleep(0.05)

    # -- checks ----------------------------------------------------------------------------

    def check_ports(self) -> None:
        taken = [
            (component.name, label, port)
            for component in self.components
            for label, port in component.ports
            if not port_is_free(self.settings.host, port)
        ]
        if taken:
            described = ", ".join(f"{port} ({name} {label})" for name, label, port in taken)
            raise StackError(
                f"port(s) in use on {self.settings.host}: {described}. Stop whatever holds them "
                f"(`ss -ltnp` shows it; `voxmesh down` if it is an earlier voxmesh stack) or move "
                f"voxmesh to other ports in config/local.toml or with environment variables "
                f"such as VOXMESH__ETCD__CLIENT_PORT=22379."
            )

    # -- up --------------------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        """``with LocalStack(settings) as stack:`` brings it up, and down again on leaving."""
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> list[ComponentStatus]:
        if self.supervisor_running():
            raise StackError(
                f"a stack is already running from {self.paths.run_dir}: `voxmesh status` shows "
                f"it, `voxmesh down` stops it"
            )
        _ = self.components  # resolve binaries first: a missing one fails before anything runs
        self.check_ports()
        for directory in (self.paths.run_dir, self.paths.logs, self.paths.data):
            directory.mkdir(parents=True, exist_ok=True)
        settings_json = pydantic.TypeAdapter(Settings).dump_python(self.settings, mode="json")
        self.paths.settings_file.write_text(json.dumps(settings_json, indent=2))
        issue_local_certificates(self.settings)
        # Envoy starts with the configured routers; the web gateway rewrites the file as the
        # router ring changes (routers added or gone), and Envoy follows without a restart.
        endpoints = self.settings.router_endpoints_file
        write_endpoints(endpoints, router_addresses(self.settings), "initial")
        self.paths.envoy_config.write_text(
            render_envoy_yaml(self.settings, router_addresses(self.settings), endpoints)
        )
        self._write_supervisor_config()
        self._start_supervisor()
        try:
            self._start_and_wait(self._by_role("server"))
            self._provision()
            for role in ("service", "gateway"):
                self._start_and_wait(self._by_role(role))
        except BaseException:
            self.down()
            raise
        return self.status()

    def _provision(self) -> None:
        if self.settings.stores.backend != "google":
            return
        from voxmesh.stack.provisioning import (
            emulator_environment,
            ensure_bucket,
            ensure_spanner_database,
        )

        with emulator_environment(self.settings):
            ensure_spanner_database(self.settings)
            ensure_bucket(self.settings)

    def _start_and_wait(self, components: Sequence[Component]) -> None:
        rpc = self._rpc()
        for component in components:
            rpc.supervisor.startProcess(component.name, False)
        self._record_pids()
        deadline = time.monotonic() + self.settings.supervisor.ready_timeout_s
        waiting = list(components)
        last: dict[str, ProbeResult] = {}
        while waiting:
            for component in list(waiting):
                info = rpc.supervisor.getProcessInfo(component.name)
                if info["statename"] in ("EXITED", "FATAL", "BACKOFF"):
                    raise StackError(
                        f"{component.name} exited while starting (exit status "
                        f"{info['exitstatus']}); last lines of {self._log(component)}:\n"
                        f"{self._tail(component)}"
                    )
                result = component.probe()
                last[component.name] = result
                if result.ready:
                    waiting.remove(component)
            if waiting and time.monotonic() > deadline:
                described = "; ".join(f"{c.name}: {last[c.name].detail}" for c in waiting)
                raise StackError(
                    f"not ready within {self.settings.supervisor.ready_timeout_s:g} s: "
                    f"{described}. Logs in {self.paths.logs}"
                )
            if waiting:
                time.sleep(0.05)

    def _log(self, component: Component) -> Path:
        return self.paths.logs / f"{component.name}.log"

    def _tail(self, component: Component, lines: int = 15) -> str:
        try:
            return "\n".join(self._log(component).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _record_pids(self) -> None:
        """Remember each process with its start time, so `down` can sweep exactly these."""
        recorded: dict[str, list[float]] = {}
        if self.paths.pids.exists():
            recorded = json.loads(self.paths.pids.read_text())
        for info in self._rpc().supervisor.getAllProcessInfo():
            if info["pid"]:
                try:
                    started = psutil.Process(info["pid"]).create_time()
                except psutil.Error:
                    continue
                recorded[info["name"]] = [info["pid"], started]
        pid = self._supervisor_pid()
        if pid:
            recorded["supervisord"] = [pid, psutil.Process(pid).create_time()]
        self.paths.pids.write_text(json.dumps(recorded))

    def _supervisor_pid(self) -> int:
        try:
            return int(self.paths.supervisor_pid.read_text().strip())
        except (OSError, ValueError):
            return 0

    # -- down ------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Stop everything; return the names of processes the final sweep had to kill."""
        if self.supervisor_running():
            rpc = self._rpc()
            # The reverse of start order, each stage gone before the next is signalled: the
            # gateway, then the services (each drains and revokes its ring lease, which
            # needs etcd), then etcd and the other servers. supervisord's stopAllProcesses
            # signals every priority level at once.
            for role in ("gateway", "service", "server"):
                self._stop_and_wait(self._by_role(role))
            supervisor_pid = self._supervisor_pid()
            try:
                rpc.supervisor.shutdown()
            except (OSError, xmlrpc.client.Error):
                pass
            if supervisor_pid:
                _wait_gone([supervisor_pid], timeout_s=self.settings.supervisor.stop_timeout_s + 5)
        swept = self._sweep()
        for stale in (self.paths.supervisor_socket, self.paths.supervisor_pid, self.paths.pids):
            stale.unlink(missing_ok=True)
        return swept

    def _stop_and_wait(self, components: Sequence[Component]) -> None:
        """Signal every component of one stage, then wait until all have exited
        (supervisord sends SIGKILL to a group still alive after its stop timeout)."""
        rpc = self._rpc()
        stopping = []
        for component in components:
            try:
                rpc.supervisor.stopProcess(component.name, False)
                stopping.append(component.name)
            except xmlrpc.client.Fault:
                pass  # not running (never started, exited or killed)
        deadline = time.monotonic() + self.settings.supervisor.stop_timeout_s + 5
        while stopping and time.monotonic() < deadline:
            for name in list(stopping):
                try:
                    state = rpc.supervisor.getProcessInfo(name)["statename"]
                except xmlrpc.client.Fault:
                    state = "STOPPED"
                if state in ("STOPPED", "EXITED", "FATAL", "BACKOFF"):
                    stopping.remove(name)
            if stopping:
                time.sleep(0.05)

    def _sweep(self) -> list[str]:
        """Kill the process group of any recorded process still alive (same pid, same start)."""
        if not self.paths.pids.exists():
            return []
        swept = []
        for name, (pid, started) in json.loads(self.paths.pids.read_text()).items():
            try:
                process = psutil.Process(int(pid))
                if abs(process.create_time() - started) > 0.01:
                    continue  # the pid was reused by another process
            except psutil.Error:
                continue
            swept.append(name)
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                process.kill()
        return swept

    # -- status ----------------------------------------------------------------------------

    def status(self) -> list[ComponentStatus]:
        infos: dict[str, dict[str, Any]] = {}
        if self.supervisor_running():
            infos = {i["name"]: i for i in self._rpc().supervisor.getAllProcessInfo()}
        statuses = []
        for component in self.components:
            info = infos.get(component.name)
            state = info["statename"] if info else "DOWN"
            probe = component.probe() if state == "RUNNING" else ProbeResult(False, "not running")
            statuses.append(ComponentStatus(component, state, info["pid"] if info else 0, probe))
        return statuses

    def recorded_pids(self) -> dict[str, int]:
        if not self.paths.pids.exists():
            return {}
        return {name: int(v[0]) for name, v in json.loads(self.paths.pids.read_text()).items()}


def _wait_gone(pids: Iterable[int], timeout_s: float) -> None:
    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.Error:
            pass
    psutil.wait_procs(processes, timeout=timeout_s)
