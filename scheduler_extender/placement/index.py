"""Per-topology facts the engine reads on every call, computed once per NodeTopology object.

A node's topology changes rarely while the extender places thousands of pods
on it, so device lists, pairwise levels and CPU cores are derived once and
kept as long as the topology object lives (keyed by identity, dropped by a
weakref callback): no distance is computed on the placement path.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from gedge_model import DeviceKind, Level, NodeTopology, VfPool, pci_distance
from gedge_model.allocation import RESOURCE_AMD_GPU, RESOURCE_ASIC, RESOURCE_FPGA, RESOURCE_GPU
from gedge_model.distance import nvlink_weight

LEVELS: tuple[Level, ...] = tuple(Level)
"""Levels by ordinal, closest first: the engine stores ordinals and compares them."""
ORDINAL: Mapping[Level, int] = {level: i for i, level in enumerate(LEVELS)}
NV = ORDINAL[Level.NV]
PHB = ORDINAL[Level.PHB]
SYS = ORDINAL[Level.SYS]
NO_NUMA = -1
"""NUMA id for a device or CPU whose node is unknown: aligned with every node."""


def cpu_level(a: int, b: int) -> int:
    """A device against a NUMA node's CPUs, as gedge_model.distance prices it."""
    return PHB if NO_NUMA in (a, b) or a == b else SYS


@dataclass(frozen=True)
class GpuEntry:
    pos: int
    uuid: str
    pci: str
    numa: int
    mig_mode: bool
    replica_ids: tuple[str, ...]
    """Time-slice device ids `<uuid>::<i>`, empty unless the GPU has more than one replica."""
    migs: tuple[tuple[str, str], ...]
    """(instance uuid, profile) of existing MIG instances, in placement order."""
    group: tuple[str, ...]
    """The PCIe switch (or host bridge) the GPU hangs off: GPUs sharing it fragment together."""
    resource: str = RESOURCE_GPU
    """gedge.io/gpu for NVIDIA GPUs; whole cards (AMD GPUs, FPGA, ASIC) sit in the same list, placed
    by the same distances, under their own resource and granted by `uuid` (their PCI address)."""


@dataclass(frozen=True)
class NetEntry:
    """A VF group (VFs of one PF at the same distances), an RDMA device or a physical NIC."""

    kind: str
    ident: str
    """Grant id: RDMA device name, NIC netdev; for a VF group the PF netdev."""
    pci: str
    numa: int
    gpu_levels: tuple[int, ...]
    """Level ordinal to every GPU, by GpuEntry.pos."""
    members: tuple[str, ...] = ()
    """VF PCI addresses of a VF group, in VF index order."""
    master: str = ""
    """The PF netdev a VF belongs to, or the NIC itself."""
    netdevs: tuple[str, ...] = ()
    slot: int = 0
    """Position among all network entries (VF groups, then RDMA devices, then NICs)."""


@dataclass(frozen=True)
class VfioEntry:
    """A VF bound to vfio-pci or a DPDK driver: a PCI device for the pod, never its data-path NIC."""

    pci: str
    numa: int
    gpu_levels: tuple[int, ...]
    """Level ordinal to every GPU, by GpuEntry.pos."""


@dataclass(frozen=True)
class TopologyIndex:
    node: str
    gpus: tuple[GpuEntry, ...]
    gpu_levels: tuple[tuple[int, ...], ...]
    """GPU-to-GPU level ordinals by position."""
    vf_groups: tuple[NetEntry, ...]
    rdmas: tuple[NetEntry, ...]
    nics: tuple[NetEntry, ...]
    cores: Mapping[int, tuple[tuple[int, ...], ...]]
    """NUMA id -> its cores (online thread siblings, ascending), cores by first CPU."""
    numa_order: Mapping[int, tuple[int, ...]]
    """NUMA id -> every NUMA id, itself first, then by SLIT distance."""
    gpu_by_uuid: Mapping[str, int]
    gpu_by_mig: Mapping[str, int]
    accelerator_kinds: frozenset[str]
    unusable: Mapping[str, str] = field(default_factory=dict)
    """Card resource -> why the node has such devices it cannot give (device nodes missing, ...)."""
    gpu_links: tuple[tuple[int, ...], ...] = ()
    """GPU-to-GPU NVLink counts by position (0 where not NVLinked): more links weigh less."""
    gpu_pcie: tuple[tuple[int, ...], ...] = ()
    """GPU-to-GPU level ordinals of the PCIe path alone (NVLink left out): ties between NVLink sets."""
    gpu_class: tuple[int, ...] = ()
    """Per GPU: GPUs of one class have the same NUMA node and the same levels to every network device."""
    cpu_numa: Mapping[int, int] = field(default_factory=dict)
    """Online CPU id -> its NUMA id."""
    vfio: tuple[VfioEntry, ...] = ()
    """Healthy vfio-pool VFs, by PCI address (not network entries: the engine's search never sees them)."""
    reserved_cpus: frozenset[int] = frozenset()
    """Online CPUs kept for the system: taken from the start, never granted."""
    structure: int = 0
    """Equal for topologies that differ only in names, UUIDs and addresses: placements in position
    terms carry over between them (the engine memoizes by it)."""
    priced: dict[tuple[float, ...], Priced] = field(default_factory=dict, compare=False, repr=False)
    grants: dict[tuple[object, ...], object] = field(default_factory=dict, compare=False, repr=False)
    """Grant objects of this node, built once: allocations share them."""
    empty: list[object] = field(default_factory=list, compare=False, repr=False)
    """The engine's free set of this node with nothing allocated, once computed."""

    @property
    def nets(self) -> tuple[NetEntry, ...]:
        return (*self.vf_groups, *self.rdmas, *self.nics)


