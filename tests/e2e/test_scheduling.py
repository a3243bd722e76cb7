"""The real kube-scheduler places gedge.io pods through our extender, and the extender binds them.

Node layouts (tests/e2e/boxes.py): on an H100 box GPU pair i shares a PCIe
switch with NIC i (RDMA mlx5_i); `split` has its GPUs on socket 0 and its only
RDMA NIC on socket 1; the snapshot nodes have no GPU.
"""

from __future__ import annotations

import itertools
import re

from kubernetes import client as k8s

from gedge_model import ANNOTATION, Allocation
from gedge_model.allocation import RESOURCE_GPU, RESOURCE_RDMA
from tests.e2e.cluster_objects import denied_by_rbac, pause_pod, scheduling_state, wait_for
from tests.e2e.edge_cluster import EdgeCluster

GPU_NODES = ("h100-a", "h100-b", "split")
TOPOLOGY_AWARE = {"gedge.io/topology-aware": "true"}


def allocation_of(pod: k8s.V1Pod) -> Allocation:
    return Allocation.from_annotation((pod.metadata.annotations or {})[ANNOTATION])


def bound(core: k8s.CoreV1Api, namespace: str, name: str, timeout: float = 90.0) -> k8s.V1Pod:
    """The pod once it is bound and carries its allocation."""
    return wait_for(
        lambda: core.read_namespaced_pod(name, namespace),
        lambda p: p.spec.node_name and ANNOTATION in (p.metadata.annotations or {}),
        timeout=timeout,
        describe=scheduling_state,
        hopeless=denied_by_rbac,
    )


def switch_pairs(cluster: EdgeCluster, node: str) -> list[tuple[set[str], str]]:
    """(GPU PCI addresses, NIC PCI address) of each PCIe switch on an H100 box, from its layout."""
    topology = cluster.nodes[node].topology
    gpus = sorted(g.pci_address for g in topology.gpus)
    nics = sorted(r.pci_address for r in topology.rdma_devices)
    return [({gpus[2 * i], gpus[2 * i + 1]}, nics[i]) for i in range(len(nics))]


def failed_scheduling_messages(core: k8s.CoreV1Api, namespace: str, pod: str) -> list[str]:
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod}").items
    return [e.message for e in events if e.reason == "FailedScheduling"]


def test_gpu_and_rdma_pod_is_bound_where_both_share_a_pcie_switch(
    edge_cluster: EdgeCluster, kube_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api)
    requests = {RESOURCE_GPU: "2", RESOURCE_RDMA: "1", "cpu": "1"}
    core.create_namespaced_pod(
        namespace,
        pause_pod(
            "trainer",
            scheduler=edge_cluster.scheduler_name,
            requests=requests,
            annotations={**TOPOLOGY_AWARE, "gedge.io/topology-policy": "same-switch"},
        ),
    )
    pod = bound(core, namespace, "trainer")
    assert pod.spec.node_name in ("h100-a", "h100-b")
    allocation = allocation_of(pod)
    assert (allocation.node, allocation.pod_uid, allocation.name) == (
        pod.spec.node_name,
        pod.metadata.uid,
        "trainer",
    )
    gpus = {d.pci_address for d in allocation.devices if d.resource == RESOURCE_GPU}
    nics = {d.pci_address for d in allocation.devices if d.resource == RESOURCE_RDMA}
    assert len(gpus) == 2 and len(nics) == 1
    assert (gpus, nics.pop()) in switch_pairs(edge_cluster, pod.spec.node_name)
    assert allocation.worst_level in ("PIX", "PXB")

    # Best-effort: the split box could serve it only across sockets, so an H100 box wins on distance.
    core.create_namespaced_pod(
        namespace,
        pause_pod(
            "one-gpu-one-nic",
            scheduler=edge_cluster.scheduler_name,
            requests={RESOURCE_GPU: "1", RESOURCE_RDMA: "1"},
            annotations={**TOPOLOGY_AWARE, "gedge.io/topology-policy": "best-effort"},
        ),
    )
    second = bound(core, namespace, "one-gpu-one-nic")
    assert second.spec.node_name in ("h100-a", "h100-b")
    assert allocation_of(second).worst_level in ("PIX", "PXB")


