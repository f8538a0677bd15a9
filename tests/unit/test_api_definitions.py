"""The proto tree: buf STANDARD lint and formatting, and what the generated code exposes."""

from __future__ import annotations

import subprocess
from pathlib import Path

from voxmesh.stack import binaries
from voxmesh.stack.components import SERVICE_PROTO_NAMES

REPO = Path(__file__).resolve().parents[2]


def test_buf_lint_standard_is_clean() -> None:
    result = subprocess.run(
        [str(binaries.buf()), "lint"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_format_is_clean() -> None:
    result = subprocess.run(
        [str(binaries.buf()), "format", "--diff", "--exit-code"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_is_generated_with_type_stubs() -> None:
    import importlib

    for kind, full_name in SERVICE_PROTO_NAMES.items():
        package, service = full_name.rsplit(".", 1)
        module_name = f"{package}.{kind}_service_pb2"
        module = importlib.import_module(module_name)
        assert service in module.DESCRIPTOR.services_by_name
        assert Path(module.__file__ or "").with_suffix(".pyi").exists()
        grpc_module = importlib.import_module(f"{module_name}_grpc")
        assert hasattr(grpc_module, f"{service}Servicer")


def test_every_browser_capability_has_a_unary_or_server_streaming_path() -> None:
    """gRPC-web cannot client-stream: only Send may be bidirectional, and it has unary twins."""
    from voxmesh.router.v1 import router_service_pb2

    service = router_service_pb2.DESCRIPTOR.services_by_name["RouterService"]
    client_streaming = [m.name for m in service.methods if m.client_streaming]
    assert client_streaming == ["Send"]
    names = {m.name for m in service.methods}
    assert {"StartMessage", "AppendChunks", "EndMessage", "SendText"} <= names
