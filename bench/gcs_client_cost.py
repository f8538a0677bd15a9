"""CPU per small write to Cloud Storage: google-cloud-storage, gcloud-aio-storage (what the body
store uses) and the bare JSON API over aiohttp, on a fake-gcs-server started here (the same
binary the local stack runs).

    .venv/bin/python -m bench.gcs_client_cost [--writes 2000] [--size 4096] [--concurrency 16]

Each client makes ``writes`` create-only uploads of ``size`` bytes, ``concurrency`` at a time
(google-cloud-storage on a thread pool of that size, as the old adapter ran it; the asyncio
clients as that many tasks on uvloop), in this process. Reported: this process's CPU time per write
(user + system, the client's own cost; the emulator runs in its own process) and wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import uvloop

from bench.bench_stack import free_port
from voxmesh.stack import binaries


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def _measure(label: str, writes: int, run: Callable[[], None]) -> dict[str, Any]:
    began_wall, began_cpu = time.perf_counter(), _cpu()
    run()
    wall, cpu = time.perf_counter() - began_wall, _cpu() - began_cpu
    return {
        "client": label,
        "writes": writes,
        "cpu_ms_per_write": round(cpu * 1000 / writes, 3),
        "wall_ms_per_write": round(wall * 1000 / writes, 3),
        "writes_per_s": round(writes / wall, 1),
    }


def _drain(results: Iterable[None]) -> None:
    for _ in results:
        pass


def google_client(bucket: str, writes: int, data: bytes, concurrency: int) -> dict[str, Any]:
    import google.cloud.storage as storage  # type: ignore[import-untyped,unused-ignore]
    import requests.adapters

    client = storage.Client(project="bench")
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=concurrency)
    client._http.mount("http://", adapter)
    handle = client.bucket(bucket)

    def one(n: int) -> None:
        handle.blob(f"google/{n}").upload_from_string(data, if_generation_match=0)

    for n in range(20):  # warm up: connections, imports
        one(-n - 1)
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        return _measure(
            "google-cloud-storage (threads)", writes, lambda: _drain(pool.map(one, range(writes)))
        )


def aiohttp_client(bucket: str, writes: int, data: bytes, concurrency: int) -> dict[str, Any]:
    """The JSON API over aiohttp (what gcloud-aio-storage is built on), for comparison."""
    import aiohttp

    endpoint = os.environ["STORAGE_EMULATOR_HOST"]
    url = f"{endpoint}/upload/storage/v1/b/{bucket}/o"

    async def main() -> dict[str, Any]:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(n: int) -> None:
                params = {"uploadType": "media", "name": f"aiohttp/{n}", "ifGenerationMatch": "0"}
                async with session.post(url, params=params, data=data) as response:
                    response.raise_for_status()
                    await response.read()

            async def all_writes() -> None:
                queue = iter(range(writes))

                async def worker() -> None:
                    for n in queue:
                        await one(n)

                await asyncio.gather(*(worker() for _ in range(concurrency)))

            for n in range(20):
                await one(-n - 1)
            began_wall, began_cpu = time.perf_counter(), _cpu()
            await all_writes()
            wall, cpu = time.perf_counter() - began_wall, _cpu() - began_cpu
        return {
            "client": "aiohttp JSON API (asyncio)",
            "writes": writes,
            "cpu_ms_per_write": round(cpu * 1000 / writes, 3),
            "wall_ms_per_write": round(wall * 1000 / writes, 3),
            "writes_per_s": round(writes / wall, 1),
        }

    return uvloop.run(main())


def gcloud_aio_client(bucket: str, writes: int, data: bytes, concurrency: int) -> dict[str, Any]:
    import aiohttp
    from gcloud.aio.storage import Storage

    async def main() -> dict[str, Any]:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            client = Storage(session=cast(Any, session))

            async def one(n: int) -> None:
                await client.upload(bucket, f"aio/{n}", data, parameters={"ifGenerationMatch": "0"})

            async def all_writes() -> None:
                queue = iter(range(writes))

                async def worker() -> None:
                    for n in queue:
                        await one(n)

                await asyncio.gather(*(worker() for _ in range(concurrency)))

            for n in range(20):
                await one(-n - 1)
            began_wall, began_cpu = time.perf_counter(), _cpu()
            await all_writes()
            wall, cpu = time.perf_counter() - began_wall, _cpu() - began_cpu
        return {
            "client": "gcloud-aio-storage (asyncio, aiohttp)",
            "writes": writes,
            "cpu_ms_per_write": round(cpu * 1000 / writes, 3),
            "wall_ms_per_write": round(wall * 1000 / writes, 3),
            "writes_per_s": round(writes / wall, 1),
        }

    return uvloop.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=16)
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
            "-external-url",
            f"http://127.0.0.1:{port}",
            "-log-level",
            "error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
        import httpx

        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.post(
                    f"http://127.0.0.1:{port}/storage/v1/b",
                    params={"project": "bench"},
                    json={"name": "cost"},
                ).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        data = os.urandom(args.size)
        results = [
            google_client("cost", args.writes, data, args.concurrency),
            aiohttp_client("cost", args.writes, data, args.concurrency),
            gcloud_aio_client("cost", args.writes, data, args.concurrency),
        ]
        print(json.dumps({"size_bytes": args.size, "results": results}, indent=2))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
