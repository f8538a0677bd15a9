"""The Envoy gRPC-web gateway's configuration, generated from voxmesh settings.

Browsers speak gRPC-web over HTTP/1.1 or HTTP/2; Envoy translates to gRPC (HTTP/2) for the
routers. Filter order matters: grpc_web, then cors, then router. Long-lived streams (the
updates stream) need the route timeout disabled, or Envoy cuts them after 15 s.

TLS on both sides unless ``tls.client_plaintext`` (local only): the listener presents the
gateway certificate, and Envoy reaches the routers' client ports over TLS, trusting the
client CA bundle (ALPN h2, which grpc servers require).
"""

from __future__ import annotations

import base64
import ipaddress
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from voxmesh.core.mesh_tls import client_ca_file, gateway_files
from voxmesh.core.settings import Settings, config_dir

ROUTER_SERVICE = "voxmesh.router.v1.RouterService"
HEALTH_SERVICE = "grpc.health.v1.Health"
GATEWAY_HEADER = "voxmesh-via"  # the router's proxy-or-redirect choice for Updates reads it
_TYPES = "type.googleapis.com/envoy.extensions"

# Per-IP limits: every distinct client address gets its own token bucket (a wildcard
# descriptor). A refused gRPC call answers RESOURCE_EXHAUSTED with a RetryInfo of one fill
# interval in grpc-status-details-bin; a refused gRPC-web call gets the same details, but
# Envoy's status for it is UNAVAILABLE (its HTTP 429 mapping; the flag covers native gRPC only).
_RATE_LIMIT_FILL_S = 1


def _status_details_header(message: str) -> str:
    from voxmesh.core.rpc_interceptors import retry_status_details

    details = retry_status_details(grpc.StatusCode.RESOURCE_EXHAUSTED, message, _RATE_LIMIT_FILL_S)
    return base64.b64encode(details).decode()


def _local_rate_limit(settings: Settings) -> dict[str, Any]:
    envoy = settings.envoy
    bucket = {
        "max_tokens": envoy.requests_per_ip_burst,
        "tokens_per_fill": envoy.requests_per_ip_per_s,
        "fill_interval": f"{_RATE_LIMIT_FILL_S}s",
    }
    return {
        "@type": f"{_TYPES}.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "per_ip",
        # rate_limits fills in the client's address; the wildcard descriptor (no value) gives
        # every address its own bucket.
        "token_bucket": bucket,
        "rate_limits": [{"actions": [{"remote_address": {}}]}],
        "descriptors": [{"entries": [{"key": "remote_address"}], "token_bucket": bucket}],
        "max_dynamic_descriptors": envoy.rate_limit_max_tracked_ips,
        "always_consume_default_token_bucket": False,
        "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "filter_enforced": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "rate_limited_as_resource_exhausted": True,
        "response_headers_to_add": [
            {
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                "header": {
                    "key": "grpc-status-details-bin",
                    "value": _status_details_header(
                        "rate limit: too many requests from this address"
                    ),
                },
            }
        ],
    }


ALLOW_HEADERS = "content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization,x-request-id"
EXPOSE_HEADERS = "grpc-status,grpc-message,grpc-status-details-bin,x-request-id"


def _file(path: Path) -> dict[str, str]:
    """A file data source; paths inside the project are written relative to its root."""
    root = config_dir().resolve().parent
    try:
        return {"filename": str(path.resolve().relative_to(root))}
    except ValueError:
        return {"filename": str(path)}


