"""The results of a run: ``bench/results/<date>.json``, a Markdown report beside it and its
PNG plots (matplotlib, headless). Every figure is shown with its reference measured in the
same run: the live figures against the two relay baselines, the durable acks against the
store's own write latency, catch-up against real time, Spanner against SQLite."""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.bench_parameters import FRAME_BYTES, FRAME_MS, SLICE_BYTES
from bench.latency_stats import ratio

SYSTEM_NAMES = {
    "voxmesh": "voxmesh",
    "grpc-relay": "bare grpc.aio relay",
    "redis-relay": "Redis pub/sub relay",
}
BACKEND_NAMES = {"google": "emulators (GCS + Spanner)", "embedded": "embedded (files + SQLite)"}
BASELINES = ("grpc-relay", "redis-relay")


# -- figures --------------------------------------------------------------------------------


def _steps(sweep: dict[str, Any] | None) -> dict[int, dict[str, Any]]:
    if not sweep:
        return {}
    return {int(s["speakers"]): s for s in sweep["steps"]}


def common_load(live: dict[str, Any]) -> int | None:
    """The largest N that every system passed (else that every system ran)."""
    sweeps = [_steps(live.get(s)) for s in SYSTEM_NAMES if live.get(s)]
    if not sweeps:
        return None
    passed = set.intersection(*({n for n, s in st.items() if s["passed"]} for st in sweeps))
    if passed:
        return max(passed)
    ran = set.intersection(*(set(st) for st in sweeps))
    return min(ran) if ran else None


def lightest_load(live: dict[str, Any]) -> int:
    """The smallest N every system ran (the unloaded reference); 1 in the standard sweeps."""
    sweeps = [set(_steps(live.get(s))) for s in SYSTEM_NAMES if live.get(s)]
    ran = set.intersection(*sweeps) if sweeps else set()
    return min(ran) if ran else 1


def _latency(sweep: dict[str, Any] | None, speakers: int | None, key: str) -> float | None:
    step = _steps(sweep).get(speakers) if speakers is not None else None
    if step is None:
        return None
    value = step["latency_ms"].get(key)
    return None if value is None else float(value)


def _capacity(sweep: dict[str, Any] | None) -> tuple[float | None, bool]:
    if not sweep:
        return None, False
    return float(sweep["capacity"]), bool(sweep["capacity_is_lower_bound"])


def _cpu_per_delivery(sweep: dict[str, Any] | None, speakers: int | None) -> float | None:
    step = _steps(sweep).get(speakers) if speakers is not None else None
    value = step.get("server_cpu_ms_per_delivery") if step else None
    return None if value is None else float(value)


