"""The live relay sweep: N speakers (each into a thread with listening devices of other
users) for N in the sweep, until p99 passes the limit; the largest N under it is the
capacity. The load runs in separate processes (multiprocessing, spawn, uvloop), started and
stopped here, each bounded by deadlines."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from bench.bench_parameters import FRAME_MS, BenchParameters, System, framing
from bench.latency_stats import summarize
from bench.process_cost import ProcessCost, wait_until_quiet
from bench.relay_load import LoadTarget, StepResult, StepSpec, worker_main

Log = Callable[[str], None]
StoreWrites = Callable[[], float | None]  # the body node's object writes so far
GO_DELAY_NS = 300_000_000  # every process starts its speakers at the same instant
QUIET_WAIT_MAX_S = 30.0


def _setup_timeout_s(system: System, speakers: int) -> float:
    # voxmesh creates a thread per speaker in the header store (the Spanner emulator
    # serialises read-write transactions) and opens an updates stream per listener.
    return 30.0 + (speakers * 0.25 if system.startswith("voxmesh") else speakers * 0.02)


class LoadPool:
    """Load generator processes, started once and reused by every step of a sweep (a
    process that misses a deadline is killed, and a fresh one is started for the next)."""

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[tuple[BaseProcess, Connection] | None] = [None] * self._size

    def __enter__(self) -> LoadPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def worker(self, index: int) -> tuple[BaseProcess, Connection]:
        current = self._workers[index]
        if current is not None and current[0].is_alive():
            return current
        if current is not None:
            self._discard(index)
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=worker_main, args=(child,), name=f"bench-load-{index}", daemon=True
        )
        process.start()
        child.close()
        self._workers[index] = (process, parent)
        return process, parent

    def _discard(self, index: int) -> None:
        current = self._workers[index]
        self._workers[index] = None
        if current is None:
            return
        process, conn = current
        with contextlib.suppress(OSError):
            conn.send(("stop",))
        process.join(timeout=5)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
        conn.close()

    def discard(self, index: int) -> None:
        """Kill a worker that missed a deadline (it may still be inside a step)."""
        current = self._workers[index]
        if current is not None and current[0].is_alive():
            current[0].kill()
        self._discard(index)

    def pids(self) -> dict[str, int]:
        return {f"loadgen-{i}": w[0].pid for i, w in enumerate(self._workers) if w and w[0].pid}

    def close(self) -> None:
        for index in range(self._size):
            self._discard(index)


def _receive(conn: Connection, kind: str, deadline: float) -> Any:
    """The next message of ``kind`` from a load process, or None after the deadline."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            if not conn.poll(left):
                return None
            message = conn.recv()
        except (EOFError, OSError):
            return None
        if message[0] == kind:
            return message[1]


def run_step(
    system: System,
    target: LoadTarget,
    speakers: int,
    params: BenchParameters,
    label: str,
    server_pids: Mapping[str, int],
    pool: LoadPool | None = None,
    listeners: int | None = None,
    measure_s: float | None = None,
    store_writes: StoreWrites | None = None,
) -> dict[str, Any]:
    """One step of the sweep (or the fixed durable-ack load); returns its summary."""
    if pool is None:
        with LoadPool(params.loadgen_processes) as own:
            return run_step(
                system,
                target,
                speakers,
                params,
                label,
                server_pids,
                own,
                listeners,
                measure_s,
                store_writes,
            )
    listeners = params.listeners_per_thread if listeners is None else listeners
    measure_s = params.measure_s if measure_s is None else measure_s
    workers = max(1, min(params.loadgen_processes, speakers))
    setup_timeout = _setup_timeout_s(system, speakers)
    conns: list[Connection] = []
    for worker in range(workers):
        spec = StepSpec(
            label=f"{label}-w{worker}",
            target=target,
            threads=tuple(range(worker, speakers, workers)),
            total_threads=speakers,
            listeners=listeners,
            warmup_s=params.warmup_s,
            measure_s=measure_s,
            drain_s=params.drain_s,
            channels=params.channels_per_process,
            setup_concurrency=params.setup_concurrency,
            setup_timeout_s=setup_timeout,
            go_timeout_s=setup_timeout + 60,
        )
        _, conn = pool.worker(worker)
        conn.send(("step", spec))
        conns.append(conn)
    results: list[StepResult] = []
    cost_report: dict[str, dict[str, float]] = {}
    began = time.monotonic()
    load_average = [round(x, 2) for x in os.getloadavg()]
    ready_deadline = time.monotonic() + setup_timeout + 30  # + process start
    readies = [_receive(conn, "ready", ready_deadline) for conn in conns]
    setup_s = time.monotonic() - began
    t0 = time.monotonic_ns() + GO_DELAY_NS
    for conn in conns:
        with contextlib.suppress(OSError):  # a process that died sends no result
            conn.send(("go", t0))
    watched = {**server_pids, **pool.pids()}
    run_s = params.warmup_s + measure_s + params.drain_s
    result_deadline = time.monotonic() + GO_DELAY_NS / 1e9 + run_s + 40
    writes_before = store_writes() if store_writes is not None else None
    # The measured phase alone (frames counted as delivered were sent in it): the steady
    # live path's CPU, without the messages' start in the warm-up and end in the drain.
    window_start = t0 / 1e9 + params.warmup_s
    with ProcessCost(watched, window=(window_start, window_start + measure_s)) as cost:
        for index, conn in enumerate(conns):
            result = _receive(conn, "result", result_deadline)
            if isinstance(result, StepResult):
                results.append(result)
            else:
                pool.discard(index)
    cost_report = cost.report()
    writes_after = store_writes() if store_writes is not None else None
    summary = _summarize(
        system, speakers, listeners, results, readies, workers, setup_s, cost_report, params
    )
    summary["load_average_before"] = load_average
    if writes_before is not None and writes_after is not None and cost.wall_s > 0:
        # Object-store writes by the body node over the step (setup excluded), per second.
        summary["store_writes_per_s"] = round((writes_after - writes_before) / cost.wall_s, 1)
    return summary


