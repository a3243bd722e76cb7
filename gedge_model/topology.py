"""The one model of a node's topology, shared by agent and extender.

Everything is a frozen dataclass of plain values (str, int, float, bool, tuples
of those or of other model classes) so it can travel as JSON, be hashed and be
compared in tests. Discovery builds it; placement only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property


class DeviceKind(StrEnum):
    """What a schedulable endpoint is; the value is the label prefix in matrices."""

    GPU = "GPU"
    NIC = "NIC"
    VF = "VF"
    RDMA = "RDMA"
    NVME = "NVME"
    FPGA = "FPGA"
    ASIC = "ASIC"
    DISPLAY = "DISPLAY"
    CPU = "CPU"


@dataclass(frozen=True)
class Cpu:
    id: int
    online: bool
    core_id: int | None = None
    package_id: int | None = None
    numa_node: int | None = None
    thread_siblings: tuple[int, ...] = ()


@dataclass(frozen=True)
class NumaNode:
    id: int
    cpus: tuple[int, ...] = ()
    """The node's online CPUs; an offline CPU still names its node in `Cpu.numa_node`."""
    memory_bytes: int | None = None
    # (other node id, ACPI SLIT distance) pairs, including self (usually 10).
    distances: tuple[tuple[int, int], ...] = ()

    def distance_to(self, other: int) -> int | None:
        return dict(self.distances).get(other)


@dataclass(frozen=True)
class PciDevice:
    address: str
    class_id: int
    vendor_id: int
    device_id: int
    host_bridge: str
    bridges: tuple[str, ...] = ()
    """PCI bridges from the host bridge down to this device's parent, outermost first."""
    driver: str | None = None
    numa_node: int | None = None
    numa_source: str = "sysfs"
    """Where numa_node came from: sysfs, local_cpulist, ancestor, only-node (a one-node machine) or none."""
    local_cpus: tuple[int, ...] = ()
    link_speed: str | None = None
    link_width: int | None = None
    physfn: str | None = None

    @property
    def base_class(self) -> int:
        return self.class_id >> 16

    @property
    def subclass(self) -> int:
        return (self.class_id >> 8) & 0xFF

    @property
    def is_bridge(self) -> bool:
        return self.base_class == 0x06


DPDK_DRIVERS = frozenset({"vfio-pci", "uio_pci_generic", "igb_uio"})
"""Userspace-I/O drivers: a VF bound to one has no kernel netdev and is handed out as a PCI device."""
HOLDING_DRIVERS = frozenset({"pci-stub"})
"""Drivers that only hold a function away from others: such a VF serves no pool."""


class VfPool(StrEnum):
    """Which pool a VF serves, from the driver it is bound to (discovered, never configured)."""

    NETDEV = "netdev"
    """A kernel network driver (iavf, mlx5_core, ...): the pod's data-path NIC."""
    VFIO = "vfio"
    """A userspace-I/O driver (vfio-pci, DPDK's uio drivers): a PCI device for the pod."""


@dataclass(frozen=True)
class VirtualFunction:
    index: int
    pci_address: str
    netdev: str | None = None
    """Its netdev in the host namespace; None while it sits in a pod's namespace, or when it has none."""
    driver: str | None = None
    """The driver the VF is bound to (sysfs `driver` link); None: unbound."""

    @property
    def pool(self) -> VfPool | None:
        """NETDEV, VFIO, or None for a VF that serves no pool (no driver: nothing can use it)."""
        if self.driver in DPDK_DRIVERS:
            return VfPool.VFIO
        if self.driver in HOLDING_DRIVERS:
            return None
        if self.driver is not None or self.netdev is not None:
            return VfPool.NETDEV
        return None


@dataclass(frozen=True)
class NetInterface:
    name: str
    pci_address: str
    mac: str | None = None
    speed_mbps: int | None = None
    operstate: str | None = None
    sriov_totalvfs: int = 0
    sriov_numvfs: int = 0
    vfs: tuple[VirtualFunction, ...] = ()
    physfn: str | None = None
    """PCI address of the physical function when this interface is itself a VF."""


