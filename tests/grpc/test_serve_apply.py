"""`gedge-agent serve` applies through ApplyManager: Apply with the pod's runtime pins real v1 cpusets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import pytest

from agent.apply import ApplyManager, CgroupDriver, CgroupVersion, QosClass, StaticPodResolver
from agent.config import AgentConfig
from agent.service.server import AgentRuntime
from gedge_model import Allocation, DeviceGrant
from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc
from tests.apply.helpers import (
    build_pod_cgroups,
    new_container_id,
    new_pod_uid,
    start_in_cgroup,
    stop,
)
from tests.grpc.agents import AgentHost, applying_args, spawn_agent
from tests.support.synthetic import edge_box

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")

NODE = "edge-serve-apply"


def test_reserve_attach_and_release_through_the_daemon(cgroup_root: Path, tmp_path: Path) -> None:
    """Apply without a runtime reserves (the binder cannot know where the pod runs); the Apply that
    brings the runtime attaches; one whose containers have no cgroups fails and keeps the reservation."""
    uid, container = new_pod_uid(), new_container_id()
    other_uid = new_pod_uid()
    (other_path,) = build_pod_cgroups(
        cgroup_root, CgroupDriver.CGROUPFS, QosClass.BURSTABLE, other_uid, [new_container_id()]
    )
    other = start_in_cgroup(other_path)
    processes = [other]
    agent = spawn_agent(
        "/",
        NODE,
        *applying_args(cgroup_root, tmp_path),
        metrics_listen="",
    )
    try:
        client = agent_pb2_grpc.NodeAgentStub(grpc.insecure_channel(f"127.0.0.1:{agent.port}"))
        allocation = Allocation(uid, "ml", "trainer", NODE, cpus=(1,))
        plain = agent_pb2.ApplyRequest(allocation_json=allocation.to_annotation())

        reserved = client.Apply(plain, timeout=20)
        assert reserved.reserved and reserved.generation == 2
        assert os.sched_getaffinity(other.pid) == {0}
        listed = client.ListAllocations(agent_pb2.ListAllocationsRequest(), timeout=10)
        assert [a["pod_uid"] for a in json.loads(listed.allocations_json)] == [uid]
        assert list(listed.reserved_pod_uids) == [uid]
        state = client.GetNodeState(agent_pb2.GetNodeStateRequest(), timeout=10)
        assert list(state.state.reserved_pod_uids) == [uid]
        saved = json.loads((tmp_path / "checkpoint.json").read_text())
        assert [(p["allocation"]["pod_uid"], p["reserved"]) for p in saved["pods"]] == [(uid, True)]
        assert client.Apply(plain, timeout=20) == reserved, "a repeated reserve changes nothing"

        bad = agent_pb2.PodRuntime(qos_class="Gold", container_ids=[container])
        with pytest.raises(grpc.RpcError) as info:
            client.Apply(
                agent_pb2.ApplyRequest(allocation_json=allocation.to_annotation(), runtime=bad), timeout=20
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'Gold'" in info.value.details()

        runtime = agent_pb2.PodRuntime(qos_class="Guaranteed", container_ids=[f"containerd://{container}"])
        request = agent_pb2.ApplyRequest(allocation_json=allocation.to_annotation(), runtime=runtime)
        with pytest.raises(grpc.RpcError) as info:
            client.Apply(request, timeout=20)
        assert info.value.code() == grpc.StatusCode.ABORTED
        assert f"pod {uid}: no cgroup for container {container}" in info.value.details()
        listed = client.ListAllocations(agent_pb2.ListAllocationsRequest(), timeout=10)
        assert list(listed.reserved_pod_uids) == [uid], "the failed attach kept the reservation"

        (path,) = build_pod_cgroups(cgroup_root, CgroupDriver.CGROUPFS, QosClass.GUARANTEED, uid, [container])
        process = start_in_cgroup(path)
        processes.append(process)
        attached = client.Apply(request, timeout=20)
        assert not attached.reserved and attached.generation == 3
        assert os.sched_getaffinity(process.pid) == {1}
        assert os.sched_getaffinity(other.pid) == {0}
        listed = client.ListAllocations(agent_pb2.ListAllocationsRequest(), timeout=10)
        assert [a["pod_uid"] for a in json.loads(listed.allocations_json)] == [uid]
        assert list(listed.reserved_pod_uids) == []

        assert client.Release(agent_pb2.ReleaseRequest(pod_uid=uid), timeout=20).generation == 4
        assert os.sched_getaffinity(process.pid) == {0, 1}
        assert os.sched_getaffinity(other.pid) == {0, 1}
        assert agent.terminate() == 0
    finally:
        agent.kill()
        for proc in processes:
            stop(proc)


def test_restarted_daemon_keeps_a_reservation_until_release(cgroup_root: Path, tmp_path: Path) -> None:
    """Without Kubernetes there is no pod list to reconcile against: the recorded pods are live."""
    other_uid = new_pod_uid()
    (other_path,) = build_pod_cgroups(
        cgroup_root, CgroupDriver.CGROUPFS, QosClass.BURSTABLE, other_uid, [new_container_id()]
    )
    other = start_in_cgroup(other_path)
    args = ("--cgroup-root", str(cgroup_root), "--cgroup-driver", "cgroupfs")
    args += ("--checkpoint", str(tmp_path / "checkpoint.json"), "--no-netlink")
    uid = new_pod_uid()
    allocation = Allocation(uid, "ml", "trainer", NODE, cpus=(0,))
    agent = spawn_agent("/", NODE, *args, metrics_listen="")
    try:
        client = agent_pb2_grpc.NodeAgentStub(grpc.insecure_channel(f"127.0.0.1:{agent.port}"))
        request = agent_pb2.ApplyRequest(allocation_json=allocation.to_annotation())
        assert client.Apply(request, timeout=20).reserved
        assert agent.terminate() == 0
        agent = spawn_agent("/", NODE, *args, metrics_listen="")
        client = agent_pb2_grpc.NodeAgentStub(grpc.insecure_channel(f"127.0.0.1:{agent.port}"))
        listed = client.ListAllocations(agent_pb2.ListAllocationsRequest(), timeout=10)
        assert list(listed.reserved_pod_uids) == [uid]
        assert os.sched_getaffinity(other.pid) == {1}
        client.Release(agent_pb2.ReleaseRequest(pod_uid=uid), timeout=20)
        assert os.sched_getaffinity(other.pid) == {0, 1}
        assert agent.terminate() == 0
    finally:
        agent.kill()
        stop(other)


def test_reserved_devices_count_as_used_in_the_reported_state(
    agent_host: AgentHost, cgroup_root: Path, tmp_path: Path
) -> None:
    """A reservation's devices are held in the node state and the inventory, and refused to others."""
    build_pod_cgroups(cgroup_root, CgroupDriver.CGROUPFS, QosClass.BURSTABLE, new_pod_uid(), [])
    pod_runtimes = StaticPodResolver()
    manager = ApplyManager(
        cgroup_root=cgroup_root,
        cgroup_driver=CgroupDriver.CGROUPFS,
        cgroup_version=CgroupVersion.V1,
        checkpoint_path=tmp_path / "checkpoint.json",
        resolver=pod_runtimes,
        reserve_unresolved=True,
    )
    node = "edge-reserve"
    config = AgentConfig(
        root="/",
        node_name=node,
        listen="127.0.0.1:0",
        metrics_listen="",
        netlink=False,
        shutdown_grace_s=0.5,
        insecure=True,
    )
    runtime = AgentRuntime(
        config=config.validate(),
        applier=manager,
        discover=lambda: edge_box(node, timeslice_replicas=1),
        pod_runtimes=pod_runtimes,
        reserved_pods=manager.reserved_pod_uids,
    )
    agent_host.call(runtime.start())
    channel = grpc.insecure_channel(f"127.0.0.1:{runtime.port}")
    try:
        client = agent_pb2_grpc.NodeAgentStub(channel)
        uid = new_pod_uid()
        gpu = DeviceGrant("gedge.io/gpu", f"GPU-{node}-00")
        allocation = Allocation(uid, "ml", "trainer", node, devices=(gpu,))
        reply = client.Apply(agent_pb2.ApplyRequest(allocation_json=allocation.to_annotation()), timeout=20)
        assert reply.reserved
        state = client.GetNodeState(agent_pb2.GetNodeStateRequest(), timeout=10)
        assert list(state.state.reserved_pod_uids) == [uid]
        assert [(d.id, d.pod_uid) for d in state.devices if d.pod_uid] == [(gpu.id, uid)]

        rival = Allocation(new_pod_uid(), "ml", "rival", node, devices=(gpu,))
        with pytest.raises(grpc.RpcError) as info:
            client.Apply(agent_pb2.ApplyRequest(allocation_json=rival.to_annotation()), timeout=20)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"device gedge.io/gpu={gpu.id} is held by pod ml/trainer" in info.value.details()

        client.Release(agent_pb2.ReleaseRequest(pod_uid=uid), timeout=20)
        state = client.GetNodeState(agent_pb2.GetNodeStateRequest(), timeout=10)
        assert list(state.state.reserved_pod_uids) == [] and not [d for d in state.devices if d.pod_uid]
    finally:
        channel.close()
        agent_host.stop_agent(runtime)


