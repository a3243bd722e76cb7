"""The node's inventory as Prometheus gauges, computed from the agent's current NodeState at scrape time.

Nothing is kept between scrapes: every series comes from the topology and the
applied allocations the agent reports, so the figures can never drift from
what the extender sees. Labels are device identities the hardware bounds
(GPU and MIG UUIDs, VF PCI addresses, RDMA names, NUMA ids), never pods.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.deviceplugin.devices import HEALTHY, TIMESLICE_SEPARATOR, plugin_devices
from gedge_model import NodeState
from gedge_model.allocation import RESOURCE_GPU, RESOURCE_GPU_SHARED, RESOURCE_MIG_PREFIX

_KIND_OF_RESOURCE = {
    RESOURCE_GPU: "gpu",
    "gedge.io/sriov-vf": "vf",
    "gedge.io/sriov-vf-vfio": "vf-vfio",
    "gedge.io/rdma": "rdma",
}


def device_kind(resource: str) -> str:
    """gpu, mig, vf, vf-vfio or rdma: the kind label of a device-plugin resource."""
    if resource.startswith(RESOURCE_MIG_PREFIX):
        return "mig"
    return _KIND_OF_RESOURCE.get(resource, resource.removeprefix("gedge.io/"))


def _numa_label(numa: int | None) -> str:
    return "none" if numa is None else str(numa)


class NodeInventoryCollector(Collector):
    """Allocatable and allocated devices, MIG capacity, time-slice replicas and exclusive CPUs."""

    def __init__(self, state: Callable[[], NodeState | None]) -> None:
        self._state = state

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """Nothing at registration: the families depend on the node."""
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._state()
        if state is None:
            return
        yield from _device_families(state)
        yield from _mig_families(state)
        yield from _timeslice_families(state)
        yield from _numa_families(state)


def _device_families(state: NodeState) -> Iterator[GaugeMetricFamily]:
    labels = ["node", "kind", "resource", "device", "numa_node"]
    allocatable = GaugeMetricFamily(
        "gedge_agent_device_allocatable",
        "1 for each healthy device the node advertises (GPU, MIG instance, VF, RDMA device)",
        labels=labels,
    )
    allocated = GaugeMetricFamily(
        "gedge_agent_device_allocated",
        "1 for each advertised device an applied allocation holds",
        labels=labels,
    )
    used = state.used_device_ids()
    node = state.node_name
    for resource, devices in plugin_devices(state.topology).items():
        if resource == RESOURCE_GPU_SHARED:
            continue
        for device in devices:
            values = [node, device_kind(resource), resource, device.id, _numa_label(device.numa_node)]
            allocatable.add_metric(values, 1.0 if device.health == HEALTHY else 0.0)
            allocated.add_metric(values, 1.0 if (resource, device.id) in used else 0.0)
    yield allocatable
    yield allocated


def _mig_families(state: NodeState) -> Iterator[GaugeMetricFamily]:
    labels = ["node", "gpu", "profile"]
    capacity = GaugeMetricFamily(
        "gedge_agent_mig_profile_capacity",
        "GPU instances of the profile the GPU can hold in all",
        labels=labels,
    )
    remaining = GaugeMetricFamily(
        "gedge_agent_mig_profile_remaining",
        "GPU instances of the profile that can still be created on the GPU",
        labels=labels,
    )
    for gpu in state.topology.gpus:
        if not gpu.mig_current:
            continue
        for profile in gpu.mig_profiles:
            values = [state.node_name, gpu.uuid, profile.name]
            capacity.add_metric(values, profile.total)
            remaining.add_metric(values, profile.available)
    yield capacity
    yield remaining


def _timeslice_families(state: NodeState) -> Iterator[GaugeMetricFamily]:
    labels = ["node", "gpu"]
    replicas = GaugeMetricFamily(
        "gedge_agent_gpu_timeslice_replicas", "Time-slice replicas the GPU is shared as", labels=labels
    )
    in_use = GaugeMetricFamily(
        "gedge_agent_gpu_timeslice_replicas_in_use",
        "Time-slice replicas applied allocations hold",
        labels=labels,
    )
    held = Counter(
        device_id.split(TIMESLICE_SEPARATOR, 1)[0]
        for resource, device_id in state.used_device_ids()
        if resource == RESOURCE_GPU_SHARED
    )
    for gpu in state.topology.gpus:
        if gpu.mig_current or gpu.timeslice_replicas <= 1:
            continue
        replicas.add_metric([state.node_name, gpu.uuid], gpu.timeslice_replicas)
        in_use.add_metric([state.node_name, gpu.uuid], held[gpu.uuid])
    yield replicas
    yield in_use


def _numa_families(state: NodeState) -> Iterator[GaugeMetricFamily]:
    labels = ["node", "numa_node"]
    cpus = GaugeMetricFamily("gedge_agent_numa_cpus", "Online CPUs of the NUMA node", labels=labels)
    exclusive = GaugeMetricFamily(
        "gedge_agent_numa_exclusive_cpus", "CPUs of the NUMA node pinned exclusively to pods", labels=labels
    )
    memory = GaugeMetricFamily("gedge_agent_numa_memory_bytes", "Memory of the NUMA node", labels=labels)
    topology = state.topology
    numa_of_cpu = {cpu.id: cpu.numa_node for cpu in topology.cpus}
    pinned = Counter(_numa_label(numa_of_cpu.get(cpu)) for cpu in state.used_cpus())
    nodes = sorted(topology.numa_nodes, key=lambda n: n.id)
    for numa in nodes:
        values = [state.node_name, str(numa.id)]
        cpus.add_metric(values, len(numa.cpus))
        exclusive.add_metric(values, pinned.pop(str(numa.id), 0))
        if numa.memory_bytes is not None:
            memory.add_metric(values, numa.memory_bytes)
    if not nodes:
        online = len(topology.online_cpus)
        cpus.add_metric([state.node_name, "none"], online)
        exclusive.add_metric([state.node_name, "none"], sum(pinned.values()))
    yield cpus
    yield exclusive
    yield memory
