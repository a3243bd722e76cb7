"""Network interfaces on PCI (with SR-IOV PF/VF relations), RDMA devices and NVMe controllers.

Each is found through its class directory (/sys/class/net, infiniband, nvme)
and tied to the PCI function its canonical path lies under; purely virtual
devices (loopback, bridges, veth, NVMe over fabrics) have none and are left out.
"""

from __future__ import annotations

import re

from agent.discovery.pci import pci_address_of
from agent.discovery.sysfs import SysfsTree
from gedge_model import NetInterface, NvmeDevice, PciDevice, RdmaDevice, VirtualFunction

NET_CLASS = "sys/class/net"
INFINIBAND_CLASS = "sys/class/infiniband"
NVME_CLASS = "sys/class/nvme"
_VIRTFN = re.compile(r"^virtfn(\d+)$")


def _pci_backed(
    fs: SysfsTree, class_dir: str, name: str, pci: dict[str, PciDevice]
) -> tuple[str, str] | None:
    """(canonical path, PCI address) of a class entry that lies under a known PCI function."""
    path = fs.resolve(f"{class_dir}/{name}")
    if path is None or "/virtual/" in f"/{path}/":
        return None
    address = pci_address_of(path)
    if address is None or address not in pci:
        return None
    return path, address


def read_interfaces(
    fs: SysfsTree, pci: dict[str, PciDevice], paths: dict[str, str]
) -> tuple[NetInterface, ...]:
    """PCI-backed interfaces by name; a PF lists its VFs, a VF names its PF."""
    netdev_of: dict[str, str] = {}
    found: list[tuple[str, str, str]] = []
    for name in fs.listdir(NET_CLASS):
        backed = _pci_backed(fs, NET_CLASS, name, pci)
        if backed is None:
            continue
        path, address = backed
        found.append((name, path, address))
        netdev_of.setdefault(address, name)
    result = []
    for name, path, address in found:
        device_path = paths.get(address)
        totalvfs = numvfs = 0
        vfs: tuple[VirtualFunction, ...] = ()
        if device_path is not None and fs.exists(f"{device_path}/sriov_totalvfs"):
            totalvfs = fs.read_int(f"{device_path}/sriov_totalvfs") or 0
            numvfs = fs.read_int(f"{device_path}/sriov_numvfs") or 0
            vfs = _virtual_functions(fs, device_path, netdev_of, pci)
            if len(vfs) != numvfs:
                fs.warn(
                    f"{fs.shown(device_path)}: sriov_numvfs is {numvfs} but {len(vfs)} virtfn links exist"
                )
        result.append(
            NetInterface(
                name=name,
                pci_address=address,
                mac=fs.read(f"{path}/address"),
                speed_mbps=_speed(fs, path),
                operstate=fs.read(f"{path}/operstate"),
                sriov_totalvfs=totalvfs,
                sriov_numvfs=numvfs,
                vfs=vfs,
                physfn=pci[address].physfn,
            )
        )
    return tuple(sorted(result, key=lambda i: i.name))


def _speed(fs: SysfsTree, path: str) -> int | None:
    """Link speed in Mb/s; a down link reads as an error or -1, both meaning unknown."""
    try:
        with open(fs.path(f"{path}/speed"), "rb") as fh:
            value = int(fh.read(64).strip() or b"-1")
    except (OSError, ValueError):
        return None
    return value if value > 0 else None


def _virtual_functions(
    fs: SysfsTree, device_path: str, netdev_of: dict[str, str], pci: dict[str, PciDevice]
) -> tuple[VirtualFunction, ...]:
    vfs = []
    for entry in fs.listdir(device_path):
        m = _VIRTFN.match(entry)
        if not m:
            continue
        target = fs.resolve(f"{device_path}/{entry}")
        vf_address = pci_address_of(target) if target else None
        if vf_address is None:
            fs.warn(f"{fs.shown(device_path)}/{entry}: does not lead to a PCI function")
            continue
        netdev = netdev_of.get(vf_address)
        if netdev is None:
            names = fs.listdir(f"{target}/net")
            netdev = names[0] if names else None
        known = pci.get(vf_address)
        driver = known.driver if known is not None else fs.link_name(f"{target}/driver")
        vfs.append(VirtualFunction(int(m.group(1)), vf_address, netdev, driver))
    return tuple(sorted(vfs, key=lambda v: v.index))


def read_rdma(
    fs: SysfsTree, pci: dict[str, PciDevice], interfaces: tuple[NetInterface, ...]
) -> tuple[RdmaDevice, ...]:
    result = []
    for name, path, address in _pci_backed_class(fs, INFINIBAND_CLASS, pci):
        netdevs = tuple(sorted(i.name for i in interfaces if i.pci_address == address))
        result.append(RdmaDevice(name, address, netdevs, fs.read(f"{path}/node_guid")))
    return tuple(result)


def read_nvme(fs: SysfsTree, pci: dict[str, PciDevice]) -> tuple[NvmeDevice, ...]:
    return tuple(
        NvmeDevice(name, address, fs.read(f"{path}/model"))
        for name, path, address in _pci_backed_class(fs, NVME_CLASS, pci)
    )


def _pci_backed_class(fs: SysfsTree, cls: str, pci: dict[str, PciDevice]) -> list[tuple[str, str, str]]:
    """(name, sysfs path, PCI address) of each entry of a /sys/class folder backed by a known PCI
    device, sorted by name."""
    found = []
    for name in sorted(fs.listdir(cls)):
        backed = _pci_backed(fs, cls, name, pci)
        if backed is not None:
            found.append((name, *backed))
    return found
