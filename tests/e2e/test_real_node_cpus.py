"""Exclusive CPUs on a real node: a pinned pod placed by kube-scheduler + the extender runs on exactly
its CPUs from its first instruction (NRI), other containers run off them, the reserved CPU is never
pinned, deleting the pod gives its CPUs back, and uninstalling gives every CPU back.

The agent is `gedge-agent serve` over this machine's own sysfs and cgroups (cgroup v1 cpuset; the
real kubelet's cgroupfs driver, detected), an NRI plugin of the node's containerd, with CPU 0
reserved for the system. What a container may run on is read from its own process
(/proc/<pid>/status) on the host, found through the container's cgroup that kubelet made.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from gedge_model import ANNOTATION, Allocation
from tests.e2e.cluster_objects import wait_for
from tests.e2e.edge_cluster import AGENT_ACCOUNT, EdgeCluster, token_kubeconfig
from tests.e2e.real_node import (
    CGROUP_MOUNT,
    DEVICE_PLUGIN_DIR,
    HostAgent,
    RealNode,
    describe_pod,
    report,
    running,
    workload_pod,
)

PINNING = {"gedge.io/cpu-pinning": "true"}
RESERVED = {0}
FIRST_CPUS = "echo FIRST=$(grep Cpus_allowed_list /proc/self/status | cut -f2); echo END; exec sleep 3600"
"""A container's first instruction: print the CPUs it may run on."""
GUARANTEED_ONE_CPU = {"cpu": "1", "memory": "32Mi"}


def parse_cpus(text: str) -> set[int]:
    """'0-2,5' -> {0, 1, 2, 5}."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if part:
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def container_cpus(pod: k8s.V1Pod) -> set[int]:
    """The CPUs the pod's main container process may run on, read from /proc on this host."""
    status = pod.status.container_statuses[0]
    container_id = status.container_id.rpartition("://")[2]
    matches = list((CGROUP_MOUNT / "cpuset" / "kubepods").glob(f"**/pod{pod.metadata.uid}/{container_id}"))
    if not matches:
        return set()
    pids = (matches[0] / "cgroup.procs").read_text().split()
    if not pids:
        return set()
    for line in Path(f"/proc/{pids[0]}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return parse_cpus(line.split(":", 1)[1])
    return set()


def online_cpus() -> set[int]:
    return parse_cpus(Path("/sys/devices/system/cpu/online").read_text())


@pytest.fixture(scope="module")
def cpu_agent(
    real_node: RealNode,
    edge_cluster: EdgeCluster,
    kube_api: k8s.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[HostAgent]:
    if len(online_cpus()) < 2:
        pytest.skip("pinning needs at least 2 online CPUs")
    workdir = tmp_path_factory.mktemp("cpu-agent")
    kubeconfig = token_kubeconfig(edge_cluster.plane, kube_api, AGENT_ACCOUNT, workdir / "agent.kubeconfig")
    argv = [
        str(Path(sys.executable).parent / "gedge-agent"),
        "serve",
        "--root=/",
        f"--reserved-cpus={','.join(map(str, sorted(RESERVED)))}",
    ]
    agent = HostAgent(
        real_node, [*argv, *edge_cluster.agent_tls_flags(real_node.name, real_node.ip)], kubeconfig, workdir
    ).start()
    try:
        agent.process.wait_until(
            lambda: edge_cluster.extender_judges([real_node.name]), 60, "was reported to the extender"
        )
        yield agent
    finally:
        agent.stop()


def test_pinned_pod_runs_on_its_cpus_and_gives_them_back(
    cpu_agent: HostAgent, edge_cluster: EdgeCluster, kube_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api)
    node = cpu_agent.node
    core.create_namespaced_pod(namespace, workload_pod("neighbour", "exec sleep 3600", node_name=node.name))
    neighbour = running(core, namespace, "neighbour")
    assert container_cpus(neighbour) == online_cpus()

    pinned = workload_pod(
        "pinned",
        FIRST_CPUS,
        scheduler=edge_cluster.scheduler_name,
        requests=GUARANTEED_ONE_CPU,
        limits=GUARANTEED_ONE_CPU,
        annotations=PINNING,
        on_node=node.name,
    )
    core.create_namespaced_pod(namespace, pinned)
    pod = running(core, namespace, "pinned")
    assert pod.spec.node_name == node.name
    allocation = Allocation.from_annotation(pod.metadata.annotations[ANNOTATION])
    mine = set(allocation.cpus)
    assert len(mine) == 1 and mine <= online_cpus() - RESERVED
    assert parse_cpus(report(core, namespace, "pinned")["FIRST"]) == mine
    wait_for(
        lambda: container_cpus(core.read_namespaced_pod("pinned", namespace)),
        lambda c: c == mine,
        describe=lambda c: f"pinned on {c}, allocated {mine}; {describe_pod(core, namespace, 'pinned')}",
    )
    wait_for(
        lambda: container_cpus(neighbour),
        lambda c: c == online_cpus() - mine,
        describe=lambda c: f"neighbour on {c}, pinned pod holds {mine}",
    )

    core.delete_namespaced_pod("pinned", namespace)
    wait_for(
        lambda: container_cpus(neighbour),
        lambda c: c == online_cpus(),
        describe=lambda c: f"neighbour on {c} after the pinned pod went",
    )


def test_uninstall_gives_every_cpu_back(
    cpu_agent: HostAgent, edge_cluster: EdgeCluster, kube_api: k8s.ApiClient, namespace: str
) -> None:
    """The agent goes for good (its DaemonSet deleted): `gedge-agent uninstall` releases what it
    pinned, so every container runs on every CPU again, and removes its checkpoint and sockets."""
    core = k8s.CoreV1Api(kube_api)
    node = cpu_agent.node
    core.create_namespaced_pod(namespace, workload_pod("neighbour", "exec sleep 3600", node_name=node.name))
    pinned = workload_pod(
        "pinned",
        "exec sleep 3600",
        scheduler=edge_cluster.scheduler_name,
        requests=GUARANTEED_ONE_CPU,
        limits=GUARANTEED_ONE_CPU,
        annotations=PINNING,
        on_node=node.name,
    )
    core.create_namespaced_pod(namespace, pinned)
    pod = running(core, namespace, "pinned")
    neighbour = running(core, namespace, "neighbour")
    mine = set(Allocation.from_annotation(pod.metadata.annotations[ANNOTATION]).cpus)
    wait_for(lambda: container_cpus(neighbour), lambda c: c == online_cpus() - mine)
    checkpoint = cpu_agent.workdir / "checkpoint.json"
    assert checkpoint.exists()

    cpu_agent.stop()
    assert container_cpus(pod) == mine, "stopping the agent alone keeps pods pinned (an upgrade)"
    uninstall = subprocess.run(
        [
            str(Path(sys.executable).parent / "gedge-agent"),
            "uninstall",
            f"--checkpoint={checkpoint}",
            f"--device-plugin-dir={DEVICE_PLUGIN_DIR}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert uninstall.returncode == 0, uninstall.stderr
    assert container_cpus(pod) == online_cpus()
    assert container_cpus(neighbour) == online_cpus()
    assert not checkpoint.exists()
    assert not list(DEVICE_PLUGIN_DIR.glob("gedge-*.sock"))
