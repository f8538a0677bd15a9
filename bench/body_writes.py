"""The body node alone: object writes per second and durable-ack latency for N live speakers.

    .venv/bin/python -m bench.body_writes [--speakers 1,10,50] [--seconds 5] [--json FILE]

A ``BodyDomain`` over the Cloud Storage adapter on a fake-gcs-server started here; each speaker
appends one 160-byte chunk every 20 ms to its own message (as a router relays them), acks come
through an ack sink; then every message is completed. Counted: the storage adapter's object
writes (every write method called), per second of the live stretch, and append -> ack latency.
No mesh, no load-generator processes: the body store's own cost, free of the other services.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
from collections import Counter
from typing import Any

import httpx
import uvloop

from bench.bench_stack import free_port
from bench.latency_stats import summarize
from voxmesh.body.body_domain import BodyDomain, BodyLimits
from voxmesh.body.body_model import BodyState, EndTotals, StoredChunk
from voxmesh.body.gcs_body_storage import GcsBodyStorage
from voxmesh.core.settings import load_settings
from voxmesh.stack import binaries

WRITE_METHODS = ("write_batch", "write_segment", "compose", "write_index", "delete")
FRAME_S = 0.02
PAYLOAD = 160


class CountingStorage:
    """The real adapter, with every object-writing call counted."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.writes: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in WRITE_METHODS:
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.writes[name] += 1
            return await attr(*args, **kwargs)

        return counted


async def run(speakers: int, seconds: float, bucket: str) -> dict[str, Any]:
    storage = CountingStorage(GcsBodyStorage("bench", bucket))
    limits = BodyLimits.from_settings(load_settings(environ={}))
    domain = BodyDomain(storage, limits)
    await domain.start()
    sink = domain.open_sink()
    sent: dict[tuple[str, int], float] = {}
    latencies: list[float] = []
    run_id = os.urandom(4).hex()
    messages = [f"m-{run_id}-{n}" for n in range(speakers)]

    async def acks() -> None:
        while True:
            await sink.changed()
            now = time.perf_counter()
            for ack in sink.take():
                for index in range(ack.chunk_count):
                    began = sent.pop((ack.message_id, index), None)
                    if began is not None:
                        latencies.append((now - began) * 1000)

    reader = asyncio.get_running_loop().create_task(acks())
    frames = int(seconds / FRAME_S)

    async def speaker(n: int) -> None:
        message_id = messages[n]
        await asyncio.sleep(FRAME_S * n / speakers)
        start = time.perf_counter()
        for index in range(frames):
            chunk = StoredChunk(index, index * PAYLOAD, index * 20, bytes([n % 251]) * PAYLOAD)
            sent[(message_id, index)] = time.perf_counter()
            await domain.append(f"t-{run_id}", message_id, "audio/ogg", [chunk], sink)
            await asyncio.sleep(max(start + (index + 1) * FRAME_S - time.perf_counter(), 0))

    began = time.perf_counter()
    await asyncio.gather(*(speaker(n) for n in range(speakers)))
    while sent and time.perf_counter() - began < seconds + 30:  # noqa: ASYNC110 (bounded)
        await asyncio.sleep(0.01)
    live_s = time.perf_counter() - began
    live_writes = dict(storage.writes)
    for message_id in messages:
        await domain.finish(
            f"t-{run_id}",
            message_id,
            BodyState.COMPLETE,
            EndTotals(frames, frames * PAYLOAD, frames * 20),
        )
    reader.cancel()
    await domain.close()
    return {
        "speakers": speakers,
        "live_s": round(live_s, 2),
        "object_writes_per_s_live": round(sum(live_writes.values()) / live_s, 1),
        "live_writes": live_writes,
        "writes_with_finish": dict(storage.writes),
        "ack_ms": {k: v for k, v in summarize(latencies).items() if k != "cdf"},
        "unacked": len(sent),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speakers", default="1,10,50")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [
            str(binaries.fake_gcs_server()),
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(port),
            "-backend",
            "memory",
            "-log-level",
            "error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.post(
                    f"http://127.0.0.1:{port}/storage/v1/b",
                    params={"project": "bench"},
                    json={"name": "writes"},
                ).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        results = [
            uvloop.run(run(int(n), args.seconds, "writes")) for n in args.speakers.split(",")
        ]
        text = json.dumps(results, indent=2)
        print(text)
        if args.json:
            with open(args.json, "w") as out:
                out.write(text)
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