@dataclass(frozen=True)
class Priced:
    """The index's levels turned into weights for one weight table."""

    gpu_pairs: tuple[tuple[float, ...], ...]
    gpu_pcie_pairs: tuple[tuple[float, ...], ...]
    """Weights of the PCIe paths alone, NVLink left out."""
    net_rows: tuple[tuple[float, ...], ...]
    """By NetEntry.slot: weight to every GPU."""
    near: float
    """Weight of a device against CPUs on its own NUMA node (PHB)."""
    far: float
    """... and across sockets (SYS)."""


def priced(index: TopologyIndex, weights: tuple[float, ...]) -> Priced:
    hit = index.priced.get(weights)
    if hit is None:
        by_level = dict(zip(LEVELS, weights, strict=True))
        hit = Priced(
            gpu_pairs=tuple(
                tuple(
                    nvlink_weight(by_level, links) if lv == NV else weights[lv]
                    for lv, links in zip(row, link_row, strict=True)
                )
                for row, link_row in zip(index.gpu_levels, index.gpu_links, strict=True)
            ),
            gpu_pcie_pairs=tuple(tuple(weights[lv] for lv in row) for row in index.gpu_pcie),
            net_rows=tuple(tuple(weights[lv] for lv in n.gpu_levels) for n in index.nets),
            near=weights[PHB],
            far=weights[SYS],
        )
        if len(index.priced) < 16:
            index.priced[weights] = hit
    return hit


_cache: dict[int, tuple[weakref.ref[NodeTopology], TopologyIndex]] = {}
_lock = threading.Lock()
_structures: dict[tuple[object, ...], int] = {}
_structure_ids = itertools.count(1)
MAX_STRUCTURES = 10_000


def _structure_id(signature: tuple[object, ...]) -> int:
    """A number per distinct structure; never reused, so forgetting old ones only loses sharing."""
    with _lock:
        found = _structures.get(signature)
        if found is None:
            if len(_structures) >= MAX_STRUCTURES:
                _structures.clear()
            found = _structures[signature] = next(_structure_ids)
        return found


def topology_index(topology: NodeTopology) -> TopologyIndex:
    """The index of `topology`, built on first use and kept while the object lives."""
    key = id(topology)
    hit = _cache.get(key)
    if hit is not None and hit[0]() is topology:
        return hit[1]
    index = build_index(topology)

    def drop(_: object, key: int = key) -> None:
        # runs inside garbage collection, possibly while this thread holds a lock: take none
        entry = _cache.get(key)
        if entry is not None and entry[0]() is None:
            _cache.pop(key, None)

    _cache[key] = (weakref.ref(topology, drop), index)
    return index


def _numa(topology: NodeTopology, address: str | None) -> int:
    numa = topology.numa_of(address)
    return NO_NUMA if numa is None else numa


def _group(topology: NodeTopology, address: str) -> tuple[str, ...]:
    device = topology.pci(address)
    if device is None:
        return (address,)
    return (device.host_bridge, *device.bridges[:-1]) if device.bridges else (device.host_bridge,)