def headline(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows: a figure, voxmesh's value, each baseline's value and voxmesh ÷ baseline."""
    live = results["live"]
    common = common_load(live)
    rows: list[dict[str, Any]] = []

    def row(figure: str, values: dict[str, float | None], bounds: dict[str, bool]) -> None:
        entry: dict[str, Any] = {"figure": figure}
        for system in SYSTEM_NAMES:
            entry[system] = values.get(system)
            entry[f"{system}_is_lower_bound"] = bounds.get(system, False)
        for baseline in BASELINES:
            entry[f"voxmesh/{baseline}"] = ratio(values.get("voxmesh"), values.get(baseline))
        rows.append(entry)

    lightest = lightest_load(live)
    loads = [lightest] if common in (None, lightest) else [lightest, common]
    for speakers in loads:
        for key in ("p50", "p99"):
            row(
                f"live latency {key} at N={speakers} (ms)",
                {s: _latency(live.get(s), speakers, key) for s in SYSTEM_NAMES},
                {},
            )
    capacities = {s: _capacity(live.get(s)) for s in SYSTEM_NAMES}
    row(
        f"capacity: most speakers with p99 < {results['meta']['parameters']['p99_limit_ms']:g} ms",
        {s: c[0] for s, c in capacities.items()},
        {s: c[1] for s, c in capacities.items()},
    )
    primary = live.get("voxmesh")
    for variant in results.get("voxmesh_variants", []):
        if primary is None or variant.get("routers") == primary.get("routers"):
            continue
        values = {s: c[0] for s, c in capacities.items()}
        values["voxmesh"] = float(variant["capacity"])
        bounds = {s: c[1] for s, c in capacities.items()}
        bounds["voxmesh"] = bool(variant["capacity_is_lower_bound"])
        row(f"capacity with {variant['routers']} routers (voxmesh)", values, bounds)
    if common is not None:
        row(
            f"server CPU per delivered frame at N={common} (ms)",
            {s: _cpu_per_delivery(live.get(s), common) for s in SYSTEM_NAMES},
            {},
        )
    return rows


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def store_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Durable acks, catch-up, replay, timeline and storage per backend, with references."""
    rows: list[dict[str, Any]] = []
    backends = ("google", "embedded")

    def row(figure: str, values: dict[str, Any], reference: str, refs: dict[str, Any]) -> None:
        entry: dict[str, Any] = {"figure": figure, "reference": reference}
        for backend in backends:
            value, ref = values.get(backend), refs.get(backend)
            entry[backend] = value
            entry[f"{backend}_reference"] = ref
            entry[f"{backend}_ratio"] = ratio(value, ref)
        rows.append(entry)

    for key in ("p50", "p99"):
        row(
            f"durable ack {key} (ms), {results['meta']['parameters']['ack_speakers']} speakers",
            {b: _get(results, "durable_ack", b, "durable_ack_ms", key) for b in backends},
            f"the store's own write, {key} (no mesh)",
            {b: _get(results, "store_floor", b, "latency_ms", key) for b in backends},
        )
    lightest = lightest_load(results["live"])
    unloaded = _latency(results["live"].get("voxmesh"), lightest, "p50")
    row(
        "catch-up: time to first chunk (ms)",
        {b: _get(results, "catch_up", b, "time_to_first_chunk_ms") for b in backends},
        f"one live chunk at the lightest load (voxmesh p50, N={lightest})",
        {b: unloaded for b in backends},
    )
    row(
        "catch-up: time to reach the live edge (s)",
        {b: _get(results, "catch_up", b, "time_to_live_edge_s") for b in backends},
        "the backlog's length in audio (s)",
        {b: _get(results, "catch_up", b, "backlog_at_arrival_s") for b in backends},
    )
    row(
        "replay of a complete message (\u00d7 real time)",
        {b: _get(results, "replay", b, "replay_speed_x_real_time") for b in backends},
        "real time",
        {b: 1.0 for b in backends},
    )
    for key, label in (("since", "what is new since"), ("thread_page", "a page of one thread")):
        sqlite = {
            b: _get(results, "timeline", "embedded", key, "p50") for b in backends
        }  # SQLite is the reference for both columns (the embedded ratio is 1)
        row(
            f"timeline: {label}, p50 (ms)",
            {b: _get(results, "timeline", b, key, "p50") for b in backends},
            "the same read on SQLite",
            sqlite,
        )
    row(
        "bytes stored per minute of audio (complete message)",
        {
            b: _get(results, "replay", b, "stored_complete", "bytes_per_audio_minute")
            for b in backends
        },
        "the audio itself (160 B \u00d7 50 frames/s)",
        {
            b: _get(results, "replay", b, "stored_complete", "raw_bytes_per_audio_minute")
            for b in backends
        },
    )
    row(
        "bytes stored per minute of audio (streamed live)",
        {
            b: _get(results, "catch_up", b, "stored_live_paced", "bytes_per_audio_minute")
            for b in backends
        },
        "the audio itself",
        {
            b: _get(results, "catch_up", b, "stored_live_paced", "raw_bytes_per_audio_minute")
            for b in backends
        },
    )
    return rows


# -- formatting -----------------------------------------------------------------------------


def fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == int(value) and abs(value) >= 1:
            return f"{int(value):,}"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.{digits}f}"
    return str(value)


def _ratio(value: float | None) -> str:
    return "\u2013" if value is None else f"{value:.2f}\u00d7"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines


def headline_table(rows: list[dict[str, Any]]) -> list[str]:
    def value(entry: dict[str, Any], system: str) -> str:
        shown = fmt(entry[system])
        return (
            f"≥ {shown}" if entry.get(f"{system}_is_lower_bound") and shown != "\u2013" else shown
        )

    return _table(
        [
            "figure",
            "voxmesh",
            "grpc.aio relay",
            "voxmesh ÷ grpc.aio",
            "Redis relay",
            "voxmesh ÷ Redis",
        ],
        [
            [
                r["figure"],
                value(r, "voxmesh"),
                value(r, "grpc-relay"),
                _ratio(r["voxmesh/grpc-relay"]),
                value(r, "redis-relay"),
                _ratio(r["voxmesh/redis-relay"]),
            ]
            for r in rows
        ],
    )


