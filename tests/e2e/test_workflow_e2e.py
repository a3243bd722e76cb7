"""A Workflow on the real control plane: `gedge-flow run` killed with SIGKILL mid-run and started again.

The CRD is installed through the API server, the task pods go through the real
kube-scheduler and our extender (the GPU step gets its devices bound), the
kubelet stand-in runs them, and the CUDA step may only land on a node whose
driver label meets the runtime's minimum. After the kill the second
controller resumes from the CR status: no step gets a second pod.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from gedge_model import ANNOTATION
from scheduler_extender.workflow.catalog import driver_code
from scheduler_extender.workflow.composer import LABEL_DRIVER, LABEL_DRIVER_CODE
from tests.e2e.cluster_objects import wait_for
from tests.e2e.conftest import GPU_BOXES
from tests.e2e.edge_cluster import EdgeCluster
from tests.e2e.kubelet import EXIT_CODE_ENV, RUN_SECONDS_ENV

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "deploy" / "runtime-catalog" / "runtime-catalog.yaml"
GEDGE_FLOW = Path(sys.executable).parent / "gedge-flow"
DRIVERS = {name: driver for name, _, driver in GPU_BOXES}
"""h100-a can run CUDA 12.2 (needs 535.54.03); h100-b and split cannot."""


def _env(seconds: float, exit_code: int = 0) -> list[dict[str, str]]:
    return [
        {"name": RUN_SECONDS_ENV, "value": str(seconds)},
        {"name": EXIT_CODE_ENV, "value": str(exit_code)},
    ]


def _workflow() -> dict[str, Any]:
    return {
        "apiVersion": "gedge.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "edge-train"},
        "spec": {
            "tasks": [
                {"name": "prepare", "container": {"image": "busybox", "env": _env(1)}},
                {
                    "name": "train",
                    "dependencies": ["prepare"],
                    "container": {"image": "trainer", "env": _env(6)},
                    "runtime": "cuda-12.2",
                    "resources": {"limits": {"gedge.io/gpu": 2, "cpu": "1"}},
                    "acceleration": {"topologyAware": True, "compute": ["GPU"]},
                },
                {
                    "name": "flaky",
                    "dependencies": ["prepare"],
                    "container": {"image": "busybox", "env": _env(0.5, exit_code=3)},
                    "retryStrategy": {"limit": 1, "backoff": {"duration": "1s"}},
                },
                {
                    "name": "report",
                    "depends": "flaky.Failed",
                    "container": {"image": "busybox", "env": _env(0.5)},
                },
                {
                    "name": "evaluate",
                    "dependencies": ["train"],
                    "container": {"image": "busybox", "env": _env(1)},
                },
                {
                    "name": "publish",
                    "depends": "train && evaluate",
                    "container": {"image": "busybox", "env": _env(0.5)},
                },
            ],
            "onExit": {"name": "notify", "container": {"image": "busybox", "env": _env(0.5)}},
        },
    }


@pytest.fixture
def driver_labels(kube_api: k8s.ApiClient, edge_cluster: EdgeCluster) -> dict[str, str]:
    """The driver labels each GPU node's own agent keeps from what its NVML reports."""
    core = k8s.CoreV1Api(kube_api)
    managed = (LABEL_DRIVER, LABEL_DRIVER_CODE)
    expected = {n: {LABEL_DRIVER: v, LABEL_DRIVER_CODE: str(driver_code(v))} for n, v in DRIVERS.items()}

    def labels() -> dict[str, dict[str, str | None]]:
        current = {node: core.read_node(node).metadata.labels or {} for node in DRIVERS}
        return {node: {key: current[node].get(key) for key in managed} for node in DRIVERS}

    wait_for(labels, lambda seen: seen == expected, timeout=30, describe=str)
    return {node: want[LABEL_DRIVER_CODE] for node, want in expected.items()}


@pytest.fixture
def runtime_volume(kube_api: k8s.ApiClient, namespace: str) -> Iterator[str]:
    """The catalog's CUDA claim, pre-bound to a PV (no PV controller runs in the harness)."""
    core = k8s.CoreV1Api(kube_api)
    pv_name = f"{namespace}-cuda"
    core.create_persistent_volume(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "hostPath": {"path": "/opt/gedge-runtime"},
                "storageClassName": "",
                "claimRef": {"namespace": namespace, "name": "gedge-runtime-cuda"},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": "gedge-runtime-cuda",
                "annotations": {"pv.kubernetes.io/bind-completed": "yes"},
            },
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "resources": {"requests": {"storage": "1Gi"}},
                "storageClassName": "",
                "volumeName": pv_name,
            },
        },
    )
    try:
        yield pv_name
    finally:
        core.delete_persistent_volume(pv_name)