@dataclass(frozen=True)
class RdmaDevice:
    name: str
    pci_address: str
    netdevs: tuple[str, ...] = ()
    node_guid: str | None = None


@dataclass(frozen=True)
class NvmeDevice:
    name: str
    pci_address: str
    model: str | None = None


class CardStack(StrEnum):
    """The driver stack that hands an FPGA/ASIC card to user space, named after its device nodes."""

    DFL = "dfl"
    """Linux DFL (Intel FPGA PAC, Stratix 10, Agilex): /dev/dfl-port.N."""
    OPAE = "opae"
    """Intel's out-of-tree OPAE driver: /dev/intel-fpga-port.N."""
    XRT = "xrt"
    """Xilinx/AMD XRT (Alveo): the user function's /dev/dri/renderDN plus /dev/xclmgmtN."""
    VFIO = "vfio"
    """Any card bound to vfio-pci: /dev/vfio/<iommu group> plus /dev/vfio/vfio."""


@dataclass(frozen=True)
class Accelerator:
    """A PCI function that computes: GPU/display controller, processing accelerator, FPGA.

    FPGA and ASIC cards whose vendor stack is found (`stack`) are allocatable as
    `gedge.io/fpga` / `gedge.io/asic` under their PCI address; `device_nodes` are
    the /dev paths a container needs, `functions` the card's other PCI functions
    (an Alveo's management function) that go with it.
    """

    pci_address: str
    kind: DeviceKind
    vendor_id: int
    device_id: int
    stack: CardStack | None = None
    device_nodes: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    driver: str | None = None
    missing_nodes: tuple[str, ...] = ()
    """Of `device_nodes`, those the node's /dev lacks: the card cannot be given until they appear."""

    @property
    def allocatable(self) -> bool:
        return (
            self.stack is not None
            and self.kind in (DeviceKind.FPGA, DeviceKind.ASIC)
            and not self.missing_nodes
        )


@dataclass(frozen=True)
class MigProfile:
    name: str
    profile_id: int
    slices: int
    memory_mib: int
    total: int
    available: int


@dataclass(frozen=True)
class MigInstance:
    uuid: str
    profile: str
    gpu_instance_id: int
    compute_instance_id: int
    placement_start: int = 0
    placement_size: int = 0


@dataclass(frozen=True)
class NvLink:
    peer_pci_address: str
    links: int


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    pci_address: str
    memory_bytes: int
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    compute_capability: str | None = None
    mig_current: bool = False
    mig_pending: bool = False
    mig_profiles: tuple[MigProfile, ...] = ()
    mig_instances: tuple[MigInstance, ...] = ()
    nvlinks: tuple[NvLink, ...] = ()
    timeslice_replicas: int = 1


@dataclass(frozen=True)
class XgmiLink:
    """A KFD io_link of type XGMI from one AMD GPU to another of its hive."""

    peer_pci_address: str
    weight: int = 15
    """KFD's link weight: 15 per hop inside the hive (rocm-smi's "Weight between two GPUs")."""


@dataclass(frozen=True)
class AmdGpu:
    """An AMD GPU as ROCm's KFD topology shows it (/sys/class/kfd/kfd/topology/nodes/N).

    `index` numbers the KFD GPU nodes in node order, as rocm-smi's GPU[i];
    `render_minor` is N of /dev/dri/renderDN; `hive_id` is the XGMI hive (hex, None alone).
    """

    index: int
    pci_address: str
    kfd_node: int
    gpu_id: int
    name: str = ""
    gfx_target_version: int | None = None
    render_minor: int | None = None
    unique_id: str | None = None
    hive_id: str | None = None
    xgmi_links: tuple[XgmiLink, ...] = ()
    missing_nodes: tuple[str, ...] = ()
    """Of /dev/kfd and the render node, those the node's /dev lacks."""
    partition: int | None = None
    """Set when the PCI function shows as several KFD nodes (an MI300X in DPX/CPX compute
    partition mode): this node's place among them, in node order."""

    @property
    def device_id(self) -> str:
        """The device plugin's id: the PCI address, `<address>::<partition>` for a partition."""
        return self.pci_address if self.partition is None else f"{self.pci_address}::{self.partition}"

    @property
    def device_nodes(self) -> tuple[str, ...]:
        """What a container needs: /dev/kfd and the GPU's render node (empty when its number is unknown)."""
        if self.render_minor is None:
            return ()
        return ("/dev/kfd", f"/dev/dri/renderD{self.render_minor}")

    @property
    def allocatable(self) -> bool:
        return self.render_minor is not None and not self.missing_nodes


