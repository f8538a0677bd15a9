"""What mutual TLS costs one mesh hop: the same grpc.aio stream and unary calls over
plaintext and over mutual TLS (certificates from voxmesh's local CA), in one process.

``python -m bench.tls_overhead [--frames 20000] [--calls 2000] [--rounds 3]``

Per streamed 160-byte frame (a relay entry or a chunk, each acknowledged by a small reply)
it reports the CPU time of the process (client and server together) and the wall time;
for unary calls the round trip p50 and p99. Rounds alternate the two transports, so load
from other work on the machine falls on both.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import uvloop

from voxmesh.core.local_pki import LocalCA
from voxmesh.core.mesh_identity import server_name

_FRAME = bytes(160)
_ACK = bytes(8)


async def _stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for _frame in requests:
        yield _ACK


async def _unary(request: bytes, context: Any) -> bytes:
    return _ACK


def _handlers() -> grpc.GenericRpcHandler[Any, Any]:
    return grpc.method_handlers_generic_handler(
        "bench.Hop",
        {
            "Stream": grpc.stream_stream_rpc_method_handler(_stream),
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        },
    )


async def _run(tls: dict[str, bytes] | None, frames: int, calls: int) -> dict[str, float]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(),))
    options: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)]
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options)
    else:
        credentials = grpc.ssl_server_credentials(
            [(tls["key"], tls["cert"])], root_certificates=tls["ca"], require_client_auth=True
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
        options.append(("grpc.ssl_target_name_override", server_name("voxmesh", "header")))
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{port}",
            grpc.ssl_channel_credentials(tls["ca"], tls["key"], tls["cert"]),
            options,
        )
    await server.start()
    try:
        unary = channel.unary_unary("/bench.Hop/Unary", None, None)
        await unary(_ACK)  # connect (and handshake) before measuring
        stream = channel.stream_stream("/bench.Hop/Stream", None, None)
        call = stream()  # type: ignore[call-arg]  # stubs: iterator required
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(frames):
            await call.write(_FRAME)
            await call.read()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        await call.done_writing()
        round_trips = []
        for _ in range(calls):
            started = time.perf_counter()
            await unary(_ACK)
            round_trips.append(time.perf_counter() - started)
        round_trips.sort()
        return {
            "cpu_us_per_frame": cpu / frames * 1e6,
            "wall_us_per_frame": wall / frames * 1e6,
            "unary_p50_us": statistics.median(round_trips) * 1e6,
            "unary_p99_us": round_trips[int(len(round_trips) * 0.99)] * 1e6,
        }
    finally:
        await channel.close(None)
        await server.stop(0)


async def _main(frames: int, calls: int, rounds: int) -> None:
    directory = Path(tempfile.mkdtemp(prefix="voxmesh-tls-overhead-"))
    ca = LocalCA(directory)
    issued = ca.issue("header", kind="header")
    tls = {
        "ca": ca.cert_pem,
        "cert": issued.cert_file.read_bytes(),
        "key": issued.key_file.read_bytes(),
    }
    results: dict[str, list[dict[str, float]]] = {"plaintext": [], "mutual TLS": []}
    for _ in range(rounds):
        results["plaintext"].append(await _run(None, frames, calls))
        results["mutual TLS"].append(await _run(tls, frames, calls))
    print(f"{frames} frames of 160 B (each acked) and {calls} unary calls, {rounds} rounds:")
    medians = {}
    for name, runs in results.items():
        medians[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"  {name:<11}", "  ".join(f"{k}={v:.1f}" for k, v in medians[name].items()))
    ratios = {k: medians["mutual TLS"][k] / medians["plaintext"][k] for k in medians["plaintext"]}
    print("  ratio      ", "  ".join(f"{k}={v:.2f}x" for k, v in ratios.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    uvloop.run(_main(args.frames, args.calls, args.rounds))


if __name__ == "__main__":
    main()