def _transport_sockets(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """(listener, upstream) TLS transport sockets."""
    gateway = gateway_files(settings)
    listener = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": f"{_TYPES}.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": _file(gateway.cert_file),
                        "private_key": _file(gateway.key_file),
                    }
                ],
                "alpn_protocols": ["h2", "http/1.1"],
            },
        },
    }
    upstream = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": f"{_TYPES}.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "validation_context": {"trusted_ca": _file(client_ca_file(settings))},
                "alpn_protocols": ["h2"],
            },
        },
    }
    return listener, upstream


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _grpc_route(settings: Settings, prefix: str) -> dict[str, Any]:
    return {
        "match": {"prefix": prefix},
        "typed_per_filter_config": {
            "envoy.filters.http.local_ratelimit": _local_rate_limit(settings)
        },
        "route": {
            "cluster": "routers",
            # One device's calls stick to one router (hashed by its token), so a voice
            # message's StartMessage / AppendChunks / EndMessage meet the same relay state.
            "hash_policy": [{"header": {"header_name": "authorization"}}],
            # Streams live as long as the client wants: no route timeout, no grpc-timeout cap.
            "timeout": "0s",
            "max_stream_duration": {"grpc_timeout_header_max": "0s"},
            # A router that is draining or gone: try another before the client sees an error.
            # grpc cancels calls that reach a server as it stops (before any handler ran).
            "retry_policy": {
                "retry_on": "unavailable,cancelled,reset,connect-failure,refused-stream",
                "num_retries": 2,
                "retry_host_predicate": [
                    {
                        "name": "envoy.retry_host_predicates.previous_hosts",
                        "typed_config": {
                            "@type": f"{_TYPES}.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                        },
                    }
                ],
                "host_selection_retry_max_attempts": 3,
            },
        },
        # Tells the router the caller is behind the gateway and cannot follow a redirect:
        # an updates stream that lands off the user's home router is proxied to it.
        "request_headers_to_add": [
            {
                "header": {"key": GATEWAY_HEADER, "value": "gateway"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }


def _cluster(name: str, endpoints: list[tuple[str, int]], http2: bool) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                        for host, port in endpoints
                    ]
                }
            ],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": f"{_TYPES}.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def render_envoy_config(
    settings: Settings,
    routers: Sequence[tuple[str, int]] | None = None,
    endpoints_file: Path | None = None,
) -> dict[str, Any]:
    """Envoy bootstrap as a dict (JSON is YAML, so ``json.dumps`` of it is a valid envoy.yaml).

    With ``endpoints_file`` the routers come from that file (file-based EDS, rewritten by the
    web gateway when the router ring changes); otherwise they are ``routers``, fixed.
    """
    if routers is None:
        routers = [(settings.envoy.routers_host or settings.host, settings.router.port)]
    host = settings.host
    tls_listener: dict[str, Any] = {}
    tls_upstream: dict[str, Any] = {}
    if not settings.tls.client_plaintext:
        listener_socket, upstream_socket = _transport_sockets(settings)
        tls_listener = {"transport_socket": listener_socket}
        tls_upstream = {"transport_socket": upstream_socket}
    cors_policy = {
        "@type": f"{_TYPES}.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [
            {"safe_regex": {"regex": pattern}} for pattern in settings.envoy.cors_allow_origin_regex
        ],
        "allow_methods": "POST, GET, OPTIONS",
        "allow_headers": ALLOW_HEADERS,
        "expose_headers": EXPOSE_HEADERS,
        "max_age": "1728000",
    }
    http_connection_manager = {
        "@type": f"{_TYPES}.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "grpc_web",
        "codec_type": "AUTO",
        "stream_idle_timeout": "0s",
        "route_config": {
            "name": "voxmesh",
            "virtual_hosts": [
                {
                    "name": "voxmesh",
                    "domains": ["*"],
                    "routes": [
                        _grpc_route(settings, f"/{ROUTER_SERVICE}/"),
                        # Health through the gateway: a gRPC-web probe reaches a router.
                        _grpc_route(settings, f"/{HEALTH_SERVICE}/"),
                        # Everything else is the web app (same origin as its calls).
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": "web", "timeout": "30s"},
                        },
                    ],
                    "typed_per_filter_config": {"envoy.filters.http.cors": cors_policy},
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.grpc_web",
                "typed_config": {"@type": f"{_TYPES}.filters.http.grpc_web.v3.GrpcWeb"},
            },
            {
                "name": "envoy.filters.http.cors",
                "typed_config": {"@type": f"{_TYPES}.filters.http.cors.v3.Cors"},
            },
            {
                # Configured per route (the gRPC routes), so CORS preflights are not counted.
                "name": "envoy.filters.http.local_ratelimit",
                "typed_config": {
                    "@type": f"{_TYPES}.filters.http.local_ratelimit.v3.LocalRateLimit",
                    "stat_prefix": "per_ip",
                    # Read from here, not from the route: grpc-status 8, not 14 (UNAVAILABLE).
                    "rate_limited_as_resource_exhausted": True,
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": f"{_TYPES}.filters.http.router.v3.Router"},
            },
        ],
    }
    web_cluster = _cluster("web", [(host, settings.web.port)], http2=False)
    return {
        # File-based EDS needs the node named (any stable id will do).
        "node": {"id": "voxmesh-gateway", "cluster": "voxmesh-gateway"},
        "admin": {
            "address": {
                "socket_address": {"address": host, "port_value": settings.envoy.admin_port}
            }
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "grpc_web",
                    "address": {
                        "socket_address": {"address": host, "port_value": settings.envoy.port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": http_connection_manager,
                                }
                            ],
                            **tls_listener,
                        }
                    ],
                }
            ],
            "clusters": [
                _routers_cluster(settings, routers, endpoints_file, tls_upstream),
                web_cluster,
            ],
        },
    }


def _routers_cluster(
    settings: Settings,
    routers: Sequence[tuple[str, int]],
    endpoints_file: Path | None,
    tls_upstream: dict[str, Any],
) -> dict[str, Any]:
    cluster = _cluster("routers", list(routers), http2=True)
    # Addresses as they are; a DNS name (a headless Service) re-resolved.
    cluster["type"] = "STATIC" if all(_is_ip(h) for h, _ in routers) else "STRICT_DNS"
    cluster.update(tls_upstream)
    cluster["lb_policy"] = "RING_HASH"  # with the routes' hash policy: sticky per device
    cluster["health_checks"] = [
        {
            "timeout": "1s",
            "interval": "1s",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "grpc_health_check": {"service_name": ROUTER_SERVICE},
        }
    ]
    # With every router unhealthy Envoy still tries them (panic mode) rather than failing
    # all calls; that is the right choice for a small ring.
    if endpoints_file is not None:
        del cluster["load_assignment"]
        cluster["type"] = "EDS"
        cluster["eds_cluster_config"] = {
            "eds_config": {
                "resource_api_version": "V3",
                "path_config_source": {
                    "path": str(endpoints_file),
                    # Envoy reloads when a new file is moved into this directory.
                    "watched_directory": {"path": str(endpoints_file.parent)},
                },
            }
        }
    return cluster


def render_envoy_yaml(
    settings: Settings,
    routers: Sequence[tuple[str, int]] | None = None,
    endpoints_file: Path | None = None,
) -> str:
    header = "# Generated by `voxmesh gateway render` from config/: do not edit by hand.\n"
    config = render_envoy_config(settings, routers, endpoints_file)
    return header + json.dumps(config, indent=2) + "\n"
