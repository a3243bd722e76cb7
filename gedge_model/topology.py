"""The one model of a node's topology, shared by agent and extender.

Everything is a frozen dataclass of plain values (str, int, float, bool, tuples
of those or of other model classes) so it can travel as JSON, be hashed and be
compared in tests. Discovery builds it; placement only reads it.

Conventions every class follows (docs/model.md has the overview):
- PCI addresses are sysfs form, lower case: `0000:3b:00.0` (domain:bus:slot.function).
- CPU and NUMA ids are the kernel's numbers (`cpuN`, `nodeN` under /sys/devices/system),
  not positions in a tuple: NUMA ids may be sparse (node0, node2), CPU ids may have holes.
- Sizes are bytes unless the name says otherwise (`memory_mib`); speeds are Mbit/s (`_mbps`).
- None means "not known" (the file or NVML call gave nothing), never zero.
- Paths in field notes are relative to the discovery root (`/` or an unpacked snapshot).
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
    """One logical CPU, `sys/devices/system/cpu/cpuN` (without those folders: `present`, else `possible`).

    An offline CPU is kept (with what sysfs still says of it) so that bringing it online is a
    change of `online`, not a new CPU.
    """

    id: int
    """The kernel CPU number N; what cpusets, `sched_setaffinity` and `Allocation.cpus` hold."""
    online: bool
    """`cpuN/online` (1/0); without it (cpu0 cannot be unplugged) membership in `cpu/online`."""
    core_id: int | None = None
    """`cpuN/topology/core_id`: unique within a package only; None when offline and unreadable."""
    package_id: int | None = None
    """`cpuN/topology/physical_package_id` (the socket)."""
    numa_node: int | None = None
    """The NUMA node id whose `nodeM/cpulist` names this CPU; None: no node lists it (no NUMA)."""
    thread_siblings: tuple[int, ...] = ()
    """CPU ids sharing this core, itself included: `topology/thread_siblings_list` (or the mask)."""


@dataclass(frozen=True)
class NumaNode:
    """One NUMA node, `sys/devices/system/node/nodeN`; a machine without that folder is one node 0."""

    id: int
    """The kernel's node id N (may be sparse: compare ids, never index a tuple by them)."""
    cpus: tuple[int, ...] = ()
    """The node's online CPU ids (`nodeN/cpulist`, else `cpumap`); an offline CPU still names its
    node in `Cpu.numa_node`."""
    memory_bytes: int | None = None
    """MemTotal of `nodeN/meminfo` (kB there, bytes here); `proc/meminfo` for the one-node case."""
    distances: tuple[tuple[int, int], ...] = ()
    """(other node id, ACPI SLIT distance) pairs from `nodeN/distance`, self included (usually 10);
    the file's columns are matched to the ids in `node/online`. Empty when unreadable."""

    def distance_to(self, other: int) -> int | None:
        """SLIT distance to node id `other`; None when the firmware gave none."""
        return dict(self.distances).get(other)