def test_daemon_is_not_ready_while_it_cannot_drive_cgroups_and_becomes_ready_with_kubelet(
    cgroup_root: Path, tmp_path: Path
) -> None:
    """No kubepods tree and no kubelet config: alive but not ready (gRPC readiness health and the
    probe's /readyz on the metrics port, 503 with the reason), one error line naming the cause (no
    traceback); the tree appearing (kubelet started) makes it ready with the driver it shows."""
    import urllib.error
    import urllib.request

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from agent.service.server import READINESS_SERVICE
    from tests.apply.helpers import make_v1_cgroup

    agent = spawn_agent(
        "/",
        NODE,
        "--cgroup-root",
        str(cgroup_root),
        "--kubelet-config",
        str(tmp_path / "absent-kubelet-config.yaml"),
        "--checkpoint",
        str(tmp_path / "checkpoint.json"),
        "--no-netlink",
        env={"GEDGE_AGENT_READINESS_INTERVAL_S": "0.1"},
    )

    def probe(path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{agent.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    try:
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{agent.port}"))
        ask = health_pb2.HealthCheckRequest
        assert health.Check(ask(service=""), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        statuses = health.Watch(ask(service=READINESS_SERVICE), timeout=60)
        assert next(statuses).status == health_pb2.HealthCheckResponse.NOT_SERVING
        code, body = probe("/readyz")
        assert code == 503 and body.startswith(
            "apply: CgroupDriverUnknown: kubelet's cgroup driver is unknown"
        )
        assert probe("/healthz") == (200, "ok\n")
        make_v1_cgroup(cgroup_root / "kubepods")
        assert next(statuses).status == health_pb2.HealthCheckResponse.SERVING
        assert probe("/readyz") == (200, "ok\n")
        code, metrics = probe("/metrics")
        assert code == 200 and "gedge_agent_state_generation" in metrics
        statuses.cancel()
        assert agent.terminate(timeout=15) == 0
    finally:
        agent.kill()
    records = [json.loads(line) for line in agent.log_lines if line.startswith("{")]
    blocked = [r for r in records if r["event"] == "cannot apply allocations on this node"]
    assert len(blocked) == 1 and blocked[0]["reason"] == "CgroupDriverUnknown"
    assert "no kubepods.slice or kubepods cgroup under" in blocked[0]["error"]
    ready = [r for r in records if r["event"] == "cgroups ready"]
    assert len(ready) == 1 and ready[0]["driver"] == "cgroupfs"
    assert not any("Traceback" in line for line in agent.log_lines)
