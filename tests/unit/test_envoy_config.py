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


def test_app_health_and_api_share_one_origin_and_routers_follow_an_endpoints_file(
    tmp_path: Path,
) -> None:
    settings = load_settings(environ={})
    eds = tmp_path / "eds" / "routers.json"
    config = render_envoy_config(settings, endpoints_file=eds)
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert [(r["match"]["prefix"], r["route"]["cluster"]) for r in routes] == [
        ("/voxmesh.router.v1.RouterService/", "routers"),
        ("/grpc.health.v1.Health/", "routers"),
        ("/", "web"),
    ]
    # Every gRPC call through the gateway is marked, so a router proxies Updates to the home.
    for route in routes[:2]:
        assert route["request_headers_to_add"][0]["header"] == {
            "key": "voxmesh-via",
            "value": "gateway",
        }
    routers, web = config["static_resources"]["clusters"]
    assert routers["type"] == "EDS" and "load_assignment" not in routers
    source = routers["eds_cluster_config"]["eds_config"]["path_config_source"]
    assert source == {"path": str(eds), "watched_directory": {"path": str(eds.parent)}}
    assert web["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ] == {"address": "127.0.0.1", "port_value": settings.web.port}
