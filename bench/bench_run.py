"""One benchmark run: the baselines, then voxmesh on each backend, every scenario isolated
(a failing one is recorded and the run goes on), then the JSON and the report."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import platform
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import uvloop

from bench.bench_parameters import Backend, BenchParameters
from bench.bench_report import write_results
from bench.bench_stack import (
    BenchUnsupported,
    VoxmeshStack,
    grpc_relay,
    redis_server,
    spanner_emulator_available,
    voxmesh_stack,
)
from bench.live_sweep import QUIET_WAIT_MAX_S, run_step, sweep
from bench.process_cost import ProcessCost, wait_until_quiet
from bench.relay_load import LoadTarget
from bench.store_scenarios import catch_up, replay, store_floor, timeline

Log = Callable[[str], None]


def machine() -> dict[str, Any]:
    memory = psutil.virtual_memory()
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or "unknown"
    return {
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_model": model,
        "memory_gb": round(memory.total / 2**30, 1),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


class Run:
    def __init__(self, params: BenchParameters, log: Log) -> None:
        self.params = params
        self.log = log
        self.run_id = f"b{int(time.time()) % 1_000_000}"
        self.results: dict[str, Any] = {
            "live": {},
            "voxmesh_variants": [],
            "durable_ack": {},
            "store_floor": {},
            "catch_up": {},
            "replay": {},
            "timeline": {},
            "scenario_cost": {},
            "errors": [],
            "notes": [],
        }
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def scenario(self, name: str) -> Iterator[None]:
        """Times a scenario; an exception is recorded, logged, and the run goes on."""
        self.log(f"{name} ...")
        began = time.monotonic()
        try:
            yield
        except BenchUnsupported as exc:
            self.results["notes"].append(f"{name}: not run: {exc}")
            self.log(f"  not run: {exc}")
        except Exception as exc:
            detail = "".join(traceback.format_exception_only(exc)).strip()
            self.results["errors"].append({"scenario": name, "error": detail})
            self.log(f"  FAILED: {detail}\n{traceback.format_exc(limit=6)}")
        finally:
            self.timings[name] = round(time.monotonic() - began, 1)

    # -- baselines --------------------------------------------------------------------------

    def baselines(self, work: Path) -> None:
        params = self.params
        if "grpc-relay" in params.systems:
            with self.scenario("live sweep: bare grpc.aio relay"), grpc_relay(work / "logs") as s:
                target = LoadTarget("grpc-relay", (s.address,))
                self.results["live"]["grpc-relay"] = sweep(
                    "grpc-relay", target, params, {s.name: s.pid}, self.run_id, self.log
                )
        if "redis-relay" in params.systems:
            with self.scenario("live sweep: Redis pub/sub relay"), redis_server(work / "logs") as s:
                target = LoadTarget("redis-relay", (s.address,))
                self.results["live"]["redis-relay"] = sweep(
                    "redis-relay", target, params, {s.name: s.pid}, self.run_id, self.log
                )

    # -- voxmesh ----------------------------------------------------------------------------

    def voxmesh(self, work: Path) -> None:
        params = self.params
        backends = list(params.backends)
        if "google" in backends and not spanner_emulator_available():
            backends.remove("google")
            self.results["notes"].append(
                "the Cloud Spanner emulator is not installed: the emulator backend was not run "
                "(gcloud components install cloud-spanner-emulator)"
            )
        for position, backend in enumerate(backends):
            router_counts = params.routers if position == 0 else params.routers[:1]
            for routers in router_counts:
                primary = routers == params.routers[0]
                name = f"voxmesh on {backend} stores, {routers} router(s)"
                with self.scenario(name):
                    run_dir = work / f"{backend}-{routers}r"
                    began = time.monotonic()
                    with voxmesh_stack(run_dir, backend, routers) as stack:
                        up_s = round(time.monotonic() - began, 1)
                        self.timings[f"{name}: stack up"] = up_s
                        self.log(f"  up in {up_s} s: routers {', '.join(stack.router_addresses())}")
                        sweeping = position == 0 and "voxmesh" in params.systems
                        # The sweep runs last on its stack: its last step overloads the mesh,
                        # which would colour whatever ran after it. Its step at N=ack_speakers
                        # (the same workload) gives this backend's durable acks.
                        acks_from_sweep = sweeping and params.ack_speakers in params.sweep
                        if primary:
                            self._store_scenarios(stack, backend, not acks_from_sweep)
                        if sweeping and primary and "voxmesh-webrtc" in params.systems:
                            self._webrtc_sweep(stack)
                        if sweeping and primary and "voxmesh-grpc-web" in params.systems:
                            self._grpc_web_sweep(stack)
                        if sweeping:
                            self._voxmesh_sweep(stack, backend, routers, primary)
                        if primary and acks_from_sweep:
                            self._acks_from_sweep(stack, backend)
                        stopping = time.monotonic()
                    down_s = round(time.monotonic() - stopping, 1)
                    self.timings[f"{name}: stack down"] = down_s
                    self.log(f"  down in {down_s} s")

    def _voxmesh_sweep(
        self, stack: VoxmeshStack, backend: Backend, routers: int, primary: bool
    ) -> None:
        with self.scenario(f"live sweep: voxmesh ({backend}, {routers} router(s))"):
            target = LoadTarget(
                "voxmesh", tuple(stack.router_addresses()), stack.settings.auth, stack.ca_pem
            )
            result = sweep(
                "voxmesh",
                target,
                self.params,
                stack.service_pids(),
                f"{self.run_id}r{routers}",
                self.log,
                stack.body_object_writes,
            )
            result.update({"backend": backend, "routers": routers})
            self.results["voxmesh_variants"].append(result)
            if primary:
                self.results["live"]["voxmesh"] = result

    def _webrtc_sweep(self, stack: VoxmeshStack) -> None:
        """WebRTC talkers on the same stack, before the gRPC sweep overloads it."""
        with self.scenario("live sweep: voxmesh, WebRTC talkers"):
            target = LoadTarget(
                "voxmesh-webrtc",
                tuple(stack.router_addresses()),
                stack.settings.auth,
                stack.ca_pem,  # StartWebRtcTalk and the updates streams: the client ports' TLS
            )
            params = dataclasses.replace(self.params, p99_limit_ms=self.params.webrtc_p99_limit_ms)
            self.results["webrtc"] = sweep(
                "voxmesh-webrtc",
                target,
                params,
                stack.service_pids(),
                f"{self.run_id}w",
                self.log,
            )

    def _grpc_web_sweep(self, stack: VoxmeshStack) -> None:
        """Browsers' gRPC-web uplink (MediaRecorder slices through Envoy) at the talker counts
        the WebRTC sweep ran (else the sweep's own, until one fails), on the same stack."""
        with self.scenario("live sweep: voxmesh, gRPC-web talkers"):
            target = LoadTarget(
                "voxmesh-grpc-web",
                tuple(stack.router_addresses()),
                stack.settings.auth,
                stack.ca_pem,
                gateway_url=stack.gateway_url,
            )
            webrtc_steps = (self.results.get("webrtc") or {}).get("steps") or []
            counts = sorted({int(s["speakers"]) for s in webrtc_steps}) or None
            params = dataclasses.replace(self.params, p99_limit_ms=self.params.webrtc_p99_limit_ms)
            pids = stack.service_pids()
            # The sweep before may have ended overloaded: start, and leave, a quiet stack.
            wait_until_quiet(pids, QUIET_WAIT_MAX_S)
            try:
                self.results["grpc_web"] = sweep(
                    "voxmesh-grpc-web",
                    target,
                    params,
                    pids,
                    f"{self.run_id}g",
                    self.log,
                    counts=counts,
                )
            finally:
                wait_until_quiet(pids, QUIET_WAIT_MAX_S)

    def _acks_from_sweep(self, stack: VoxmeshStack, backend: Backend) -> None:
        sweep_result = self.results["live"].get("voxmesh") or {"steps": []}
        step = next(
            (s for s in sweep_result["steps"] if s["speakers"] == self.params.ack_speakers), None
        )
        if step is None:  # the sweep failed before it: measure on its own (after the sweep)
            self.results["notes"].append(
                f"durable acks ({backend}) measured after the live sweep (its step at "
                f"N={self.params.ack_speakers} did not run)"
            )
            self._ack_step(stack, backend)
            return
        self.results["durable_ack"][backend] = {**step, "source": "live sweep step"}
        costs: dict[str, Any] = self.results["scenario_cost"].setdefault(backend, {})
        costs["durable_ack"] = step["cost"]

    def _store_scenarios(self, stack: VoxmeshStack, backend: Backend, ack_step: bool) -> None:
        params, pids = self.params, stack.service_pids()
        costs: dict[str, Any] = self.results["scenario_cost"].setdefault(backend, {})
        if ack_step:
            self._ack_step(stack, backend)
        with self.scenario(f"store write floor ({backend})"):
            self.results["store_floor"][backend] = store_floor(
                stack, params.store_floor_samples, self.run_id
            )
        scenarios = (("catch_up", catch_up), ("replay", replay), ("timeline", timeline))
        for key, scenario in scenarios:
            with self.scenario(f"{key.replace('_', '-')} ({backend})"), ProcessCost(pids) as cost:
                self.results[key][backend] = uvloop.run(scenario(stack, params, self.run_id))
            costs[key] = cost.report()
            self.log(f"  {_brief(self.results[key].get(backend))}")

    def _ack_step(self, stack: VoxmeshStack, backend: Backend) -> None:
        params, pids = self.params, stack.service_pids()
        costs: dict[str, Any] = self.results["scenario_cost"].setdefault(backend, {})
        with self.scenario(f"durable acks ({backend})"):
            target = LoadTarget(
                "voxmesh", tuple(stack.router_addresses()), stack.settings.auth, stack.ca_pem
            )
            summary = run_step(
                "voxmesh",
                target,
                params.ack_speakers,
                params,
                f"{self.run_id}-ack",
                pids,
                measure_s=params.ack_measure_s,
                store_writes=stack.body_object_writes,
            )
            summary["source"] = "its own step"
            self.results["durable_ack"][backend] = summary
            costs["durable_ack"] = summary["cost"]
            ack = summary["durable_ack_ms"] or {}
            self.log(f"  ack p50={ack.get('p50')} p99={ack.get('p99')} ms")

    # -- all --------------------------------------------------------------------------------

    def run(self, out_dir: Path, keep_work: bool = False) -> tuple[Path, Path]:
        started = datetime.datetime.now().astimezone()
        began = time.monotonic()
        meta: dict[str, Any] = {
            "started": started.isoformat(timespec="seconds"),
            "machine": machine(),
            "parameters": self.params.to_json(),
            "scaled_down": self.params.describe_scaling(),
            "run_id": self.run_id,
        }
        work = Path(tempfile.mkdtemp(prefix="voxmesh-bench-"))
        try:
            self.baselines(work)
            self.voxmesh(work)
        finally:
            if not keep_work:
                shutil.rmtree(work, ignore_errors=True)
        meta["duration_s"] = round(time.monotonic() - began, 1)
        meta["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        meta["scenario_s"] = self.timings
        self.results["meta"] = meta
        return write_results(self.results, out_dir, started)


def _brief(value: Any) -> str:
    if not isinstance(value, dict):
        return str(value)
    keys = (
        "time_to_first_chunk_ms",
        "time_to_live_edge_s",
        "catch_up_speed_x_real_time",
        "replay_speed_x_real_time",
        "since_headers_returned",
        "thread_page_returned",
    )
    shown = {k: value[k] for k in keys if k in value}
    for key in ("since", "thread_page"):
        if key in value:
            shown[f"{key}_p50_ms"] = round(value[key]["p50"], 2) if value[key]["p50"] else None
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def run_bench(
    params: BenchParameters, out_dir: Path, log: Log, keep_work: bool = False
) -> tuple[Path, Path]:
    """Everything, in order; the scenarios run on their own event loops (not in a running one)."""
    return Run(params, log).run(out_dir, keep_work)
