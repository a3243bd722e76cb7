"""Resource distance between two endpoints of a node, as `nvidia-smi topo -m` names it.

Pure functions over `NodeTopology`: the agent prints the matrix with them and the
extender's placement engine prices allocations with them, so both always agree.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from gedge_model.topology import DeviceKind, NodeTopology, PciDevice


class Level(StrEnum):
    """How a path between two endpoints runs, nearest first; `LEGEND` says each in nvidia-smi's words."""

    X = "X"
    NV = "NV"
    PIX = "PIX"
    PXB = "PXB"
    PHB = "PHB"
    NODE = "NODE"
    SYS = "SYS"


LEGEND: dict[Level, str] = {
    Level.X: "Self",
    Level.NV: "Connection traversing a bonded set of # NVLinks",
    Level.PIX: "Connection traversing at most a single PCIe bridge",
    Level.PXB: "Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)",
    Level.PHB: "Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)",
    Level.NODE: "Connection traversing PCIe as well as the interconnect between PCIe Host Bridges "
    "within a NUMA node",
    Level.SYS: "Connection traversing PCIe as well as the SMP interconnect between NUMA nodes "
    "(e.g., QPI/UPI)",
}

DEFAULT_WEIGHTS: Mapping[Level, float] = {
    Level.X: 0.0,
    Level.NV: 1.0,
    Level.PIX: 2.0,
    Level.PXB: 3.0,
    Level.PHB: 3.5,
    Level.NODE: 4.0,
    Level.SYS: 5.0,
}
"""Cost of one pair of endpoints at each level (unitless; only ratios matter): what placement adds
up per pair. `PlacementConfig.weights` and `gedge-agent topology --weights` replace them."""


XGMI_LABEL = "XGMI"


def nvlink_weight(weights: Mapping[Level, float], links: int) -> float:
    """Weight of a GPU pair bonded by `links` NVLinks: more links, more bandwidth, closer.

    NV1 weighs `weights[NV]`; each added link lowers it towards half that,
    `weights[NV] * (1 + 1/links) / 2` (NV2 0.75, NV4 0.625, NV12 0.54 of it), so
    every NVLink pair stays closer than any PCIe path. An unknown count (0) weighs as NV1.
    """
    base = weights[Level.NV]
    if links <= 1:
        return base
    return base * (1 + 1 / links) / 2


@dataclass(frozen=True)
class Distance:
    """A level; for NV, the bonded NVLink count, or `xgmi` for AMD GPUs linked in one XGMI hive.

    XGMI is the NV level (same weight): a bonded GPU-GPU link, printed `XGMI` as rocm-smi does.
    """

    level: Level
    nvlinks: int = 0
    xgmi: bool = False

    @property
    def label(self) -> str:
        if self.level is not Level.NV:
            return self.level.value
        return XGMI_LABEL if self.xgmi else f"NV{self.nvlinks}"

    def weight(self, weights: Mapping[Level, float] = DEFAULT_WEIGHTS) -> float:
        """The level's weight; an NVLink pair's shrinks with its link count (`nvlink_weight`)."""
        if self.level is Level.NV:
            return nvlink_weight(weights, self.nvlinks)
        return weights[self.level]

    @classmethod
    def parse(cls, label: str) -> Distance:
        """Inverse of `label`; raises ValueError naming the bad label."""
        text = label.strip().upper()
        if text == XGMI_LABEL:
            return cls(Level.NV, xgmi=True)
        if text.startswith("NV") and text[2:].isdigit():
            return cls(Level.NV, int(text[2:]))
        try:
            return cls(Level(text))
        except ValueError:
            raise ValueError(f"unknown distance level {label!r}") from None


