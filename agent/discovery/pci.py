"""The PCI tree: every function's ids, driver, link, NUMA locality and bridge chain.

The chain comes from the canonical path of /sys/bus/pci/devices/ADDR under
/sys/devices: `pciDDDD:BB` is the host bridge, the PCI addresses after it are
the bridges down to the device.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from agent.discovery.sysfs import SysfsTree
from gedge_model import NumaNode, PciDevice

PCI_DEVICES = "sys/bus/pci/devices"
PCI_ADDRESS = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
HOST_BRIDGE = re.compile(r"^pci[0-9a-f]{4,8}:[0-9a-f]{2}$")

NUMA_FROM_SYSFS = "sysfs"
NUMA_FROM_LOCAL_CPULIST = "local_cpulist"
NUMA_FROM_ANCESTOR = "ancestor"
NUMA_FROM_ONLY_NODE = "only-node"
NUMA_UNKNOWN = "none"


@dataclass(frozen=True)
class _RawDevice:
    device: PciDevice
    sysfs_numa: int | None
    path: str


def read_pci(fs: SysfsTree, numa_nodes: Iterable[NumaNode]) -> tuple[PciDevice, ...]:
    """Every PCI function under `fs.root`, sorted by address, with NUMA locality resolved."""
    raw: list[_RawDevice] = []
    for name in fs.listdir(PCI_DEVICES):
        dev = _read_device(fs, name)
        if dev is not None:
            raw.append(dev)
    return _with_locality(fs, raw, tuple(numa_nodes))


def device_paths(fs: SysfsTree) -> dict[str, str]:
    """PCI address -> canonical sysfs path (relative to the root), for readers that map back to PCI."""
    result: dict[str, str] = {}
    for name in fs.listdir(PCI_DEVICES):
        path = fs.resolve(f"{PCI_DEVICES}/{name}")
        if path is not None:
            result[name.lower()] = path
    return result


def pci_address_of(path: str) -> str | None:
    """The PCI function a sysfs path lies under: the last PCI address component of it."""
    found = None
    for part in path.split("/"):
        if PCI_ADDRESS.match(part):
            found = part
    return found


def _read_device(fs: SysfsTree, name: str) -> _RawDevice | None:
    address = name.lower()
    entry = f"{PCI_DEVICES}/{name}"
    if not PCI_ADDRESS.match(address):
        fs.warn(f"{fs.shown(entry)}: not a PCI address, skipped")
        return None
    path = fs.resolve(entry)
    if path is None:
        return None
    parts = path.split("/")
    if parts[:2] != ["sys", "devices"] or parts[-1].lower() != address:
        fs.warn(f"{fs.shown(entry)}: resolves to /{path}, not a device under /sys/devices; skipped")
        return None
    host_bridge, chain = _host_bridge_and_chain(parts[2:])
    if host_bridge is None:
        domain, bus = address.split(":")[:2]
        host_bridge = f"pci{domain}:{bus}"
        fs.warn(f"{fs.shown(path)}: no pciDDDD:BB host bridge in the path; using {host_bridge}")
    class_id = fs.read_int(f"{path}/class", base=16, required=True)
    vendor_id = fs.read_int(f"{path}/vendor", base=16, required=True)
    device_id = fs.read_int(f"{path}/device", base=16, required=True)
    sysfs_numa = fs.read_int(f"{path}/numa_node")
    local_cpus = fs.read_cpulist(f"{path}/local_cpulist")
    if local_cpus is None:
        local_cpus = fs.read_cpumask(f"{path}/local_cpus")
    speed = fs.read(f"{path}/current_link_speed")
    width = fs.read_int(f"{path}/current_link_width")
    physfn = fs.link_name(f"{path}/physfn")
    device = PciDevice(
        address=address,
        class_id=class_id if class_id is not None else 0,
        vendor_id=vendor_id if vendor_id is not None else 0,
        device_id=device_id if device_id is not None else 0,
        host_bridge=host_bridge,
        bridges=tuple(chain[:-1]),
        driver=fs.link_name(f"{path}/driver"),
        local_cpus=local_cpus or (),
        link_speed=speed if speed and not speed.lower().startswith("unknown") else None,
        link_width=width if width else None,
        physfn=physfn.lower() if physfn else None,
    )
    return _RawDevice(device, sysfs_numa, path)


def _host_bridge_and_chain(parts: list[str]) -> tuple[str | None, list[str]]:
    """The last host bridge in the path and the PCI addresses below it (VMD domains nest one more)."""
    host_bridge = None
    chain: list[str] = []
    for part in parts:
        if HOST_BRIDGE.match(part.lower()):
            host_bridge = part.lower()
            chain = []
        elif PCI_ADDRESS.match(part.lower()):
            chain.append(part.lower())
    return host_bridge, chain


def _with_locality(
    fs: SysfsTree, raw: list[_RawDevice], nodes: tuple[NumaNode, ...]
) -> tuple[PciDevice, ...]:
    """numa_node from sysfs; for -1: the one node local_cpulist falls in, else the nearest bridge's."""
    node_cpus = {n.id: set(n.cpus) for n in nodes}
    own: dict[str, tuple[int, str]] = {}
    for item in raw:
        dev = item.device
        if item.sysfs_numa is not None and item.sysfs_numa >= 0:
            if item.sysfs_numa in node_cpus:
                own[dev.address] = (item.sysfs_numa, NUMA_FROM_SYSFS)
                continue
            fs.warn(f"{fs.shown(item.path)}/numa_node: NUMA node {item.sysfs_numa} does not exist")
        local = set(dev.local_cpus)
        touching = [node for node, cpus in node_cpus.items() if cpus & local]
        if len(touching) == 1:
            own[dev.address] = (touching[0], NUMA_FROM_LOCAL_CPULIST)
    result = []
    for item in sorted(raw, key=lambda r: _sort_key(r.device.address)):
        dev = item.device
        numa, source = own.get(dev.address, (None, NUMA_UNKNOWN))
        if numa is None:
            for bridge in reversed(dev.bridges):
                if bridge in own:
                    numa, source = own[bridge][0], NUMA_FROM_ANCESTOR
                    break
        if numa is None and len(node_cpus) == 1:
            numa, source = next(iter(node_cpus)), NUMA_FROM_ONLY_NODE
        result.append(replace(dev, numa_node=numa, numa_source=source))
    return tuple(result)


def _sort_key(address: str) -> tuple[int, int, int, int]:
    domain, bus, rest = address.split(":")
    slot, function = rest.split(".")
    return int(domain, 16), int(bus, 16), int(slot, 16), int(function, 16)
