"""voxmesh benchmarks: live relay latency and capacity beside two baselines (a bare grpc.aio
relay and a Redis pub/sub relay), durable acks, catch-up, timelines and cost, on the real
local stack. ``python -m bench --mode quick|full|tiny`` (``make bench``, ``make bench-quick``)
writes ``bench/results/<date>.json`` and a Markdown report with PNG plots."""
