"""The controller end to end against the in-memory API boundary: pods, status, watch, restarts."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler_extender.workflow.catalog import load_catalog_file
from scheduler_extender.workflow.controller import ControllerConfig, WorkflowController, pod_observation
from scheduler_extender.workflow.status import status_from_dict
from tests.workflow.memory_api import InMemoryApi, MemoryKubelet

REPO = Path(__file__).resolve().parents[2]
CATALOG = load_catalog_file(str(REPO / "deploy" / "runtime-catalog" / "runtime-catalog.yaml"))
NS = "ml"
FAST = ControllerConfig(watch_timeout_seconds=1, max_wait_seconds=0.5)

PIPELINE = """
apiVersion: gedge.io/v1alpha1
kind: Workflow
metadata: {name: pipe}
spec:
  tasks:
  - name: train
    container: {image: trainer, command: [python, train.py]}
    runtime: cuda-11.2,cudnn-8.2.1,tf2-py38
    resources: {limits: {gedge.io/gpu: 1}}
    acceleration: {topologyAware: true, topologyPolicy: single-numa, compute: [GPU]}
  - {name: validate, container: {image: v}, dependencies: [train]}
  - name: optimize
    container: {image: o}
    dependencies: [train]
    runtime: [cuda-11.8, cudnn-8.9, tensorrt-8.6]
  - {name: verify, container: {image: v}, dependencies: [validate, optimize]}
  - {name: serve, container: {image: s}, dependencies: [verify]}
"""


def _submit(api: InMemoryApi, text: str = PIPELINE) -> dict[str, Any]:
    return api.create_workflow(NS, yaml.safe_load(text))


def _run(api: InMemoryApi, name: str = "pipe", **kwargs: Any):
    return WorkflowController(api, catalog=CATALOG, config=FAST).run(NS, name, **kwargs)


def test_pipeline_runs_every_step_once_as_scheduled_pods_and_records_it():
    api = InMemoryApi()
    workflow = _submit(api)
    with MemoryKubelet(api):
        status = _run(api)
    assert status.phase == "Succeeded"
    assert sorted(api.pod_creations) == sorted(
        f"pipe-{t}-0" for t in ("train", "validate", "optimize", "verify", "serve")
    )
    assert api.pod_creations.index("pipe-verify-0") > max(
        api.pod_creations.index("pipe-validate-0"), api.pod_creations.index("pipe-optimize-0")
    )
    train = api.pods[(NS, "pipe-train-0")]
    assert train["spec"]["restartPolicy"] == "Never"
    assert train["spec"]["schedulerName"] == "gedge-scheduler"
    assert train["metadata"]["ownerReferences"][0]["uid"] == workflow["metadata"]["uid"]
    assert train["metadata"]["labels"]["gedge.io/workflow"] == "pipe"
    assert train["metadata"]["labels"]["gedge.io/task"] == "train"
    assert train["metadata"]["annotations"]["gedge.io/topology-policy"] == "single-numa"
    assert train["metadata"]["annotations"]["gedge.io/runtime"] == "cuda-11.2,cudnn-8.2.1,tf2-py38-2.11"
    terms = train["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["460027002"]
    assert {m["mountPath"] for m in train["spec"]["containers"][0]["volumeMounts"]} == {
        "/opt/gedge/python",
        "/opt/gedge/cudnn",
        "/opt/gedge/cuda",
    }
    optimize = api.pods[(NS, "pipe-optimize-0")]
    assert optimize["metadata"]["annotations"]["gedge.io/min-nvidia-driver"] == "520.61.05"
    assert "affinity" not in api.pods[(NS, "pipe-validate-0")]["spec"]
    recorded = status_from_dict(api.workflows[(NS, "pipe")]["status"])
    assert recorded.phase == "Succeeded"
    for task in ("train", "validate", "optimize", "verify", "serve"):
        entry = recorded.tasks[task]
        assert entry.phase == "Succeeded"
        assert entry.pod_name == f"pipe-{task}-0"
        assert entry.started_at is not None and entry.finished_at is not None
        assert entry.attempts[0].exit_code == 0


def test_failure_is_recorded_with_the_exit_code_and_retried():
    text = PIPELINE.replace(
        "  - {name: validate, container: {image: v}, dependencies: [train]}",
        "  - {name: validate, container: {image: v}, dependencies: [train],"
        " retryStrategy: {limit: 2, backoff: {duration: 0.1}}}",
    )
    api = InMemoryApi()
    _submit(api, text)
    codes = {"pipe-validate-0": 3, "pipe-validate-1": 4}
    with MemoryKubelet(api, outcome=lambda pod: codes.get(pod["metadata"]["name"], 0)):
        status = _run(api)
    assert status.phase == "Succeeded"
    attempts = status.tasks["validate"].attempts
    assert [(a.pod_name, a.phase, a.exit_code) for a in attempts] == [
        ("pipe-validate-0", "Failed", 3),
        ("pipe-validate-1", "Failed", 4),
        ("pipe-validate-2", "Succeeded", 0),
    ]
    assert "Error" in attempts[0].message


class Crash(Exception):
    """The controller process dies here."""


class CrashingApi:
    """Passes every call through, and dies on the n-th call that changes something."""

    MUTATING = ("create_pod", "patch_workflow_status", "delete_pod")

    def __init__(self, api: InMemoryApi, crash_at: int) -> None:
        self.api = api
        self.crash_at = crash_at
        self.calls = 0

    def __getattr__(self, name: str):
        target = getattr(self.api, name)
        if name not in self.MUTATING:
            return target

        def call(*args: Any, **kwargs: Any):
            self.calls += 1
            if self.calls == self.crash_at:
                if name == "create_pod" and self.calls % 2 == 0:
                    target(*args, **kwargs)  # died after the pod was made, before anything was recorded
                raise Crash(f"{name} #{self.calls}")
            return target(*args, **kwargs)

        return call


@pytest.mark.parametrize("crash_at", range(1, 15))
def test_controller_killed_anywhere_and_restarted_never_runs_a_step_twice(crash_at):
    api = InMemoryApi()
    _submit(api)
    restarts = 0
    with MemoryKubelet(api, run_seconds=0.02):
        crashing = CrashingApi(api, crash_at)
        try:
            status = WorkflowController(crashing, catalog=CATALOG, config=FAST).run(NS, "pipe")
        except Crash:
            restarts += 1
            status = _run(api)
    assert status.phase == "Succeeded"
    assert len(api.pod_creations) == len(set(api.pod_creations)) == 5, api.pod_creations
    assert all(name.endswith("-0") for name in api.pod_creations)
    assert status_from_dict(api.workflows[(NS, "pipe")]["status"]).phase == "Succeeded"
    if crash_at <= 8:  # every run makes at least 5 pods and 3 status writes
        assert restarts == 1


def test_restart_adopts_a_running_pod_and_keeps_finished_steps():
    api = InMemoryApi()
    _submit(api)
    hold = threading.Event()

    def outcome(pod):
        return 0 if pod["metadata"]["labels"]["gedge.io/task"] != "verify" or hold.is_set() else None

    with MemoryKubelet(api, outcome=outcome):
        stop = threading.Event()

        def watch_for_verify(workflow, status):
            if status.task("verify").phase == "Running":
                stop.set()

        first = _run(api, on_update=watch_for_verify, stop=stop)
        assert first.task("verify").phase == "Running"
        assert first.task("train").phase == "Succeeded"
        hold.set()
        second = _run(api)
    assert second.phase == "Succeeded"
    assert api.pod_creations.count("pipe-verify-0") == 1
    assert len(api.pod_creations) == 5


def test_pod_deleted_under_a_running_step_is_errored_and_retried_on_error():
    text = """