def _cores(topology: NodeTopology) -> dict[int, tuple[tuple[int, ...], ...]]:
    """NUMA id -> cores: every online CPU in exactly one core, with its online siblings on its own node.

    A VM may put SMT siblings on different NUMA nodes (`-numa node,cpus=0,2
    -numa node,cpus=1,3` with threads=2): each CPU then counts once, on its own
    node, as a core of its own there. Sibling lists that disagree between CPUs
    never let a CPU into two cores.
    """
    numa_of = {
        c.id: c.numa_node if c.numa_node is not None and c.numa_node >= 0 else NO_NUMA
        for c in topology.cpus
        if c.online
    }
    siblings_of = {c.id: c.thread_siblings or (c.id,) for c in topology.cpus if c.online}
    placed: set[int] = set()
    cores: dict[int, list[tuple[int, ...]]] = {}
    for cpu in sorted(numa_of):
        if cpu in placed:
            continue
        numa = numa_of[cpu]
        core = tuple(
            sorted({cpu} | {s for s in siblings_of[cpu] if s not in placed and numa_of.get(s) == numa})
        )
        placed.update(core)
        cores.setdefault(numa, []).append(core)
    return {numa: tuple(sorted(found, key=lambda c: c[0])) for numa, found in sorted(cores.items())}