def parse_weights(raw: Mapping[str, float]) -> dict[Level, float]:
    """Weights from configuration (keys X, NV, PIX, ..., any case) over the defaults; ValueError
    names an unknown level, a weight that is not a number, negative or non-finite, or two levels
    whose weights break the order X <= NV# <= PIX <= PXB <= PHB <= NODE <= SYS."""
    weights = dict(DEFAULT_WEIGHTS)
    for key, value in raw.items():
        try:
            level = Level(str(key).upper())
        except ValueError:
            raise ValueError(f"distance weight for unknown level {key!r}") from None
        try:
            weight = float(value)
        except (TypeError, ValueError):
            weight = math.nan
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"distance weight for {level.value} is {value!r}; it must be a number >= 0")
        weights[level] = weight
    order = list(DEFAULT_WEIGHTS)
    documented = " <= ".join(level.value for level in order)
    for nearer, farther in itertools.pairwise(order):
        if weights[farther] < weights[nearer]:
            raise ValueError(
                f"distance weight for {farther.value} ({weights[farther]:g}) is below {nearer.value}'s"
                f" ({weights[nearer]:g}); weights must keep the order {documented}"
            )
    return weights


@dataclass(frozen=True)
class Endpoint:
    """One row/column of the distance matrix: a device with a PCI address, or a NUMA node's CPUs."""

    label: str
    """Row/column heading (`GPU0`, `NIC1`, `CPU0`), as nvidia-smi prints it."""
    kind: DeviceKind
    name: str
    """The device's own name (netdev, RDMA device, GPU UUID) or `nodeN` for CPUs."""
    pci_address: str | None
    """None for a NUMA node's CPUs."""
    numa_node: int | None
    """NUMA node id; None when unknown."""


XGMI_LEGEND = "Connection traversing AMD Infinity Fabric (XGMI) links between GPUs of one hive"


def cpu_endpoint_label(numa_node: int) -> str:
    return f"CPU{numa_node}"


def endpoints(topology: NodeTopology) -> tuple[Endpoint, ...]:
    """Every endpoint the matrix and the placement engine consider, in a stable order."""
    result: list[Endpoint] = []

    def numa_of(address: str) -> int | None:
        dev = topology.pci(address)
        return dev.numa_node if dev else None

    gpu_addresses = {g.pci_address for g in topology.gpus}
    for gpu in sorted(topology.gpus, key=lambda g: g.index):
        result.append(
            Endpoint(f"GPU{gpu.index}", DeviceKind.GPU, gpu.uuid, gpu.pci_address, numa_of(gpu.pci_address))
        )
    # AMD GPUs follow, numbered on from the NVIDIA ones (on an AMD-only node: rocm-smi's GPU[i])
    offset = max((g.index + 1 for g in topology.gpus), default=0)
    nvidia = set(gpu_addresses)
    for amd in sorted(topology.amd_gpus, key=lambda g: g.index):
        if amd.pci_address in nvidia:
            continue
        gpu_addresses.add(amd.pci_address)
        result.append(
            Endpoint(
                f"GPU{offset + amd.index}",
                DeviceKind.GPU,
                amd.device_id,
                amd.pci_address,
                numa_of(amd.pci_address),
            )
        )
    counters: dict[DeviceKind, int] = {DeviceKind.GPU: len(result)}
    companions = {f for acc in topology.accelerators for f in acc.functions}

    def add(kind: DeviceKind, name: str, address: str) -> None:
        n = counters.get(kind, 0)
        counters[kind] = n + 1
        result.append(Endpoint(f"{kind.value}{n}", kind, name, address, numa_of(address)))

    for acc in sorted(topology.accelerators, key=lambda a: a.pci_address):
        if acc.pci_address not in gpu_addresses and acc.pci_address not in companions:
            add(acc.kind, acc.pci_address, acc.pci_address)
    for nic in sorted(topology.interfaces, key=lambda i: i.pci_address):
        if nic.physfn is None:
            add(DeviceKind.NIC, nic.name, nic.pci_address)
    for nic in sorted(topology.interfaces, key=lambda i: i.pci_address):
        for vf in nic.vfs:
            add(DeviceKind.VF, vf.netdev or vf.pci_address, vf.pci_address)
    for rdma in sorted(topology.rdma_devices, key=lambda r: r.pci_address):
        add(DeviceKind.RDMA, rdma.name, rdma.pci_address)
    for nvme in sorted(topology.nvme_devices, key=lambda n: n.pci_address):
        add(DeviceKind.NVME, nvme.name, nvme.pci_address)
    for node in sorted(topology.numa_nodes, key=lambda n: n.id):
        result.append(Endpoint(cpu_endpoint_label(node.id), DeviceKind.CPU, f"node{node.id}", None, node.id))
    return tuple(result)