def store_table(rows: list[dict[str, Any]]) -> list[str]:
    def cell(entry: dict[str, Any], backend: str) -> str:
        if entry[backend] is None:
            return "\u2013"
        reference = fmt(entry[f"{backend}_reference"])
        return f"{fmt(entry[backend])} (ref {reference}, {_ratio(entry[f'{backend}_ratio'])})"

    return _table(
        ["figure", BACKEND_NAMES["google"], BACKEND_NAMES["embedded"], "reference"],
        [[r["figure"], cell(r, "google"), cell(r, "embedded"), r["reference"]] for r in rows],
    )


# -- plots ----------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(results: dict[str, Any], path: Path) -> bool:
    plt = _pyplot()
    live = results["live"]
    sweeps = {s: live[s] for s in SYSTEM_NAMES if live.get(s)}
    for variant in results.get("voxmesh_variants", []):
        if variant is not live.get("voxmesh") and variant.get("routers", 1) != 1:
            sweeps[f"voxmesh ({variant['routers']} routers)"] = variant
    if not sweeps:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.8))
    limit = results["meta"]["parameters"]["p99_limit_ms"]
    for name, sweep in sweeps.items():
        steps = [s for s in sweep["steps"] if s["latency_ms"]["p50"] is not None]
        xs = [s["speakers"] for s in steps]
        label = SYSTEM_NAMES.get(name, name)
        line = ax.plot(
            xs, [s["latency_ms"]["p99"] for s in steps], marker="o", label=f"{label} p99"
        )
        ax.plot(
            xs,
            [s["latency_ms"]["p50"] for s in steps],
            marker=".",
            linestyle="--",
            color=line[0].get_color(),
            label=f"{label} p50",
        )
    ax.axhline(limit, color="red", linewidth=0.8, linestyle=":", label=f"{limit:g} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concurrent speakers (N), each with 2 listeners")
    ax.set_ylabel("speaker → listener latency (ms)")
    ax.set_title("Live relay latency by load")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_cdfs(curves: dict[str, list[list[float]]], title: str, xlabel: str, path: Path) -> bool:
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, points in curves.items():
        ax.plot([max(p[1], 1e-3) for p in points], [p[0] for p in points], label=name)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of chunks")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_latency_cdf(results: dict[str, Any], speakers: int | None, path: Path) -> bool:
    if speakers is None:
        return False
    curves = {}
    for system, name in SYSTEM_NAMES.items():
        step = _steps(results["live"].get(system)).get(speakers)
        if step and step["latency_ms"].get("cdf"):
            curves[name] = step["latency_ms"]["cdf"]
    return _plot_cdfs(curves, f"Live latency distribution at N={speakers}", "latency (ms)", path)


def plot_durable_acks(results: dict[str, Any], path: Path) -> bool:
    curves = {}
    for backend, name in BACKEND_NAMES.items():
        ack = _get(results, "durable_ack", backend, "durable_ack_ms", "cdf")
        if ack:
            curves[f"durable ack, {name}"] = ack
        floor = _get(results, "store_floor", backend, "latency_ms", "cdf")
        if floor:
            curves[f"store write alone, {name}"] = floor
    return _plot_cdfs(curves, "Chunk sent → durable ack", "latency (ms)", path)


