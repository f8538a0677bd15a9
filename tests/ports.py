"""Free loopback ports for test servers."""

from __future__ import annotations

import socket

_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now; never the same one twice in a test run."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def stack_overrides(run_dir: str) -> dict[str, object]:
    """Settings overrides that put a whole local stack on fresh ports under ``run_dir``."""
    return {
        "run_dir": run_dir,
        "etcd": {"client_port": free_port(), "peer_port": free_port()},
        "redis": {"port": free_port()},
        "spanner": {"emulator_port": free_port()},
        "gcs": {"port": free_port()},
        "envoy": {"port": free_port(), "admin_port": free_port()},
        "web": {"port": free_port()},
        **{
            kind: {"port": free_port(), "internal_port": free_port(), "metrics_port": free_port()}
            for kind in ("router", "header", "body", "notification")
        },
        # Stacks start in ~10 s on an idle 2-core machine; a busy one needed over 60 s.
        "supervisor": {"ready_timeout_s": 150.0, "stop_timeout_s": 10.0, "autorestart": False},
    }
