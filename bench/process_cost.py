"""CPU seconds and peak resident memory of named processes over a stretch of a run."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

SAMPLE_EVERY_S = 0.2


def _lifetime_peak_rss(pid: int) -> int:
    """The kernel's high-water mark of resident memory (VmHWM), in bytes; 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass
class _Watched:
    name: str
    processes: list[psutil.Process]
    cpu_start: float = 0.0
    peak_rss: int = 0
    cpu_end: float = 0.0
    window_start: float | None = None  # CPU at the window's start and end (if one was given)
    window_end: float | None = None
    hwm: int = 0
    gone: bool = False

    def cpu(self) -> float:
        total = 0.0
        for process in self.processes:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                self.gone = True
        return total

    def rss(self) -> int:
        total = 0
        for process in self.processes:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                self.gone = True
        return total


class ProcessCost:
    """Use as a context manager around the measured stretch; ``report()`` afterwards."""

    def __init__(self, pids: Mapping[str, int], window: tuple[float, float] | None = None) -> None:
        """``window``: (start, end) in ``time.monotonic()`` seconds inside the stretch, e.g.
        a load step's measured phase; its CPU is reported beside the whole stretch's."""
        self._window = window
        self._window_thread: threading.Thread | None = None
        self._watched: list[_Watched] = []
        for name, pid in pids.items():
            try:
                root = psutil.Process(pid)
                family = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            self._watched.append(_Watched(name, family))
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="process-cost", daemon=True)
        self.wall_s = 0.0
        self._began = 0.0

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            for watched in self._watched:
                watched.peak_rss = max(watched.peak_rss, watched.rss())

    def _mark_window(self) -> None:
        assert self._window is not None
        start, end = self._window
        if self._stop.wait(max(0.0, start - time.monotonic())):
            return
        for watched in self._watched:
            watched.window_start = watched.cpu()
        if self._stop.wait(max(0.0, end - time.monotonic())):
            return
        for watched in self._watched:
            watched.window_end = watched.cpu()

    def __enter__(self) -> ProcessCost:
        for watched in self._watched:
            watched.cpu_start = watched.cpu()
            watched.peak_rss = watched.rss()
        self._began = time.monotonic()
        self._sampler.start()
        if self._window is not None:
            self._window_thread = threading.Thread(
                target=self._mark_window, name="process-cost-window", daemon=True
            )
            self._window_thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._window_thread is not None:  # the window ends inside the stretch
            self._window_thread.join(timeout=max(0.0, self._window[1] - time.monotonic()) + 2)  # type: ignore[index]
        self._stop.set()
        self._sampler.join(timeout=2)
        self.wall_s = time.monotonic() - self._began
        for watched in self._watched:
            watched.cpu_end = watched.cpu()
            watched.peak_rss = max(watched.peak_rss, watched.rss())
            watched.hwm = sum(_lifetime_peak_rss(p.pid) for p in watched.processes)

    def report(self) -> dict[str, dict[str, float]]:
        """Per process: CPU seconds in the stretch, peak RSS (MB) sampled in it, lifetime peak."""
        return {
            w.name: {
                "cpu_s": round(w.cpu_end - w.cpu_start, 3),
                "cpu_share": round((w.cpu_end - w.cpu_start) / self.wall_s, 3)
                if self.wall_s
                else 0.0,
                "peak_rss_mb": round(w.peak_rss / 2**20, 1),
                "lifetime_peak_rss_mb": round(w.hwm / 2**20, 1),
                **(
                    {"window_cpu_s": round(w.window_end - w.window_start, 3)}
                    if w.window_start is not None and w.window_end is not None
                    else {}
                ),
            }
            for w in self._watched
        }

    def total_cpu_s(self) -> float:
        return sum(w.cpu_end - w.cpu_start for w in self._watched)


def wait_until_quiet(
    pids: Mapping[str, int], max_s: float, busy_share: float = 0.15, window_s: float = 0.5
) -> float:
    """Wait (at most ``max_s``) until the processes together use less than ``busy_share`` of a
    core over a window: an overloaded step leaves backlogs that would colour the next one.
    Returns the seconds waited."""
    processes = []
    for pid in pids.values():
        try:
            processes.append(psutil.Process(pid))
        except psutil.Error:
            continue

    def cpu() -> float:
        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                continue
        return total

    began = time.monotonic()
    while time.monotonic() - began < max_s:
        before = cpu()
        time.sleep(window_s)
        if (cpu() - before) / window_s < busy_share:
            break
    return time.monotonic() - began
