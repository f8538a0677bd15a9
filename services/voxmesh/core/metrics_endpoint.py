"""The metrics port: Prometheus ``/metrics`` and a plain ``/healthz`` for Kubernetes.

Kubernetes' probes hold no mesh certificate and its gRPC probe cannot speak TLS, so the
process's health is also here, on plain HTTP: 200 SERVING, 503 NOT_SERVING (draining).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import prometheus_client
from prometheus_client.exposition import ThreadingWSGIServer


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per scrape: no
        pass


def start_metrics_endpoint(
    host: str, port: int, serving: Callable[[], bool]
) -> ThreadingWSGIServer:
    """Serve in a daemon thread; ``shutdown()`` then ``server_close()`` stops it."""
    metrics = prometheus_client.make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            ok = serving()
            start_response(
                "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")]
            )
            return [b"SERVING\n" if ok else b"NOT_SERVING\n"]
        result: Iterable[bytes] = metrics(environ, start_response)
        return result

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
