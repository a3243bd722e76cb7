"""Node topology discovery: read a sysfs root (the live `/` or an unpacked snapshot) into the model."""

from __future__ import annotations

import os
from collections.abc import Mapping

from agent.discovery.cpus import read_cpus
from agent.discovery.pci import read_pci
from agent.discovery.sysfs import SysfsTree
from gedge_model import NodeTopology

__all__ = ["discover"]


def discover(
    root: str | os.PathLike[str] = "/",
    node_name: str | None = None,
    gpu_source: object | None = None,
    timeslice_replicas: int | Mapping[str, int] | None = None,
) -> NodeTopology:
    """Discover the node under `root`; never raises on odd input, problems land in `warnings`."""
    fs = SysfsTree(root)
    inventory = read_cpus(fs)
    pci = read_pci(fs, inventory.numa_nodes)
    return NodeTopology(
        node_name=node_name or _hostname(fs),
        cpus=inventory.cpus,
        numa_nodes=inventory.numa_nodes,
        pci_devices=pci,
        warnings=tuple(fs.warnings),
    )


def _hostname(fs: SysfsTree) -> str:
    name = fs.read("proc/sys/kernel/hostname")
    if name:
        return name
    if os.path.realpath(fs.root) == "/":
        return os.uname().nodename
    return fs.root.name or "node"
