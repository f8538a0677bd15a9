"""The web gateway's sidecar: the browser app's files, its sign-in config, and Envoy's routers.

Envoy sends every path that is not a gRPC service to this process, so the app, its settings
and the gRPC-web calls share one origin (no CORS in the browser's way). It serves:

- the built app (``web.static_dir``): hashed assets cached for a year, ``index.html`` and
  any other path (the app's own routes, the OIDC redirect) never cached;
- ``/config.json``: how the app signs in (dev sign-in locally, else the OIDC issuer/client);
- ``POST /auth/dev-token`` ``{"user": "alice"}``: a local token, only in environment
  ``local`` (403 everywhere else), so a developer can pick a user name;
- and it rewrites Envoy's router endpoints file whenever the router ring changes.

In production the files live in a bucket behind the load balancer; this process is the
local stand-in for that and for the issuer's sign-in page.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
import signal
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from voxmesh.core.client_auth import issue_token
from voxmesh.core.domain_errors import InvalidArgument
from voxmesh.core.ring_membership import RingMembership
from voxmesh.core.settings import Settings
from voxmesh.core.structured_logging import get_logger
from voxmesh.gateway.router_endpoints import EndpointsFile

_log = get_logger(__name__)
_MAX_BODY = 4096


def dev_sign_in_allowed(settings: Settings) -> bool:
    """The dev token endpoint exists only on a developer's machine, with the local issuer."""
    return settings.environment == "local" and settings.auth.provider == "local"


def client_config(settings: Settings) -> dict[str, Any]:
    """What the app needs to sign in; never a secret. The OIDC client id is the audience the
    routers accept (an ID token's ``aud`` is the client it was issued to)."""
    auth = settings.auth
    return {
        "environment": settings.environment,
        "devSignIn": dev_sign_in_allowed(settings),
        "oidc": (
            {"issuer": auth.issuer, "clientId": auth.audience, "scope": settings.web.oidc_scope}
            if auth.provider == "oidc"
            else None
        ),
    }


def resolve_static(root: Path, url_path: str) -> Path | None:
    """The file under ``root`` for ``url_path``, the app's index for its own routes, or None."""
    relative = url_path.split("?", 1)[0].split("#", 1)[0].lstrip("/")
    candidate = (root / relative).resolve()
    if root.resolve() not in (candidate, *candidate.parents):
        return None  # outside the app directory
    if candidate.is_file():
        return candidate
    if relative.startswith("assets/") or "." in relative.rsplit("/", 1)[-1]:
        return None  # a missing asset is a 404, not the app
    index = root / "index.html"
    return index if index.is_file() else None


class _Handler(BaseHTTPRequestHandler):
    settings: Settings
    server_version = "voxmesh-web"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # Envoy logs requests; one line per file fetched would only be noise

    def _send(self, status: int, body: bytes, content_type: str, cache: str = "no-cache") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.send_header("cache-control", cache)
        self.send_header("x-content-type-options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/config.json":
            self._json(HTTPStatus.OK, client_config(self.settings))
            return
        root = self.settings.web_static_dir
        if not (root / "index.html").is_file():
            self._send(
                HTTPStatus.SERVICE_UNAVAILABLE,
                b"The web app is not built: run `make web` (or `make up`).\n",
                "text/plain; charset=utf-8",
            )
            return
        path = resolve_static(root, self.path)
        if path is None:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
            return
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        immutable = path.parent.name == "assets"  # Vite puts a content hash in these names
        self._send(
            HTTPStatus.OK,
            path.read_bytes(),
            content_type,
            "public, max-age=31536000, immutable" if immutable else "no-cache",
        )

    do_HEAD = do_GET

    def do_POST(self) -> None:
        if self.path != "/auth/dev-token":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {self.path}"})
            return
        if not dev_sign_in_allowed(self.settings):
            self._json(
                HTTPStatus.FORBIDDEN,
                {
                    "error": f"dev sign-in is only for environment 'local' with the local token "
                    f"issuer (this is {self.settings.environment!r}, auth.provider "
                    f"{self.settings.auth.provider!r}): sign in with the identity provider"
                },
            )
            return
        length = int(self.headers.get("content-length") or 0)
        if length > _MAX_BODY:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "request too large"})
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            user = body.get("user", "") if isinstance(body, dict) else ""
            token = issue_token(self.settings.auth, str(user).strip())
        except (ValueError, InvalidArgument) as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        self._json(HTTPStatus.OK, {"token": token, "user": str(user).strip()})


def _http_server(settings: Settings, port: int) -> ThreadingHTTPServer:
    handler = type("WebHandler", (_Handler,), {"settings": settings})
    server = ThreadingHTTPServer((settings.host, port), handler)
    server.daemon_threads = True
    return server


async def _follow_router_ring(settings: Settings, endpoints: EndpointsFile) -> None:
    membership = RingMembership(settings, ("router",))

    def changed(kind: str) -> None:
        members = membership.members("router")
        if endpoints.update(members):
            _log.info("router endpoints rewritten", routers=[m.address for m in members])

    membership.on_change(changed)
    await membership.start(None)
    try:
        await asyncio.Event().wait()
    finally:
        await membership.close()


async def serve_web_gateway(settings: Settings, port: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT."""
    server = _http_server(settings, port or settings.web.port)
    thread = threading.Thread(target=server.serve_forever, name="web-http", daemon=True)
    thread.start()
    _log.info("web gateway serving", port=server.server_address[1])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ring = asyncio.create_task(
        _follow_router_ring(settings, EndpointsFile(settings.router_endpoints_file))
    )
    try:
        await stop.wait()
    finally:
        ring.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ring
        server.shutdown()
        server.server_close()
