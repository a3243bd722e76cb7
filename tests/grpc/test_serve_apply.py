"""`gedge-agent serve` applies through ApplyManager: Apply with the pod's runtime pins real v1 cpusets."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent.apply import CgroupDriver, QosClass
from gedge_model import Allocation
from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc
from tests.apply.helpers import (
    build_pod_cgroups,
    new_container_id,
    new_pod_uid,
    start_in_cgroup,
    stop,
    v1_sandbox,
)
from tests.grpc.agents import spawn_agent

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")

NODE = "edge-serve-apply"


@pytest.fixture
def cgroup_root() -> Iterator[Path]:
    with v1_sandbox("gtserve-") as top:
        yield top


def test_apply_and_release_through_the_daemon(cgroup_root: Path, tmp_path: Path) -> None:
    uid, container = new_pod_uid(), new_container_id()
    (path,) = build_pod_cgroups(cgroup_root, CgroupDriver.CGROUPFS, QosClass.GUARANTEED, uid, [container])
    process = start_in_cgroup(path)
    agent = spawn_agent(
        "/",
        NODE,
        "--cgroup-root",
        str(cgroup_root),
        "--cgroup-driver",
        "cgroupfs",
        "--checkpoint",
        str(tmp_path / "checkpoint.json"),
        "--no-netlink",
        metrics_listen="",
    )
    try:
        client = agent_pb2_grpc.NodeAgentStub(grpc.insecure_channel(f"127.0.0.1:{agent.port}"))
        allocation = Allocation(uid, "ml", "trainer", NODE, cpus=(1,))
        runtime = agent_pb2.PodRuntime(qos_class="Guaranteed", container_ids=[f"containerd://{container}"])

        with pytest.raises(grpc.RpcError) as info:
            client.Apply(agent_pb2.ApplyRequest(allocation_json=allocation.to_annotation()), timeout=20)
        assert info.value.code() == grpc.StatusCode.ABORTED
        assert "not running on this node" in info.value.details()

        bad = agent_pb2.PodRuntime(qos_class="Gold", container_ids=[container])
        with pytest.raises(grpc.RpcError) as info:
            client.Apply(
                agent_pb2.ApplyRequest(allocation_json=allocation.to_annotation(), runtime=bad), timeout=20
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'Gold'" in info.value.details()

        request = agent_pb2.ApplyRequest(allocation_json=allocation.to_annotation(), runtime=runtime)
        assert client.Apply(request, timeout=20).generation == 2
        assert os.sched_getaffinity(process.pid) == {1}
        saved = json.loads((tmp_path / "checkpoint.json").read_text())
        assert [p["allocation"]["pod_uid"] for p in saved["pods"]] == [uid]
        listed = client.ListAllocations(agent_pb2.ListAllocationsRequest(), timeout=10)
        assert [a["pod_uid"] for a in json.loads(listed.allocations_json)] == [uid]

        assert client.Release(agent_pb2.ReleaseRequest(pod_uid=uid), timeout=20).generation == 3
        assert os.sched_getaffinity(process.pid) == {0, 1}
        assert agent.terminate() == 0
    finally:
        agent.kill()
        stop(process)
