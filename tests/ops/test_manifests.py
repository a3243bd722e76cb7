"""Every manifest under deploy/ is valid against the Kubernetes schema, custom resources against their CRD."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERNETES_VERSION = "1.37.0"
NOT_API_OBJECTS = {"Kustomization", "KubeSchedulerConfiguration"}
"""Files that are configuration, not API objects; their own tests check them."""
EXTERNAL_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
}
"""Kinds whose CRD another project ships; checked for their essential fields only."""


def _documents() -> list[tuple[str, int, dict[str, Any]]]:
    docs = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if "grafana" in path.parts or path.name == "scrape-config.yaml":
            continue
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                docs.append((str(path.relative_to(REPO)), index, doc))
    return docs


def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for _, _, doc in _documents():
        if doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        for version in spec["versions"]:
            schemas[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = version["schema"][
                "openAPIV3Schema"
            ]
    return schemas


DOCUMENTS = _documents()


def test_deploy_has_the_parts_an_admin_installs() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, _, doc in DOCUMENTS if "metadata" in doc}
    for needed in [
        ("Namespace", "gedge-system"),
        ("DaemonSet", "gedge-agent"),
        ("ClusterRole", "gedge-agent"),
        ("ServiceAccount", "gedge-agent"),
    ]:
        assert needed in kinds


@pytest.mark.parametrize(("path", "index", "doc"), DOCUMENTS, ids=[f"{p}#{i}" for p, i, _ in DOCUMENTS])
def test_manifest_is_valid(path: str, index: int, doc: dict[str, Any]) -> None:
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    assert api_version and kind, f"{path}#{index}: no apiVersion/kind"
    if kind in NOT_API_OBJECTS:
        return
    if (api_version, kind) in EXTERNAL_KINDS:
        if kind == "ServiceMonitor":
            assert doc["spec"]["endpoints"], f"{path}#{index}: a ServiceMonitor needs endpoints"
        elif kind == "Certificate":
            assert doc["spec"]["secretName"] and doc["spec"]["issuerRef"]["name"], f"{path}#{index}"
        else:
            assert {"selfSigned", "ca"} & set(doc["spec"]), f"{path}#{index}: an Issuer needs a kind"
        return
    crd_schema = _crd_schemas().get((api_version, kind))
    if crd_schema is not None:
        jsonschema.validate(doc, crd_schema)
        return
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_validation_rejects_a_broken_daemonset() -> None:
    daemonset = next(doc for _, _, doc in DOCUMENTS if doc["kind"] == "DaemonSet")
    broken = yaml.safe_load(yaml.safe_dump(daemonset))
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMountz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_daemonset_mounts_what_the_agent_writes() -> None:
    daemonset = next(doc for _, _, doc in DOCUMENTS if doc["kind"] == "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    host_paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert {"/sys", "/sys/fs/cgroup", "/var/lib/kubelet/device-plugins", "/run/netns"} <= host_paths
    assert pod["hostNetwork"] and pod["hostPID"]
    assert {"operator": "Exists"} in pod["tolerations"]
    assert pod["containers"][0]["resources"]["limits"]["memory"]


def test_agent_probes_ask_the_agent_not_the_port() -> None:
    """kubelet cannot probe mTLS gRPC: readiness is /readyz on the plain metrics port (503 while the agent
    cannot apply or has no certificate), liveness /healthz there."""
    daemonset = next(doc for _, _, doc in DOCUMENTS if doc["kind"] == "DaemonSet")
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    metrics = next(p for p in container["ports"] if p["name"] == "metrics")
    assert f"--metrics-listen=0.0.0.0:{metrics['containerPort']}" in container["args"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_rbac_is_least_privilege() -> None:
    """No wildcard, no secrets, no write to anything but what each component uses."""
    for path, _, doc in DOCUMENTS:
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in doc["rules"]:
            named = rule.get("verbs", []) + rule.get("resources", []) + rule.get("apiGroups", [])
            assert "*" not in named, path
            assert "secrets" not in rule.get("resources", []), path
            assert "deletecollection" not in rule.get("verbs", []), path
            if "delete" in rule.get("verbs", []):
                # pods it runs; the workflow controller's serve tasks: their Deployment and Service
                allowed = {"pods", "deployments", "services"} if "workflow" in path else {"pods"}
                assert set(rule["resources"]) <= allowed, f"{path}: delete only on what it creates"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = {str((DEPLOY / r).resolve()) for r in kustomization["resources"]}
    for resource in kustomization["resources"]:
        assert (DEPLOY / resource).exists(), f"kustomization lists missing {resource}"
    # Applied on their own: the ServiceMonitor with the Prometheus Operator, the uninstall
    # DaemonSet after `kubectl delete -k deploy/`.
    optional = {DEPLOY / "prometheus" / "servicemonitor.yaml", DEPLOY / "uninstall" / "agent-uninstall.yaml"}
    for path, _, doc in DOCUMENTS:
        full = REPO / path
        if doc["kind"] in NOT_API_OBJECTS or full in optional or "examples" in full.parts:
            continue
        assert str(full.resolve()) in listed, f"{path} is not in deploy/kustomization.yaml"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) missing")
def test_scrape_config_is_valid_prometheus(tmp_path: Path) -> None:
    """promtool checks everything but the discovery block (Debian builds Prometheus without Kubernetes SD)."""
    jobs = yaml.safe_load((DEPLOY / "prometheus" / "scrape-config.yaml").read_text())
    for job in jobs:
        assert job["kubernetes_sd_configs"][0]["role"] == "endpoints"
        job["file_sd_configs"] = [{"files": [str(tmp_path / "targets.json")]}]
        del job["kubernetes_sd_configs"]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "15s"}, "scrape_configs": jobs}))
    result = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_csr_signer_rbac_is_exactly_what_it_calls() -> None:
    docs = {
        (d["kind"], d["metadata"]["name"]): d
        for d in yaml.safe_load_all((DEPLOY / "tls" / "csr-signer.yaml").read_text())
    }
    cluster = docs[("ClusterRole", "gedge-csr-signer")]["rules"]
    granted = {(tuple(r["resources"]), tuple(r["verbs"]), tuple(r.get("resourceNames", ()))) for r in cluster}
    assert granted == {
        (("certificatesigningrequests",), ("get", "list", "watch"), ()),
        (("certificatesigningrequests/approval",), ("update",), ()),
        (("certificatesigningrequests/status",), ("update",), ()),
        (("signers",), ("approve", "sign"), ("gedge.io/agent",)),
    }
    assert all(r["apiGroups"] == ["certificates.k8s.io"] for r in cluster)
    local = docs[("Role", "gedge-csr-signer")]
    assert local["metadata"]["namespace"] == "gedge-system"
    assert {(tuple(r["verbs"]), tuple(r.get("resourceNames", ()))) for r in local["rules"]} == {
        (("get", "update"), ("gedge-ca-bundle",)),
        (("create",), ()),
    }


def test_agents_request_their_certificate_and_trust_the_published_ca() -> None:
    """The agent asks the CSR API (tls_csr), writes under its state folder, and reads the CA the signer
    publishes; the signer reads the CA Secret cert-manager makes."""
    signer = next(
        d
        for d in yaml.safe_load_all((DEPLOY / "tls" / "csr-signer.yaml").read_text())
        if d["kind"] == "Deployment"
    )
    signer_pod = signer["spec"]["template"]["spec"]
    args = signer_pod["containers"][0]["args"]
    assert "--ca-configmap=gedge-system/gedge-ca-bundle" in args
    assert signer_pod["volumes"][0]["secret"]["secretName"] == "gedge-ca"
    certificates = list(yaml.safe_load_all((DEPLOY / "tls" / "certificates.yaml").read_text()))
    assert any(d["kind"] == "Certificate" and d["spec"]["secretName"] == "gedge-ca" for d in certificates)

    config = yaml.safe_load(
        yaml.safe_load((DEPLOY / "agent" / "configmap.yaml").read_text())["data"]["agent.yaml"]
    )
    assert config["tls_csr"] is True
    daemonset = next(doc for _, _, doc in DOCUMENTS if doc["kind"] == "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["ca"]["configMap"] == {"name": "gedge-ca-bundle", "optional": True}
    assert config["tls_ca"] == f"{mounts['ca']}/ca.crt"
    state = next(
        name for name, v in volumes.items() if v.get("hostPath", {}).get("path") == "/var/lib/gedge-agent"
    )
    assert config["tls_cert"].startswith(f"{mounts[state]}/") and config["tls_key"].startswith(
        f"{mounts[state]}/"
    )
    role = next(
        d
        for d in yaml.safe_load_all((DEPLOY / "agent" / "rbac.yaml").read_text())
        if d["kind"] == "ClusterRole"
    )
    assert {
        "apiGroups": ["certificates.k8s.io"],
        "resources": ["certificatesigningrequests"],
        "verbs": ["create", "get", "list", "watch"],
    } in role["rules"]
