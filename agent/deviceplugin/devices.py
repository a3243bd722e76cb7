"""Which devices each gedge.io resource advertises, derived from the one NodeTopology.

Pure: the model in, per-resource device lists out. IDs are exactly what the
extender writes into `gedge.io/allocation` (DeviceGrant.id), so Allocate can
compare kubelet's request with the annotation without translation.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Collection
from dataclasses import dataclass

from gedge_model import DeviceKind, Gpu, NodeTopology, VfPool
from gedge_model.allocation import (
    RESOURCE_AMD_GPU,
    RESOURCE_ASIC,
    RESOURCE_FPGA,
    RESOURCE_GPU,
    RESOURCE_GPU_SHARED,
    RESOURCE_RDMA,
    RESOURCE_SRIOV_VF,
    RESOURCE_SRIOV_VF_VFIO,
    is_known_resource,
    mig_resource_name,
)

log = logging.getLogger(__name__)

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
TIMESLICE_SEPARATOR = "::"
MAX_DEVICE_ID = 63
"""kubelet's limit on Device.ID."""
_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def valid_resource_name(resource: str) -> bool:
    """Whether Kubernetes accepts `resource` as an extended resource name (kubelet refuses others)."""
    _, _, name = resource.partition("/")
    return bool(_QUALIFIED_NAME.match(name))


@dataclass(frozen=True)
class GpuRef:
    """The physical GPU behind a whole-GPU, time-slice or MIG device."""

    uuid: str
    pci_address: str


@dataclass(frozen=True)
class MigRef:
    gpu_instance_id: int
    compute_instance_id: int


@dataclass(frozen=True)
class PluginDevice:
    """One device as a plugin advertises it, with what Allocate needs to expose it."""

    resource: str
    id: str
    health: str = HEALTHY
    numa_node: int | None = None
    gpu: GpuRef | None = None
    mig: MigRef | None = None
    pci_address: str | None = None
    """The VF's, RDMA device's, AMD GPU's or card's PCI function."""
    rdma_name: str | None = None
    device_nodes: tuple[str, ...] = ()
    """/dev paths a container gets for an AMD GPU or an FPGA/ASIC card (all must exist at Allocate)."""
    vfio: bool = False
    """A VF bound to vfio-pci or a DPDK driver: handed out with its /dev/vfio nodes."""


CARD_RESOURCE = {DeviceKind.FPGA: RESOURCE_FPGA, DeviceKind.ASIC: RESOURCE_ASIC}


def _card_devices(topology: NodeTopology) -> list[PluginDevice]:
    """AMD GPUs (/dev/kfd and the GPU's render node) and FPGA/ASIC cards (their stack's nodes)."""
    out = []
    for amd in topology.amd_gpus:
        if not amd.allocatable:
            continue  # discovery warned: no render node known, or its device nodes are missing
        nodes = amd.device_nodes
        numa = topology.numa_of(amd.pci_address)
        out.append(
            PluginDevice(
                RESOURCE_AMD_GPU,
                amd.device_id,
                numa_node=numa,
                pci_address=amd.pci_address,
                device_nodes=nodes,
            )
        )
    for card in topology.cards:
        out.append(
            PluginDevice(
                CARD_RESOURCE[card.kind],
                card.pci_address,
                numa_node=topology.numa_of(card.pci_address),
                pci_address=card.pci_address,
                device_nodes=card.device_nodes,
            )
        )
    return out


def timeslice_id(gpu_uuid: str, replica: int) -> str:
    return f"{gpu_uuid}{TIMESLICE_SEPARATOR}{replica}"


def mig_resource(profile: str) -> str:
    return mig_resource_name(profile)


def _gpu_devices(topology: NodeTopology, gpu: Gpu) -> list[PluginDevice]:
    ref = GpuRef(uuid=gpu.uuid, pci_address=gpu.pci_address)
    numa = topology.numa_of(gpu.pci_address)
    if gpu.mig_current:
        out = []
        for instance in gpu.mig_instances:
            resource = mig_resource(instance.profile)
            if not is_known_resource(resource) or not valid_resource_name(resource):
                log.warning("MIG instance %s has profile %r, not advertised", instance.uuid, instance.profile)
                continue
            mig = MigRef(instance.gpu_instance_id, instance.compute_instance_id)
            out.append(PluginDevice(resource, instance.uuid, numa_node=numa, gpu=ref, mig=mig))
        return out
    out = [PluginDevice(RESOURCE_GPU, gpu.uuid, numa_node=numa, gpu=ref)]
    if gpu.timeslice_replicas > 1:
        out += [
            PluginDevice(RESOURCE_GPU_SHARED, timeslice_id(gpu.uuid, r), numa_node=numa, gpu=ref)
            for r in range(gpu.timeslice_replicas)
        ]
    return out


def plugin_devices(
    topology: NodeTopology, unhealthy: Collection[str] = ()
) -> dict[str, tuple[PluginDevice, ...]]:
    """resource name -> its devices, sorted by id; resources without devices are absent.

    A GPU in MIG mode is advertised only through its MIG instances; a GPU with
    time-slice replicas is advertised whole and as replicas (the extender keeps
    the two from overlapping). VFs on a kernel netdev driver are `gedge.io/sriov-vf`,
    VFs on vfio-pci or a DPDK driver `gedge.io/sriov-vf-vfio`, unbound VFs neither.
    A device whose PCI function is in `topology.unhealthy`, an id in `unhealthy`,
    or a device of such a GPU is reported Unhealthy so kubelet stops handing it out.
    """
    found: list[PluginDevice] = []
    for gpu in topology.gpus:
        found += _gpu_devices(topology, gpu)
    for interface in topology.interfaces:
        for vf in interface.vfs:
            pool = vf.pool
            if pool is None:
                continue
            numa = topology.numa_of(vf.pci_address)
            if numa is None:
                numa = topology.numa_of(interface.pci_address)
            found.append(
                PluginDevice(
                    RESOURCE_SRIOV_VF if pool is VfPool.NETDEV else RESOURCE_SRIOV_VF_VFIO,
                    vf.pci_address,
                    numa_node=numa,
                    pci_address=vf.pci_address,
                    vfio=pool is VfPool.VFIO,
                )
            )
    found += _card_devices(topology)
    for rdma in topology.rdma_devices:
        found.append(
            PluginDevice(
                RESOURCE_RDMA,
                rdma.name,
                numa_node=topology.numa_of(rdma.pci_address),
                pci_address=rdma.pci_address,
                rdma_name=rdma.name,
            )
        )
    bad = frozenset(unhealthy)
    by_resource: dict[str, dict[str, PluginDevice]] = {}
    for device in found:
        if len(device.id) > MAX_DEVICE_ID:
            log.warning(
                "device id %r of %s is longer than %d, not advertised",
                device.id,
                device.resource,
                MAX_DEVICE_ID,
            )
            continue
        address = device.gpu.pci_address if device.gpu is not None else device.pci_address
        sick = address is not None and topology.health_of(address) is not None
        if sick or device.id in bad or (device.gpu is not None and device.gpu.uuid in bad):
            device = dataclasses.replace(device, health=UNHEALTHY)
        seen = by_resource.setdefault(device.resource, {})
        if device.id in seen:
            log.warning("device id %r appears twice for %s; keeping the first", device.id, device.resource)
            continue
        seen[device.id] = device
    return {
        resource: tuple(devices[k] for k in sorted(devices))
        for resource, devices in sorted(by_resource.items())
    }