def test_pinned_cpus_come_from_the_gpus_numa_node_as_whole_cores(
    edge_cluster: EdgeCluster, kube_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api)
    pod = pause_pod(
        "pinned",
        scheduler=edge_cluster.scheduler_name,
        requests={RESOURCE_GPU: "1", "cpu": "4", "memory": "1Gi"},
        annotations={
            **TOPOLOGY_AWARE,
            "gedge.io/topology-policy": "single-numa",
            "gedge.io/cpu-pinning": "true",
        },
    )
    pod.spec.containers[0].resources.limits = {RESOURCE_GPU: "1", "cpu": "4", "memory": "1Gi"}
    core.create_namespaced_pod(namespace, pod)
    placed = bound(core, namespace, "pinned")
    allocation = allocation_of(placed)
    topology = edge_cluster.nodes[placed.spec.node_name].topology
    (gpu_grant,) = [d for d in allocation.devices if d.resource == RESOURCE_GPU]
    gpu_numa = topology.pci(gpu_grant.pci_address).numa_node
    cpus = {c.id: c for c in topology.cpus}
    assert len(allocation.cpus) == 4
    assert {cpus[c].numa_node for c in allocation.cpus} == {gpu_numa}
    for cpu in allocation.cpus:
        assert set(cpus[cpu].thread_siblings or (cpu,)) <= set(allocation.cpus), "whole cores only"


def test_pod_nobody_can_place_stays_pending_with_the_extender_reason(
    edge_cluster: EdgeCluster, kube_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api)
    # Only `split` is eligible by selector, and it cannot keep a GPU and an RDMA NIC on one NUMA node.
    numa_bound = pause_pod(
        "numa-bound",
        scheduler=edge_cluster.scheduler_name,
        requests={RESOURCE_GPU: "1", RESOURCE_RDMA: "1"},
        annotations={**TOPOLOGY_AWARE, "gedge.io/topology-policy": "single-numa"},
    )
    numa_bound.spec.node_selector = {"kubernetes.io/hostname": "split"}
    core.create_namespaced_pod(namespace, numa_bound)
    core.create_namespaced_pod(
        namespace,
        pause_pod("too-many-gpus", scheduler=edge_cluster.scheduler_name, requests={RESOURCE_GPU: "9"}),
    )
    # kube-scheduler counts the nodes per reason: the reasons must not name their node
    expected = {
        "numa-bound": ["1 needs 1 gedge.io/gpu, 1 gedge.io/rdma on one NUMA node (single-numa)"],
        "too-many-gpus": ["2 needs 9 gedge.io/gpu (8 free)", "1 needs 9 gedge.io/gpu (2 free)"],
    }
    for name, reasons in expected.items():
        messages = wait_for(
            lambda name=name: failed_scheduling_messages(core, namespace, name), lambda found: found
        )
        assert any(all(reason in m for reason in reasons) for m in messages), messages
        pod = core.read_namespaced_pod(name, namespace)
        assert pod.spec.node_name is None and pod.status.phase == "Pending"
        assert ANNOTATION not in (pod.metadata.annotations or {})


def test_malformed_annotation_is_refused_naming_pod_and_annotation(
    edge_cluster: EdgeCluster, kube_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api)
    core.create_namespaced_pod(
        namespace,
        pause_pod(
            "bad-policy",
            scheduler=edge_cluster.scheduler_name,
            requests={RESOURCE_GPU: "1"},
            annotations={**TOPOLOGY_AWARE, "gedge.io/topology-policy": "sideways"},
        ),
    )
    events = wait_for(
        lambda: core.list_namespaced_event(namespace, field_selector="involvedObject.name=bad-policy").items,
        lambda items: {"FailedScheduling", "InvalidAccelerationRequest"} <= {e.reason for e in items},
    )
    for event in events:
        assert f"pod {namespace}/bad-policy" in event.message
        assert "gedge.io/topology-policy" in event.message and "sideways" in event.message
    assert core.read_namespaced_pod("bad-policy", namespace).spec.node_name is None


def gpu_pods(edge_cluster: EdgeCluster, names: list[str]) -> list[k8s.V1Pod]:
    return [pause_pod(n, scheduler=edge_cluster.scheduler_name, requests={RESOURCE_GPU: "1"}) for n in names]


def gpu_capacity(edge_cluster: EdgeCluster) -> int:
    return sum(edge_cluster.nodes[n].resources.get(RESOURCE_GPU, 0) for n in GPU_NODES)


def placed_pods(core: k8s.CoreV1Api, namespace: str) -> list[k8s.V1Pod]:
    return [p for p in core.list_namespaced_pod(namespace).items if p.spec.node_name]


