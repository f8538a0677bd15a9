"""Session fixtures for the deploy checks: every overlay rendered once, checkov run once."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.tools import DEPLOY, OFFLINE_ENV, ROOT, TERRAFORM, checkov, run, tool

OVERLAYS = ["dev", "prod"]


@pytest.fixture(scope="session")
def rendered_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`kubectl kustomize deploy/overlays/<env>`, written to files."""
    kubectl = tool("kubectl")
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for overlay in OVERLAYS:
        result = run([kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)])
        assert result.returncode == 0, f"{overlay} does not render: {result.stderr}"
        path = out / f"{overlay}.yaml"
        path.write_text(result.stdout)
        files[overlay] = path
    return files


@pytest.fixture(scope="session")
def rendered(rendered_files: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    return {
        overlay: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for overlay, path in rendered_files.items()
    }


@pytest.fixture(scope="session")
def checkov_report(
    rendered_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One checkov run (offline: --skip-download) over terraform/, the rendered overlays and
    the Dockerfile; the report per framework."""
    binary = checkov()
    scan = tmp_path_factory.mktemp("checkov")
    for overlay, path in rendered_files.items():
        shutil.copy(path, scan / f"{overlay}.yaml")
    shutil.copy(ROOT / "Dockerfile", scan / "Dockerfile")
    # Two scans at once (checkov runs one framework set per directory): terraform/, and the
    # rendered overlays with the Dockerfile.
    scans = [
        (["terraform"], TERRAFORM),
        (["kubernetes", "dockerfile"], scan),
    ]
    processes = [
        subprocess.Popen(
            [
                binary,
                "--skip-download",
                "--quiet",
                "--compact",
                "--output",
                "json",
                "--framework",
                *frameworks,
                "-d",
                str(directory),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=OFFLINE_ENV,
        )
        for frameworks, directory in scans
    ]
    by_type: dict[str, Any] = {}
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert out.strip(), f"checkov printed nothing: {err[-2000:]}"
        reports = json.loads(out)
        for report in reports if isinstance(reports, list) else [reports]:
            results = report["results"]
            by_type[report["check_type"]] = {
                "summary": report["summary"],
                "failed": [
                    (c["check_id"], c["resource"], c["file_path"])
                    for c in results.get("failed_checks", [])
                ],
                "skipped": results.get("skipped_checks", []),
            }
    assert set(by_type) == {"terraform", "kubernetes", "dockerfile"}, list(by_type)
    return by_type
