"""The legacy JSON cluster file (the one that needed rolling restarts), and its import.

Accepted format (config/legacy-cluster.example.json)::

    {
      "cluster": "voxer-prod-us-east",          # a name, informational
      "version": 42,                            # the file's revision, informational
      "nr": [{"host": "10.0.1.11", "port": 5000, "weight": 2, "zone": "us-east1-b"}, ...],
      "hs": [...], "bs": [...], "ns": [...],    # header, body, notification hosts
      "settings": {"max_chunk_bytes": 65536, "max_group_members": 500, ...}
    }

``nr``/``hs``/``bs``/``ns`` are the node router, header store, body store and notification
sender host lists: host, port, weight (≥ 1, default 1), zone (optional). Voxmesh nodes
register themselves in etcd, so the host lists are kept under ``<prefix>/legacy/<kind>/``
as the record of the old cluster during a migration; the settings become dynamic config
keys. Unknown settings are refused (nothing is silently dropped).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxmesh.core.settings import SettingsError

KINDS = {"nr": "router", "hs": "header", "bs": "body", "ns": "notification"}
SETTING_KEYS = {
    "max_chunk_bytes": "limits.max_chunk_bytes",
    "max_message_bytes": "limits.max_message_bytes",
    "max_text_bytes": "limits.max_text_bytes",
    "max_group_members": "limits.max_members_per_thread",
    "vnodes": "rings.vnodes",
    "abandon_after_s": "body_store.abandon_after_s",
    "group_commit_ms": "body_store.group_commit_ms",
    "heartbeat_s": "updates.heartbeat_s",
}


@dataclass(frozen=True)
class LegacyHost:
    kind: str
    host: str
    port: int
    weight: int
    zone: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class LegacyCluster:
    name: str
    hosts: list[LegacyHost]
    settings: dict[str, Any]  # dotted voxmesh keys


def parse_legacy_cluster(path: Path) -> LegacyCluster:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{path}: not a readable JSON file: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: the top level must be an object")
    unknown_top = set(data) - {"cluster", "version", "settings", *KINDS}
    if unknown_top:
        raise SettingsError(f"{path}: unknown fields {sorted(unknown_top)}")
    hosts: list[LegacyHost] = []
    for legacy_kind, kind in KINDS.items():
        for i, entry in enumerate(data.get(legacy_kind, [])):
            where = f"{path}: {legacy_kind}[{i}]"
            if not isinstance(entry, dict) or "host" not in entry or "port" not in entry:
                raise SettingsError(f"{where} needs host and port")
            port, weight = entry["port"], entry.get("weight", 1)
            if not isinstance(port, int) or not 0 < port < 65536:
                raise SettingsError(f"{where}: port {port!r} is not a port number")
            if not isinstance(weight, int) or weight < 1:
                raise SettingsError(f"{where}: weight {weight!r} must be a whole number ≥ 1")
            hosts.append(
                LegacyHost(kind, str(entry["host"]), port, weight, str(entry.get("zone", "")))
            )
    raw_settings = data.get("settings", {})
    unknown = set(raw_settings) - set(SETTING_KEYS)
    if unknown:
        raise SettingsError(
            f"{path}: settings {sorted(unknown)} have no voxmesh equivalent; "
            f"known: {', '.join(sorted(SETTING_KEYS))}"
        )
    settings = {SETTING_KEYS[k]: v for k, v in raw_settings.items()}
    return LegacyCluster(str(data.get("cluster", "")), hosts, settings)