def _summarize(
    system: System,
    speakers: int,
    listeners: int,
    results: list[StepResult],
    readies: list[Any],
    workers: int,
    setup_s: float,
    cost: dict[str, dict[str, float]],
    params: BenchParameters,
) -> dict[str, Any]:
    shape = framing(system)
    latencies = [x for r in results for x in r.latencies_ms]
    sent_latencies = [x for r in results for x in r.sent_latencies_ms]
    acks = [x for r in results for x in r.ack_latencies_ms]
    lag = [x for r in results for x in r.generator_lag_ms]
    blocked = [x for r in results for x in r.write_block_ms]
    loop_lag = [x for r in results for x in r.loop_lag_ms]
    expected = sum(r.expected for r in results)
    received = sum(r.received for r in results)
    errors = [e for r in results for e in r.errors]
    if len(results) < workers:
        errors.append(f"{workers - len(results)} of {workers} load processes sent no result")
    threads_ready = sum(r.threads_ready for r in results)
    latency = summarize(latencies)
    loss = 1.0 - received / expected if expected else 1.0
    server_cpu = sum(v["cpu_s"] for k, v in cost.items() if not k.startswith("loadgen"))
    servers = [v for k, v in cost.items() if not k.startswith("loadgen")]
    window_cpu = (
        sum(v["window_cpu_s"] for v in servers)
        if servers and all("window_cpu_s" in v for v in servers)
        else None
    )
    lag_summary, blocked_summary, loop_summary = (
        _brief(summarize(lag)),
        _brief(summarize(blocked)),
        _brief(summarize(loop_lag)),
    )
    p99 = latency["p99"]
    # A step passes when the load was offered on time (frames left within a frame time of
    # their due time) and p99 stayed under the limit with (almost) nothing lost. For
    # recorder slices p99 is mouth-to-ear (from the capture of a slice's first sample).
    verdict = "ok"
    if threads_ready < speakers or not results:
        verdict = "setup failed"
    elif p99 is None or p99 > params.p99_limit_ms:
        verdict = "p99 over limit"
    elif loss > params.loss_limit:
        verdict = "loss over limit"
    elif (lag_summary["p99"] or 0.0) > shape.ms:
        verdict = "frames sent late"
    # Late frames with a late event loop in the load generator: the generator, not the
    # system under test, may be what ran out of CPU.
    generator_bound = (loop_summary["p99"] or 0.0) > FRAME_MS
    return {
        "system": system,
        "speakers": speakers,
        "listeners_per_thread": listeners,
        "frame_ms": shape.ms,
        "frame_bytes": shape.size,
        "frames_per_second_in": speakers * 1000 // shape.ms,
        "frames_per_second_out": speakers * listeners * 1000 // shape.ms,
        # From the frame's stamp: its hand-over, or for recorder slices the capture of the
        # slice's first sample (mouth-to-ear); then sent_to_arrival_ms is from the call.
        "latency_from": "first sample captured" if shape.recorder_slices else "handed over",
        "latency_ms": latency,
        "sent_to_arrival_ms": summarize(sent_latencies) if shape.recorder_slices else None,
        "durable_ack_ms": summarize(acks) if acks else None,
        "generator_lag_ms": lag_summary,
        "write_block_ms": blocked_summary,
        "loadgen_loop_lag_ms": loop_summary,
        "generator_bound": generator_bound,
        "expected_deliveries": expected,
        "received_deliveries": received,
        "loss": round(loss, 6),
        "threads_ready": threads_ready,
        "load_processes": workers,
        "load_processes_ready": sum(1 for r in readies if r is not None),
        "setup_s": round(setup_s, 2),
        "errors": errors[:10],
        "error_count": len(errors),
        "cost": cost,
        "server_cpu_s": round(server_cpu, 3),
        # Per delivered frame: the server CPU of the measured phase (the steady live path);
        # the whole step's (warm-up, messages' start and end, drain) is server_cpu_s.
        "server_cpu_measured_s": None if window_cpu is None else round(window_cpu, 3),
        "server_cpu_ms_per_delivery": round(
            (server_cpu if window_cpu is None else window_cpu) * 1000 / received, 4
        )
        if received
        else None,
        "server_cpu_ms_per_delivery_whole_step": round(server_cpu * 1000 / received, 4)
        if received
        else None,
        "verdict": verdict,
        "passed": verdict == "ok",
    }


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    summary.pop("cdf", None)
    return summary


