"""What the extender chose for one pod: the `gedge.io/allocation` annotation contract.

The extender writes it at bind; the agent's device plugins and appliers read it.
Decoding validates every field before anyone acts on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gedge_model.codec import ModelDecodeError, from_json, to_json

ANNOTATION = "gedge.io/allocation"

RESOURCE_GPU = "gedge.io/gpu"
RESOURCE_GPU_SHARED = "gedge.io/gpu-shared"
RESOURCE_MIG_PREFIX = "gedge.io/mig-"
RESOURCE_SRIOV_VF = "gedge.io/sriov-vf"
RESOURCE_SRIOV_VF_VFIO = "gedge.io/sriov-vf-vfio"
"""VFs bound to vfio-pci or a DPDK uio driver: a PCI device for the pod, never its data-path NIC."""
RESOURCE_RDMA = "gedge.io/rdma"
RESOURCE_AMD_GPU = "gedge.io/amd-gpu"
RESOURCE_FPGA = "gedge.io/fpga"
RESOURCE_ASIC = "gedge.io/asic"
CARD_RESOURCES = (RESOURCE_AMD_GPU, RESOURCE_FPGA, RESOURCE_ASIC)
"""Whole cards granted by PCI address and placed by distance like whole NVIDIA GPUs."""

_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
MIG_ATTRIBUTES = ("+me.all", "+me", "+gfx", "-me")
"""Suffixes NVML gives GPU-instance profile variants (pynvml's *_SLICE_ALL_ME, *_SLICE_REV1, *_SLICE_GFX,
*_SLICE_NO_ME): all media engines, one media engine, graphics, no media engine."""
_ATTRIBUTE = "|".join(re.escape(a) for a in MIG_ATTRIBUTES)
_MIG_PROFILE = re.compile(rf"^[0-9]+g\.[0-9]+gb(?:{_ATTRIBUTE})*$")
"""NVML's GPU-instance profile names: `1g.10gb`, `1g.24gb+gfx`, `1g.24gb-me`, `1g.24gb+me.all`."""
_RESOURCE_ATTRIBUTES = tuple(a.replace("+", ".") for a in MIG_ATTRIBUTES)
_MIG_RESOURCE_SUFFIX = re.compile(
    r"^[0-9]+g\.[0-9]+gb(?:" + "|".join(re.escape(a) for a in _RESOURCE_ATTRIBUTES) + ")*$"
)


def is_mig_profile(profile: str) -> bool:
    """Whether `profile` is a MIG profile name NVML reports (and so has a resource name)."""
    return bool(_MIG_PROFILE.match(profile))


def mig_resource_name(profile: str) -> str:
    """NVIDIA's MIG profile name as an extended resource name: one rule for every profile NVML reports.

    `+` is not legal in a Kubernetes resource name, so each `+attribute` becomes
    `.attribute` (`1g.10gb+me` -> `gedge.io/mig-1g.10gb.me`, `1g.24gb+gfx` ->
    `gedge.io/mig-1g.24gb.gfx`, `1g.24gb+me.all` -> `gedge.io/mig-1g.24gb.me.all`),
    the way NVIDIA's device plugin names them; `-me` stays. A name outside NVML's
    grammar (`is_mig_profile`) gives a name `is_known_resource` refuses.
    """
    return RESOURCE_MIG_PREFIX + profile.replace("+", ".")


def mig_profile_name(resource: str) -> str:
    """Inverse of `mig_resource_name`: `gedge.io/mig-1g.24gb.gfx` -> `1g.24gb+gfx`."""
    suffix = resource.removeprefix(RESOURCE_MIG_PREFIX)
    match = re.match(r"^[0-9]+g\.[0-9]+gb", suffix)
    if match is None:
        return suffix
    base, rest = match.group(0), suffix[match.end() :]
    attributes = re.findall("|".join(re.escape(a) for a in _RESOURCE_ATTRIBUTES), rest)
    if "".join(attributes) != rest:
        return suffix
    return base + "".join("+" + a[1:] if a.startswith(".") else a for a in attributes)


