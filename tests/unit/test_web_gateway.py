from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from tests.ports import free_port
from voxmesh.core.ring_membership import Member
from voxmesh.core.settings import Settings, load_settings
from voxmesh.gateway import web_gateway
from voxmesh.gateway.router_endpoints import EndpointsFile, read_endpoints


def _serve(settings: Settings) -> Iterator[str]:
    port = free_port()
    server = web_gateway._http_server(settings, port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>voxmesh</title>")
    (tmp_path / "assets" / "index-abc.js").write_text("console.log(1)")
    return tmp_path


def _settings(app_dir: Path, environment: str = "local") -> Settings:
    overrides: dict[str, object] = {"environment": environment, "web": {"static_dir": str(app_dir)}}
    if environment != "local":
        overrides["auth"] = {
            "provider": "oidc",
            "issuer": "https://issuer.example",
            "audience": "voxmesh-web",
        }
    return load_settings(environ={}, overrides=overrides)


def _post(url: str, body: object) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_dev_sign_in_issues_a_token_locally(app_dir: Path) -> None:
    settings = _settings(app_dir)
    for base in _serve(settings):
        status, body = _post(base + "/auth/dev-token", {"user": "alice"})
        assert status == 200
        claims = jwt.decode(
            body["token"], settings.auth.hs256_secret, algorithms=["HS256"], audience="voxmesh"
        )
        assert claims["sub"] == "alice"
        status, body = _post(base + "/auth/dev-token", {"user": "no spaces allowed"})
        assert status == 400 and "malformed" in body["error"]
        with urllib.request.urlopen(base + "/config.json") as response:
            assert json.load(response) == {"environment": "local", "devSignIn": True, "oidc": None}


def test_dev_sign_in_is_refused_outside_local(app_dir: Path) -> None:
    settings = _settings(app_dir, "prod")
    for base in _serve(settings):
        status, body = _post(base + "/auth/dev-token", {"user": "alice"})
        assert status == 403 and "only for environment 'local'" in body["error"]
        with urllib.request.urlopen(base + "/config.json") as response:
            assert json.load(response) == {
                "environment": "prod",
                "devSignIn": False,
                "oidc": {
                    "issuer": "https://issuer.example",
                    "clientId": "voxmesh-web",
                    "scope": "openid profile email",
                },
            }


def test_static_files_app_routes_and_caching(app_dir: Path) -> None:
    for base in _serve(_settings(app_dir)):
        with urllib.request.urlopen(base + "/assets/index-abc.js") as response:
            assert "immutable" in response.headers["cache-control"]
            assert response.headers["content-type"].endswith("javascript")
        with urllib.request.urlopen(base + "/auth/callback?code=x") as response:
            assert response.headers["cache-control"] == "no-cache"
            assert b"<title>voxmesh</title>" in response.read()
        for missing in ("/assets/gone.js", "/../../etc/passwd", "/favicon.ico"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(base + missing)
            assert info.value.code == 404


def test_endpoints_file_is_replaced_only_when_the_routers_change(tmp_path: Path) -> None:
    path = tmp_path / "eds" / "routers.json"
    eds = EndpointsFile(path)
    a = Member("router", "router-a", "127.0.0.1:7001", "local")
    b = Member("router", "router-b", "127.0.0.1:7011", "local")
    assert eds.update([a]) and read_endpoints(path) == [("127.0.0.1", 7001)]
    inode = path.stat().st_ino
    assert not eds.update([a])
    assert eds.update([b, a]) and read_endpoints(path) == [("127.0.0.1", 7001), ("127.0.0.1", 7011)]
    assert path.stat().st_ino != inode, "the file must be moved into place, not edited"
    assert not eds.update([]), "an empty ring keeps the last known routers"
    assert [p.name for p in path.parent.iterdir()] == ["routers.json"]