def sweep(
    system: System,
    target: LoadTarget,
    params: BenchParameters,
    server_pids: Mapping[str, int],
    run_id: str,
    log: Log,
    store_writes: StoreWrites | None = None,
    counts: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Steps through ``params.sweep`` until one fails, then bisects ``refine_steps`` times;
    or, given ``counts``, runs exactly those steps (every one: another sweep's loads)."""
    steps: list[dict[str, Any]] = []
    last_pass = 0
    first_fail: int | None = None

    def step(speakers: int) -> dict[str, Any]:
        settled = 0.0
        if steps:
            # An overloaded step leaves backlogs (queued chunks, group commits, composes):
            # wait for the servers to go quiet, so every step starts from the same state.
            time.sleep(params.settle_s)
            settled = params.settle_s + wait_until_quiet(server_pids, QUIET_WAIT_MAX_S)
        label = f"{run_id}-{system[:2]}-n{speakers}"
        summary = run_step(
            system,
            target,
            speakers,
            params,
            label,
            server_pids,
            pool,
            store_writes=store_writes,
        )
        summary["settled_before_s"] = round(settled, 2)
        latency = summary["latency_ms"]
        sent_latency = summary.get("sent_to_arrival_ms")
        log(
            f"  {system:<12} N={speakers:<4} p50={_ms(latency['p50'])} p99={_ms(latency['p99'])} "
            f"max={_ms(latency['max'])} "
            + (
                f"sent->ear p50={_ms(sent_latency['p50'])} p99={_ms(sent_latency['p99'])} "
                if sent_latency
                else ""
            )
            + f"loss={summary['loss']:.2%} "
            f"gen-lag-p99={_ms(summary['generator_lag_ms']['p99'])} "
            f"loop-lag-p99={_ms(summary['loadgen_loop_lag_ms']['p99'])} "
            + (
                f"store-writes/s={summary['store_writes_per_s']} "
                if "store_writes_per_s" in summary
                else ""
            )
            + f"{summary['verdict']}"
            + (f" errors={summary['error_count']}" if summary["error_count"] else "")
        )
        steps.append(summary)
        return summary

    with LoadPool(params.loadgen_processes) as pool:
        if counts is not None:  # every one; capacity: the last pass before the first fail
            for speakers in sorted(counts):
                passed = step(speakers)["passed"]
                if first_fail is None and passed:
                    last_pass = speakers
                elif first_fail is None:
                    first_fail = speakers
        else:
            for speakers in params.sweep:
                if step(speakers)["passed"]:
                    last_pass = speakers
                else:
                    first_fail = speakers
                    break
            for _ in range(params.refine_steps):
                if first_fail is None or first_fail - last_pass <= max(2, last_pass // 4):
                    break
                middle = (last_pass + first_fail) // 2
                if step(middle)["passed"]:
                    last_pass = middle
                else:
                    first_fail = middle
    steps.sort(key=lambda s: int(s["speakers"]))
    return {
        "system": system,
        "steps": steps,
        "capacity": last_pass,
        "first_failing": first_fail,
        "capacity_is_lower_bound": first_fail is None,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}ms"
