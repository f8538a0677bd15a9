"""Envoy's router endpoints as a file (file-based EDS) that follows the router ring.

Envoy watches the file's directory and reloads the cluster when a new file is *moved* into
place (an in-place edit is not seen), so every write goes to a temporary file in the same
directory and is renamed over the old one. Envoy's own gRPC health checks then keep calls
away from a listed router that does not answer yet or any more.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from voxmesh.core.ring_membership import Member

CLUSTER = "routers"
_ASSIGNMENT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def render_endpoints(routers: Sequence[tuple[str, int]], version: str) -> dict[str, Any]:
    """An EDS discovery response naming ``routers`` for the ``routers`` cluster."""
    return {
        "version_info": version,
        "resources": [
            {
                "@type": _ASSIGNMENT,
                "cluster_name": CLUSTER,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {"address": host, "port_value": port}
                                    }
                                }
                            }
                            for host, port in sorted(set(routers))
                        ]
                    }
                ],
            }
        ],
    }


def write_endpoints(path: Path, routers: Sequence[tuple[str, int]], version: str) -> None:
    """Atomically replace ``path`` (write a temporary file, then rename it into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".routers-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(render_endpoints(routers, version), fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_endpoints(path: Path) -> list[tuple[str, int]]:
    """The routers a file written by :func:`write_endpoints` names."""
    data = json.loads(path.read_text())
    return [
        (
            e["endpoint"]["address"]["socket_address"]["address"],
            int(e["endpoint"]["address"]["socket_address"]["port_value"]),
        )
        for group in data["resources"][0]["endpoints"]
        for e in group["lb_endpoints"]
    ]


class EndpointsFile:
    """Rewrites the file whenever the set of router members changes (and only then)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._written: frozenset[tuple[str, int]] | None = None
        self._version = 0

    def update(self, members: Sequence[Member]) -> bool:
        routers = frozenset(parse_address(m.address) for m in members)
        if not routers or routers == self._written:
            return False  # an empty ring (etcd unreachable) keeps the last known routers
        self._version += 1
        write_endpoints(self.path, sorted(routers), f"{os.getpid()}-{self._version}")
        self._written = routers
        return True
