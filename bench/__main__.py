"""``python -m bench``: run the benchmarks and write the results and the report.

python -m bench --mode full      # make bench
python -m bench --mode quick     # make bench-quick (under 2 minutes)
python -m bench --mode tiny --backends embedded --out /tmp/x   # what the smoke test runs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import get_args

from bench.bench_parameters import BACKENDS, SYSTEMS, Backend, Mode, System, preset
from bench.bench_run import run_bench

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _choices(text: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [c for c in chosen if c not in allowed]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"{what}: choose from {', '.join(allowed)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=get_args(Mode), default="full")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument(
        "--backends",
        type=lambda t: _choices(t, BACKENDS, "backends"),
        help="google,embedded (the live sweep runs on the first)",
    )
    parser.add_argument(
        "--systems",
        type=lambda t: _choices(t, SYSTEMS, "systems"),
        help=",".join(SYSTEMS),
    )
    parser.add_argument("--routers", type=_ints, help="router counts for the live sweep, e.g. 1,2")
    parser.add_argument("--sweep", type=_ints, help="speaker counts, e.g. 1,10,50,100")
    parser.add_argument("--measure-s", type=float, help="measured seconds per sweep step")
    parser.add_argument("--loadgen-processes", type=int, help="load generator processes")
    parser.add_argument("--keep-work", action="store_true", help="keep the stacks' run dirs")
    args = parser.parse_args(argv)
    backends: tuple[Backend, ...] | None = args.backends
    systems: tuple[System, ...] | None = args.systems
    params = preset(
        args.mode,
        backends=backends,
        systems=systems,
        routers=args.routers,
        sweep=args.sweep,
        measure_s=args.measure_s,
        loadgen_processes=args.loadgen_processes,
    )

    def log(line: str) -> None:
        print(line, flush=True)

    log(f"voxmesh bench, {params.mode} mode: results in {args.out}")
    json_path, md_path = run_bench(params, args.out, log, keep_work=args.keep_work)
    log(f"wrote {json_path}\nwrote {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