def is_known_resource(name: str) -> bool:
    """Whether `name` is one of the extended resources this project advertises (MIG names by grammar)."""
    if name in (
        RESOURCE_GPU,
        RESOURCE_GPU_SHARED,
        RESOURCE_SRIOV_VF,
        RESOURCE_SRIOV_VF_VFIO,
        RESOURCE_RDMA,
        *CARD_RESOURCES,
    ):
        return True
    return name.startswith(RESOURCE_MIG_PREFIX) and bool(
        _MIG_RESOURCE_SUFFIX.match(name[len(RESOURCE_MIG_PREFIX) :])
    )


def valid_pci_address(text: str) -> bool:
    return bool(_PCI_ADDRESS.match(text))


def valid_mac(text: str) -> bool:
    return bool(_MAC.match(text))


def valid_ifname(text: str) -> bool:
    return bool(_IFNAME.match(text)) and text not in (".", "..")


@dataclass(frozen=True)
class DeviceGrant:
    """One device-plugin device given to the pod.

    `id` is what the device plugin advertises to kubelet: a GPU UUID, a MIG UUID,
    `<gpu uuid>::<replica>` for a time-slice, a VF's PCI address, an RDMA device name,
    an AMD GPU's or FPGA/ASIC card's PCI address.

    Construction raises ValueError for an unknown resource, an empty or over-long id, or a PCI
    address that is not sysfs form (from_dict turns it into ModelDecodeError).
    """

    resource: str
    """The extended resource (`gedge.io/gpu`, `gedge.io/mig-1g.10gb`, ...)."""
    id: str
    pci_address: str | None = None
    """The device's PCI function (for a MIG or time-slice grant: its GPU's); None for none."""
    numa_node: int | None = None
    """NUMA node id of that function (`PciDevice.numa_node`), for the pod's CPU choice."""
    container: str | None = None
    """The container the device goes to; None: the pod's only (or every) container asking for it."""

    def __post_init__(self) -> None:
        if not is_known_resource(self.resource):
            raise ValueError(f"unknown resource {self.resource!r}")
        if not self.id or len(self.id) > 256:
            raise ValueError(f"device id for {self.resource} is empty or too long")
        if self.pci_address is not None and not valid_pci_address(self.pci_address):
            raise ValueError(f"bad PCI address {self.pci_address!r} for {self.id}")


@dataclass(frozen=True)
class NetworkGrant:
    """The pod's data-path interface: a VF, or a macvlan on `master` when no VF was needed.

    The extender sets mode, master and the VF; the other settings come from whoever writes the
    allocation (gRPC Apply callers). Construction raises ValueError naming the bad field.
    """

    mode: str
    """`sriov` or `macvlan`."""
    master: str
    """The PF's (sriov) or data NIC's (macvlan) netdev name in the host namespace."""
    ifname: str = "net1"
    """Name of the interface inside the pod."""
    vf_pci_address: str | None = None
    """The VF (sriov only)."""
    mac: str | None = None
    """MAC to set, lower-case `aa:bb:cc:dd:ee:ff`; None: keep the kernel's."""
    vlan: int | None = None
    """802.1Q VLAN id 0..4094 set on the VF by the PF (sriov only; a macvlan carries the NIC's)."""
    mtu: int | None = None
    """MTU in bytes, 68..65535."""
    address: str | None = None
    """IP address with prefix length (`10.0.0.5/24`) put on the pod's interface."""
    rate_mbps: int | None = None
    """VF transmit cap in Mbit/s (the PF's max_tx_rate); None or 0: uncapped."""
    trust: bool = False
    """VF trust mode: the pod may change the VF's MAC and turn on promiscuous mode."""
    spoofchk: bool = True
    """VF MAC spoof checking."""

    def __post_init__(self) -> None:
        if self.mode not in ("sriov", "macvlan"):
            raise ValueError(f"network mode must be sriov or macvlan, not {self.mode!r}")
        for label, name in (("master", self.master), ("ifname", self.ifname)):
            if not valid_ifname(name):
                raise ValueError(f"bad interface name {name!r} for {label}")
        if self.mode == "sriov" and (
            self.vf_pci_address is None or not valid_pci_address(self.vf_pci_address)
        ):
            raise ValueError(f"sriov network needs a VF PCI address, got {self.vf_pci_address!r}")
        if self.mac is not None and not valid_mac(self.mac):
            raise ValueError(f"bad MAC {self.mac!r}")
        if self.vlan is not None and not 0 <= self.vlan <= 4094:
            raise ValueError(f"VLAN id {self.vlan} out of 0..4094")
        if self.mtu is not None and not 68 <= self.mtu <= 65535:
            raise ValueError(f"MTU {self.mtu} out of 68..65535")
        if self.rate_mbps is not None and self.rate_mbps < 0:
            raise ValueError(f"rate {self.rate_mbps} is negative")


