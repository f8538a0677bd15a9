"""The benchmark harness in its smallest mode: it runs against the real servers and writes its
JSON, its Markdown report and its plots. The figures themselves are not checked: benchmarks
are not pass/fail (`make bench` measures them)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack

REPO_ROOT = Path(__file__).resolve().parents[2]
SYSTEMS = {"voxmesh", "grpc-relay", "redis-relay"}


def test_tiny_run_writes_results_report_and_plots(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench", "--mode", "tiny", "--backends", "embedded"]
    command += ["--out", str(tmp_path)]
    run = subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    (json_path,) = tmp_path.glob("*.json")
    results = json.loads(json_path.read_text())

    assert results["errors"] == [], results["errors"]
    meta = results["meta"]
    assert {"logical_cores", "memory_gb", "python", "cpu_model"} <= set(meta["machine"])
    assert meta["parameters"]["mode"] == "tiny" and meta["parameters"]["routers"] == [1]

    # The live sweep of voxmesh and of both baselines, with latencies and costs.
    assert set(results["live"]) == SYSTEMS
    for system, sweep in results["live"].items():
        assert {"steps", "capacity", "capacity_is_lower_bound"} <= set(sweep), system
        step = sweep["steps"][0]
        assert step["latency_ms"]["count"] > 0, (system, step["errors"])
        assert {"p50", "p99", "max", "cdf"} <= set(step["latency_ms"])
        assert step["cost"] and all(
            "cpu_s" in c and "peak_rss_mb" in c for c in step["cost"].values()
        )
    assert {"router", "body", "header"} <= set(results["live"]["voxmesh"]["steps"][0]["cost"])
    for sweep in results["live"].values():  # CPU per frame is the measured phase's
        for step in sweep["steps"]:
            measured = step["server_cpu_measured_s"]
            # (a lean server may use less than a clock tick in tiny mode's short phase)
            assert measured is not None and 0 <= measured <= step["server_cpu_s"], step["system"]
    assert all(s["server_cpu_measured_s"] > 0 for s in results["live"]["voxmesh"]["steps"])

    # Live audio from browsers: WebRTC talkers, and gRPC-web talkers (MediaRecorder slices
    # through Envoy) at the same talker counts, mouth-to-ear and call-sent-to-ear.
    webrtc_counts = [step["speakers"] for step in results["webrtc"]["steps"]]
    assert webrtc_counts, results["webrtc"]
    for step in results["webrtc"]["steps"]:
        assert step["latency_ms"]["count"] > 0, ("webrtc", step["errors"])
    grpc_web_steps = results["grpc_web"]["steps"]
    assert [step["speakers"] for step in grpc_web_steps] == webrtc_counts
    for step in grpc_web_steps:
        mouth, sent = step["latency_ms"], step["sent_to_arrival_ms"]
        assert mouth["count"] > 0 and sent["count"] == mouth["count"], step["errors"]
        assert step["frame_ms"] == 100 and step["latency_from"] == "first sample captured"
        # Mouth-to-ear holds the slice's 100 ms of recording (and any wait for the call in
        # flight) on top of sent -> ear, slice by slice.
        assert sent["p50"] > 0 and mouth["p50"] >= sent["p50"] + 99.999
        assert mouth["p99"] >= sent["p99"] + 99.999
        assert step["durable_ack_ms"]["count"] > 0

    # The headline: voxmesh beside each baseline, with ratios.
    figures = {row["figure"]: row for row in results["headline"]}
    assert any(f.startswith("capacity") for f in figures)
    p50 = (
        figures["live latency p50 at N=1 (ms)"]
        if "live latency p50 at N=1 (ms)" in figures
        else None
    )
    assert p50 is None or p50["voxmesh/grpc-relay"] is not None

    # Durable acks, catch-up, replay, bytes stored and the timeline on the embedded stores.
    ack = results["durable_ack"]["embedded"]["durable_ack_ms"]
    assert ack["count"] > 0 and ack["p50"] > 0
    assert results["store_floor"]["embedded"]["latency_ms"]["count"] > 0
    catch_up = results["catch_up"]["embedded"]
    assert catch_up["time_to_first_chunk_ms"] is not None
    assert catch_up["time_to_live_edge_s"] is not None
    replay = results["replay"]["embedded"]
    assert replay["replay_speed_x_real_time"] > 0
    assert replay["stored_complete"]["bytes_per_audio_minute"] > 0
    timeline = results["timeline"]["embedded"]
    assert timeline["since_headers_returned"] >= meta["parameters"]["timeline_new_messages"]
    assert timeline["thread_page_returned"] == meta["parameters"]["thread_page_messages"]

    # The report, with every plot it names.
    report = json_path.with_suffix(".md").read_text()
    for heading in (
        "## Headline",
        "## Live relay latency",
        "### Live audio over WebRTC",
        "## Durable acks",
        "## Catch-up",
        "## Timeline",
        "## Cost",
        "## Parameters",
    ):
        assert heading in report, heading
    assert "2 logical cores" in report or "logical cores" in report
    figure = r"[0-9]+\.[0-9] ms"
    for speakers in webrtc_counts:
        for path in (r"WebRTC \([^|]*\)", r"gRPC-web \(MediaRecorder 100 ms slices\)"):
            row = rf"\| {speakers} \| {path} \| {figure} \| {figure} \| {figure} \| {figure} \|"
            assert re.search(row, report), (speakers, path)
    assert results["plots"], "no plots"
    for name in results["plots"].values():
        assert (tmp_path / name).stat().st_size > 1000
        assert f"]({name})" in report
