from __future__ import annotations

import json
from pathlib import Path

import pytest

from voxmesh.core.legacy_cluster import parse_legacy_cluster
from voxmesh.core.settings import SettingsError

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "legacy-cluster.example.json"


def test_the_example_file_parses_into_hosts_and_voxmesh_keys() -> None:
    cluster = parse_legacy_cluster(EXAMPLE)
    assert cluster.name == "voxer-prod-us-east"
    assert [h.address for h in cluster.hosts if h.kind == "router"] == [
        "10.0.1.11:5000",
        "10.0.1.12:5000",
        "10.0.1.13:5000",
    ]
    assert cluster.settings["limits.max_members_per_thread"] == 500
    assert cluster.settings["rings.vnodes"] == 128


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"settings": {"max_fanout": 3}}, "no voxmesh equivalent"),
        ({"nr": [{"host": "h", "port": 70000}]}, "not a port number"),
        ({"nr": [{"host": "h", "port": 1, "weight": 0}]}, "weight"),
        ({"nr": [{"port": 1}]}, "needs host and port"),
        ({"routers": []}, "unknown fields"),
    ],
)
def test_bad_files_are_refused_with_the_reason(
    tmp_path: Path, change: dict[str, object], fragment: str
) -> None:
    data = json.loads(EXAMPLE.read_text())
    data.update(change)
    bad = tmp_path / "cluster.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(SettingsError, match=fragment):
        parse_legacy_cluster(bad)
