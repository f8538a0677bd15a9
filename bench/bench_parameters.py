"""Every parameter of a benchmark run, with the three presets (full, quick, tiny)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["full", "quick", "tiny"]
Backend = Literal["google", "embedded"]
System = Literal["voxmesh", "grpc-relay", "redis-relay", "voxmesh-webrtc", "voxmesh-grpc-web"]

# voxmesh-webrtc: the same sweep with WebRTC talkers (aiortc), judged by webrtc_p99_limit_ms.
# voxmesh-grpc-web: browsers' fallback uplink (MediaRecorder slices in unary AppendChunks
# calls through Envoy), at the talker counts the WebRTC sweep ran, judged by the same limit.
SYSTEMS: tuple[System, ...] = (
    "voxmesh",
    "grpc-relay",
    "redis-relay",
    "voxmesh-webrtc",
    "voxmesh-grpc-web",
)
BACKENDS: tuple[Backend, ...] = ("google", "embedded")

FRAME_MS = 20  # one Opus frame
FRAME_BYTES = 160  # 20 ms of Opus at 64 kb/s
SLICE_MS = 100  # the web app's MediaRecorder timeslice (gateway/web/src/audio/voice.ts)
SLICE_BYTES = 400  # 100 ms of Opus at 32 kb/s, the web app's audioBitsPerSecond


@dataclass(frozen=True)
class Framing:
    """What a talker of a system sends: a payload of ``size`` bytes every ``ms``.

    ``recorder_slices``: each payload is a recording slice, handed over when its last sample
    is captured; its stamp is then the capture time of its first sample (hand-over - ``ms``),
    and the talker stamps the time the call carrying it was sent too.
    """

    ms: int = FRAME_MS
    size: int = FRAME_BYTES
    recorder_slices: bool = False

    @property
    def ns(self) -> int:
        return self.ms * 1_000_000


_FRAMINGS: dict[str, Framing] = {
    "voxmesh-grpc-web": Framing(SLICE_MS, SLICE_BYTES, recorder_slices=True),
}


def framing(system: System) -> Framing:
    return _FRAMINGS.get(system, Framing())


@dataclass(frozen=True)
class BenchParameters:
    mode: Mode
    # -- the live relay sweep (all three systems, the same workload) --------------------------
    sweep: tuple[int, ...]  # speakers per step, tried in order until p99 passes the limit
    refine_steps: int  # bisections between the last passing and the first failing step
    p99_limit_ms: float  # the capacity criterion
    loss_limit: float  # a step that loses more than this share of chunks fails too
    listeners_per_thread: int  # listening devices per speaker's thread (other users)
    warmup_s: float  # per step, not measured
    measure_s: float  # per step, measured
    drain_s: float  # after the last frame, for late chunks
    settle_s: float  # pause between steps (group commits, composes finish)
    loadgen_processes: int  # load generator processes (separate from the stack)
    channels_per_process: int  # client connections per load generator process
    setup_concurrency: int  # concurrent setup calls (threads, streams) per process
    # -- durable acks: a fixed load on each backend --------------------------------------------
    ack_speakers: int
    ack_measure_s: float
    store_floor_samples: int  # direct writes to the store without the mesh (the reference)
    # -- catch-up -------------------------------------------------------------------------------
    catch_up_arrival_s: float  # the late listener arrives this far into the live message
    replay_message_s: float  # length of the complete message replayed with ReadBody
    # -- timeline -----------------------------------------------------------------------------
    timeline_threads: int
    timeline_new_messages: int
    thread_page_messages: int
    read_repeats: int
    # -- the mesh -----------------------------------------------------------------------------
    routers: tuple[
        int, ...
    ]  # router processes; the live sweep runs with each, the rest with the first
    backends: tuple[Backend, ...]  # the live sweep runs on the first
    systems: tuple[System, ...]
    # WebRTC talkers pass a step while p99 stays under ITU-T G.114's one-way bound.
    webrtc_p99_limit_ms: float = 150.0
    # Seconds a stack or baseline gets to start; each load step is bounded separately.
    start_timeout_s: float = 90.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe_scaling(self) -> list[str]:
        """What this mode scales down from the full figures, said in the report."""
        notes = []
        if self.catch_up_arrival_s < 60:
            notes.append(
                f"catch-up listener arrives {self.catch_up_arrival_s:g} s into the message "
                f"(full mode: 60 s)"
            )
        if self.replay_message_s < 300:
            notes.append(
                f"replayed complete message is {self.replay_message_s:g} s long (full mode: 300 s)"
            )
        if self.timeline_threads < 1000:
            notes.append(f"timeline user has {self.timeline_threads} threads (full mode: 1,000)")
        if self.timeline_new_messages < 50:
            notes.append(
                f"{self.timeline_new_messages} new messages before the timeline read (full: 50)"
            )
        if self.thread_page_messages < 100:
            notes.append(f"thread page of {self.thread_page_messages} messages (full: 100)")
        if self.measure_s < 10:
            notes.append(f"each sweep step measures {self.measure_s:g} s (full mode: 10 s)")
        return notes


def preset(mode: Mode, **changes: Any) -> BenchParameters:
    common: dict[str, Any] = {
        "p99_limit_ms": 50.0,
        "loss_limit": 0.01,
        "listeners_per_thread": 2,
        "loadgen_processes": 2,
        "channels_per_process": 8,
        "setup_concurrency": 16,
        "routers": (1,),
        "backends": BACKENDS,
        "systems": SYSTEMS,
    }
    presets: dict[Mode, dict[str, Any]] = {
        "full": {
            "routers": (1, 2),
            "sweep": (1, 10, 50, 100, 200, 400, 800),
            "refine_steps": 2,
            "warmup_s": 2.0,
            "measure_s": 10.0,
            "drain_s": 3.0,
            "settle_s": 2.0,
            "ack_speakers": 10,
            "ack_measure_s": 10.0,
            "store_floor_samples": 100,
            "catch_up_arrival_s": 60.0,
            "replay_message_s": 300.0,
            "timeline_threads": 1000,
            "timeline_new_messages": 50,
            "thread_page_messages": 100,
            "read_repeats": 10,
        },
        "quick": {
            "sweep": (1, 10, 50, 100),
            "refine_steps": 0,
            "warmup_s": 1.0,
            "measure_s": 1.5,
            "drain_s": 1.0,
            "settle_s": 0.2,
            "ack_speakers": 10,
            "ack_measure_s": 1.5,
            "store_floor_samples": 30,
            "catch_up_arrival_s": 3.0,
            "replay_message_s": 60.0,
            "timeline_threads": 100,
            "timeline_new_messages": 50,
            "thread_page_messages": 100,
            "read_repeats": 3,
        },
        "tiny": {
            "sweep": (2,),
            "refine_steps": 0,
            "warmup_s": 0.3,
            "measure_s": 0.7,
            "drain_s": 0.5,
            "settle_s": 0.2,
            "loadgen_processes": 1,
            "channels_per_process": 2,
            "ack_speakers": 2,
            "ack_measure_s": 0.7,
            "store_floor_samples": 5,
            "catch_up_arrival_s": 1.0,
            "replay_message_s": 4.0,
            "timeline_threads": 8,
            "timeline_new_messages": 4,
            "thread_page_messages": 10,
            "read_repeats": 2,
        },
    }
    values = {**common, **presets[mode], "mode": mode}
    values.update({k: v for k, v in changes.items() if v is not None})
    return BenchParameters(**values)
