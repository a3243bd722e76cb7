"""A synthetic 2-socket edge server with FPGA and ASIC cards, laid out as their drivers show them.

Socket 0, host bridge pci0000:15: a PCIe switch holding an Intel FPGA PAC D5005 (Stratix 10,
8086:0b2b, `dfl-pci` with fpga_region/region0/dfl-fme.0 and dfl-port.0) and a ConnectX NIC
with two SR-IOV VFs. Socket 1, pci0000:85: a switch with a Xilinx Alveo U250 (management
function .0 10ee:5004 on `xclmgmt` with its `instance`, user function .1 10ee:5005 on `xocl`
with drm/renderD129) and a second NIC. Socket 1, pci0000:b0: an Agilex card on Intel's
out-of-tree OPAE driver (fpga/intel-fpga-dev.0/intel-fpga-port.0), an ASIC on `vfio-pci` in
IOMMU group 87, and an ASIC on a driver with no known device nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.discovery.sysfs_builder import SysfsBuilder

INTEL = 0x8086
XILINX = 0x10EE
MELLANOX = 0x15B3
ACCEL_CLASS = 0x120000

D5005 = "0000:18:00.0"
NIC0 = "0000:19:00.0"
ALVEO_MGMT = "0000:88:00.0"
ALVEO_USER = "0000:88:00.1"
NIC1 = "0000:89:00.0"
AGILEX = "0000:b2:00.0"
VFIO_ASIC = "0000:b3:00.0"
BARE_ASIC = "0000:b4:00.0"


@dataclass(frozen=True)
class CardBox:
    root: Path
    vfs0: tuple[str, ...]


def build_card_box(root: Path, *, dev_nodes: bool = True) -> CardBox:
    """The tree under root/sys; with dev_nodes, also the /dev nodes the drivers create."""
    b = SysfsBuilder(root)
    for socket in (0, 1):
        cpus = range(socket * 4, socket * 4 + 4)
        for cpu in cpus:
            b.cpu(cpu, package=socket)
        b.node(socket, list(cpus), 1 << 30, (10, 21) if socket == 0 else (21, 10))
    b.cpus_online(range(8))
    b.nodes_online((0, 1))
    b.write("proc/sys/kernel/hostname", "fpga-edge")

    def switch(host: str, bus: int, numa: int) -> list[list[str]]:
        port, up = f"0000:{bus:02x}:01.0", f"0000:{bus + 1:02x}:00.0"
        b.pci([host, port], 0x060400, numa=numa, driver="pcieport")
        b.pci([host, port, up], 0x060400, 0x10B5, 0x8747, numa=numa, driver="pcieport")
        downs = []
        for slot in (0, 1):
            down = f"0000:{bus + 2:02x}:{slot * 8:02x}.0"
            b.pci([host, port, up, down], 0x060400, 0x10B5, 0x8747, numa=numa, driver="pcieport")
            downs.append([host, port, up, down])
        return downs

    # socket 0: D5005 and a NIC under one switch
    d0, d1 = switch("pci0000:15", 0x15, 0)
    fpga = b.pci([*d0, D5005], ACCEL_CLASS, INTEL, 0x0B2B, numa=0, driver="dfl-pci")
    b.write(f"{fpga}/fpga_region/region0/dfl-fme.0/ports_num", "1")
    b.write(f"{fpga}/fpga_region/region0/dfl-fme.0/dev", "504:0")
    b.write(f"{fpga}/fpga_region/region0/dfl-port.0/afu_id", "d8424dc4a4a3c413f89e433683f9040b")
    b.write(f"{fpga}/fpga_region/region0/dfl-port.0/dev", "503:0")
    b.link("sys/class/fpga_region/region0", f"{fpga}/fpga_region/region0")
    pf = b.pci([*d1, NIC0], 0x020000, MELLANOX, 0x1017, numa=0, driver="mlx5_core")
    vfs = [
        b.pci([*d1, f"0000:19:00.{f}"], 0x020000, MELLANOX, 0x1018, numa=0, driver="mlx5_core")
        for f in (2, 3)
    ]
    b.sriov(pf, vfs, total=8)
    b.netdev(pf, "ens1f0", "b8:3f:d2:20:00:00")
    for i, vf in enumerate(vfs):
        b.netdev(vf, f"ens1f0v{i}", f"b8:3f:d2:20:00:1{i}")

    # socket 1: Alveo U250 (two functions) and a NIC under one switch
    d0, d1 = switch("pci0000:85", 0x85, 1)
    mgmt = b.pci([*d0, ALVEO_MGMT], ACCEL_CLASS, XILINX, 0x5004, numa=1, driver="xclmgmt")
    b.write(f"{mgmt}/instance", str(0x8800))
    user = b.pci([*d0, ALVEO_USER], ACCEL_CLASS, XILINX, 0x5005, numa=1, driver="xocl")
    b.write(f"{user}/drm/renderD129/dev", "226:129")
    b.write(f"{user}/drm/card1/dev", "226:1")
    nic1 = b.pci([*d1, NIC1], 0x020000, MELLANOX, 0x1017, numa=1, driver="mlx5_core")
    b.netdev(nic1, "ens2f0", "b8:3f:d2:20:01:00")

    # socket 1, another root complex: OPAE Agilex, a VFIO ASIC, an ASIC without known nodes
    host = "pci0000:b0"
    for i, (address, vendor, device, driver) in enumerate(
        (
            (AGILEX, INTEL, 0xBCCE, "intel-fpga-pci"),
            (VFIO_ASIC, 0x1E52, 0x0001, "vfio-pci"),
            (BARE_ASIC, 0x1E52, 0x0001, "vendor-accel"),
        )
    ):
        port = f"0000:b0:0{i + 1}.0"
        b.pci([host, port], 0x060400, numa=1, driver="pcieport")
        rel = b.pci([host, port, address], ACCEL_CLASS, vendor, device, numa=1, driver=driver)
        if address == AGILEX:
            b.write(f"{rel}/fpga/intel-fpga-dev.0/intel-fpga-fme.0/dev", "505:0")
            b.write(f"{rel}/fpga/intel-fpga-dev.0/intel-fpga-port.0/dev", "506:0")
        if address == VFIO_ASIC:
            b.write("sys/kernel/iommu_groups/87/type", "DMA")
            b.link(f"{rel}/iommu_group", "sys/kernel/iommu_groups/87")
    b.virtual_netdev("lo")
    if dev_nodes:
        for node in (
            "dfl-port.0",
            "dfl-fme.0",
            "dri/renderD129",
            "xclmgmt34816",
            "intel-fpga-port.0",
            "vfio/87",
            "vfio/vfio",
        ):
            b.write(f"dev/{node}", "")
    return CardBox(root, tuple(v.rsplit("/", 1)[-1] for v in vfs))
