"""FPGA and ASIC cards: the vendor stack and device nodes read from sysfs, and their place in the matrix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.cli import main
from agent.discovery import discover
from agent.discovery.cards import xclmgmt_instance
from gedge_model import CardStack, DeviceKind, Level, NodeTopology, from_json, pci_distance, to_json
from tests.discovery.card_box import (
    AGILEX,
    ALVEO_MGMT,
    ALVEO_USER,
    BARE_ASIC,
    D5005,
    NIC0,
    NIC1,
    VFIO_ASIC,
    build_card_box,
)


@pytest.fixture
def box(tmp_path: Path):
    return build_card_box(tmp_path)


def cards(topology: NodeTopology) -> dict[str, tuple[DeviceKind, CardStack | None, tuple[str, ...]]]:
    return {a.pci_address: (a.kind, a.stack, a.device_nodes) for a in topology.accelerators}


def test_each_stack_and_its_device_nodes(box) -> None:
    topology = discover(box.root)
    found = cards(topology)
    assert found[D5005] == (DeviceKind.FPGA, CardStack.DFL, ("/dev/dfl-port.0",))
    assert found[ALVEO_USER] == (DeviceKind.FPGA, CardStack.XRT, ("/dev/dri/renderD129", "/dev/xclmgmt34816"))
    assert found[AGILEX] == (DeviceKind.FPGA, CardStack.OPAE, ("/dev/intel-fpga-port.0",))
    assert found[VFIO_ASIC] == (DeviceKind.ASIC, CardStack.VFIO, ("/dev/vfio/87", "/dev/vfio/vfio"))
    assert found[BARE_ASIC] == (DeviceKind.ASIC, None, ())
    assert found[ALVEO_MGMT] == (DeviceKind.FPGA, None, ())
    assert [c.pci_address for c in topology.cards] == [D5005, ALVEO_USER, AGILEX, VFIO_ASIC]
    assert topology.warnings == ()
    assert from_json(NodeTopology, to_json(topology)) == topology


def test_intel_pac_is_an_fpga_though_its_vendor_is_intel(box) -> None:
    # 8086:0b2b is class 0x1200 from a vendor that also makes ASICs: the DFL tree decides
    shutil.rmtree(box.root / "sys/bus/pci/devices" / D5005 / "fpga_region")
    assert cards(discover(box.root))[D5005] == (DeviceKind.ASIC, None, ())


def test_xclmgmt_instance_is_computed_when_the_driver_does_not_publish_it(box) -> None:
    (box.root / "sys/bus/pci/devices" / ALVEO_MGMT / "instance").unlink()
    assert xclmgmt_instance("0000:c1:00.0") == 49408  # /dev/xclmgmt49408, as XRT names a card at c1:00.0
    assert cards(discover(box.root))[ALVEO_USER][2] == ("/dev/dri/renderD129", f"/dev/xclmgmt{0x8800}")


def test_broken_stacks_are_warnings_and_not_allocatable(box) -> None:
    devices = box.root / "sys/bus/pci/devices"
    (devices / VFIO_ASIC / "iommu_group").unlink()
    shutil.rmtree(devices / ALVEO_USER / "drm")
    topology = discover(box.root)
    assert cards(topology)[VFIO_ASIC][1] is None and cards(topology)[ALVEO_USER][1] is None
    assert f"/sys/devices/pci0000:b0/0000:b0:02.0/{VFIO_ASIC}: bound to vfio-pci but has no iommu_group" in (
        "\n".join(topology.warnings)
    )
    assert any("bound to xocl but has no drm/renderD*" in w for w in topology.warnings)


def test_fpga_and_nic_under_one_switch_are_pix_like_a_gpu_and_its_nic(box) -> None:
    topology = discover(box.root)
    assert pci_distance(topology, D5005, NIC0).level is Level.PIX
    assert pci_distance(topology, ALVEO_USER, NIC1).level is Level.PIX
    assert pci_distance(topology, D5005, NIC1).level is Level.SYS
    assert pci_distance(topology, AGILEX, NIC1).level is Level.NODE
    assert pci_distance(topology, AGILEX, VFIO_ASIC).level is Level.PHB


def test_topology_command_lists_cards_and_their_nodes(box, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "--root", str(box.root)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    # the Alveo's management function goes with its card: one FPGA column per card
    assert header[:5] == ["FPGA0", "FPGA1", "FPGA2", "ASIC0", "ASIC1"]
    assert f"FPGA0: 8086:0b2b driver dfl-pci dfl gedge.io/fpga /dev/dfl-port.0 ({D5005})" in out
    assert (
        f"FPGA1: 10ee:5005 driver xocl xrt gedge.io/fpga /dev/dri/renderD129 /dev/xclmgmt34816 ({ALVEO_USER})"
        in out
    )
    assert (
        f"ASIC1: 1e52:0001 driver vendor-accel (no known device nodes: not allocatable) ({BARE_ASIC})" in out
    )
    assert "FPGA/ASIC cards: 4" in out


def test_cards_without_their_dev_nodes_are_warned_about_and_not_allocatable(tmp_path: Path, capsys) -> None:
    root = build_card_box(tmp_path, dev_nodes=False).root
    topology = discover(root)
    assert topology.cards == ()
    assert (
        f"FPGA {D5005} (dfl): /dev/dfl-port.0 missing on this node; it is not allocatable"
        in topology.warnings
    )
    assert (
        f"ASIC {VFIO_ASIC} (vfio): /dev/vfio/87, /dev/vfio/vfio missing on this node; it is not allocatable"
        in (topology.warnings)
    )
    assert main(["topology", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"dfl gedge.io/fpga /dev/dfl-port.0 (not allocatable: missing /dev/dfl-port.0) ({D5005})" in out