@dataclass(frozen=True)
class Allocation:
    """Everything one pod was given on one node; the JSON of `gedge.io/allocation`.

    Construction raises ValueError without pod_uid or node, for repeated or negative CPU ids, or
    for a device granted twice.
    """

    pod_uid: str
    """metadata.uid of the pod: the key the agent's appliers and checkpoint use."""
    namespace: str
    name: str
    node: str
    """The Node the pod was bound to; an agent refuses an allocation for another node."""
    devices: tuple[DeviceGrant, ...] = ()
    cpus: tuple[int, ...] = ()
    """Exclusive CPU ids (kernel numbers, pinned pods only); empty means the shared pool."""
    numa_nodes: tuple[int, ...] = ()
    """NUMA node ids the allocation's CPUs and devices sit on (unknown locality left out)."""
    cost: float = 0.0
    """The placement's weighted distance sum (distance.DEFAULT_WEIGHTS units); lower is closer."""
    worst_level: str = "X"
    """The farthest `Level` between any two granted endpoints (`X`: nothing to compare)."""
    network: NetworkGrant | None = None

    def __post_init__(self) -> None:
        if not self.pod_uid or not self.node:
            raise ValueError("allocation needs pod_uid and node")
        if len(set(self.cpus)) != len(self.cpus) or any(c < 0 for c in self.cpus):
            raise ValueError(f"cpus must be distinct non-negative ids, got {list(self.cpus)}")
        ids = [(d.resource, d.id) for d in self.devices]
        if len(set(ids)) != len(ids):
            raise ValueError("a device appears twice in the allocation")

    def device_ids(self, resource: str) -> tuple[str, ...]:
        """Ids of the grants of `resource`, in grant order."""
        return tuple(d.id for d in self.devices if d.resource == resource)

    def to_annotation(self) -> str:
        return to_json(self)

    @classmethod
    def from_annotation(cls, text: str) -> Allocation:
        """Decode the annotation's value; ModelDecodeError (naming the annotation and field) for text
        over 64 KiB, bad JSON, a missing or unknown field, or a value the constructors refuse."""
        if len(text) > 64 * 1024:
            raise ModelDecodeError(f"{ANNOTATION}: annotation is larger than 64 KiB")
        try:
            return from_json(cls, text)
        except ModelDecodeError as exc:
            raise ModelDecodeError(f"{ANNOTATION}: {exc}") from None


def pod_allocation(annotation: str | None, *, pod: str, pod_uid: str, node: str) -> Allocation:
    """The allocation a pod's ANNOTATION holds, checked to be for this pod (`pod_uid`) on `node`.

    `pod` is how messages name it (NAMESPACE/NAME). Raises ModelDecodeError `pod REF: ...` when the
    annotation is absent, unreadable, or names another node or pod uid."""
    if annotation is None:
        raise ModelDecodeError(f"pod {pod} has no {ANNOTATION}")
    try:
        allocation = Allocation.from_annotation(annotation)
    except ModelDecodeError as exc:
        raise ModelDecodeError(f"pod {pod}: {exc}") from None
    if allocation.node != node:
        raise ModelDecodeError(f"pod {pod}: {ANNOTATION} is for node {allocation.node!r}, not {node!r}")
    if allocation.pod_uid != pod_uid:
        raise ModelDecodeError(f"pod {pod}: {ANNOTATION} is for pod uid {allocation.pod_uid}, not {pod_uid}")
    return allocation