metadata: {name: lost}
spec:
  tasks:
  - {name: long, container: {image: x}, retryStrategy: {limit: 1, retryPolicy: OnError}}
"""
    api = InMemoryApi()
    _submit(api, text)
    deleted = threading.Event()

    def outcome(pod):
        if pod["metadata"]["name"] == "lost-long-0":
            if not deleted.is_set():
                deleted.set()
                api.delete_pod(NS, "lost-long-0")
            return None
        return 0

    with MemoryKubelet(api, outcome=outcome):
        status = _run(api, "lost")
    attempts = status.tasks["long"].attempts
    assert [a.phase for a in attempts] == ["Errored", "Succeeded"]
    assert "pod lost-long-0 is gone" in attempts[0].message


def test_api_refusing_a_pod_errors_that_step_with_the_servers_reason():
    api = InMemoryApi()
    _submit(api)
    api.refuse_pod = lambda pod: (
        'pods "x" is forbidden: exceeded quota' if "optimize" in pod["metadata"]["name"] else None
    )
    with MemoryKubelet(api):
        status = _run(api)
    assert status.tasks["optimize"].phase == "Errored"
    assert "exceeded quota" in status.tasks["optimize"].message
    assert status.tasks["verify"].phase == "Omitted"
    assert status.phase == "Failed"


def test_runtime_that_does_not_compose_fails_the_workflow_before_any_pod():
    api = InMemoryApi()
    _submit(api, PIPELINE.replace("cuda-11.2,cudnn-8.2.1,tf2-py38", "cuda-12.2,cudnn-8.2.1"))
    status = _run(api)
    assert status.phase == "Failed"
    assert "task train: cudnn-8.2.1 requires cuda>=11.0,<12, but the runtime has cuda-12.2" in status.message
    assert api.pod_creations == []
    assert api.workflows[(NS, "pipe")]["status"]["phase"] == "Failed"


def test_invalid_workflow_in_the_cluster_is_marked_failed_with_the_reason():
    api = InMemoryApi()
    _submit(api, PIPELINE.replace("dependencies: [verify]", "dependencies: [ghost]"))
    status = _run(api)
    assert status.phase == "Failed"
    assert "depends on 'ghost'" in api.workflows[(NS, "pipe")]["status"]["message"]


def test_watch_expiry_relists_and_the_run_goes_on():
    api = InMemoryApi()
    _submit(api)
    expired = threading.Event()

    def outcome(pod):
        if not expired.is_set():
            expired.set()
            api.expire_watches()
        return 0

    with MemoryKubelet(api, outcome=outcome):
        status = _run(api)
    assert expired.is_set()
    assert status.phase == "Succeeded"
    assert len(api.pod_creations) == 5


def test_deleting_the_workflow_stops_the_controller_and_its_pods_go():
    api = InMemoryApi()
    _submit(api)

    def outcome(pod):
        if pod["metadata"]["labels"]["gedge.io/task"] == "validate":
            if (NS, "pipe") in api.workflows:
                api.delete_workflow(NS, "pipe")
            return None
        return 0

    with MemoryKubelet(api, outcome=outcome):
        status = _run(api)
    assert status.message == "workflow deleted"
    assert api.pods == {}


def test_pod_observation_reads_kubelet_shaped_status():
    pod = {
        "metadata": {"name": "w-a-1", "labels": {"gedge.io/task": "a", "gedge.io/attempt": "1"}},
        "spec": {"nodeName": "edge-1"},
        "status": {
            "phase": "Failed",
            "startTime": "2026-01-01T00:00:00Z",
            "containerStatuses": [
                {
                    "name": "main",
                    "state": {
                        "terminated": {
                            "exitCode": 137,
                            "reason": "OOMKilled",
                            "finishedAt": "2026-01-01T00:01:00Z",
                        }
                    },
                }
            ],
        },
    }
    seen = pod_observation(pod)
    assert (seen.task, seen.attempt, seen.phase, seen.exit_code, seen.reason, seen.node) == (
        "a",
        1,
        "Failed",
        137,
        "OOMKilled",
        "edge-1",
    )
    assert seen.finished_at.minute == 1
    unschedulable = {
        "metadata": {"name": "w-a-0", "labels": {"gedge.io/task": "a", "gedge.io/attempt": "0"}},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "message": "0/3 nodes are available: driver too old",
                }
            ],
        },
    }
    assert pod_observation(unschedulable).message == "0/3 nodes are available: driver too old"
    assert pod_observation({"metadata": {"name": "other", "labels": {}}}) is None


def test_pod_quantities_are_strings_and_a_client_side_refusal_is_an_api_error():
    from kubernetes import client as k8s

    from scheduler_extender.workflow.kube import ApiError, KubernetesWorkflowApi
    from scheduler_extender.workflow.podspec import build_pod
    from scheduler_extender.workflow.spec import parse_workflow

    workflow = parse_workflow(yaml.safe_load(PIPELINE), namespace=NS)
    pod = build_pod(workflow, workflow.spec.task("train"), 0, catalog=CATALOG)
    assert pod["spec"]["containers"][0]["resources"] == {"limits": {"gedge.io/gpu": "1"}}
    configuration = k8s.Configuration()
    configuration.host = "http://127.0.0.1:9"
    api = KubernetesWorkflowApi(k8s.ApiClient(configuration))
    pod["spec"]["containers"][0]["resources"]["limits"]["gedge.io/gpu"] = 1
    with pytest.raises(ApiError) as refused:
        api.create_pod(NS, pod)
    assert refused.value.status == 422 and "gedge.io/gpu" in refused.value.message


def test_long_messages_are_clipped_in_the_stored_status():
    from scheduler_extender.workflow import dag
    from scheduler_extender.workflow.status import MAX_MESSAGE, status_from_dict, status_to_dict

    noisy = dag.Attempt(0, "w-a-0", "Errored", message="x" * 100_000)
    status = dag.WorkflowStatus(
        phase="Failed", message="y" * 100_000, tasks={"a": dag.TaskStatus("Errored", (noisy,))}
    )
    stored = status_to_dict(status)
    assert len(stored["tasks"]["a"]["attempts"][0]["message"]) == MAX_MESSAGE
    assert stored["message"].endswith("...") and len(stored["message"]) == 4 * MAX_MESSAGE
    assert status_from_dict(stored).tasks["a"].attempts[0].phase == "Errored"