def build_index(topology: NodeTopology) -> TopologyIndex:
    """Unhealthy devices are left out (never granted); only VFs with a kernel netdev driver form VF
    groups: a VF on vfio-pci, a DPDK driver or none cannot be a pod's data-path NIC."""
    healthy = topology.health_of
    gpus_sorted = sorted(
        (g for g in topology.gpus if healthy(g.pci_address) is None), key=lambda g: (g.index, g.pci_address)
    )
    gpus = tuple(
        GpuEntry(
            pos=pos,
            uuid=gpu.uuid,
            pci=gpu.pci_address,
            numa=_numa(topology, gpu.pci_address),
            mig_mode=gpu.mig_current,
            replica_ids=tuple(f"{gpu.uuid}::{r}" for r in range(gpu.timeslice_replicas))
            if gpu.timeslice_replicas > 1 and not gpu.mig_current
            else (),
            migs=tuple(
                (m.uuid, m.profile)
                for m in sorted(gpu.mig_instances, key=lambda m: (m.placement_start, m.uuid))
            )
            if gpu.mig_current
            else (),
            group=_group(topology, gpu.pci_address),
        )
        for pos, gpu in enumerate(gpus_sorted)
    )
    card_addresses = [
        (RESOURCE_AMD_GPU, g.device_id, g.pci_address)
        for g in sorted(topology.amd_gpus, key=lambda g: g.index)
        if g.allocatable
    ]
    card_addresses += [
        (RESOURCE_FPGA if c.kind is DeviceKind.FPGA else RESOURCE_ASIC, c.pci_address, c.pci_address)
        for c in topology.cards
    ]
    unusable: dict[str, list[str]] = {}
    for amd in topology.amd_gpus:
        if not amd.allocatable:
            why = f"lacks {', '.join(amd.missing_nodes)}" if amd.missing_nodes else "has no render node"
            unusable.setdefault(RESOURCE_AMD_GPU, []).append(f"AMD GPU {amd.pci_address} {why}")
    for acc in topology.accelerators:
        if acc.stack is not None and acc.missing_nodes:
            resource = RESOURCE_FPGA if acc.kind is DeviceKind.FPGA else RESOURCE_ASIC
            unusable.setdefault(resource, []).append(
                f"{acc.kind.value} {acc.pci_address} lacks {', '.join(acc.missing_nodes)}"
            )
    first_card = len(gpus)
    gpus += tuple(
        GpuEntry(
            pos=first_card + i,
            uuid=device_id,
            pci=address,
            numa=_numa(topology, address),
            mig_mode=False,
            replica_ids=(),
            migs=(),
            group=_group(topology, address),
            resource=resource,
        )
        for i, (resource, device_id, address) in enumerate(card_addresses)
    )
    gpu_distances = [[pci_distance(topology, a.pci, b.pci) for b in gpus] for a in gpus]
    gpu_levels = tuple(tuple(ORDINAL[d.level] for d in row) for row in gpu_distances)
    gpu_links = tuple(tuple(d.nvlinks for d in row) for row in gpu_distances)
    gpu_pcie = gpu_levels
    if any(any(row) for row in gpu_links):
        plain = replace(topology, gpus=tuple(replace(g, nvlinks=()) for g in topology.gpus))
        gpu_pcie = tuple(tuple(ORDINAL[pci_distance(plain, a.pci, b.pci).level] for b in gpus) for a in gpus)

    def levels_to_gpus(address: str) -> tuple[int, ...]:
        return tuple(ORDINAL[pci_distance(topology, g.pci, address).level] for g in gpus)

    def placed(
        kind: str, ident: str, address: str, master: str = "", netdevs: tuple[str, ...] = ()
    ) -> NetEntry:
        """A NIC or RDMA entry at `address`'s own NUMA node and GPU distances."""
        numa, levels = _numa(topology, address), levels_to_gpus(address)
        return NetEntry(kind, ident, address, numa, levels, master=master, netdevs=netdevs)

    physical = sorted(
        (i for i in topology.interfaces if i.physfn is None and healthy(i.pci_address) is None),
        key=lambda i: i.pci_address,
    )
    nics = tuple(placed("nic", nic.name, nic.pci_address, master=nic.name) for nic in physical)
    vf_groups: list[NetEntry] = []
    vfio: list[VfioEntry] = []
    for nic in physical:
        pf_levels = levels_to_gpus(nic.pci_address)
        pf_numa = _numa(topology, nic.pci_address)
        grouped: dict[tuple[tuple[int, ...], int], list[str]] = {}
        for vf in sorted(nic.vfs, key=lambda v: v.index):
            if vf.pool is None or healthy(vf.pci_address) is not None:
                continue
            known = topology.pci(vf.pci_address) is not None
            levels = levels_to_gpus(vf.pci_address) if known else pf_levels
            numa = _numa(topology, vf.pci_address) if known else pf_numa
            if vf.pool is VfPool.VFIO:
                vfio.append(VfioEntry(vf.pci_address, numa, levels))
                continue
            grouped.setdefault((levels, numa), []).append(vf.pci_address)
        for (levels, numa), members in grouped.items():
            vf_groups.append(
                NetEntry("vf", nic.name, nic.pci_address, numa, levels, tuple(members), master=nic.name)
            )
    rdmas = tuple(
        placed("rdma", r.name, r.pci_address, netdevs=r.netdevs)
        for r in sorted(topology.rdma_devices, key=lambda r: (r.pci_address, r.name))
        if healthy(r.pci_address) is None
    )
    vf_groups = [replace(g, slot=i) for i, g in enumerate(vf_groups)]
    rdmas = tuple(replace(r, slot=len(vf_groups) + i) for i, r in enumerate(rdmas))
    nics = tuple(replace(n, slot=len(vf_groups) + len(rdmas) + i) for i, n in enumerate(nics))
    nets = (*vf_groups, *rdmas, *nics)
    classes: dict[tuple[str, int, tuple[int, ...]], int] = {}
    gpu_class = tuple(
        classes.setdefault((g.resource, g.numa, tuple(n.gpu_levels[g.pos] for n in nets)), len(classes))
        for g in gpus
    )

    core_map = _cores(topology)
    reserved = frozenset(c.id for c in topology.cpus if c.online) - topology.pinnable_cpus

    numa_order: dict[int, tuple[int, ...]] = {}
    for numa in core_map:
        node = topology.numa(numa)
        slit = dict(node.distances) if node else {}
        numa_order[numa] = tuple(
            sorted(core_map, key=lambda other: (other != numa, slit.get(other, 255), other))
        )

    names: dict[object, int] = {}

    def canonical(name: object) -> int:
        return names.setdefault(name, len(names))

    signature = (
        tuple(
            (
                g.resource,
                g.numa,
                g.mig_mode,
                len(g.replica_ids),
                tuple(p for _, p in g.migs),
                canonical(g.group),
            )
            for g in gpus
        ),
        gpu_levels,
        gpu_links,
        gpu_pcie,
        tuple(
            (
                n.kind,
                n.numa,
                n.gpu_levels,
                len(n.members),
                canonical(n.master),
                tuple(map(canonical, n.netdevs)),
            )
            for n in nets
        ),
        tuple(core_map.items()),
        tuple(sorted(reserved)),
        tuple(numa_order.items()),
        tuple(
            sorted(
                a.kind.value for a in topology.accelerators if a.kind in (DeviceKind.FPGA, DeviceKind.ASIC)
            )
        ),
        tuple(sorted((r, tuple(why)) for r, why in unusable.items())),
    )
    return TopologyIndex(
        node=topology.node_name,
        gpus=gpus,
        gpu_levels=gpu_levels,
        gpu_links=gpu_links,
        gpu_pcie=gpu_pcie,
        vf_groups=tuple(vf_groups),
        rdmas=rdmas,
        nics=nics,
        cores=core_map,
        numa_order=numa_order,
        gpu_by_uuid={g.uuid: g.pos for g in gpus},
        gpu_by_mig={uuid: g.pos for g in gpus for uuid, _ in g.migs},
        accelerator_kinds=frozenset(
            a.kind.value for a in topology.accelerators if a.kind in (DeviceKind.FPGA, DeviceKind.ASIC)
        ),
        unusable={resource: "; ".join(why) for resource, why in unusable.items()},
        gpu_class=gpu_class,
        vfio=tuple(sorted(vfio, key=lambda v: v.pci)),
        cpu_numa={cpu: numa for numa, found in core_map.items() for core in found for cpu in core},
        reserved_cpus=reserved,
        structure=_structure_id(signature),
    )
