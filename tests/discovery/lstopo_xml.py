"""What `lstopo --of xml --whole-io` says about a machine, reduced to what discovery is compared on."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path


def parse_hwloc_bitmap(text: str) -> frozenset[int]:
    """hwloc's `0x000000ff,0xffffffff` (32-bit words, most significant first) to a set of indexes."""
    words = [w.strip().removeprefix("0x") for w in text.split(",") if w.strip()]
    if any("f...f" in w for w in words):
        raise ValueError(f"infinite hwloc bitmap {text!r}")
    value = int("".join(w.rjust(8, "0") for w in words) or "0", 16)
    return frozenset(i for i in range(value.bit_length()) if value >> i & 1)


@dataclass(frozen=True)
class LstopoPci:
    address: str
    class_id: int
    """Base class and subclass, 16 bits (hwloc keeps no programming interface)."""
    vendor_id: int
    device_id: int
    bridges: tuple[str, ...]
    host_bridge: int
    """Index of the host bridge object in document order."""
    nodeset: frozenset[int]
    """NUMA nodes of the object the host bridge hangs under."""


@dataclass
class Lstopo:
    numa_cpusets: dict[int, frozenset[int]] = field(default_factory=dict)
    numa_memory: dict[int, int] = field(default_factory=dict)
    pus: set[int] = field(default_factory=set)
    cores: set[frozenset[int]] = field(default_factory=set)
    pci: dict[str, LstopoPci] = field(default_factory=dict)


def read_lstopo(path: Path) -> Lstopo:
    result = Lstopo()
    root = ET.parse(path).getroot()
    host_bridges = 0

    def walk(obj: ET.Element, nodeset: frozenset[int], bridges: tuple[str, ...], host: int | None) -> None:
        nonlocal host_bridges
        kind = obj.get("type")
        if kind == "NUMANode":
            index = int(obj.get("os_index", "-1"))
            result.numa_cpusets[index] = parse_hwloc_bitmap(obj.get("cpuset", ""))
            if obj.get("local_memory"):
                result.numa_memory[index] = int(obj.get("local_memory", "0"))
        elif kind == "PU":
            result.pus.add(int(obj.get("os_index", "-1")))
        elif kind == "Core":
            result.cores.add(
                frozenset(
                    int(pu.get("os_index", "-1")) for pu in obj.iter("object") if pu.get("type") == "PU"
                )
            )
        if obj.get("nodeset") and kind not in ("Bridge", "PCIDev", "OSDev"):
            nodeset = parse_hwloc_bitmap(obj.get("nodeset", ""))
        busid = obj.get("pci_busid")
        if kind == "Bridge" and busid is None:
            host = host_bridges
            host_bridges += 1
        if kind in ("Bridge", "PCIDev") and busid is not None and host is not None:
            class_hex, ids = obj.get("pci_type", "0000 [0000:0000]").split()[:2]
            vendor, device = ids.strip("[]").split(":")
            result.pci[busid] = LstopoPci(
                busid, int(class_hex, 16), int(vendor, 16), int(device, 16), bridges, host, nodeset
            )
        below = (*bridges, busid) if kind == "Bridge" and busid is not None else bridges
        for child in obj.findall("object"):
            walk(child, nodeset, below, host)

    for top in root.findall("object"):
        walk(top, frozenset(), (), None)
    return result