def pci_distance(topology: NodeTopology, a: str, b: str) -> Distance:
    """Distance between two PCI functions of the node, from NVLink/XGMI links, then the sysfs path
    (same host bridge: PIX/PXB/PHB), then NUMA ids. An address discovery did not see is SYS."""
    if a == b:
        return Distance(Level.X)
    links = nvlink_count(topology, a, b)
    if links:
        return Distance(Level.NV, links)
    if xgmi_linked(topology, a, b):
        return Distance(Level.NV, xgmi=True)
    dev_a, dev_b = topology.pci(a), topology.pci(b)
    if dev_a is None or dev_b is None:
        return Distance(Level.SYS)
    if _same_function_group(dev_a, dev_b):
        return Distance(Level.PIX)
    if dev_a.host_bridge == dev_b.host_bridge:
        # One root complex never spans sockets, whatever numa_node says.
        return Distance(_bridge_level(dev_a.bridges, dev_b.bridges))
    if _same_numa(topology, dev_a.numa_node, dev_b.numa_node):
        return Distance(Level.NODE)
    return Distance(Level.SYS)


def _same_function_group(a: PciDevice, b: PciDevice) -> bool:
    """Functions of one physical device (or a VF and its PF) sit behind the same port."""
    return (
        a.bridges == b.bridges
        and a.host_bridge == b.host_bridge
        and (
            a.address.rsplit(".", 1)[0] == b.address.rsplit(".", 1)[0]
            or a.physfn == b.address
            or b.physfn == a.address
            or (a.physfn is not None and a.physfn == b.physfn)
        )
    )


def _same_numa(topology: NodeTopology, a: int | None, b: int | None) -> bool:
    """Known to share a NUMA node. Unknown locality (numa_node -1 with nothing to derive it from)
    counts as remote on a multi-node machine: placement must not bet on a locality nobody reported."""
    if a is not None and b is not None:
        return a == b
    return len(topology.numa_nodes) <= 1


def _bridge_level(a: tuple[str, ...], b: tuple[str, ...]) -> Level:
    """PIX when both hang off one switch (at most one bridge below the common one), else PXB.

    With no common bridge the path goes up to the host bridge: PHB.
    """
    common = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        common += 1
    if common == 0:
        return Level.PHB
    if max(len(a) - common, len(b) - common) <= 1:
        return Level.PIX
    return Level.PXB


def nvlink_count(topology: NodeTopology, a: str, b: str) -> int:
    """NVLinks from the NVIDIA GPU at `a` to the one at `b`; 0 when either is not one."""
    gpu = topology.gpu_by_pci(a)
    if gpu is None:
        return 0
    return sum(link.links for link in gpu.nvlinks if link.peer_pci_address == b)


def xgmi_linked(topology: NodeTopology, a: str, b: str) -> bool:
    """Whether KFD reports an XGMI io_link between the AMD GPUs at PCI addresses a and b."""
    gpu = topology.amd_gpu_by_pci(a)
    return gpu is not None and any(link.peer_pci_address == b for link in gpu.xgmi_links)


def endpoint_distance(topology: NodeTopology, a: Endpoint, b: Endpoint) -> Distance:
    """`pci_distance` for two devices; a device to CPUs is PHB on its own NUMA node, SYS off it."""
    if a == b:
        return Distance(Level.X)
    if a.pci_address and b.pci_address:
        return pci_distance(topology, a.pci_address, b.pci_address)
    if a.pci_address is None and b.pci_address is None:
        return Distance(Level.NODE if _same_numa(topology, a.numa_node, b.numa_node) else Level.SYS)
    # A device against a NUMA node's CPUs: through its host bridge when local, across sockets if not.
    return Distance(Level.PHB if _same_numa(topology, a.numa_node, b.numa_node) else Level.SYS)


def distance_matrix(
    topology: NodeTopology, among: Iterable[Endpoint] | None = None
) -> tuple[tuple[Endpoint, ...], tuple[tuple[Distance, ...], ...]]:
    """(endpoints, rows): rows[i][j] is the distance from endpoint i to j, as `nvidia-smi topo -m`."""
    points = tuple(among) if among is not None else endpoints(topology)
    rows = tuple(tuple(endpoint_distance(topology, a, b) for b in points) for a in points)
    return points, rows
