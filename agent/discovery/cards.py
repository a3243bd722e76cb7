"""FPGA and ASIC cards a pod can be given: which vendor stack drives each, and its device nodes.

Read from the card's PCI function in sysfs, in this order:
- DFL (in-tree Intel FPGA driver): `<function>/fpga_region/regionX/dfl-port.N` -> /dev/dfl-port.N
- OPAE (Intel's out-of-tree driver): `<function>/fpga/intel-fpga-dev.X/intel-fpga-port.N`
  -> /dev/intel-fpga-port.N
- XRT (Xilinx/AMD Alveo): the user function bound to `xocl`, `<function>/drm/renderDN` ->
  /dev/dri/renderDN, plus the management function of the same slot bound to `xclmgmt`,
  /dev/xclmgmt<instance> (`<mgmt function>/instance`, else domain << 16 | bus << 8 | devfn)
- VFIO: a function bound to `vfio-pci`, /dev/vfio/<iommu group> and /dev/vfio/vfio
A card with none of these stays a compute kind for `gedge.io/compute` but is not allocatable,
and so is one whose device nodes are missing under the same root's /dev.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from agent.discovery.sysfs import SysfsTree
from gedge_model import Accelerator, CardStack, DeviceKind, PciDevice

XRT_USER_DRIVER = "xocl"
XRT_MGMT_DRIVER = "xclmgmt"
VFIO_DRIVER = "vfio-pci"
VFIO_CONTAINER = "/dev/vfio/vfio"
FPGA_STACKS = (CardStack.DFL, CardStack.OPAE, CardStack.XRT)


def with_cards(
    fs: SysfsTree,
    accelerators: Iterable[Accelerator],
    pci: Mapping[str, PciDevice],
    paths: Mapping[str, str],
) -> tuple[Accelerator, ...]:
    """The accelerators, FPGA/ASIC ones with their stack, device nodes and companion functions.

    A card found through an FPGA stack is an FPGA whatever its PCI vendor (Intel PACs are 8086).
    """
    out = []
    for acc in accelerators:
        dev = pci.get(acc.pci_address)
        path = paths.get(acc.pci_address)
        if acc.kind not in (DeviceKind.FPGA, DeviceKind.ASIC) or dev is None or path is None:
            out.append(acc)
            continue
        stack, nodes, functions = _stack(fs, dev, path, pci, paths)
        kind = DeviceKind.FPGA if stack in FPGA_STACKS else acc.kind
        missing = tuple(node for node in nodes if not fs.exists(node))
        if missing:
            fs.warn(
                f"{kind.value} {acc.pci_address} ({stack}): {', '.join(missing)} missing on this node; "
                "it is not allocatable"
            )
        out.append(
            replace(
                acc,
                kind=kind,
                stack=stack,
                device_nodes=nodes,
                functions=functions,
                driver=dev.driver,
                missing_nodes=missing,
            )
        )
    return tuple(out)


def _stack(
    fs: SysfsTree, dev: PciDevice, path: str, pci: Mapping[str, PciDevice], paths: Mapping[str, str]
) -> tuple[CardStack | None, tuple[str, ...], tuple[str, ...]]:
    for stack, folder, prefix in (
        (CardStack.DFL, "fpga_region", "dfl-port."),
        (CardStack.OPAE, "fpga", "intel-fpga-port."),
    ):
        ports = [
            entry
            for region in fs.listdir(f"{path}/{folder}")
            for entry in fs.listdir(f"{path}/{folder}/{region}")
            if entry.startswith(prefix)
        ]
        if ports:
            return stack, tuple(f"/dev/{p}" for p in sorted(ports, key=_numbered)), ()
    if dev.driver == XRT_USER_DRIVER:
        return _xrt(fs, dev, path, pci, paths)
    if dev.driver == VFIO_DRIVER:
        group = fs.link_name(f"{path}/iommu_group")
        if group is None or not group.isdigit():
            fs.warn(f"{fs.shown(path)}: bound to vfio-pci but has no iommu_group; not allocatable")
            return None, (), ()
        return CardStack.VFIO, (f"/dev/vfio/{group}", VFIO_CONTAINER), ()
    return None, (), ()


def _xrt(
    fs: SysfsTree, dev: PciDevice, path: str, pci: Mapping[str, PciDevice], paths: Mapping[str, str]
) -> tuple[CardStack | None, tuple[str, ...], tuple[str, ...]]:
    renders = [e for e in fs.listdir(f"{path}/drm") if e.startswith("renderD") and e[7:].isdigit()]
    if not renders:
        fs.warn(f"{fs.shown(path)}: bound to xocl but has no drm/renderD* node; not allocatable")
        return None, (), ()
    nodes = [f"/dev/dri/{renders[0]}"]
    slot = dev.address.rsplit(".", 1)[0]
    functions = []
    for address, other in sorted(pci.items()):
        if other.address.rsplit(".", 1)[0] != slot or other.driver != XRT_MGMT_DRIVER:
            continue
        instance = fs.read_int(f"{paths[address]}/instance") if address in paths else None
        if instance is None:
            instance = xclmgmt_instance(address)
        nodes.append(f"/dev/xclmgmt{instance}")
        functions.append(address)
    return CardStack.XRT, tuple(nodes), tuple(functions)


def xclmgmt_instance(address: str) -> int:
    """XRT's default management instance number: domain << 16 | bus << 8 | device << 3 | function."""
    domain, bus, rest = address.split(":")
    slot, function = rest.split(".")
    return int(domain, 16) << 16 | int(bus, 16) << 8 | int(slot, 16) << 3 | int(function)


def _numbered(name: str) -> tuple[int, str]:
    tail = name.rsplit(".", 1)[-1]
    return (int(tail) if tail.isdigit() else 1 << 30, name)
