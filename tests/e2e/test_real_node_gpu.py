"""Our device plugins on a real kubelet: GPU pods placed by kube-scheduler + the extender run as real
containers that see exactly their GPUs; a kubelet restart keeps them; a pod the node cannot serve
gets a clear Event.

The node is this machine (tests/e2e/real_node.py); its GPUs are a synthetic H100 box (8 GPUs in
switch pairs) answered by the NVML stand-in, served by a host-process `gedge-agent` whose device
plugins register with the real kubelet. The device nodes kubelet hands the runtime (/dev/nvidia*)
are /dev/null-like stand-ins on this GPU-less machine.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from agent.podresources import PodResourcesClient
from gedge_model import ANNOTATION, Allocation
from gedge_model.allocation import RESOURCE_GPU
from tests.discovery.gpu_box import Box
from tests.e2e.boxes import box_topology, gpu_box, write_driver_view
from tests.e2e.cluster_objects import wait_for
from tests.e2e.edge_cluster import AGENT_ACCOUNT, EdgeCluster, advertised_resources, token_kubeconfig
from tests.e2e.real_node import (
    HostAgent,
    RealNode,
    describe_pod,
    gpu_device_nodes,
    report,
    running,
    workload_pod,
)

BOX = "H100"
POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
REPORT = 'echo "VISIBLE=$NVIDIA_VISIBLE_DEVICES"; echo "DEVICES=$(cd /dev && echo nvidia[0-9]*)"; echo END; '
"""What a GPU pod prints: its GPU environment and the GPU device nodes it was given."""
SLEEP = "exec sleep 3600"


@dataclass
class GpuNode:
    node: RealNode
    agent: HostAgent
    box: Box
    minors: dict[str, int]
    uuids: dict[str, str]
    """GPU PCI address -> GPU UUID, as NVML reports them."""


@pytest.fixture(scope="module")
def gpu_node(
    real_node: RealNode,
    edge_cluster: EdgeCluster,
    kube_api: k8s.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GpuNode]:
    workdir = tmp_path_factory.mktemp("gpu-agent")
    box = gpu_box(workdir / "sysfs", BOX)
    minors = write_driver_view(box)
    topology = box_topology(box, real_node.name)
    kubeconfig = token_kubeconfig(edge_cluster.plane, kube_api, AGENT_ACCOUNT, workdir / "agent.kubeconfig")
    argv = [sys.executable, "-m", "tests.e2e.gpu_agent", f"--model={BOX}", f"--root={box.root}", "--"]
    # Report only: the box's CPUs are not this machine's; devices go through kubelet.
    argv.append("--no-apply")
    with gpu_device_nodes(sorted(minors.values())):
        agent = HostAgent(
            real_node,
            [*argv, *edge_cluster.agent_tls_flags(real_node.name, real_node.ip)],
            kubeconfig,
            workdir,
        ).start()
        try:
            expected = {k: str(v) for k, v in advertised_resources(topology).items()}
            # report only: nothing would configure a VF, so none is offered
            expected.pop("gedge.io/sriov-vf", None)
            agent.process.wait_until(lambda: agent.allocatable() == expected, 120, f"advertised {expected}")
            agent.process.wait_until(
                lambda: edge_cluster.extender_judges([real_node.name]), 60, "was reported to the extender"
            )
            yield GpuNode(real_node, agent, box, minors, {g.pci_address: g.uuid for g in topology.gpus})
        finally:
            agent.stop()


def gpu_pod(name: str, count: int, scheduler: str | None, node: str) -> k8s.V1Pod:
    return workload_pod(
        name,
        REPORT + SLEEP,
        scheduler=scheduler,
        on_node=node,
        requests={RESOURCE_GPU: str(count), "cpu": "50m", "memory": "16Mi"},
    )


def granted_gpus(pod: k8s.V1Pod) -> set[str]:
    allocation = Allocation.from_annotation((pod.metadata.annotations or {})[ANNOTATION])
    return {g.pci_address for g in allocation.devices if g.resource == RESOURCE_GPU and g.pci_address}


def assert_sees_exactly(gpus: GpuNode, seen: dict[str, str], granted: set[str]) -> None:
    assert len(granted) == 2
    assert set(seen["VISIBLE"].split(",")) == {gpus.uuids[a] for a in granted}
    assert set(seen["DEVICES"].split()) == {f"nvidia{gpus.minors[a]}" for a in granted}


def test_node_shows_the_agents_resources(gpu_node: GpuNode) -> None:
    node = gpu_node.node.node()
    assert node.status.allocatable[RESOURCE_GPU] == str(len(gpu_node.uuids)) == "8"
    assert node.status.capacity[RESOURCE_GPU] == "8"
    assert node.status.node_info.kubelet_version == "v1.37.2"


def test_gpu_pod_runs_with_exactly_its_allocated_gpus(
    gpu_node: GpuNode, edge_cluster: EdgeCluster, kube_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api)
    scheduler = edge_cluster.scheduler_name
    core.create_namespaced_pod(namespace, gpu_pod("trainer", 2, scheduler, gpu_node.node.name))
    pod = running(core, namespace, "trainer")
    assert pod.spec.node_name == gpu_node.node.name
    assert_sees_exactly(gpu_node, report(core, namespace, "trainer"), granted_gpus(pod))
    # What kubelet itself assigned (its PodResources API) is the allocation's devices.
    allocation = Allocation.from_annotation(pod.metadata.annotations[ANNOTATION])
    client = PodResourcesClient(POD_RESOURCES_SOCKET)
    try:
        assigned = client.get(namespace, "trainer")
    finally:
        client.close()
    assert assigned is not None
    assert assigned.ids(RESOURCE_GPU) == {g.id for g in allocation.devices if g.resource == RESOURCE_GPU}


def test_kubelet_restart_keeps_pods_devices_and_plugins(
    gpu_node: GpuNode, edge_cluster: EdgeCluster, kube_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api)
    scheduler = edge_cluster.scheduler_name
    core.create_namespaced_pod(namespace, gpu_pod("before", 2, scheduler, gpu_node.node.name))
    before = running(core, namespace, "before")
    seen_before = report(core, namespace, "before")
    node = gpu_node.node

    node.stop_kubelet()
    node.start_kubelet()
    node.wait_ready()
    # The plugins re-register with the new kubelet, which advertises all 8 GPUs again.
    gpu_node.agent.process.wait_until(
        lambda: node.registrations(RESOURCE_GPU) >= 1, 120, "re-registered with the new kubelet"
    )
    wait_for(
        lambda: node.node().status.allocatable.get(RESOURCE_GPU),
        lambda count: count == "8",
        describe=lambda count: f"{RESOURCE_GPU} allocatable {count} after the kubelet restart",
    )
    after = core.read_namespaced_pod("before", namespace)
    assert after.status.phase == "Running"
    assert after.status.container_statuses[0].restart_count == 0
    assert report(core, namespace, "before") == seen_before

    # The restarted kubelet still counts the first pod's GPUs: a second pod gets two others.
    scheduler = edge_cluster.scheduler_name
    core.create_namespaced_pod(namespace, gpu_pod("after", 2, scheduler, gpu_node.node.name))
    second = running(core, namespace, "after")
    assert_sees_exactly(gpu_node, report(core, namespace, "after"), granted_gpus(second))
    assert not granted_gpus(second) & granted_gpus(before)


def test_pod_the_node_cannot_serve_fails_with_a_clear_event(
    gpu_node: GpuNode, kube_api: k8s.ApiClient, namespace: str
) -> None:
    """Bound straight to the node (no extender, so no allocation): kubelet's Allocate call is refused
    with a reason, and kubelet fails the pod with that reason as an Event instead of running it."""
    core = k8s.CoreV1Api(kube_api)
    pod = gpu_pod("unplaced", 2, None, gpu_node.node.name)
    pod.spec.node_name = gpu_node.node.name
    core.create_namespaced_pod(namespace, pod)
    failed = wait_for(
        lambda: core.read_namespaced_pod("unplaced", namespace),
        lambda p: p.status.phase == "Failed",
        timeout=120,
        describe=lambda p: describe_pod(core, namespace, "unplaced"),
        hopeless=lambda p: p.status.phase == "Running",
    )
    assert failed.status.reason == "UnexpectedAdmissionError"
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=unplaced").items
    messages = [e.message for e in events if e.type == "Warning"]
    assert any(RESOURCE_GPU in m and "allocation" in m.lower() for m in messages), messages
    with pytest.raises(ApiException):
        core.read_namespaced_pod_log("unplaced", namespace)


def test_two_pods_racing_on_the_node_each_get_their_own_gpus(
    gpu_node: GpuNode, edge_cluster: EdgeCluster, kube_api: k8s.ApiClient, namespace: str
) -> None:
    """Two GPU pods created at once, bound by the extender and admitted by the real kubelet in its own
    order: Allocate names no pod, the agent tells them apart by the devices each allocation holds, so
    each container sees exactly its own grant and kubelet records exactly that for it."""
    core = k8s.CoreV1Api(kube_api)
    scheduler = edge_cluster.scheduler_name
    names = ("racer-a", "racer-b")
    with ThreadPoolExecutor(len(names)) as pool:
        list(
            pool.map(
                lambda name: core.create_namespaced_pod(
                    namespace, gpu_pod(name, 2, scheduler, gpu_node.node.name)
                ),
                names,
            )
        )
    pods = {name: running(core, namespace, name) for name in names}
    grants = {name: granted_gpus(pod) for name, pod in pods.items()}
    assert not grants["racer-a"] & grants["racer-b"]
    client = PodResourcesClient(POD_RESOURCES_SOCKET)
    try:
        for name, pod in pods.items():
            assert_sees_exactly(gpu_node, report(core, namespace, name), grants[name])
            allocation = Allocation.from_annotation(pod.metadata.annotations[ANNOTATION])
            assigned = client.get(namespace, name)
            assert assigned is not None
            assert assigned.ids(RESOURCE_GPU) == {
                g.id for g in allocation.devices if g.resource == RESOURCE_GPU
            }
    finally:
        client.close()