@dataclass(frozen=True)
class PciDevice:
    """One PCI function, `sys/bus/pci/devices/<address>`; the distance levels are read off its path."""

    address: str
    """`0000:3b:00.0`, lower case."""
    class_id: int
    """The 24-bit `class` file (base class << 16 | subclass << 8 | prog-if)."""
    vendor_id: int
    """`vendor` (0x10de NVIDIA, 0x1002 AMD, 0x15b3 Mellanox, ...)."""
    device_id: int
    """`device`."""
    host_bridge: str
    """The `pciDDDD:BB` root of the device's sysfs path: same host bridge is PHB or closer."""
    bridges: tuple[str, ...] = ()
    """PCI bridges from the host bridge down to this device's parent, outermost first."""
    driver: str | None = None
    """Name of the `driver` link's target; None: unbound."""
    numa_node: int | None = None
    """NUMA node id; `numa_source` says how it was found. None: unknown (counted as remote)."""
    numa_source: str = "sysfs"
    """Where numa_node came from: sysfs, local_cpulist, ancestor, only-node (a one-node machine) or none."""
    local_cpus: tuple[int, ...] = ()
    """CPU ids of `local_cpulist` (else the `local_cpus` mask)."""
    link_speed: str | None = None
    """`current_link_speed` as the kernel prints it ("16.0 GT/s PCIe"); kept as text, only shown."""
    link_width: int | None = None
    """`current_link_width`, in lanes."""
    physfn: str | None = None
    """PCI address behind the `physfn` link: set on an SR-IOV VF, naming its PF."""

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
    """An SR-IOV VF of a PF, found by the PF's `virtfnN` links."""

    index: int
    """N of `virtfnN`: the VF number `ip link set <pf> vf N` takes, not a position."""
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
    """A netdev backed by a PCI function, `sys/class/net/<name>` (virtual links are left out)."""

    name: str
    pci_address: str
    mac: str | None = None
    """`address`, as the kernel prints it (lower-case, colon-separated)."""
    speed_mbps: int | None = None
    """`speed` in Mbit/s; None while the link is down (the kernel then says -1 or refuses the read)."""
    operstate: str | None = None
    """`operstate`: up, down, dormant, unknown, ..."""
    sriov_totalvfs: int = 0
    """`device/sriov_totalvfs`: VFs the PF can have; 0 for a NIC without SR-IOV."""
    sriov_numvfs: int = 0
    """`device/sriov_numvfs`: VFs enabled now."""
    vfs: tuple[VirtualFunction, ...] = ()
    """The enabled VFs, by index."""
    physfn: str | None = None
    """PCI address of the physical function when this interface is itself a VF."""
    """PCI address of the physical function when this interface is itself a VF."""


@dataclass(frozen=True)
class RdmaDevice:
    """An RDMA device, `sys/class/infiniband/<name>` (mlx5_0, ...); granted by name."""

    name: str
    pci_address: str
    netdevs: tuple[str, ...] = ()
    """Netdevs of the same PCI function (the RoCE port's Ethernet side)."""
    node_guid: str | None = None
    """`node_guid` as printed (`0c42:a103:0065:8a2e`)."""


@dataclass(frozen=True)
class NvmeDevice:
    """An NVMe controller, `sys/class/nvme/<name>`; only placed in the distance matrix."""

    name: str
    pci_address: str
    model: str | None = None
    """`model`, trimmed."""


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
    """A GPU-instance profile of a MIG-enabled GPU (nvmlDeviceGetGpuInstanceProfileInfo)."""

    name: str
    """NVML's name without "MIG " (`1g.10gb`, `1g.24gb+gfx`); see allocation.mig_resource_name."""
    profile_id: int
    """NVML's profile id (info.id)."""
    slices: int
    """GPU slices it takes (info.sliceCount)."""
    memory_mib: int
    """Memory in MiB (info.memorySizeMB, which NVML names MB but counts in MiB)."""
    total: int
    """Instances of it the GPU can hold at most (info.instanceCount)."""
    available: int
    """Instances that still fit now (nvmlDeviceGetGpuInstanceRemainingCapacity)."""


@dataclass(frozen=True)
class MigInstance:
    """One existing MIG device (nvmlDeviceGetMigDeviceHandleByIndex); its UUID is the device id granted."""

    uuid: str
    """nvmlDeviceGetUUID of the MIG handle (`MIG-...`)."""
    profile: str
    """`MigProfile.name` of its GPU instance, or `profile-<id>` when the id is not among the profiles."""
    gpu_instance_id: int
    compute_instance_id: int
    placement_start: int = 0
    """First memory slice the GPU instance occupies (nvmlGpuInstanceGetInfo placement.start)."""
    placement_size: int = 0
    """Slices it occupies (placement.size)."""


