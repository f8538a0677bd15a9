from __future__ import annotations

from pathlib import Path

from voxmesh.core.settings import load_settings
from voxmesh.gateway.envoy_config import render_envoy_config, render_envoy_yaml

REPO = Path(__file__).resolve().parents[2]


def test_committed_gateway_config_is_what_config_generates() -> None:
    committed = (REPO / "gateway" / "envoy.yaml").read_text()
    assert committed == render_envoy_yaml(load_settings(environ={})), (
        "gateway/envoy.yaml is stale: run `voxmesh gateway render --out gateway/envoy.yaml`"
    )


def test_grpc_web_filters_in_order_and_streams_not_cut() -> None:
    config = render_envoy_config(
        load_settings(environ={}), routers=[("127.0.0.1", 1), ("127.0.0.1", 2)]
    )
    listener = config["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in manager["http_filters"]]
    assert names == [
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.cors",
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.router",
    ]
    route = manager["route_config"]["virtual_hosts"][0]["routes"][0]
    assert route["route"]["timeout"] == "0s"
    # Per client address: a wildcard descriptor on remote_address, a bucket for each.
    per_ip = route["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]
    assert per_ip["rate_limits"] == [{"actions": [{"remote_address": {}}]}]
    assert per_ip["descriptors"][0]["entries"] == [{"key": "remote_address"}]
    assert per_ip["descriptors"][0]["token_bucket"]["tokens_per_fill"] == 200
    assert route["route"]["max_stream_duration"]["grpc_timeout_header_max"] == "0s"
    cluster = config["static_resources"]["clusters"][0]
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints] == [1, 2]
    assert cluster["health_checks"][0]["grpc_health_check"]["service_name"] == (
        "voxmesh.router.v1.RouterService"
    )
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
