"""terraform/, checked offline: formatting, `terraform test` of the provider-less modules,
structural rules over the parsed HCL, and checkov's policies.

There is no route to the Google provider here, so `terraform validate`/`plan` of the cloud
modules cannot run; what can be checked without it is checked for real.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.tools import ROOT, TERRAFORM, terraform
from voxmesh.stack.provisioning import spanner_ddl

PROVIDERLESS = ["naming", "storage_tiers", "spanner_ddl"]
MODULES = sorted(p.name for p in (TERRAFORM / "modules").iterdir() if p.is_dir())
ENVS = ["dev", "prod"]
# Resource types that take no labels in the Google provider (everything else must carry them).
UNLABELLABLE = {
    "google_compute_network",
    "google_compute_subnetwork",
    "google_compute_router",
    "google_compute_router_nat",
    "google_compute_firewall",
    "google_service_networking_connection",
    "google_service_account",
    "google_service_account_iam_member",
    "google_project_iam_member",
    "google_project_iam_audit_config",
    "google_storage_bucket_iam_member",
    "google_spanner_database",
    "google_spanner_database_iam_member",
    "google_spanner_backup_schedule",
    "google_secret_manager_secret_iam_member",
    "google_artifact_registry_repository_iam_member",
    "google_compute_managed_ssl_certificate",
    "google_compute_ssl_policy",
    "google_compute_security_policy",
    "google_compute_health_check",
    "google_compute_backend_service",
    "google_compute_backend_bucket",
    "google_compute_url_map",
    "google_compute_target_https_proxy",
    "google_compute_target_http_proxy",
    "google_monitoring_dashboard",
}
LABEL_FIELDS = ("labels", "resource_labels", "user_labels")


@cache
def parsed(path: Path) -> dict[str, Any]:
    import hcl2

    options = hcl2.SerializationOptions(strip_string_quotes=True, with_comments=False)
    with path.open() as fh:
        data: dict[str, Any] = hcl2.load(fh, serialization_options=options)
    return data


def tf_files() -> list[Path]:
    return sorted(p for p in TERRAFORM.rglob("*.tf") if ".terraform" not in p.parts)


def blocks(kind: str) -> list[tuple[Path, str, str, dict[str, Any]]]:
    """(file, type, name, body) of every `resource`/`data` block in terraform/."""
    found = []
    for path in tf_files():
        for entry in parsed(path).get(kind, []):
            for type_name, named in entry.items():
                for name, body in named.items():
                    found.append((path, type_name, name, body))
    return found


def resources(type_name: str | None = None) -> list[tuple[Path, str, str, dict[str, Any]]]:
    return [r for r in blocks("resource") if type_name is None or r[1] == type_name]


def test_terraform_fmt(tmp_path: Path) -> None:
    result = terraform(["fmt", "-check", "-recursive", "-diff", "-no-color"], TERRAFORM, tmp_path)
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("module", PROVIDERLESS)
def test_providerless_module_passes_terraform_test(module: str, tmp_path: Path) -> None:
    directory = TERRAFORM / "modules" / module
    init = terraform(["init", "-backend=false", "-input=false", "-no-color"], directory, tmp_path)
    assert init.returncode == 0, init.stdout + init.stderr
    result = terraform(["test", "-no-color"], directory, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = re.search(r"(\d+) passed, (\d+) failed", result.stdout)
    assert summary and int(summary[1]) >= 2 and summary[2] == "0", result.stdout


def test_every_variable_is_typed_and_described() -> None:
    missing = []
    for path in tf_files():
        for entry in parsed(path).get("variable", []):
            for name, body in entry.items():
                if "type" not in body or not str(body.get("description", "")).strip():
                    missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert not missing, f"variables without a type or description: {missing}"
    assert len([p for p in tf_files() if p.name == "variables.tf"]) >= 10


@pytest.mark.parametrize(
    "directory", [f"modules/{m}" for m in MODULES] + [f"envs/{e}" for e in ENVS]
)
def test_terraform_and_providers_are_pinned(directory: str) -> None:
    settings = [
        block
        for path in (TERRAFORM / directory).glob("*.tf")
        for block in parsed(path).get("terraform", [])
    ]
    assert settings, f"{directory} has no terraform block"
    assert any("required_version" in s for s in settings), f"{directory}: no required_version"
    providers = {
        name: spec
        for s in settings
        for group in s.get("required_providers", [])
        for name, spec in group.items()
    }
    uses_google = any(
        t.startswith("google_")
        for p, t, _, _ in blocks("resource") + blocks("data")
        if p.parent == TERRAFORM / directory
    ) or directory.startswith("envs/")
    if not uses_google:
        assert directory.removeprefix("modules/") in [*PROVIDERLESS, "mesh"], directory
        return
    google = providers.get("google")
    assert google, f"{directory} uses the google provider without requiring it"
    assert google["source"] == "hashicorp/google"
    version = google["version"]
    if directory.startswith("envs/"):
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{directory} must pin exactly: {version}"
    else:
        assert "<" in version and ">=" in version, f"{directory}: bounded range, not {version}"


def test_every_resource_that_takes_labels_has_them() -> None:
    unlabelled = [
        f"{path.relative_to(ROOT)}: {type_name}.{name}"
        for path, type_name, name, body in resources()
        if type_name not in UNLABELLABLE and not any(f in body for f in LABEL_FIELDS)
    ]
    assert not unlabelled, f"resources without labels: {unlabelled}"
    assert len(resources()) > 40


def test_spanner_database_ddl_is_config_spanner_ddl() -> None:
    (database,) = [b for _, _, _, b in resources("google_spanner_database")]
    assert database["ddl"] == "${module.ddl.statements}"
    (ddl_module,) = parsed(TERRAFORM / "modules/spanner/main.tf")["module"]
    assert ddl_module["ddl"]["source"] == "../spanner_ddl"
    # The mesh passes config/spanner.ddl itself: resolve the path as Terraform would.
    (mesh_locals,) = parsed(TERRAFORM / "modules/mesh/main.tf")["locals"]
    relative = mesh_locals["ddl_file"].replace("${path.module}", "")
    resolved = (TERRAFORM / "modules/mesh" / relative.lstrip("/")).resolve()
    assert resolved == (ROOT / "config/spanner.ddl").resolve()
    # The module splits the file by the services' own rule (comments dropped, split on ;).
    source = (TERRAFORM / "modules/spanner_ddl/main.tf").read_text()
    assert 'split("--", line)[0]' in source and 'split(";", local.uncommented)' in source
    assert len(spanner_ddl()) >= 5


def test_lifecycle_rules_match_the_documented_tiers() -> None:
    (bucket,) = [b for _, _, name, b in resources("google_storage_bucket") if name == "media"]
    (dynamic,) = bucket["dynamic"]
    assert dynamic["lifecycle_rule"]["for_each"] == "${module.tiers.rules}"
    tiers = {
        name: body
        for entry in parsed(TERRAFORM / "modules/storage_tiers/main.tf")["variable"]
        for name, body in entry.items()
    }
    defaults = {name: tiers[name]["default"] for name in tiers}
    assert defaults["nearline_age_days"] == 30
    assert defaults["coldline_age_days"] == 90
    assert defaults["archive_age_days"] == 365
    assert defaults["segment_prefix"] == "segments/"
    assert defaults["bodies_prefix"] == "bodies/"
    readme = (TERRAFORM / "README.md").read_text()
    for value in ("30", "90", "365", "`segments/`"):
        assert value in readme, f"terraform/README.md does not document {value}"
    # The bucket module forwards the segment prefix as a variable.
    media_vars = {
        n for e in parsed(TERRAFORM / "modules/media_bucket/variables.tf")["variable"] for n in e
    }
    assert {"segment_prefix", "segment_retention_days", "nearline_age_days"} <= media_vars


def test_no_public_bucket_but_the_web_app() -> None:
    buckets = resources("google_storage_bucket")
    assert {name for _, _, name, _ in buckets} == {"media", "web"}
    for _, _, name, body in buckets:
        assert body["uniform_bucket_level_access"] is True, name
        expected = "inherited" if name == "web" else "enforced"
        assert body["public_access_prevention"] == expected, name
    public = [
        (type_name, name)
        for _, type_name, name, body in resources()
        if "allUsers" in str(body) or "allAuthenticatedUsers" in str(body)
    ]
    assert public == [("google_storage_bucket_iam_member", "web_public")], public


def test_no_default_service_account() -> None:
    text = "\n".join(p.read_text() for p in tf_files())
    assert "compute@developer.gserviceaccount.com" not in text
    assert not re.search(r'service_account\s*=\s*"default"', text)
    (cluster,) = [b for _, _, _, b in resources("google_container_cluster")]
    (autoscaling,) = cluster["cluster_autoscaling"]
    (defaults,) = autoscaling["auto_provisioning_defaults"]
    assert defaults["service_account"] == "${google_service_account.nodes.email}"
    assert cluster["enable_autopilot"] is True
    (private,) = cluster["private_cluster_config"]
    assert private["enable_private_nodes"] is True
    assert "workload_identity_config" in cluster


def test_each_kind_has_its_own_least_privilege_account() -> None:
    (bucket_grant,) = [
        b
        for _, _, _, b in resources("google_storage_bucket_iam_member")
        if b["bucket"] == "${var.media_bucket}"
    ]
    assert bucket_grant["member"] == '${local.members["body"]}'
    assert bucket_grant["role"] == "roles/storage.objectUser"
    (database_grant,) = [b for _, _, _, b in resources("google_spanner_database_iam_member")]
    assert database_grant["member"] == '${local.members["header"]}'
    # Nothing is granted project-wide but trace writing (and the nodes' logs and metrics).
    project_roles = {b["role"] for _, _, _, b in resources("google_project_iam_member")}
    assert not {r for r in project_roles if "storage" in r or "spanner" in r or "admin" in r}
    (workload_identity,) = [b for _, _, _, b in resources("google_service_account_iam_member")]
    assert workload_identity["role"] == "roles/iam.workloadIdentityUser"


def test_checkov_terraform_is_clean(checkov_report: dict[str, Any]) -> None:
    report = checkov_report["terraform"]
    assert report["summary"]["failed"] == 0, report["failed"]
    assert report["summary"]["passed"] > 40
    # Every skip is justified on its line.
    for skipped in report["skipped"]:
        assert len(skipped["suppress_comment"]) > 30, skipped
