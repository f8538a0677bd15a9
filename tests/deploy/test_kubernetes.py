"""deploy/ and the Dockerfile, checked offline: every overlay renders (kubectl kustomize),
validates against the Kubernetes schemas (kubernetes-validate --strict), agrees with config/
(ports, probes, names, drain), and passes checkov; the Dockerfile passes hadolint and checkov.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import OVERLAYS
from tests.deploy.tools import DEPLOY, ROOT, run, tool
from voxmesh.core.settings import SERVICE_KINDS, Settings, load_settings

# Custom resources the bundled schemas do not know: checked by the tests below instead.
CUSTOM_KINDS = {"PodMonitoring", "Issuer", "Certificate"}


def _of(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = _of(docs, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _cloud_env(overlay: str) -> dict[str, str]:
    values = {}
    for line in (DEPLOY / "overlays" / overlay / "cloud.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def _settings(overlay: str) -> Settings:
    """The settings a pod of ``overlay`` loads: its environment, kubernetes.toml, cloud.env."""
    environ = {**_cloud_env(overlay), "VOXMESH__ENVIRONMENT": overlay}
    return load_settings(ROOT / "config" / "kubernetes.toml", environ=environ)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly(overlay: str, rendered_files: dict[str, Path]) -> None:
    validate = tool("kubernetes-validate")
    result = run([validate, "-k", "1.32.0", "--strict", str(rendered_files[overlay])])
    assert result.returncode == 0, result.stdout + result.stderr
    unknown = set(re.findall(r"Couldn't find schema for kind (\w+)", result.stdout + result.stderr))
    assert unknown <= CUSTOM_KINDS, f"not validated: {unknown}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_load_their_settings(overlay: str) -> None:
    settings = _settings(overlay)
    assert settings.environment == overlay
    assert settings.host == "0.0.0.0" and settings.tracing.enabled
    assert settings.auth.provider == "oidc"
    assert settings.auth.issuer.startswith("https://securetoken.google.com/")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_agree_with_config(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[overlay]
    settings = _settings(overlay)
    for kind in SERVICE_KINDS:
        service = settings.service(kind)
        deployment = _one(docs, "Deployment", f"voxmesh-{kind}")
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == [kind]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {
            "grpc": service.port,
            "internal": service.internal_port,
            "metrics": service.metrics_port,
        }, kind
        # TCP probes on the client port: it speaks TLS here and kubelet gRPC probes cannot.
        assert not settings.tls.client_plaintext
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["tcpSocket"]["port"] == service.port, f"{kind} {probe}"
        # The pod's certificate is where the settings look for it, for the kind it serves.
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert str(Path(settings.tls.cert_file).parent) == mounts["tls"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        secret = volumes["tls"]["secret"]["secretName"]
        certificate = _one(docs, "Certificate", f"voxmesh-{kind}")
        assert certificate["spec"]["secretName"] == secret
        assert certificate["spec"]["dnsNames"] == [f"{kind}.{settings.tls.trust_domain}.internal"]
        assert certificate["spec"]["uris"][0].startswith(
            f"spiffe://{settings.tls.trust_domain}/{kind}/"
        )
        # The pod outlives the drain: delay (and as long again until calls stop) + grace.
        needed = 2 * service.drain_delay_s + service.drain_grace_s
        grace = pod["terminationGracePeriodSeconds"]
        assert needed < grace <= math.ceil(needed) + 10, f"{kind}: {grace} s for {needed} s"
        # The liveness probe does not kill a draining pod (NOT_SERVING) before it is done.
        liveness = container["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] > grace
        env = {e["name"]: e for e in container.get("env", [])}
        assert (
            env["VOXMESH__ADVERTISE_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        )
        headless = _one(docs, "Service", f"voxmesh-{kind}")
        assert {p["name"]: p["port"] for p in headless["spec"]["ports"]} == ports
        assert pod["serviceAccountName"] == f"voxmesh-{kind}"
    envoy = _one(docs, "Deployment", "voxmesh-envoy")["spec"]["template"]["spec"]
    (proxy,) = envoy["containers"]
    assert proxy["ports"][0]["containerPort"] == settings.envoy.port
    assert settings.envoy.routers_host == "voxmesh-router"  # the routers' headless Service
    assert _one(docs, "Service", settings.envoy.routers_host)["spec"]["clusterIP"] == "None"
    assert envoy["initContainers"][0]["command"][:3] == ["voxmesh", "gateway", "render"]
    etcd_client = _one(docs, "Service", settings.etcd.host)
    assert etcd_client["spec"]["ports"][0]["port"] == settings.etcd.client_port
    collector_host, _, collector_port = settings.tracing.otlp_endpoint.partition(":")
    collector = _one(docs, "Service", collector_host)
    assert collector["spec"]["ports"][0]["port"] == int(collector_port)
    # The ConfigMap is config/ itself, file for file.
    (config_map,) = [
        d for d in _of(docs, "ConfigMap") if d["metadata"]["name"].startswith("voxmesh-config-")
    ]
    for name, text in config_map["data"].items():
        assert text == (ROOT / "config" / name).read_text(), f"{name} differs from config/"
    assert {"defaults.toml", "kubernetes.toml", "spanner.ddl", f"{overlay}.toml"} <= set(
        config_map["data"]
    )
    (cloud,) = [
        d for d in _of(docs, "ConfigMap") if d["metadata"]["name"].startswith("voxmesh-cloud-")
    ]
    assert cloud["data"]["VOXMESH__ENVIRONMENT"] == overlay
    # Managed Prometheus scrapes the port named metrics of every mesh pod.
    services = _one(docs, "PodMonitoring", "voxmesh-services")
    assert services["spec"]["endpoints"][0]["port"] == "metrics"
    assert services["spec"]["selector"]["matchLabels"] == {"voxmesh.io/mesh": "true"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_are_hardened_and_survive_losing_a_pod(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[overlay]
    assert all(
        d["metadata"].get("namespace") == "voxmesh" for d in docs if d["kind"] != "Namespace"
    )
    workloads = _of(docs, "Deployment") + _of(docs, "StatefulSet")
    assert len(workloads) == 7
    budgets = {
        d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]: d
        for d in _of(docs, "PodDisruptionBudget")
    }
    scalers = {d["spec"]["scaleTargetRef"]["name"]: d for d in _of(docs, "HorizontalPodAutoscaler")}
    for workload in workloads:
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"] + pod.get("initContainers", []):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert {"cpu", "memory"} <= set(resources["limits"]), name
        budget = budgets[name]
        assert budget["spec"].get("maxUnavailable") == 1 or budget["spec"].get("minAvailable") == 2
        if workload["kind"] == "Deployment" and name != "voxmesh-otel-collector":
            assert scalers[name]["spec"]["minReplicas"] >= 2, name
            zones = [c["topologyKey"] for c in pod["topologySpreadConstraints"]]
            assert "topology.kubernetes.io/zone" in zones, name
    etcd = _one(docs, "StatefulSet", "voxmesh-etcd")
    assert etcd["spec"]["replicas"] == 3
    anti = etcd["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == (
        "topology.kubernetes.io/zone"
    )
    assert etcd["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(overlay: str, rendered: dict[str, list[dict[str, Any]]]) -> None:
    settings = _settings(overlay)
    policies = {d["metadata"]["name"]: d["spec"] for d in _of(rendered[overlay], "NetworkPolicy")}
    deny = policies["default-deny-ingress"]
    assert (
        deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    )
    (from_envoy,) = policies["router-client-port-from-envoy"]["ingress"]
    assert from_envoy["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "voxmesh-envoy"}}}
    ]
    assert from_envoy["ports"] == [{"port": settings.router.port}]
    (mesh,) = policies["mesh-from-mesh"]["ingress"]
    assert mesh["from"] == [{"podSelector": {"matchLabels": {"voxmesh.io/mesh": "true"}}}]
    assert {p["port"] for p in mesh["ports"]} == {
        settings.service(k).internal_port for k in SERVICE_KINDS
    }
    etcd_rules = policies["etcd-from-mesh"]["ingress"]
    assert etcd_rules[0]["ports"] == [{"port": settings.etcd.client_port}]
    metrics = policies["metrics-from-managed-prometheus"]["ingress"][0]
    assert {settings.service(k).metrics_port for k in SERVICE_KINDS} <= {
        p["port"] for p in metrics["ports"]
    }
    # Every ingress rule names its sources: nothing is open to all.
    for name, spec in policies.items():
        for rule in spec.get("ingress", []):
            assert rule.get("from"), f"{name} admits any source"


def test_checkov_kubernetes_is_clean(checkov_report: dict[str, Any]) -> None:
    report = checkov_report["kubernetes"]
    assert report["summary"]["failed"] == 0, report["failed"]
    assert report["summary"]["passed"] > 300
    for skipped in report["skipped"]:
        assert len(skipped.get("suppress_comment") or "") > 30, skipped


def test_dockerfile(checkov_report: dict[str, Any]) -> None:
    report = checkov_report["dockerfile"]
    assert report["summary"]["failed"] == 0, report["failed"]
    hadolint = run([tool("hadolint"), str(ROOT / "Dockerfile")])
    assert hadolint.returncode == 0, hadolint.stdout + hadolint.stderr
    text = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert re.fullmatch(r"python:[\w.-]+@sha256:[0-9a-f]{64}", bases[0]), bases
    assert len(bases) >= 3, "multi-stage: a pinned base, a build stage, a runtime stage"
    runtime = text[text.rindex("\nFROM ") :]
    assert re.search(r"^USER 10001:10001$", runtime, re.MULTILINE), "runs as non-root"
    assert 'ENTRYPOINT ["voxmesh", "serve"]' in runtime
    # The image's uid is the one the pods run as.
    assert "--uid 10001" in text
