from pathlib import Path

from agent.discovery import discover
from tests.discovery.sysfs_builder import SysfsBuilder

MELLANOX = 0x15B3


def _node(b: SysfsBuilder) -> None:
    b.cpu(0)
    b.cpu(1)
    b.node(0, (0, 1), 1024, (10,))


def test_sriov_pf_and_vfs_with_their_netdevs_and_rdma(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path)
    _node(b)
    port = ["pci0000:00", "0000:00:01.0"]
    b.pci(port, 0x060400, numa=0)
    pf = b.pci([*port, "0000:01:00.0"], 0x020000, MELLANOX, 0x101D, numa=0, driver="mlx5_core")
    vfs = [b.pci([*port, f"0000:01:00.{f}"], 0x020000, MELLANOX, 0x101E, numa=0) for f in (1, 2, 3)]
    b.sriov(pf, vfs, total=16)
    b.netdev(pf, "enp1s0f0np0", "0c:42:a1:00:00:01", speed=200000)
    b.netdev(vfs[0], "enp1s0f0v0", "0c:42:a1:00:00:11", speed=-1, state="down")
    b.netdev(vfs[2], "enp1s0f0v2", "0c:42:a1:00:00:13")
    b.infiniband(pf, "mlx5_0", "0c42:a103:0000:0001")
    b.virtual_netdev("lo")
    b.virtual_netdev("br0")
    topo = discover(tmp_path)
    assert [i.name for i in topo.interfaces] == ["enp1s0f0np0", "enp1s0f0v0", "enp1s0f0v2"]
    pf_if = topo.interfaces[0]
    assert (pf_if.pci_address, pf_if.mac, pf_if.speed_mbps, pf_if.operstate) == (
        "0000:01:00.0",
        "0c:42:a1:00:00:01",
        200000,
        "up",
    )
    assert (pf_if.sriov_totalvfs, pf_if.sriov_numvfs, pf_if.physfn) == (16, 3, None)
    assert [(v.index, v.pci_address, v.netdev) for v in pf_if.vfs] == [
        (0, "0000:01:00.1", "enp1s0f0v0"),
        (1, "0000:01:00.2", None),
        (2, "0000:01:00.3", "enp1s0f0v2"),
    ]
    vf_if = topo.interfaces[1]
    assert (vf_if.physfn, vf_if.speed_mbps, vf_if.operstate, vf_if.vfs) == ("0000:01:00.0", None, "down", ())
    assert topo.pci("0000:01:00.2").physfn == "0000:01:00.0"
    assert [(r.name, r.pci_address, r.netdevs, r.node_guid) for r in topo.rdma_devices] == [
        ("mlx5_0", "0000:01:00.0", ("enp1s0f0np0",), "0c42:a103:0000:0001")
    ]
    assert topo.warnings == ()


def test_numvfs_disagreeing_with_virtfn_links_is_a_warning(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path)
    _node(b)
    pf = b.pci(["pci0000:00", "0000:00:03.0"], 0x020000, 0x8086, 0x1572, numa=0)
    b.sriov(pf, [], total=8)
    b.write(f"{pf}/sriov_numvfs", "4")
    b.netdev(pf, "eth0", "3c:fd:fe:00:00:01")
    topo = discover(tmp_path)
    assert topo.interfaces[0].sriov_numvfs == 4 and topo.interfaces[0].vfs == ()
    assert topo.warnings == (
        "/sys/devices/pci0000:00/0000:00:03.0: sriov_numvfs is 4 but 0 virtfn links exist",
    )


def test_nvme_on_pci_and_virtio_netdev_below_its_pci_function(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path)
    _node(b)
    nvme = b.pci(["pci0000:00", "0000:00:04.0"], 0x010802, 0x144D, 0xA80A, numa=0, driver="nvme")
    b.nvme(nvme, "nvme0", "SAMSUNG MZQL2")
    b.write("sys/devices/virtual/nvme-fabrics/ctl/nvme1/model", "Linux")
    b.link("sys/class/nvme/nvme1", "sys/devices/virtual/nvme-fabrics/ctl/nvme1")
    virtio = b.pci(["pci0000:00", "0000:00:03.0"], 0x020000, 0x1AF4, 0x1000, numa=0, driver="virtio-pci")
    b.netdev(f"{virtio}/virtio0", "ens3", "52:54:00:00:00:01")
    topo = discover(tmp_path)
    assert [(n.name, n.pci_address, n.model) for n in topo.nvme_devices] == [
        ("nvme0", "0000:00:04.0", "SAMSUNG MZQL2")
    ]
    assert [(i.name, i.pci_address) for i in topo.interfaces] == [("ens3", "0000:00:03.0")]


def test_accelerators_by_class(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path)
    _node(b)
    hb = "pci0000:00"
    b.pci([hb, "0000:00:01.0"], 0x030000, 0x102B, 0x0532, numa=0)  # BMC VGA
    b.pci([hb, "0000:00:02.0"], 0x030000, 0x10DE, 0x2684, numa=0)  # GeForce as VGA
    b.pci([hb, "0000:00:03.0"], 0x030200, 0x10DE, 0x2330, numa=0)  # H100 3D controller
    b.pci([hb, "0000:00:04.0"], 0x120000, 0x1DA3, 0x1020, numa=0)  # Gaudi processing accelerator
    b.pci([hb, "0000:00:05.0"], 0x120000, 0x10EE, 0x5000, numa=0)  # Alveo FPGA
    b.pci([hb, "0000:00:06.0"], 0x0B4000, 0x8086, 0x0B25, numa=0)  # co-processor
    b.pci([hb, "0000:00:07.0"], 0x020000, 0x8086, 0x1572, numa=0)  # a NIC is no accelerator
    kinds = {a.pci_address: a.kind.value for a in discover(tmp_path).accelerators}
    assert kinds == {
        "0000:00:01.0": "DISPLAY",
        "0000:00:02.0": "GPU",
        "0000:00:03.0": "GPU",
        "0000:00:04.0": "ASIC",
        "0000:00:05.0": "FPGA",
        "0000:00:06.0": "ASIC",
    }