@dataclass(frozen=True)
class NvLink:
    """Active NVLinks from one GPU to a peer GPU (nvmlDeviceGetNvLinkState/RemotePciInfo).

    Through an NVSwitch every GPU on the fabric is a peer with as many links as the side with fewer
    switch links brings, as `nvidia-smi topo -m` shows NV#.
    """

    peer_pci_address: str
    links: int
    """Bonded link count: the N of NV#."""


@dataclass(frozen=True)
class Gpu:
    """An NVIDIA GPU as NVML reports it; its PCI place comes from the `PciDevice` at `pci_address`."""

    index: int
    """NVML's device index (nvmlDeviceGetHandleByIndex), as nvidia-smi numbers GPUs; not stable
    across reboots, so grants name `uuid`."""
    uuid: str
    """nvmlDeviceGetUUID (`GPU-...`): the device plugin's device id."""
    name: str
    """nvmlDeviceGetName ("NVIDIA A100-SXM4-80GB")."""
    pci_address: str
    """nvmlDeviceGetPciInfo busId, normalised to sysfs form."""
    memory_bytes: int
    """Framebuffer size in bytes (nvmlDeviceGetMemoryInfo total)."""
    driver_version: str | None = None
    """nvmlSystemGetDriverVersion ("535.54.03"), the same on every GPU of a node."""
    cuda_driver_version: str | None = None
    """nvmlSystemGetCudaDriverVersion as "major.minor" ("12.2")."""
    compute_capability: str | None = None
    """nvmlDeviceGetCudaComputeCapability as "major.minor" ("8.0")."""
    mig_current: bool = False
    """MIG mode now on (nvmlDeviceGetMigMode current): only its MIG instances are granted, never
    the whole GPU."""
    mig_pending: bool = False
    """MIG mode on after the next GPU reset (nvmlDeviceGetMigMode pending)."""
    mig_profiles: tuple[MigProfile, ...] = ()
    """With MIG on: the GPU-instance profiles, by slices, memory, id."""
    mig_instances: tuple[MigInstance, ...] = ()
    """With MIG on: the MIG devices that exist."""
    nvlinks: tuple[NvLink, ...] = ()
    """Peers bonded by NVLink, by peer address."""
    timeslice_replicas: int = 1
    """How many `gedge.io/gpu-shared` replicas the GPU is shared as; from the agent's
    `timeslice_replicas` setting, not from NVML. 1: not shared."""


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
    """Everything discovery found on one node: the agent's report and the extender's input.

    Lookups (`pci`, `numa`, `gpu_by_pci`, ...) are indexed on first use, so build a new value with
    `dataclasses.replace` rather than changing one. Problems reading sysfs or NVML never raise:
    they land in `warnings` and the field is left unknown.
    """

    node_name: str
    """The Kubernetes Node name: the agent's `node_name`, else `proc/sys/kernel/hostname` under the root."""
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
    """What discovery could not read or found odd, each naming the file or NVML call; not compared."""

    def pci(self, address: str) -> PciDevice | None:
        """The PCI function at `address` (sysfs form); None when discovery did not see it."""
        return self._pci_by_address.get(address)

    def numa_of(self, address: str | None) -> int | None:
        """The NUMA node id of the PCI function at `address`; None when there is no address, discovery
        did not see the function, or the kernel reports no node for it (-1)."""
        device = None if address is None else self.pci(address)
        if device is None or device.numa_node is None or device.numa_node < 0:
            return None
        return device.numa_node

    def numa(self, node_id: int) -> NumaNode | None:
        """The NUMA node with kernel id `node_id` (an id, not a position in `numa_nodes`)."""
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
        """The NVIDIA driver version of the node (from any GPU), None without NVIDIA GPUs."""
        return next((g.driver_version for g in self.gpus if g.driver_version), None)

    @property
    def cuda_driver_version(self) -> str | None:
        return next((g.cuda_driver_version for g in self.gpus if g.cuda_driver_version), None)
