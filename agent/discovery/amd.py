"""AMD GPUs from sysfs alone: ROCm's KFD topology joined to the amdgpu PCI functions.

Each GPU is a node under /sys/class/kfd/kfd/topology/nodes/N with a non-zero
`gpu_id`; its `properties` file holds `key value` lines (`domain`,
`location_id` = bus << 8 | devfn, `drm_render_minor`, `hive_id`, `unique_id`,
`gfx_target_version`, ...). Its `io_links/M/properties` name the peers: type 11
is XGMI (a link inside the GPU's hive), type 2 PCIe (to the CPU node). The GPU
is allocatable when /dev/kfd and its /dev/dri/renderDN exist under the same root.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import replace

from agent.discovery.sysfs import SysfsTree
from gedge_model import AmdGpu, PciDevice, XgmiLink

KFD_NODES = "sys/class/kfd/kfd/topology/nodes"
IOLINK_TYPE_XGMI = 11
AMD_VENDOR = 0x1002
AMDGPU_DRIVER = "amdgpu"


def read_properties(fs: SysfsTree, rel: str) -> dict[str, int]:
    """A KFD `properties` file as name -> integer; a line that is not `name <integer>` is a warning."""
    text = fs.read(rel)
    if text is None:
        return {}
    out: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            fs.warn(f"{fs.shown(rel)}: line {number} is not 'name value': {line[:60]!r}")
            continue
        out[parts[0]] = int(parts[1])
    return out


def kfd_pci_address(domain: int, location_id: int) -> str:
    """The PCI address KFD's `domain` and `location_id` (bus << 8 | device << 3 | function) name."""
    bus, devfn = (location_id >> 8) & 0xFF, location_id & 0xFF
    return f"{domain:04x}:{bus:02x}:{devfn >> 3:02x}.{devfn & 7}"


def read_amd_gpus(
    fs: SysfsTree, pci: Mapping[str, PciDevice], paths: Mapping[str, str]
) -> tuple[AmdGpu, ...]:
    """The KFD GPU nodes, numbered in node order, with their XGMI links; odd input becomes warnings."""
    found: list[tuple[int, AmdGpu, list[tuple[int, int]]]] = []
    for name in sorted((n for n in fs.listdir(KFD_NODES) if n.isdigit()), key=int):
        base = f"{KFD_NODES}/{name}"
        gpu_id = fs.read_int(f"{base}/gpu_id")
        if not gpu_id:
            continue  # a CPU node (gpu_id 0)
        props = read_properties(fs, f"{base}/properties")
        if "location_id" not in props:
            fs.warn(f"{fs.shown(base)}/properties: no location_id; GPU node skipped")
            continue
        address = kfd_pci_address(props.get("domain", 0), props["location_id"])
        if address not in pci:
            fs.warn(
                f"{fs.shown(base)}: PCI address {address} is not in /sys/bus/pci/devices; GPU node skipped"
            )
            continue
        render = props.get("drm_render_minor") or _render_minor(fs, paths.get(address))
        links: list[tuple[int, int]] = []
        for link in sorted((n for n in fs.listdir(f"{base}/io_links") if n.isdigit()), key=int):
            lp = read_properties(fs, f"{base}/io_links/{link}/properties")
            if lp.get("type") == IOLINK_TYPE_XGMI and "node_to" in lp:
                links.append((lp["node_to"], lp.get("weight", 15)))
        gpu = AmdGpu(
            index=0,
            pci_address=address,
            kfd_node=int(name),
            gpu_id=gpu_id,
            name=fs.read(f"{base}/name") or "",
            gfx_target_version=props.get("gfx_target_version"),
            render_minor=render or None,
            unique_id=f"0x{props['unique_id']:016x}" if props.get("unique_id") else None,
            hive_id=f"0x{props['hive_id']:016x}" if props.get("hive_id") else None,
        )
        found.append((int(name), gpu, links))
    by_node = {node: gpu.pci_address for node, gpu, _ in found}
    per_function = Counter(gpu.pci_address for _, gpu, _ in found)
    seen: Counter[str] = Counter()
    result = []
    for index, (node, gpu, links) in enumerate(found):
        xgmi = []
        for peer, weight in links:
            if peer not in by_node:
                fs.warn(f"{fs.shown(KFD_NODES)}/{node}: XGMI link to node {peer}, which is no GPU node")
                continue
            xgmi.append(XgmiLink(by_node[peer], weight))
        partition = seen[gpu.pci_address] if per_function[gpu.pci_address] > 1 else None
        seen[gpu.pci_address] += 1
        xgmi = [link for link in xgmi if link.peer_pci_address != gpu.pci_address]
        gpu = replace(
            gpu, index=index, partition=partition, xgmi_links=tuple(sorted(set(xgmi), key=_link_key))
        )
        missing = tuple(path for path in gpu.device_nodes if not fs.exists(path))
        if gpu.render_minor is None:
            fs.warn(f"AMD GPU {gpu.pci_address}: no DRM render node known; it is not allocatable")
        elif missing:
            fs.warn(
                f"AMD GPU {gpu.pci_address}: {', '.join(missing)} missing on this node; it is not allocatable"
            )
        result.append(replace(gpu, missing_nodes=missing))
    known = set(by_node.values())
    for address, dev in sorted(pci.items()):
        amdgpu = dev.vendor_id == AMD_VENDOR and dev.driver == AMDGPU_DRIVER and dev.base_class == 0x03
        if amdgpu and address not in known:
            fs.warn(f"AMD GPU {address} (amdgpu) has no KFD topology node; it is not allocatable")
    return tuple(result)


def _link_key(link: XgmiLink) -> tuple[str, int]:
    return (link.peer_pci_address, link.weight)


def _render_minor(fs: SysfsTree, path: str | None) -> int | None:
    """N of the renderDN entry under the PCI function's drm/ folder, for kernels without drm_render_minor."""
    if path is None:
        return None
    for entry in fs.listdir(f"{path}/drm"):
        if entry.startswith("renderD") and entry[7:].isdigit():
            return int(entry[7:])
    return None
