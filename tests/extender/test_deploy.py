"""deploy/scheduler agrees with the extender it configures: verbs, resources, port, RBAC."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gedge_model.allocation import (
    CARD_RESOURCES,
    RESOURCE_GPU,
    RESOURCE_GPU_SHARED,
    RESOURCE_MIG_PREFIX,
    RESOURCE_RDMA,
    RESOURCE_SRIOV_VF,
    RESOURCE_SRIOV_VF_VFIO,
    is_known_resource,
)
from scheduler_extender.http.app import build_app
from scheduler_extender.node_source import StaticNodeSource
from scheduler_extender.verbs import Extender
from tests.extender.conftest import RecordingBinder

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "scheduler"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def _configs() -> dict[str, dict[str, Any]]:
    (configmap,) = _docs("gedge-scheduler-config.yaml")
    (replacement,) = _docs("replace-default-scheduler.yaml")
    return {"second-scheduler": yaml.safe_load(configmap["data"]["config.yaml"]), "replacement": replacement}


CONFIGS = _configs()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_scheduler_configuration_calls_our_verbs(name: str) -> None:
    config = CONFIGS[name]
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert config["kind"] == "KubeSchedulerConfiguration"
    (extender,) = config["extenders"]
    routes = {
        r.resource.canonical
        for r in build_app(Extender(StaticNodeSource(), RecordingBinder())).router.routes()
    }
    for verb in ("filterVerb", "prioritizeVerb", "bindVerb", "preemptVerb"):
        assert f"/{extender[verb]}" in routes
    assert extender["nodeCacheCapable"] is True
    assert extender["enableHTTPS"] is True
    assert extender["urlPrefix"].startswith("https://")
    tls = extender["tlsConfig"]
    assert {"certFile", "keyFile", "caFile"} <= set(tls), "kube-scheduler presents its client certificate"
    assert extender["weight"] >= 1
    assert re.fullmatch(r"\d+s", extender["httpTimeout"])


def _extender_certificate_names() -> set[str]:
    """The DNS names of the certificate deploy/tls issues into the Secret the extender serves with."""
    (deployment, _service) = _docs("extender.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    cert_arg = next(a for a in container["args"] if a.startswith("--tls-cert="))
    cert_path = Path(cert_arg.removeprefix("--tls-cert="))
    (mount,) = [m for m in container["volumeMounts"] if cert_path.parent == Path(m["mountPath"])]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]["secretName"]
    tls_docs = yaml.safe_load_all((DEPLOY.parent / "tls" / "certificates.yaml").read_text())
    (certificate,) = [
        d for d in tls_docs if d and d["kind"] == "Certificate" and d["spec"]["secretName"] == secret
    ]
    assert "ipAddresses" not in certificate["spec"], "names only: kube-scheduler must verify a name"
    return set(certificate["spec"]["dnsNames"])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_scheduler_verifies_a_name_the_extender_certificate_carries(name: str) -> None:
    (extender,) = CONFIGS[name]["extenders"]
    host = re.fullmatch(r"https://([^:/]+):\d+", extender["urlPrefix"])
    assert host
    server_name = extender["tlsConfig"].get("serverName") or host.group(1)
    assert server_name in _extender_certificate_names(), (
        f"{name}: kube-scheduler checks the extender's certificate for {server_name!r}"
    )


def _values_by_key(node: Any, found: dict[str, set[str]]) -> dict[str, set[str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(value, dict | list):
                found.setdefault(key, set()).add(yaml.safe_dump(value).removesuffix("\n...\n").strip())
            _values_by_key(value, found)
    elif isinstance(node, list):
        for item in node:
            _values_by_key(item, found)
    return found


def test_scheduler_readme_quotes_the_configurations_as_they_are() -> None:
    """Every `key: value` deploy/scheduler/README.md gives for an extender entry is in a configuration."""
    found: dict[str, set[str]] = {}
    for config in CONFIGS.values():
        _values_by_key(config["extenders"], found)
    readme = (DEPLOY / "README.md").read_text()
    quoted = re.findall(r"`([A-Za-z][\w.]*): ([^`\s][^`]*)`", readme)
    checked = [(key, value) for key, value in quoted if key.rsplit(".", 1)[-1] in found]
    assert len(checked) >= 5, quoted
    for key, value in checked:
        assert value in found[key.rsplit(".", 1)[-1]], (
            f"README says `{key}: {value}`; the configurations do not"
        )


def test_second_scheduler_sends_every_pod_and_leaves_gedge_resources_to_the_extender() -> None:
    config = CONFIGS["second-scheduler"]
    assert "managedResources" not in config["extenders"][0]
    (profile,) = config["profiles"]
    (fit,) = [p for p in profile["pluginConfig"] if p["name"] == "NodeResourcesFit"]
    assert fit["args"]["ignoredResourceGroups"] == ["gedge.io"]


def test_replacement_manages_every_gedge_resource_and_the_in_tree_fit_ignores_them() -> None:
    managed = CONFIGS["replacement"]["extenders"][0]["managedResources"]
    names = [m["name"] for m in managed]
    assert len(names) == len(set(names))
    assert all(m["ignoredByScheduler"] is True for m in managed)
    assert all(is_known_resource(n) for n in names)
    assert {
        RESOURCE_GPU,
        RESOURCE_GPU_SHARED,
        RESOURCE_SRIOV_VF,
        RESOURCE_SRIOV_VF_VFIO,
        RESOURCE_RDMA,
        *CARD_RESOURCES,
    } <= set(names)
    migs = {n.removeprefix(RESOURCE_MIG_PREFIX) for n in names if n.startswith(RESOURCE_MIG_PREFIX)}
    for profile in ("1g.5gb", "1g.10gb", "3g.40gb", "7g.80gb", "1g.10gb.me", "2g.12gb", "7g.141gb"):
        assert profile in migs, f"MIG profile {profile} (A30/A100/H100/H200) is not managed"


def test_second_scheduler_reaches_the_extender_service() -> None:
    config = CONFIGS["second-scheduler"]
    assert [p["schedulerName"] for p in config["profiles"]] == ["gedge-scheduler"]
    url = config["extenders"][0]["urlPrefix"]
    match = re.fullmatch(r"https://([a-z0-9-]+)\.([a-z0-9-]+)\.svc:(\d+)", url)
    assert match
    deployment, service = _docs("extender.yaml")
    assert (service["kind"], service["metadata"]["name"], service["metadata"]["namespace"]) == (
        "Service",
        match.group(1),
        match.group(2),
    )
    assert service["spec"]["ports"][0]["port"] == int(match.group(3))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert f"--listen=0.0.0.0:{container['ports'][0]['containerPort']}" in container["args"]
    assert deployment["spec"]["replicas"] == 2
    assert "--leader-elect" in container["args"]
    assert "--leader-elect-identity=$(POD_NAME)" in container["args"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, "the leader only"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for flag in ("--tls-cert=", "--tls-key=", "--tls-client-ca=", "--agent-tls-cert=", "--agent-tls-ca="):
        assert any(arg.startswith(flag) for arg in container["args"]), flag
    assert "--insecure" not in container["args"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def _scaled(value: int | str, replicas: int, *, round_up: bool) -> int:
    """Kubernetes' intstr.GetScaledValueFromIntOrPercent for maxSurge (up) and maxUnavailable (down)."""
    if isinstance(value, int):
        return value
    percent = int(value.removesuffix("%"))
    return -(-percent * replicas // 100) if round_up else percent * replicas // 100


def _roll_out(spec: dict[str, Any], syncs: int = 20) -> tuple[list[tuple[str, bool]], bool]:
    """The Deployment controller's rolling update (reconcileNewReplicaSet, then reconcileOldReplicaSets:
    unhealthy old pods first, then down to minAvailable) over extender replicas of which only the Lease
    holder is Ready; the Lease passes to a remaining pod, a new one first, once its holder is deleted.

    Returns the pods as (replica set, Ready) after `syncs` syncs and whether the Deployment is Available.
    """
    replicas = spec["replicas"]
    rolling = spec["strategy"]["rollingUpdate"]
    surge = _scaled(rolling["maxSurge"], replicas, round_up=True)
    unavailable = _scaled(rolling["maxUnavailable"], replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    unavailable = min(unavailable, replicas)
    pods = [("old", True)] + [("old", False)] * (replicas - 1)
    for _ in range(syncs):
        new = sum(1 for rs, _ready in pods if rs == "new")
        room = replicas + surge - len(pods)
        if new < replicas and room > 0:
            pods += [("new", False)] * min(room, replicas - new)
        new_unavailable = sum(1 for rs, ready in pods if rs == "new" and not ready)
        budget = len(pods) - (replicas - unavailable) - new_unavailable
        for leader in (False, True):  # not-Ready old pods go first
            while budget > 0 and ("old", leader) in pods:
                if leader and sum(ready for _rs, ready in pods) <= replicas - unavailable:
                    break
                pods.remove(("old", leader))
                budget -= 1
        if pods and not any(ready for _rs, ready in pods):
            heir = next((i for i, (rs, _ready) in enumerate(pods) if rs == "new"), 0)
            pods[heir] = (pods[heir][0], True)
    available = sum(ready for _rs, ready in pods) >= replicas - unavailable
    return pods, available


def test_extender_rollout_completes_with_one_ready_leader() -> None:
    deployment, _service = _docs("extender.yaml")
    spec = deployment["spec"]
    assert spec["strategy"]["type"] == "RollingUpdate", "Recreate never counts the Deployment Available"
    pods, available = _roll_out(spec)
    assert sorted(pods) == [("new", False)] * (spec["replicas"] - 1) + [("new", True)], (
        f"the rollout stalls at {pods}: a new pod cannot lead while the old leader runs"
    )
    assert available, "Available with its one Ready leader"
    container = spec["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", "standbys stay out of the Service"


def test_the_rollout_model_stalls_where_kubernetes_does() -> None:
    """maxUnavailable 0 or 1 never removes the old leader while new pods wait on its Lease."""
    for rolling in ({"maxUnavailable": 0, "maxSurge": 1}, {"maxUnavailable": 1, "maxSurge": 1}):
        pods, available = _roll_out({"replicas": 2, "strategy": {"rollingUpdate": rolling}})
        assert ("old", True) in pods, rolling
        assert available == (rolling["maxUnavailable"] == 1), rolling


def test_extender_rbac_is_exactly_what_it_calls() -> None:
    role = next(d for d in _docs("extender-rbac.yaml") if d["kind"] == "ClusterRole")
    granted = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    needed = {
        ("", "pods", "get"),  # read_pod: bind of a pod not seen in filter
        ("", "pods", "list"),  # PodAllocationWatch.relist
        ("", "pods", "watch"),
        # create_namespaced_pod_binding (UID-checked), carrying the gedge.io/allocation annotation
        ("", "pods/binding", "create"),
        ("", "nodes", "list"),  # agents' addresses (cluster cache)
        ("", "nodes", "watch"),
        ("", "events", "create"),
    }
    assert needed <= granted
    assert not granted - needed, f"granted but never used: {sorted(granted - needed)}"
    lease = next(d for d in _docs("extender-rbac.yaml") if d["kind"] == "Role")
    assert lease["metadata"]["namespace"] == "gedge-system"
    assert lease["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["gedge-extender"],
            "verbs": ["get", "update"],
        },
    ]
    binding = next(d for d in _docs("extender-rbac.yaml") if d["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == lease["metadata"]["name"]
