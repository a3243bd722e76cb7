"""`gedge-agent serve --kubeconfig`: the pod watch applies a bound pod's allocation onto real cpusets.

A real kube-apiserver (the e2e control plane) holds the pod; no kubelet runs, so the
test writes the pod's status as kubelet would, after making its cgroups and process.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from kubernetes import client as k8s

from agent.apply import CgroupDriver, QosClass
from agent.podwatch import core_api
from gedge_model import ANNOTATION, Allocation
from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc
from tests.apply.helpers import build_pod_cgroups, new_container_id, start_in_cgroup, stop
from tests.e2e.conftest import control_plane, e2e_bin_dir, kube_api, namespace  # noqa: F401
from tests.grpc.agents import AgentProcess, applying_args, spawn_agent

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs"),
]
MERGE = "application/merge-patch+json"


def eventually(check: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("not reached in time")
        time.sleep(0.1)


def kube_agent(control_plane, node: str, cgroup_root: Path, tmp_path: Path) -> AgentProcess:  # noqa: F811
    """`gedge-agent serve --kubeconfig` for `node`, applying onto the test cgroup tree."""
    return spawn_agent(
        "/",
        node,
        "--kubeconfig",
        str(control_plane.kubeconfig),
        "--device-plugin-dir",
        str(tmp_path / "device-plugins"),
        *applying_args(cgroup_root, tmp_path),
        metrics_listen="",
    )


def test_bound_pod_is_applied_and_released_by_the_daemon(
    control_plane,  # noqa: F811
    namespace: str,  # noqa: F811
    cgroup_root: Path,
    tmp_path: Path,
) -> None:
    core = core_api(str(control_plane.kubeconfig))
    assert core is not None
    node = f"edge-{uuid.uuid4().hex[:6]}"
    agent = kube_agent(control_plane, node, cgroup_root, tmp_path)
    process = None
    try:
        client = agent_pb2_grpc.NodeAgentStub(grpc.insecure_channel(f"127.0.0.1:{agent.port}"))

        def allocations() -> list[dict]:
            reply = client.ListAllocations(agent_pb2.ListAllocationsRequest(), timeout=10)
            return json.loads(reply.allocations_json)

        pod = core.create_namespaced_pod(
            namespace,
            k8s.V1Pod(
                metadata=k8s.V1ObjectMeta(name="trainer"),
                spec=k8s.V1PodSpec(
                    node_name=node,
                    # the grant is honoured only on a pod the extender's scheduler placed
                    scheduler_name="gedge-scheduler",
                    containers=[
                        k8s.V1Container(
                            name="main",
                            image="pause",
                            resources=k8s.V1ResourceRequirements(limits={"cpu": "1", "memory": "64Mi"}),
                        )
                    ],
                ),
            ),
        )
        uid = pod.metadata.uid
        assert pod.status.qos_class == "Guaranteed"
        allocation = Allocation(uid, namespace, "trainer", node, cpus=(1,))
        core.patch_namespaced_pod(
            "trainer",
            namespace,
            {"metadata": {"annotations": {ANNOTATION: allocation.to_annotation()}}},
            _content_type=MERGE,
        )
        container = new_container_id()
        (path,) = build_pod_cgroups(cgroup_root, CgroupDriver.CGROUPFS, QosClass.GUARANTEED, uid, [container])
        process = start_in_cgroup(path)
        status = {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "main",
                    "image": "pause",
                    "imageID": "",
                    "ready": True,
                    "restartCount": 0,
                    "containerID": f"containerd://{container}",
                    "state": {"running": {}},
                }
            ],
        }
        core.patch_namespaced_pod_status("trainer", namespace, {"status": status}, _content_type=MERGE)

        eventually(lambda: [a["pod_uid"] for a in allocations()] == [uid])
        assert os.sched_getaffinity(process.pid) == {1}
        with pytest.raises(grpc.RpcError) as info:
            client.Release(agent_pb2.ReleaseRequest(pod_uid=uid), timeout=10)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "applies from its pod watch" in info.value.details()

        core.delete_namespaced_pod("trainer", namespace, grace_period_seconds=0)
        eventually(lambda: allocations() == [])
        assert os.sched_getaffinity(process.pid) == {0, 1}
        assert agent.terminate() == 0
        events = [json.loads(line).get("event") for line in agent.log_lines if line.startswith("{")]
        assert "kubernetes parts started" in events
    finally:
        agent.kill()
        if process is not None:
            stop(process)
        core.api_client.close()


def test_node_says_whether_an_extender_holds_its_state(
    control_plane,  # noqa: F811
    cgroup_root: Path,
    tmp_path: Path,
) -> None:
    """GedgeTopologyReported turns True once a node-state watch got the full state and False when the
    last one ends, and when the agent stops: each flip is a Node event that makes kube-scheduler try
    the pods an extender refused again."""
    core = core_api(str(control_plane.kubeconfig))
    assert core is not None
    node = f"edge-{uuid.uuid4().hex[:6]}"
    core.create_node(k8s.V1Node(metadata=k8s.V1ObjectMeta(name=node)))

    def reported() -> tuple[str, str] | None:
        found = {c.type: c for c in core.read_node_status(node).status.conditions or ()}
        condition = found.get("GedgeTopologyReported")
        return None if condition is None else (condition.status, condition.reason)

    agent = kube_agent(control_plane, node, cgroup_root, tmp_path)
    try:
        eventually(lambda: reported() == ("False", "NoExtenderWatch"))
        client = agent_pb2_grpc.NodeAgentStub(grpc.insecure_channel(f"127.0.0.1:{agent.port}"))
        watch = client.WatchNodeState(agent_pb2.WatchNodeStateRequest(), timeout=120)
        assert next(watch).node_name == node
        eventually(lambda: reported() == ("True", "WatchedByExtender"))
        second = client.WatchNodeState(agent_pb2.WatchNodeStateRequest(), timeout=120)
        next(second)
        watch.cancel()
        second.cancel()
        eventually(lambda: reported() == ("False", "NoExtenderWatch"))
        again = client.WatchNodeState(agent_pb2.WatchNodeStateRequest(), timeout=120)
        next(again)
        eventually(lambda: reported() == ("True", "WatchedByExtender"))
        assert agent.terminate() == 0
        assert reported() == ("False", "NoExtenderWatch")
        again.cancel()
    finally:
        agent.kill()
        core.delete_node(node)
        core.api_client.close()
