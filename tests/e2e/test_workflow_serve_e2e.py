"""A train -> serve Workflow on the real control plane: the serve step's Deployment and Service go
through the real API server, its pod through kube-scheduler and our extender; the step is
Succeeded once its replica is Ready, survives a SIGKILL of the controller, shows its endpoint
in `gedge-flow get`, and goes with `gedge-flow delete`.

The harness runs no kube-controller-manager, so `roll_out` below does the Deployment
controller's part for the one Deployment (a pod from its template, then the Deployment's status
once kubelet's stand-in reports the pod Ready), as tests/e2e/kubelet.py does kubelet's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from gedge_model import ANNOTATION
from tests.e2e.cluster_objects import wait_for
from tests.e2e.edge_cluster import EdgeCluster
from tests.e2e.kubelet import RUN_SECONDS_ENV

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "deploy" / "runtime-catalog" / "runtime-catalog.yaml"
GEDGE_FLOW = Path(sys.executable).parent / "gedge-flow"
NAME = "edge-serve"


def _workflow() -> dict[str, Any]:
    return {
        "apiVersion": "gedge.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": NAME},
        "spec": {
            "parameters": {"model": "/models/resnet-v1"},
            "tasks": [
                {
                    "name": "train",
                    "container": {"image": "trainer", "env": [{"name": RUN_SECONDS_ENV, "value": "1"}]},
                },
                {
                    "name": "serve",
                    "dependencies": ["train"],
                    "serve": {"name": "resnet", "port": 8501, "ttl": "1h"},
                    "container": {
                        "image": "tf-serving",
                        "args": ["--model", "{{workflow.parameters.model}}"],
                    },
                    "resources": {"limits": {"gedge.io/gpu": 1, "cpu": "1"}},
                    "acceleration": {"topologyAware": True, "compute": ["GPU"]},
                },
            ],
        },
    }


def roll_out(kube_api: k8s.ApiClient, namespace: str, name: str) -> k8s.V1Pod:
    """The Deployment controller's part: one pod from the template, then the Deployment's status."""
    apps = k8s.AppsV1Api(kube_api)
    core = k8s.CoreV1Api(kube_api)
    deployment = apps.read_namespaced_deployment(name, namespace)
    template = kube_api.sanitize_for_serialization(deployment.spec.template)
    pod_name = f"{name}-{deployment.metadata.annotations['gedge.io/serve-hash'][:10]}-0"
    try:
        core.create_namespaced_pod(
            namespace,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {**template["metadata"], "name": pod_name},
                "spec": template["spec"],
            },
        )
    except ApiException as exc:
        if exc.status != 409:
            raise
    pod = wait_for(
        lambda: core.read_namespaced_pod(pod_name, namespace),
        lambda p: any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or ()),
        timeout=90,
        describe=lambda p: f"{p.spec.node_name} {p.status}",
    )
    apps.patch_namespaced_deployment_status(
        name,
        namespace,
        {
            "status": {
                "observedGeneration": deployment.metadata.generation,
                "replicas": 1,
                "updatedReplicas": 1,
                "readyReplicas": 1,
                "availableReplicas": 1,
            }
        },
    )
    return pod


def _status(custom: k8s.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    try:
        return (
            custom.get_namespaced_custom_object("gedge.io", "v1alpha1", namespace, "workflows", NAME).get(
                "status"
            )
            or {}
        )
    except ApiException as exc:
        if exc.status == 404:
            return {}
        raise


def _flow(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(GEDGE_FLOW), *args], stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _serve_phase(status: dict[str, Any]) -> str | None:
    return ((status.get("tasks") or {}).get("serve") or {}).get("phase")


@pytest.mark.e2e
def test_serve_step_is_ready_survives_a_kill_shows_its_endpoint_and_goes_with_delete(
    edge_cluster: EdgeCluster,
    deploy_crds: list[dict],
    kube_api: k8s.ApiClient,
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
) -> None:
    apps = k8s.AppsV1Api(kube_api)
    core = k8s.CoreV1Api(kube_api)
    custom = k8s.CustomObjectsApi(kube_api)
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(_workflow()))
    log = tmp_path / "gedge-flow.log"
    cluster = ["--kubeconfig", str(kubeconfig), "-n", namespace]
    args = [
        "run",
        str(path),
        *cluster,
        "--scheduler-name",
        edge_cluster.scheduler_name,
        "--catalog",
        str(CATALOG),
    ]

    first = _flow([*args, "-v"], log)
    try:
        waiting = wait_for(
            lambda: _status(custom, namespace),
            lambda s: (
                _serve_phase(s) == "Running" and "replicas ready" in s["tasks"]["serve"].get("message", "")
            ),
            timeout=120,
            describe=lambda s: f"{yaml.safe_dump(s)}\n{log.read_text()[-3000:]}",
        )
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    assert waiting["tasks"]["train"]["phase"] == "Succeeded"
    assert "message" not in waiting["tasks"]["train"], "a finished step keeps no message of its pod's start"
    deployment = apps.read_namespaced_deployment("resnet", namespace)
    service = core.read_namespaced_service("resnet", namespace)
    assert deployment.metadata.owner_references[0].kind == "Workflow"
    assert service.spec.ports[0].port == 8501 and service.spec.selector == {"gedge.io/serve": "resnet"}

    second = _flow(args, log)
    try:
        pod = roll_out(kube_api, namespace, "resnet")
        code = second.wait(timeout=120)
    finally:
        if second.poll() is None:
            os.kill(second.pid, signal.SIGKILL)
    output = log.read_text()
    assert "exists; resuming it" in output
    assert code == 0, output[-4000:]
    assert pod.spec.node_name in ("h100-a", "h100-b", "split")
    assert ANNOTATION in pod.metadata.annotations, "the extender bound the serve pod's GPU"
    assert apps.read_namespaced_deployment("resnet", namespace).metadata.uid == deployment.metadata.uid, (
        "the second controller waited for the Deployment the first made"
    )

    status = _status(custom, namespace)
    assert status["phase"] == "Succeeded", yaml.safe_dump(status)
    serve = status["tasks"]["serve"]
    assert serve["phase"] == "Succeeded" and "message" not in serve
    assert serve["endpoint"] == f"resnet.{namespace}.svc:8501"
    kept = apps.read_namespaced_deployment("resnet", namespace)
    assert "gedge.io/expires-at" in kept.metadata.annotations, "ttl marked when the workflow ended"

    get = subprocess.run(
        [str(GEDGE_FLOW), "get", NAME, *cluster], capture_output=True, text=True, timeout=60, check=True
    )
    assert f"serving at resnet.{namespace}.svc:8501" in get.stdout
    dot = subprocess.run(
        [str(GEDGE_FLOW), "get", NAME, *cluster, "-o", "dot"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert '"train" -> "serve";' in dot.stdout

    deleted = subprocess.run(
        [str(GEDGE_FLOW), "delete", NAME, *cluster], capture_output=True, text=True, timeout=60, check=True
    )
    assert "serve(s) resnet" in deleted.stdout
    for read in (apps.read_namespaced_deployment, core.read_namespaced_service):
        with pytest.raises(ApiException) as gone:
            read("resnet", namespace)
        assert gone.value.status == 404