def plot_cost(results: dict[str, Any], speakers: int | None, path: Path) -> bool:
    if speakers is None:
        return False
    bars: dict[str, dict[str, float]] = {}
    for system, name in SYSTEM_NAMES.items():
        step = _steps(results["live"].get(system)).get(speakers)
        if step:
            bars[name] = {k: v["cpu_s"] for k, v in step["cost"].items()}
    if not bars:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    processes = sorted({p for b in bars.values() for p in b})
    bottoms = [0.0] * len(bars)
    names = list(bars)
    for process in processes:
        heights = [bars[n].get(process, 0.0) for n in names]
        if not any(heights):
            continue
        ax.bar(names, heights, bottom=bottoms, label=process)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    ax.set_ylabel("CPU seconds during the step")
    ax.set_title(f"CPU by process at N={speakers} (load generators included)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_reads(results: dict[str, Any], path: Path) -> bool:
    labels, spanner, sqlite = [], [], []
    for key, label in (("since", "what is new since"), ("thread_page", "thread page")):
        labels.append(label)
        spanner.append(_get(results, "timeline", "google", key, "p50") or 0.0)
        sqlite.append(_get(results, "timeline", "embedded", key, "p50") or 0.0)
    if not any(spanner + sqlite):
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], spanner, width=0.4, label="Spanner emulator")
    ax.bar([x + 0.2 for x in xs], sqlite, width=0.4, label="SQLite")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("p50 (ms), through the router")
    ax.set_title("Timeline reads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- the report -----------------------------------------------------------------------------


def _sweep_section(name: str, sweep: dict[str, Any]) -> list[str]:
    lines = [
        f"**{name}** — capacity {fmt(sweep['capacity'])}"
        + (" (lower bound: no step failed)" if sweep["capacity_is_lower_bound"] else "")
        + (f", first failing N={sweep['first_failing']}" if sweep["first_failing"] else ""),
        "",
    ]
    rows = []
    for s in sweep["steps"]:
        lat = s["latency_ms"]
        ack = s.get("durable_ack_ms") or {}
        server_cpu = s["server_cpu_s"]
        rows.append(
            [
                fmt(s["speakers"]),
                fmt(lat["p50"]),
                fmt(lat["p99"]),
                fmt(lat["max"]),
                f"{s['loss']:.2%}",
                fmt(ack.get("p50")),
                fmt(ack.get("p99")),
                fmt(s["generator_lag_ms"]["p99"]),
                fmt(s["write_block_ms"]["p99"]),
                fmt(s["loadgen_loop_lag_ms"]["p99"]),
                fmt(server_cpu),
                fmt(s.get("server_cpu_measured_s")),
                fmt(s.get("server_cpu_ms_per_delivery")),
                fmt(s.get("store_writes_per_s")),
                fmt((s.get("load_average_before") or [None])[0]),
                s["verdict"]
                + (
                    " (the load generators were short of CPU too)"
                    if s["generator_bound"] and not s["passed"]
                    else ""
                ),
            ]
        )
    lines += _table(
        [
            "N",
            "p50 ms",
            "p99 ms",
            "max ms",
            "lost",
            "ack p50",
            "ack p99",
            "late send p99",
            "write wait p99",
            "loadgen loop lag p99",
            "server CPU s (step)",
            "server CPU s (measured phase)",
            "CPU ms per delivered frame",
            "store writes/s (body node)",
            "load avg",
            "verdict",
        ],
        rows,
    )
    errors = [e for s in sweep["steps"] for e in s["errors"]]
    if errors:
        lines += [
            "",
            "Errors (first few): " + "; ".join(f"`{e.splitlines()[0]}`" for e in errors[:4]),
        ]
    return [*lines, ""]


def _cost_lines(cost: dict[str, dict[str, float]]) -> list[str]:
    return _table(
        ["process", "CPU s", "CPU share", "peak RSS MB (in the stretch)", "lifetime peak RSS MB"],
        [
            [
                name,
                fmt(v["cpu_s"]),
                fmt(v["cpu_share"]),
                fmt(v["peak_rss_mb"]),
                fmt(v["lifetime_peak_rss_mb"]),
            ]
            for name, v in cost.items()
        ],
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


GRPC_WEB_PATH = "gRPC-web (MediaRecorder 100 ms slices)"
LIVE_AUDIO_PATHS = (
    ("webrtc", "WebRTC (aiortc, 20 ms Opus frames)"),
    ("grpc_web", GRPC_WEB_PATH),
    ("send", "gRPC Send (20 ms frames)"),
)


def _plus(value: float | None, added: float) -> float | None:
    return None if value is None else value + added


def _live_audio_row(speakers: int, path: str, step: dict[str, Any], listeners: int) -> list[str]:
    """One path at one N: mouth-to-ear, sent -> ear, acks, loss, CPU, verdict."""
    frame_ms = float(step.get("frame_ms") or FRAME_MS)
    latency = step["latency_ms"]
    sent = step.get("sent_to_arrival_ms")
    mouth: tuple[float | None, float | None]
    if sent is not None:
        # Recorder slices: stamped at the capture of the first sample; the call separately.
        mouth = (latency.get("p50"), latency.get("p99"))
        wire = (sent.get("p50"), sent.get("p99"))
    else:
        # Stamped as handed over, when the frame's last sample is captured: + the frame.
        wire = (latency.get("p50"), latency.get("p99"))
        mouth = (_plus(wire[0], frame_ms), _plus(wire[1], frame_ms))
    ack = step.get("durable_ack_ms") or {}
    cpu = step.get("server_cpu_ms_per_delivery")
    # ms of server CPU per delivered frame x frames delivered per talker-second
    per_talker = "-" if cpu is None else f"{cpu * listeners * 1000 / frame_ms:.0f}"
    return [
        str(speakers),
        path,
        _ms(mouth[0]),
        _ms(mouth[1]),
        _ms(wire[0]),
        _ms(wire[1]),
        _ms(ack.get("p50")),
        _ms(ack.get("p99")),
        f"{step['loss']:.2%}",
        per_talker,
        step["verdict"],
    ]


def _webrtc_section(results: dict[str, Any]) -> list[str]:
    """The browser's two uplinks (WebRTC, gRPC-web) beside gRPC Send at the same N, on the
    same stack: a row per path and talker count."""
    webrtc, grpc_web = results.get("webrtc"), results.get("grpc_web")
    if not webrtc and not grpc_web:
        return []
    params = results["meta"]["parameters"]
    listeners = params["listeners_per_thread"]
    limit = params.get("webrtc_p99_limit_ms", 150)
    sweeps = {
        "webrtc": _steps(webrtc),
        "grpc_web": _steps(grpc_web),
        "send": _steps(results["live"].get("voxmesh")),
    }
    rows = []
    for speakers in sorted(set(sweeps["webrtc"]) | set(sweeps["grpc_web"])):
        for key, path in LIVE_AUDIO_PATHS:
            step = sweeps[key].get(speakers)
            if step is not None:
                rows.append(_live_audio_row(speakers, path, step, listeners))
    lines = [
        "### Live audio over WebRTC",
        "",
        f"The browser's two uplinks beside gRPC `Send`, on the same stack, at the talker "
        f"counts of the WebRTC sweep (Send: the gRPC sweep's step at the same N, where it "
        f"ran one). Each talker has its own thread with {listeners} listening devices: gRPC "
        f"updates streams on the router, as for Send. Stamps are CLOCK_MONOTONIC, shared by "
        f"every process on the machine.",
        "",
        f"- **WebRTC**: aiortc peer connections (StartWebRtcTalk), one Opus RTP packet of "
        f"{FRAME_BYTES} bytes every 20 ms; sent = handed to aiortc (then its sender, SRTP, "
        f"the router's receiver, the relay). Acks come on the data channel.",
        f"- **{GRPC_WEB_PATH}**: what the web app does without WebRTC. Every talker is a "
        f"browser tab with its own keep-alive connection to Envoy's gRPC-web listener (https, "
        f"trusting the stack's CA; HTTP/1.1, where a browser would negotiate HTTP/2: the same "
        f"requests, one in flight, for a third of the load generator's CPU per call): "
        f"`StartMessage`, then every 100 ms a slice of "
        f"{SLICE_BYTES} bytes (Opus at 32 kb/s, the app's MediaRecorder setting) in a unary "
        f"`AppendChunks` call, one call in flight at a time (slices that pile up meanwhile "
        f"go together in the next call, as the app's uplink does), `EndMessage` at the end. "
        f"A slice's payload carries the capture time of its first sample (a slice is handed "
        f"over when its last sample is captured, so 100 ms earlier) and the time the call "
        f"carrying it was sent. Mouth-to-ear = arrival at a listener - first sample "
        f"captured: the 100 ms of recording, any wait for the call in flight, then sent -> "
        f"ear (the client's HTTP and TLS, Envoy, the router, the relay). `AppendChunks` "
        f"returns once the slice is durable (the ack column), so an ack slower than 100 ms "
        f"holds the next slice back. Not modelled: the Opus encoder's and MediaRecorder's "
        f"own delay, the WebM header in the first slice, the listener's playout.",
        f"- **gRPC Send**: the bidirectional stream, {FRAME_BYTES} bytes every 20 ms.",
        "",
        f"For the 20 ms paths mouth-to-ear is sent -> ear + 20 ms (a frame is handed over "
        f"when its last sample is captured); gRPC-web's is measured from its stamp. A WebRTC "
        f"step passes while its p99 sent -> ear < {limit:g} ms, a gRPC-web step while its "
        f"p99 mouth-to-ear < {limit:g} ms (ITU-T G.114's one-way bound); Send's verdict is "
        f"its sweep's (p99 < {params['p99_limit_ms']:g} ms). Server CPU per talker = server "
        f"CPU ms per delivered frame x {listeners} listeners x frames per second (50, or 10 "
        f"for 100 ms slices): ms of CPU per second of talk; for gRPC-web it includes Envoy.",
        "",
    ]
    for key, name in (
        ("webrtc", "WebRTC talkers one router carried with p99 sent -> ear"),
        ("grpc_web", "gRPC-web talkers one router carried with p99 mouth-to-ear"),
    ):
        sweep = results.get(key)
        if sweep:
            bound = "≥ " if sweep["capacity_is_lower_bound"] else ""
            lines.append(f"{name} < {limit:g} ms: **{bound}{sweep['capacity']}**.")
    lines += [
        "",
        "| talkers | path | mouth-to-ear p50 | mouth-to-ear p99 | sent -> ear p50 "
        "| sent -> ear p99 | durable ack p50 | durable ack p99 | lost "
        "| server CPU ms/s per talker | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    errors = [
        e
        for key in ("webrtc", "grpc_web")
        for step in sweeps[key].values()
        for e in step.get("errors", [])
    ]
    if errors:
        lines += [
            "",
            "Errors (first few): " + "; ".join(f"`{e.splitlines()[0]}`" for e in errors[:4]),
        ]
    return [*lines, ""]


def render_markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    meta = results["meta"]
    params = meta["parameters"]
    m = meta["machine"]
    live = results["live"]
    common = common_load(live)
    lines = [
        f"# voxmesh benchmark — {meta['started']} ({params['mode']} mode)",
        "",
        f"Machine: {m['logical_cores']} logical cores ({m['physical_cores']} physical, "
        f"{m['cpu_model']}), {m['memory_gb']} GB memory, {m['implementation']} {m['python']}, "
        f"{m['platform']}; load average at start {m['load_average_at_start']}, at end "
        f"{m.get('load_average_at_end')}. "
        f"Run took {meta['duration_s']} s. Everything (stack, baselines, load generators) ran on "
        f"this one machine over loopback, so absolute numbers are noisy; compare ratios to the "
        f"baselines measured in the same run.",
        "",
        "## Headline",
        "",
        *headline_table(results["headline"]),
        "",
        f"voxmesh: {_variant_label(live.get('voxmesh'))}. "
        f"Ratios are voxmesh ÷ baseline (for latency and CPU lower is better, for capacity "
        f"higher is better). Capacity is the largest N of the sweep "
        f"{list(params['sweep'])} (plus {params['refine_steps']} bisection step(s)) whose p99 "
        f"stayed under {params['p99_limit_ms']:g} ms with at most {params['loss_limit']:.0%} of "
        f"chunks lost and frames leaving the speakers on time; '≥' means no step failed.",
        "",
        "### Stores, catch-up and timelines",
        "",
        *store_table(results["store_rows"]),
        "",
    ]
    if meta["scaled_down"]:
        lines += ["Scaled down in this mode: " + "; ".join(meta["scaled_down"]) + ".", ""]
    lines += ["## Live relay latency and capacity", ""]
    lines += [
        f"Workload: N speakers, each in its own thread with {params['listeners_per_thread']} "
        f"listening devices of other users; every speaker sends a {160}-byte frame every 20 ms "
        f"(Opus at 64 kb/s), stamped with the send time just before it is handed to its stream; "
        f"latency = arrival at a listener - stamp (CLOCK_MONOTONIC, shared by all processes). "
        f"Each step: {params['warmup_s']:g} s warm-up (not measured), {params['measure_s']:g} s "
        f"measured, {params['drain_s']:g} s drain. Load from {params['loadgen_processes']} "
        f"separate uvloop processes with {params['channels_per_process']} connections each. "
        f"'late send' is how late frames left the speaker against their 20 ms schedule "
        f"(backpressure or a busy generator), 'write wait' the time a write awaited the stream, "
        f"'loop lag' how late the generator's event loop woke (its own CPU shortage), 'load avg' "
        f"the machine's 1-minute load average as the step began (other work on the machine). "
        f"'server CPU' is every server process of the system (for voxmesh: router, header, "
        f"body and notification nodes, etcd, Redis, the emulators, Envoy), over the whole step "
        f"and over the measured phase; CPU per delivered frame divides the measured phase's "
        f"CPU by the frames delivered in it (the steady live path: the messages' start in the "
        f"warm-up and their end in the drain are in the step's figure only).",
        "",
        "Baselines: the **bare grpc.aio relay** (bench/grpc_relay_baseline.py: one uvloop process "
        "forwarding each speaker's client stream as raw bytes to the server streams subscribed to "
        "its topic; no protobuf, auth, storage or validation) and the **Redis pub/sub relay** "
        "(PUBLISH per frame to a Valkey server, one SUBSCRIBE connection per listener).",
        "",
    ]
    for system in SYSTEM_NAMES:
        if live.get(system):
            label = SYSTEM_NAMES[system]
            if system == "voxmesh":
                label += f" ({_variant_label(live[system])})"
            lines += _sweep_section(label, live[system])
    for variant in results.get("voxmesh_variants", []):
        if variant is not live.get("voxmesh") and variant != live.get("voxmesh"):
            lines += _sweep_section(f"voxmesh ({_variant_label(variant)})", variant)
    lines += _webrtc_section(results)
    if 2 not in params["routers"]:
        lines += [
            "Routers: this run used "
            + " and ".join(str(r) for r in params["routers"])
            + " router(s). The harness takes the router count as a parameter (`--routers 1,2`); "
            "full mode runs the live sweep with 1 and with 2 routers (the router ring), where "
            "devices Discover their home router and speakers and listeners land on different "
            "routers.",
            "",
        ]
    for key, title in (
        ("sweep", "Latency by load"),
        ("cdf", "Latency distribution at the common load"),
        ("cost", "CPU by process"),
    ):
        if key in plots:
            lines += [f"![{title}]({plots[key]})", ""]

    lines += ["## Durable acks", ""]
    lines += [
        f"{params['ack_speakers']} speakers (the live workload, {params['ack_measure_s']:g} s "
        f"measured): per chunk, the time from handing it to the Send stream until a durable ack "
        f"covers it. The reference is one small write straight to the store from this process "
        f"(no mesh); the body store's group commit window adds up to "
        f"group_commit_ms on top by design.",
        "",
    ]
    ack_rows = []
    for backend, name in BACKEND_NAMES.items():
        ack = _get(results, "durable_ack", backend, "durable_ack_ms")
        floor = _get(results, "store_floor", backend)
        if ack or floor:
            ack_rows.append(
                [
                    name,
                    fmt(_get(ack, "p50")),
                    fmt(_get(ack, "p99")),
                    fmt(_get(floor, "latency_ms", "p50")),
                    fmt(_get(floor, "latency_ms", "p99")),
                    str(_get(floor, "method") or "\u2013"),
                ]
            )
    lines += _table(
        ["backend", "ack p50 ms", "ack p99 ms", "store p50 ms", "store p99 ms", "store write"],
        ack_rows,
    )
    if "acks" in plots:
        lines += ["", f"![Durable acks]({plots['acks']})"]
    lines += ["", "## Catch-up and replay", ""]
    lines += [
        f"A listener arrives {params['catch_up_arrival_s']:g} s into a live message (real-time "
        f"20 ms frames) and reads it with ReadBody from chunk 0: stored chunks at full speed, then "
        f"the live tail. It has reached the live edge at the first chunk whose index is at least "
        f"the speaker's newest sent index - 1. Replay: a complete {params['replay_message_s']:g} s "
        f"message (stored faster than real time) read with ReadBody from chunk 0 to the end frame, "
        f"and with one ReadBodyRange call.",
        "",
    ]
    cu_rows = []
    for backend, name in BACKEND_NAMES.items():
        cu = _get(results, "catch_up", backend)
        rp = _get(results, "replay", backend)
        if cu or rp:
            cu_rows.append(
                [
                    name,
                    fmt(_get(cu, "time_to_first_chunk_ms")),
                    fmt(_get(cu, "time_to_live_edge_s")),
                    fmt(_get(cu, "catch_up_speed_x_real_time")),
                    fmt(_get(cu, "live_tail_latency_ms", "p50")),
                    fmt(_get(rp, "replay_speed_x_real_time")),
                    fmt(_get(rp, "read_body_range_s")),
                ]
            )
    lines += _table(
        [
            "backend",
            "first chunk ms",
            "to live edge s",
            "catch-up speed \u00d7",
            "live tail p50 ms (ReadBody)",
            "replay \u00d7 real time",
            "ReadBodyRange s",
        ],
        cu_rows,
    )
    lines += ["", "## Timeline", ""]
    lines += [
        f"A user in {params['timeline_threads']:,} threads syncs and acknowledges a cursor; "
        f"{params['timeline_new_messages']} new messages land in as many threads; the user asks "
        f"ListTimeline for what is new since the cursor (all pages, page size 200), "
        f"{params['read_repeats']} times. Then a page of {params['thread_page_messages']} "
        f"messages of one thread (ListMessages), {params['read_repeats']} times. The Spanner "
        f"emulator keeps everything in memory and serialises transactions: it is not a Spanner "
        f"performance model (STACK.md); the ratio shows the adapter and emulator cost against "
        f"SQLite.",
        "",
    ]
    tl_rows = []
    for backend, name in BACKEND_NAMES.items():
        tl = _get(results, "timeline", backend)
        if tl:
            tl_rows.append(
                [
                    name,
                    fmt(_get(tl, "since", "p50")),
                    fmt(_get(tl, "since", "p99")),
                    f"{fmt(_get(tl, 'since_headers_returned'))} in "
                    f"{fmt(_get(tl, 'since_pages'))} page(s)",
                    fmt(_get(tl, "thread_page", "p50")),
                    fmt(_get(tl, "thread_page", "p99")),
                    fmt(_get(tl, "initial_sync_s")),
                    fmt(_get(tl, "create_threads_s")),
                ]
            )
    lines += _table(
        [
            "backend",
            "since p50 ms",
            "since p99 ms",
            "headers returned",
            "page p50 ms",
            "page p99 ms",
            "first sync s",
            "creating threads s",
        ],
        tl_rows,
    )
    if "reads" in plots:
        lines += ["", f"![Timeline reads]({plots['reads']})"]
    lines += ["", "## Cost", ""]
    lines += [
        "CPU seconds and resident memory of every process of the stack (services, emulators, "
        "etcd, Redis, Envoy) and of the load generators, per stretch. Bytes stored per minute "
        "of audio are in the table above (body objects of one message; headers not counted).",
        "",
    ]
    vox = live.get("voxmesh")
    if vox and common is not None and _steps(vox).get(common):
        lines += [
            f"Live sweep, voxmesh at N={common}:",
            "",
            *_cost_lines(_steps(vox)[common]["cost"]),
            "",
        ]
    for baseline in BASELINES:
        step = _steps(live.get(baseline)).get(common) if common is not None else None
        if step:
            lines += [
                f"Live sweep, {SYSTEM_NAMES[baseline]} at N={common}:",
                "",
                *_cost_lines(step["cost"]),
                "",
            ]
    for backend, scenarios in results.get("scenario_cost", {}).items():
        for scenario, cost in scenarios.items():
            lines += [
                f"{scenario.replace('_', ' ')} on {BACKEND_NAMES[backend]}:",
                "",
                *_cost_lines(cost),
                "",
            ]
    lines += ["## Parameters", ""]
    lines += _table(["parameter", "value"], [[k, f"`{v}`"] for k, v in params.items()])
    lines += ["", f"Time per scenario (s): {meta['scenario_s']}", ""]
    if results["notes"] or results["errors"]:
        lines += ["## Notes and errors", ""]
        lines += [f"- {note}" for note in results["notes"]]
        lines += [f"- **{e['scenario']}** failed: `{e['error']}`" for e in results["errors"]]
        lines += [""]
    return "\n".join(lines)


def _variant_label(sweep: dict[str, Any] | None) -> str:
    if not sweep:
        return "not run"
    backend = BACKEND_NAMES.get(sweep.get("backend", ""), sweep.get("backend", "?"))
    return f"{sweep.get('routers', 1)} router(s), {backend}"


def write_results(
    results: dict[str, Any], out_dir: Path, started: datetime.datetime
) -> tuple[Path, Path]:
    """Write ``<date>.json``, ``<date>.md`` and ``<date>-*.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = started.strftime("%Y-%m-%d-%H%M%S")
    results["headline"] = headline(results)
    results["store_rows"] = store_rows(results)
    results["meta"]["common_load"] = common_load(results["live"])
    plots: dict[str, str] = {}
    common = common_load(results["live"])
    makers: dict[str, Callable[[Path], bool]] = {
        "sweep": lambda p: plot_sweep(results, p),
        "cdf": lambda p: plot_latency_cdf(results, common, p),
        "cost": lambda p: plot_cost(results, common, p),
        "acks": lambda p: plot_durable_acks(results, p),
        "reads": lambda p: plot_reads(results, p),
    }
    for key, make in makers.items():
        path = out_dir / f"{stem}-{key}.png"
        try:
            if make(path):
                plots[key] = path.name
        except Exception as exc:  # a plot must never lose the run's numbers
            results["notes"].append(f"plot {key} failed: {exc}")
    results["plots"] = plots
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=1, default=str))
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(render_markdown(results, plots))
    return json_path, md_path
