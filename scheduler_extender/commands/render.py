"""Readable text for a node's topology and an allocation, shared by `place` and `demo`."""

from __future__ import annotations

from gedge_model import Allocation, NodeTopology, distance_matrix
from gedge_model.cpulist import format_cpulist
from gedge_model.distance import cpu_endpoint_label


def cpu_ranges(cpus: tuple[int, ...] | list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5", as Linux cpulists are written; no CPUs -> "-"."""
    return format_cpulist(cpus) or "-"


def topology_summary(topology: NodeTopology, *, matrix_limit: int = 24) -> str:
    lines = [f"node {topology.node_name}"]
    online = topology.online_cpus
    lines.append(f"  CPUs      {len(online)} online ({cpu_ranges(online)})")
    for numa in sorted(topology.numa_nodes, key=lambda n: n.id):
        memory = f", {numa.memory_bytes / 2**30:.1f} GiB" if numa.memory_bytes else ""
        lines.append(f"  NUMA {numa.id:<4} CPUs {cpu_ranges(numa.cpus)}{memory}")
    lines.append(f"  PCI       {len(topology.pci_devices)} functions")
    for gpu in sorted(topology.gpus, key=lambda g: g.index):
        mig = " MIG" if gpu.mig_current else ""
        lines.append(f"  GPU{gpu.index:<5} {gpu.name} {gpu.pci_address} {gpu.uuid}{mig}")
    for nic in sorted(topology.interfaces, key=lambda i: i.pci_address):
        if nic.physfn is not None:
            continue
        device = topology.pci(nic.pci_address)
        where = f" NUMA {device.numa_node}" if device is not None and device.numa_node is not None else ""
        vfs = f", {len(nic.vfs)}/{nic.sriov_totalvfs} VFs" if nic.sriov_totalvfs else ""
        speed = f" {nic.speed_mbps} Mb/s" if nic.speed_mbps else ""
        lines.append(f"  NIC       {nic.name} {nic.pci_address}{where}{speed}{vfs}")
    for rdma in topology.rdma_devices:
        lines.append(f"  RDMA      {rdma.name} {rdma.pci_address}")
    for nvme in topology.nvme_devices:
        lines.append(f"  NVMe      {nvme.name} {nvme.pci_address}")
    points, rows = distance_matrix(topology)
    if 1 < len(points) <= matrix_limit:
        width = max(len(p.label) for p in points) + 2
        lines.append("  resource distance (nvidia-smi topo -m levels):")
        lines.append("  " + " " * width + "".join(p.label.ljust(width) for p in points))
        for point, row in zip(points, rows, strict=True):
            lines.append("  " + point.label.ljust(width) + "".join(d.label.ljust(width) for d in row))
    elif points:
        lines.append(f"  resource distance: {len(points)} endpoints (matrix: gedge-agent topology)")
    return "\n".join(lines)


def allocation_summary(allocation: Allocation, topology: NodeTopology | None = None) -> str:
    lines = [
        f"pod {allocation.namespace}/{allocation.name} -> node {allocation.node}"
        f"  (cost {allocation.cost:g}, worst level {allocation.worst_level})"
    ]
    for device in allocation.devices:
        where = " ".join(
            part
            for part in (
                device.pci_address or "",
                f"NUMA {device.numa_node}" if device.numa_node is not None else "",
                f"container {device.container}" if device.container else "",
            )
            if part
        )
        lines.append(f"  {device.resource:<22} {device.id}  {where}".rstrip())
    if allocation.cpus:
        cores = ""
        if topology is not None:
            by_id = {c.id: c for c in topology.cpus}
            full = {(by_id[c].package_id, by_id[c].core_id) for c in allocation.cpus if c in by_id}
            cores = f", {len(full)} physical core(s)"
        numa = ",".join(cpu_endpoint_label(n) for n in allocation.numa_nodes) or "-"
        lines.append(f"  {'exclusive cpus':<22} {cpu_ranges(allocation.cpus)}  ({numa}{cores})")
    elif allocation.numa_nodes:
        lines.append(f"  {'numa nodes':<22} {','.join(map(str, allocation.numa_nodes))}")
    if allocation.network is not None:
        net = allocation.network
        via = f" VF {net.vf_pci_address}" if net.vf_pci_address else ""
        lines.append(f"  {'data path':<22} {net.mode} on {net.master}{via} as {net.ifname}")
    if not (allocation.devices or allocation.cpus or allocation.network):
        lines.append("  (nothing to place: the pod asks for no gedge.io resource)")
    return "\n".join(lines)
