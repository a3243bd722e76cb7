import os
from pathlib import Path

from agent.discovery import discover
from tests.discovery.sysfs_builder import SysfsBuilder

BRIDGE = 0x060400
GPU_3D = 0x030200
NIC = 0x020000


def _two_nodes(b: SysfsBuilder) -> None:
    for cpu in range(4):
        b.cpu(cpu, package=cpu // 2)
    b.node(0, (0, 1), 1024, (10, 21))
    b.node(1, (2, 3), 1024, (21, 10))


def test_devices_behind_several_switches_keep_their_bridge_chain(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path)
    _two_nodes(b)
    chain = ["pci0000:00", "0000:00:01.0", "0000:01:00.0", "0000:02:08.0", "0000:03:00.0", "0000:04:10.0"]
    for depth in range(2, len(chain) + 1):
        b.pci(chain[:depth], BRIDGE, numa=0, driver="pcieport")
    b.pci(
        [*chain, "0000:05:00.0"], GPU_3D, 0x10DE, 0x2330, numa=0, driver="nvidia", link=("16.0 GT/s PCIe", 16)
    )
    topo = discover(tmp_path)
    gpu = topo.pci("0000:05:00.0")
    assert gpu is not None
    assert gpu.host_bridge == "pci0000:00"
    assert gpu.bridges == tuple(chain[1:])
    assert (gpu.class_id, gpu.vendor_id, gpu.device_id, gpu.driver) == (GPU_3D, 0x10DE, 0x2330, "nvidia")
    assert (gpu.link_speed, gpu.link_width) == ("16.0 GT/s PCIe", 16)
    assert topo.pci("0000:00:01.0").bridges == ()
    assert [a.pci_address for a in topo.accelerators] == ["0000:05:00.0"]
    assert topo.warnings == ()


def test_domains_wider_than_16_bits_and_nested_vmd_domains(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path)
    _two_nodes(b)
    b.pci(["pci12345678:00", "12345678:00:04.0"], NIC, numa=1)
    b.pci(["pci0000:00", "0000:00:0e.0"], 0x010400, numa=0)
    vmd = ["pci0000:00", "0000:00:0e.0", "pci10000:00"]
    b.pci([*vmd, "10000:00:01.0"], BRIDGE, numa=0)
    b.pci([*vmd, "10000:00:01.0", "10000:01:00.0"], 0x010802, numa=0)
    topo = discover(tmp_path)
    wide = topo.pci("12345678:00:04.0")
    assert (wide.host_bridge, wide.bridges, wide.numa_node) == ("pci12345678:00", (), 1)
    nvme = topo.pci("10000:01:00.0")
    assert (nvme.host_bridge, nvme.bridges) == ("pci10000:00", ("10000:00:01.0",))
    assert [d.address for d in topo.pci_devices] == [
        "0000:00:0e.0",
        "10000:00:01.0",
        "10000:01:00.0",
        "12345678:00:04.0",
    ]


def test_numa_minus_one_is_derived_from_local_cpulist_then_the_nearest_bridge(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path)
    _two_nodes(b)
    b.pci(["pci0000:80", "0000:80:01.0"], BRIDGE, numa=-1, local_cpulist=(2, 3))
    b.pci(["pci0000:80", "0000:80:01.0", "0000:81:00.0"], NIC, numa=-1, local_cpulist=(0, 1, 2, 3))
    b.pci(["pci0000:80", "0000:80:01.0", "0000:81:00.1"], NIC, numa=0)
    b.pci(["pci0000:40", "0000:40:01.0"], BRIDGE, numa=-1, local_cpulist=(0, 1, 2, 3))
    b.pci(["pci0000:40", "0000:40:01.0", "0000:41:00.0"], NIC, numa=-1, local_cpulist=(0, 1, 2, 3))
    b.pci(["pci0000:20", "0000:20:00.0"], NIC, numa=None, local_cpulist=None)
    b.pci(["pci0000:60", "0000:60:00.0"], NIC, numa=7, local_cpulist=(0, 1))
    topo = discover(tmp_path)
    located = {d.address: (d.numa_node, d.numa_source) for d in topo.pci_devices}
    assert located == {
        "0000:80:01.0": (1, "local_cpulist"),
        "0000:81:00.0": (1, "ancestor"),
        "0000:81:00.1": (0, "sysfs"),
        "0000:40:01.0": (None, "none"),
        "0000:41:00.0": (None, "none"),
        "0000:20:00.0": (None, "none"),
        "0000:60:00.0": (0, "local_cpulist"),
    }
    assert topo.warnings == ("/sys/devices/pci0000:60/0000:60:00.0/numa_node: NUMA node 7 does not exist",)


def test_one_node_machine_places_every_device_on_it(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path)
    b.cpu(0)
    b.node(0, (0,), 1024, (10,))
    b.pci(["pci0000:00", "0000:00:03.0"], NIC, numa=-1)
    dev = discover(tmp_path).pci("0000:00:03.0")
    assert (dev.numa_node, dev.numa_source) == (0, "only-node")


def test_missing_attributes_loops_and_strays_are_warnings(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path)
    _two_nodes(b)
    good = b.pci(["pci0000:00", "0000:00:02.0"], NIC, numa=0)
    (tmp_path / good / "vendor").unlink()
    devices = tmp_path / "sys/bus/pci/devices"
    os.symlink("0000:00:09.0", devices / "0000:00:08.0")
    os.symlink("0000:00:08.0", devices / "0000:00:09.0")
    os.symlink("../../../devices/platform/serial8250", devices / "0000:00:0a.0")
    (devices / "not-an-address").mkdir()
    topo = discover(tmp_path)
    assert [d.address for d in topo.pci_devices] == ["0000:00:02.0"]
    assert topo.pci("0000:00:02.0").vendor_id == 0
    assert set(topo.warnings) == {
        "/sys/devices/pci0000:00/0000:00:02.0/vendor: missing",
        "/sys/bus/pci/devices/0000:00:08.0: symlink loop",
        "/sys/bus/pci/devices/0000:00:09.0: symlink loop",
        "/sys/bus/pci/devices/0000:00:0a.0: resolves to /sys/devices/platform/serial8250, "
        "not a device under /sys/devices; skipped",
        "/sys/bus/pci/devices/not-an-address: not a PCI address, skipped",
    }