@dataclass(frozen=True)
class DeviceHealth:
    """A device the agent found unhealthy; absent from `NodeTopology.unhealthy` means healthy."""

    pci_address: str
    reason: str
    """Why, for people: `xid 79`, `vanished from sysfs`, `link down on ens1f0`."""


@dataclass(frozen=True)
class NodeTopology:
    node_name: str
    cpus: tuple[Cpu, ...] = ()
    numa_nodes: tuple[NumaNode, ...] = ()
    pci_devices: tuple[PciDevice, ...] = ()
    interfaces: tuple[NetInterface, ...] = ()
    rdma_devices: tuple[RdmaDevice, ...] = ()
    nvme_devices: tuple[NvmeDevice, ...] = ()
    accelerators: tuple[Accelerator, ...] = ()
    gpus: tuple[Gpu, ...] = ()
    amd_gpus: tuple[AmdGpu, ...] = ()
    unhealthy: tuple[DeviceHealth, ...] = ()
    """PCI functions (GPUs, VFs, NICs, RDMA devices) found unhealthy; never granted, reported to kubelet."""
    reserved_cpus: tuple[int, ...] = ()
    """CPUs kept for the system (kubelet's reservedSystemCPUs, the agent's `reserved_cpus`): never
    pinned, always in the shared pool. Ascending."""
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def pci(self, address: str) -> PciDevice | None:
        return self._pci_by_address.get(address)

    def numa(self, node_id: int) -> NumaNode | None:
        return self._numa_by_id.get(node_id)

    def gpu_by_pci(self, address: str) -> Gpu | None:
        return self._gpu_by_pci.get(address)

    def amd_gpu_by_pci(self, address: str) -> AmdGpu | None:
        return self._amd_by_pci.get(address)

    @property
    def cards(self) -> tuple[Accelerator, ...]:
        """Allocatable FPGA and ASIC cards, by PCI address."""
        return tuple(sorted((a for a in self.accelerators if a.allocatable), key=lambda a: a.pci_address))

    @cached_property
    def _amd_by_pci(self) -> dict[str, AmdGpu]:
        """The first KFD node of each PCI function (its first partition)."""
        found: dict[str, AmdGpu] = {}
        for gpu in sorted(self.amd_gpus, key=lambda g: g.index):
            found.setdefault(gpu.pci_address, gpu)
        return found

    def health_of(self, address: str) -> str | None:
        """Why the PCI function at `address` is unhealthy, or None when it is healthy."""
        return self._unhealthy_by_address.get(address)

    @cached_property
    def _unhealthy_by_address(self) -> dict[str, str]:
        return {d.pci_address: d.reason for d in self.unhealthy}

    @cached_property
    def _pci_by_address(self) -> dict[str, PciDevice]:
        return {d.address: d for d in self.pci_devices}

    @cached_property
    def _numa_by_id(self) -> dict[int, NumaNode]:
        return {n.id: n for n in self.numa_nodes}

    @cached_property
    def _gpu_by_pci(self) -> dict[str, Gpu]:
        return {g.pci_address: g for g in self.gpus}

    @property
    def online_cpus(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.cpus if c.online)

    @property
    def pinnable_cpus(self) -> frozenset[int]:
        """Online CPUs a pod may get exclusively: every online CPU but the reserved ones."""
        return frozenset(self.online_cpus) - frozenset(self.reserved_cpus)

    @property
    def driver_version(self) -> str | None:
        return next((g.driver_version for g in self.gpus if g.driver_version), None)

    @property
    def cuda_driver_version(self) -> str | None:
        return next((g.cuda_driver_version for g in self.gpus if g.cuda_driver_version), None)