def refused_for_want_of_gpus(pod: k8s.V1Pod) -> bool:
    """The scheduler's last word on the pod: every node has 0 free GPUs (not an earlier, stale refusal)."""
    condition = next((c for c in pod.status.conditions or () if c.type == "PodScheduled"), None)
    message = condition.message or "" if condition else ""
    # kube-scheduler counts the nodes per reason ("0/5 nodes are available: 5 needs ...")
    counted = re.search(r"0/(\d+) nodes are available: (\d+) needs 1 gedge\.io/gpu \(0 free\)\.", message)
    return counted is not None and counted[1] == counted[2]


def settled(core: k8s.CoreV1Api, namespace: str, capacity: int, timeout: float = 180.0) -> list[k8s.V1Pod]:
    """Bound pods once `capacity` are bound and every other pod was refused for want of a free GPU."""

    def done(pods: list[k8s.V1Pod]) -> bool:
        placed = [p for p in pods if p.spec.node_name]
        return len(placed) >= capacity and all(
            refused_for_want_of_gpus(p) for p in pods if not p.spec.node_name
        )

    pods = wait_for(
        lambda: core.list_namespaced_pod(namespace).items,
        done,
        timeout=timeout,
        describe=lambda pods: "\n".join(scheduling_state(p) for p in pods),
        hopeless=lambda pods: any(denied_by_rbac(p) for p in pods),
    )
    return [p for p in pods if p.spec.node_name]


def grants_of(pod: k8s.V1Pod) -> set[tuple[str, str]]:
    return {(pod.spec.node_name, d.id) for d in allocation_of(pod).devices}


def assert_no_device_twice(edge_cluster: EdgeCluster, pods: list[k8s.V1Pod]) -> None:
    grants = [(p.spec.node_name, d.id) for p in pods for d in allocation_of(p).devices]
    holders = {grant: sorted(p.metadata.name for p in pods if grant in grants_of(p)) for grant in set(grants)}
    assert not {g: names for g, names in holders.items() if len(names) > 1}
    assert len(grants) == len(pods), "each pod asked for exactly one GPU"
    for pod in pods:
        allocation = allocation_of(pod)
        assert allocation.node == pod.spec.node_name and allocation.pod_uid == pod.metadata.uid
    for node, gpus in itertools.groupby(sorted(grants), key=lambda g: g[0]):
        advertised = {g.uuid for g in edge_cluster.nodes[node].topology.gpus}
        assert {gpu for _, gpu in gpus} <= advertised


def test_fifty_pods_at_once_for_scarce_gpus_never_share_a_device(
    edge_cluster: EdgeCluster, kube_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api)
    capacity = gpu_capacity(edge_cluster)
    assert capacity < 50
    for pod in gpu_pods(edge_cluster, [f"gpu-{i:02d}" for i in range(50)]):
        core.create_namespaced_pod(namespace, pod)
    pods = settled(core, namespace, capacity)
    assert_no_device_twice(edge_cluster, pods)
    assert len(pods) == capacity


def test_extender_killed_mid_stream_rebuilds_allocations_and_never_double_allocates(
    edge_cluster: EdgeCluster, kube_api: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api)
    capacity = gpu_capacity(edge_cluster)
    first, second = (
        gpu_pods(edge_cluster, [f"early-{i:02d}" for i in range(capacity // 2 + 2)]),
        gpu_pods(edge_cluster, [f"late-{i:02d}" for i in range(capacity // 2 + 2)]),
    )
    for pod in first:
        core.create_namespaced_pod(namespace, pod)
    wait_for(lambda: placed_pods(core, namespace), lambda placed: len(placed) >= 3)
    edge_cluster.kill_extender()
    for pod in second:
        core.create_namespaced_pod(namespace, pod)
    edge_cluster.start_extender()

    pods = settled(core, namespace, capacity)
    assert_no_device_twice(edge_cluster, pods)
    assert len(pods) == capacity

    # Afterwards: a restarted extender that forgot what it handed out would place this one.
    edge_cluster.restart_extender()
    core.create_namespaced_pod(namespace, gpu_pods(edge_cluster, ["after-restart"])[0])
    refused = wait_for(
        lambda: core.read_namespaced_pod("after-restart", namespace),
        refused_for_want_of_gpus,
        describe=scheduling_state,
    )
    assert refused.spec.node_name is None
    assert_no_device_twice(edge_cluster, placed_pods(core, namespace))
