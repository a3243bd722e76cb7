"""Node topology discovery: read a sysfs root (the live `/` or an unpacked snapshot) into the model."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import replace

from agent.discovery.accelerators import find_accelerators
from agent.discovery.amd import read_amd_gpus
from agent.discovery.cards import with_cards
from agent.discovery.cpus import read_cpus
from agent.discovery.net import read_interfaces, read_nvme, read_rdma
from agent.discovery.nvml import GpuSource, NvmlGpuSource
from agent.discovery.pci import device_paths, read_pci
from agent.discovery.sysfs import SysfsTree
from gedge_model import Gpu, NodeTopology

__all__ = ["GpuSource", "NvmlGpuSource", "discover"]


def discover(
    root: str | os.PathLike[str] = "/",
    node_name: str | None = None,
    gpu_source: GpuSource | None = None,
    timeslice_replicas: int | Mapping[str, int] | None = None,
    reserved_cpus: Iterable[int] = (),
) -> NodeTopology:
    """Discover the node under `root`; odd input never raises, problems land in `warnings`.

    GPUs come from `gpu_source` (NVML by default, only for the live root `/`:
    a snapshot has no driver to ask). `timeslice_replicas` is the sharing
    configuration: one count for every GPU, or counts by GPU UUID or index.
    A bad replica count is a configuration error and raises ValueError.
    `reserved_cpus` (the agent's `reserved_cpus`) is reported as given; one that is not an online
    CPU here is a warning.
    """
    _check_replicas(timeslice_replicas)
    fs = SysfsTree(root)
    inventory = read_cpus(fs)
    pci = read_pci(fs, inventory.numa_nodes)
    by_address = {d.address: d for d in pci}
    paths = device_paths(fs)
    interfaces = read_interfaces(fs, by_address, paths)
    if gpu_source is None and os.path.realpath(fs.root) == "/":
        gpu_source = NvmlGpuSource()
    gpus = gpu_source.gpus(fs.warn) if gpu_source is not None else ()
    gpus = _joined_to_sysfs(fs, gpus, by_address)
    gpus = _with_replicas(fs, gpus, timeslice_replicas)
    reserved = tuple(sorted(set(reserved_cpus)))
    online = {c.id for c in inventory.cpus if c.online}
    missing = [c for c in reserved if c not in online]
    if missing:
        fs.warn(f"reserved_cpus: CPU(s) {missing} are not online on this node")
    return NodeTopology(
        node_name=node_name or _hostname(fs),
        cpus=inventory.cpus,
        numa_nodes=inventory.numa_nodes,
        pci_devices=pci,
        interfaces=interfaces,
        rdma_devices=read_rdma(fs, by_address, interfaces),
        nvme_devices=read_nvme(fs, by_address),
        accelerators=with_cards(fs, find_accelerators(pci), by_address, paths),
        gpus=gpus,
        amd_gpus=read_amd_gpus(fs, by_address, paths),
        reserved_cpus=reserved,
        warnings=tuple(fs.warnings),
    )


def _joined_to_sysfs(fs: SysfsTree, gpus: tuple[Gpu, ...], pci: Mapping[str, object]) -> tuple[Gpu, ...]:
    for gpu in gpus:
        if gpu.pci_address not in pci:
            fs.warn(
                f"GPU {gpu.index} ({gpu.uuid}): PCI address {gpu.pci_address} is not in /sys/bus/pci/devices"
            )
    return tuple(sorted(gpus, key=lambda g: g.index))


def _check_replicas(config: object) -> None:
    """`config` as the agent's YAML gave it: checked, not trusted to be the declared int | Mapping."""
    values: Iterable[tuple[object, object]] = (
        config.items() if isinstance(config, Mapping) else [("all GPUs", config)]
    )
    for key, value in values:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"time-slice replicas for {key}: must be an integer >= 1, got {value!r}")


def _with_replicas(
    fs: SysfsTree, gpus: tuple[Gpu, ...], config: int | Mapping[str, int] | None
) -> tuple[Gpu, ...]:
    if config is None:
        return gpus
    if isinstance(config, int):
        return tuple(replace(g, timeslice_replicas=config) for g in gpus)
    by_key = {str(key): value for key, value in config.items()}
    known = {g.uuid for g in gpus} | {str(g.index) for g in gpus}
    for key in by_key:
        if key not in known:
            fs.warn(f"time-slice replicas configured for {key!r}, which names no GPU of this node")
    return tuple(
        replace(g, timeslice_replicas=by_key.get(g.uuid, by_key.get(str(g.index), g.timeslice_replicas)))
        for g in gpus
    )


def _hostname(fs: SysfsTree) -> str:
    name = fs.read("proc/sys/kernel/hostname")
    if name:
        return name
    if os.path.realpath(fs.root) == "/":
        return os.uname().nodename
    return fs.root.name or "node"
