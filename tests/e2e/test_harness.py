"""The harness's own contracts, and deploy/'s files as the real API server and kube-scheduler take them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from gedge_model.certs import issue_files
from tests.e2e.cluster_objects import wait_for
from tests.e2e.control_plane import KUBERNETES_VERSION, ControlPlane
from tests.e2e.controlplane.pin import staging_version
from tests.e2e.edge_cluster import DEPLOY, SCHEDULER_CONFIG, deploy_scheduler_configuration, manifests

CONTROLPLANE = Path(__file__).parent / "controlplane"


def _requires(gomod: str) -> dict[str, str]:
    return dict(re.findall(r"^\s+(\S+) (v\S+)(?: // indirect)?$", gomod, re.MULTILINE))


def _replaces(gomod: str) -> dict[str, tuple[str, str]]:
    return {m[0]: (m[1], m[2]) for m in re.findall(r"^\s+(\S+) => (\S+) (v\S+)$", gomod, re.MULTILINE)}


def test_every_k8s_module_is_replaced_by_the_staging_release_of_the_pinned_kubernetes() -> None:
    gomod = (CONTROLPLANE / "kube" / "go.mod").read_text()
    kubernetes = _requires(gomod)["k8s.io/kubernetes"]
    staged = staging_version(kubernetes)
    replaces = _replaces(gomod)
    required_staging = {m for m, v in _requires(gomod).items() if m.startswith("k8s.io/") and v == "v0.0.0"}
    assert required_staging, "k8s.io/kubernetes requires its staging modules at v0.0.0"
    assert required_staging <= set(replaces)
    assert {target for target, _ in replaces.values()} == set(replaces), "each module replaced by itself"
    assert {version for _, version in replaces.values()} == {staged}


def test_kube_module_pins_the_tested_kubernetes_and_builds_the_node_commands() -> None:
    gomod = (CONTROLPLANE / "kube" / "go.mod").read_text()
    assert _requires(gomod)["k8s.io/kubernetes"] == KUBERNETES_VERSION
    tools = set(re.findall(r"^\s+k8s\.io/kubernetes/cmd/(\S+)$", gomod, re.MULTILINE))
    assert tools == {"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"}


def test_deploy_kubernetes_images_follow_the_tested_version() -> None:
    images = [
        container["image"]
        for path in sorted(DEPLOY.rglob("*.yaml"))
        for doc in manifests(path)
        if isinstance(doc, dict) and doc.get("kind") in ("Deployment", "DaemonSet")
        for container in doc["spec"]["template"]["spec"]["containers"]
        if container["image"].startswith("registry.k8s.io/")
    ]
    assert images, "deploy/ runs kube-scheduler from registry.k8s.io"
    assert {image.rpartition(":")[2] for image in images} == {KUBERNETES_VERSION}


def test_agent_sees_pod_network_namespaces_through_run_netns_itself() -> None:
    daemonset = next(d for d in manifests(DEPLOY / "agent" / "daemonset.yaml") if d["kind"] == "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "netns")
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "netns")
    assert volume["hostPath"]["path"] == "/run/netns"
    assert mount["mountPath"] == "/run/netns"
    assert mount["mountPropagation"] == "HostToContainer"


def test_staging_version_follows_the_kubernetes_minor_and_patch() -> None:
    assert staging_version("v1.33.13") == "v0.33.13"
    with pytest.raises(SystemExit, match=r"v1\.MINOR\.PATCH"):
        staging_version("1.33")


def test_deploy_scheduler_configuration_changes_only_the_extender_url() -> None:
    configmap = next(d for d in manifests(SCHEDULER_CONFIG) if d["kind"] == "ConfigMap")
    (text,) = configmap["data"].values()
    original = yaml.safe_load(text)
    loaded = deploy_scheduler_configuration("http://127.0.0.1:4242")
    assert [e["urlPrefix"] for e in loaded["extenders"]] == ["http://127.0.0.1:4242"] * len(
        original["extenders"]
    )
    for extender in original["extenders"]:
        extender["urlPrefix"] = "http://127.0.0.1:4242"
    assert loaded == original


def scheduler_configurations() -> list[Path]:
    return sorted(
        path
        for path in (DEPLOY / "scheduler").glob("*.yaml")
        if "KubeSchedulerConfiguration" in path.read_text()
    )


@pytest.mark.parametrize("source", scheduler_configurations(), ids=lambda p: p.name)
def test_real_kube_scheduler_accepts_each_deploy_configuration(
    control_plane: ControlPlane, source: Path
) -> None:
    pki = control_plane.workdir / "validate-pki"
    issued = issue_files(pki, "kube-scheduler", days=1)
    tls = {"certFile": str(issued.cert), "keyFile": str(issued.key), "caFile": str(pki / "ca.pem")}
    configuration = deploy_scheduler_configuration("https://127.0.0.1:9", source, tls=tls)
    configuration["leaderElection"] = {"leaderElect": False}
    for profile in configuration.get("profiles") or []:
        profile["schedulerName"] = f"validate-{source.stem}"
    scheduler = control_plane.start_scheduler(configuration, name=f"validate-{source.stem}")
    try:
        assert scheduler.running
    finally:
        control_plane.stop_scheduler(scheduler)


def test_real_api_server_establishes_deploy_crds_and_accepts_their_examples(
    deploy_crds: list[dict], kube_api: k8s.ApiClient, namespace: str
) -> None:
    custom = k8s.CustomObjectsApi(kube_api)
    crds = deploy_crds
    assert crds
    served = {(c["spec"]["group"], c["spec"]["names"]["kind"]): c for c in crds}
    for path in sorted((DEPLOY / "crds" / "examples").glob("*.yaml")):
        for example in manifests(path):
            group, version = example["apiVersion"].split("/")
            plural = served[(group, example["kind"])]["spec"]["names"]["plural"]
            created = wait_for(
                lambda example=example, group=group, version=version, plural=plural: _create_custom(
                    custom, group, version, namespace, plural, example
                ),
                lambda result: result is not None,
            )
            assert created["spec"] == example["spec"], f"{path.name}: the server pruned or changed the spec"


def _create_custom(
    custom: k8s.CustomObjectsApi, group: str, version: str, namespace: str, plural: str, body: dict
) -> dict | None:
    """The created object, or None while the new resource is not served yet (404)."""
    try:
        return custom.create_namespaced_custom_object(group, version, namespace, plural, body)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
