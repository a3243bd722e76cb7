"""The devices this node can hand out, under the ids its device plugins advertise, and who holds each.

The ids and resources are exactly the device plugins' (`agent.deviceplugin.devices`),
so the extender sees the same devices kubelet is told about.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.deviceplugin.devices import plugin_devices
from gedge_model import Allocation, NodeState, NodeTopology


@dataclass(frozen=True)
class InventoryDevice:
    resource: str
    id: str
    pci_address: str | None
    numa_node: int | None
    pod_uid: str | None = None


def advertised_devices(topology: NodeTopology) -> tuple[InventoryDevice, ...]:
    return tuple(
        InventoryDevice(
            device.resource,
            device.id,
            device.pci_address or (device.gpu.pci_address if device.gpu else None),
            device.numa_node,
        )
        for _, devices in sorted(plugin_devices(topology).items())
        for device in devices
    )


def device_inventory(state: NodeState) -> tuple[InventoryDevice, ...]:
    """Every advertised device with the pod holding it, if any."""
    holder = {(d.resource, d.id): a.pod_uid for a in state.allocations for d in a.devices}
    return tuple(
        InventoryDevice(d.resource, d.id, d.pci_address, d.numa_node, holder.get((d.resource, d.id)))
        for d in advertised_devices(state.topology)
    )


def allocation_conflicts(state: NodeState, allocation: Allocation) -> list[str]:
    """Why the allocation cannot be applied on this node as it stands; empty when it can.

    A re-apply of the same pod is checked against the other pods only, so it stays idempotent; a
    device that turned unhealthy is refused to a pod that does not hold it yet.
    """
    problems: list[str] = []
    if allocation.node != state.node_name:
        problems.append(f"allocation is for node {allocation.node!r}, this is {state.node_name!r}")
    devices = advertised_devices(state.topology)
    advertised = {(d.resource, d.id) for d in devices}
    address_of = {(d.resource, d.id): d.pci_address for d in devices}
    others = [a for a in state.allocations if a.pod_uid != allocation.pod_uid]
    held = {(d.resource, d.id): a for a in others for d in a.devices}
    mine = [a for a in state.allocations if a.pod_uid == allocation.pod_uid]
    own = {(d.resource, d.id) for a in mine for d in a.devices}
    for grant in allocation.devices:
        key = (grant.resource, grant.id)
        address = address_of.get(key)
        sick = state.topology.health_of(address) if address is not None else None
        if key not in advertised:
            problems.append(f"device {grant.resource}={grant.id} does not exist on this node")
        elif sick is not None and key not in own:
            problems.append(f"device {grant.resource}={grant.id} is unhealthy ({sick})")
        elif key in held:
            owner = held[key]
            problems.append(
                f"device {grant.resource}={grant.id} is held by pod {owner.namespace}/{owner.name}"
            )
    online = set(state.topology.online_cpus)
    taken = {c: a for a in others for c in a.cpus}
    for cpu in allocation.cpus:
        if cpu not in online:
            problems.append(f"CPU {cpu} is not an online CPU of this node")
        elif cpu in taken:
            problems.append(f"CPU {cpu} is held by pod {taken[cpu].namespace}/{taken[cpu].name}")
    return problems