def _status(custom: k8s.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    """The Workflow's status; empty until `gedge-flow run` has submitted it."""
    try:
        workflow = custom.get_namespaced_custom_object(
            "gedge.io", "v1alpha1", namespace, "workflows", "edge-train"
        )
    except ApiException as exc:
        if exc.status == 404:
            return {}
        raise
    return workflow.get("status") or {}


def _phase(status: dict[str, Any], task: str) -> str | None:
    return ((status.get("tasks") or {}).get(task) or {}).get("phase")


def _flow(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(GEDGE_FLOW), *args],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_workflow_killed_mid_run_resumes_without_running_a_step_twice(
    edge_cluster: EdgeCluster,
    deploy_crds: list[dict],
    kube_api: k8s.ApiClient,
    kubeconfig: Path,
    namespace: str,
    driver_labels: dict[str, str],
    runtime_volume: str,
    tmp_path: Path,
) -> None:
    core = k8s.CoreV1Api(kube_api)
    custom = k8s.CustomObjectsApi(kube_api)
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(_workflow()))
    log = tmp_path / "gedge-flow.log"
    args = [
        "run",
        str(path),
        "--kubeconfig",
        str(kubeconfig),
        "-n",
        namespace,
        "--scheduler-name",
        edge_cluster.scheduler_name,
        "--catalog",
        str(CATALOG),
        "-v",
    ]
    first = _flow(args, log)
    try:
        mid = wait_for(
            lambda: _status(custom, namespace),
            lambda s: _phase(s, "prepare") == "Succeeded" and _phase(s, "train") == "Running",
            timeout=120,
            describe=lambda s: f"{yaml.safe_dump(s)}\n{log.read_text()[-3000:]}",
        )
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    prepare_before = mid["tasks"]["prepare"]
    prepare_uid = core.read_namespaced_pod("edge-train-prepare-0", namespace).metadata.uid

    second = _flow(args, log)
    try:
        code = second.wait(timeout=180)
    finally:
        if second.poll() is None:
            os.kill(second.pid, signal.SIGKILL)
    output = log.read_text()
    assert "exists; resuming it" in output
    assert code == 0, output[-4000:]

    status = _status(custom, namespace)
    assert status["phase"] == "Succeeded", yaml.safe_dump(status)
    tasks = status["tasks"]
    assert tasks["prepare"]["finishedAt"] == prepare_before["finishedAt"], "prepare was not run again"
    assert {t: len(v["attempts"]) for t, v in tasks.items()} == {
        "prepare": 1,
        "train": 1,
        "flaky": 2,
        "report": 1,
        "evaluate": 1,
        "publish": 1,
        "notify": 1,
    }
    assert tasks["flaky"]["phase"] == "Failed" and tasks["flaky"]["attempts"][0]["exitCode"] == 3
    pods = {
        p.metadata.name: p
        for p in core.list_namespaced_pod(namespace, label_selector="gedge.io/workflow=edge-train").items
    }
    assert sorted(pods) == sorted(
        [
            "edge-train-prepare-0",
            "edge-train-train-0",
            "edge-train-flaky-0",
            "edge-train-flaky-1",
            "edge-train-report-0",
            "edge-train-evaluate-0",
            "edge-train-publish-0",
            "edge-train-notify-0",
        ]
    )
    assert pods["edge-train-prepare-0"].metadata.uid == prepare_uid
    train = pods["edge-train-train-0"]
    assert train.spec.node_name == "h100-a", "the only node whose driver runs CUDA 12.2"
    assert ANNOTATION in train.metadata.annotations, "the extender bound its GPUs"
    assert train.metadata.annotations["gedge.io/min-nvidia-driver"] == "535.54.03"
    assert {m.mount_path for m in train.spec.containers[0].volume_mounts} >= {"/opt/gedge/cuda"}
    assert all(p.spec.restart_policy == "Never" for p in pods.values())
    assert all(p.metadata.owner_references[0].kind == "Workflow" for p in pods.values())

    get = subprocess.run(
        [str(GEDGE_FLOW), "get", "edge-train", "--kubeconfig", str(kubeconfig), "-n", namespace],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "✔ publish" in get.stdout and "✖ flaky" in get.stdout

    deleted = subprocess.run(
        [str(GEDGE_FLOW), "delete", "edge-train", "--kubeconfig", str(kubeconfig), "-n", namespace],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "deleted with 8 pod(s)" in deleted.stdout
