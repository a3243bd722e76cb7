"""AMD GPUs from ROCm's KFD topology, checked against what rocm-smi --showtopo prints for the machine."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from agent.commands.topology import render, render_matrix
from agent.deviceplugin import plugin_devices
from agent.discovery import discover
from agent.discovery.amd import kfd_pci_address
from gedge_model import DeviceKind, Distance, Level, NodeTopology, from_json, pci_distance, to_json
from tests.discovery.amd_box import KFD, build_mi100_two_hives, build_mi250x, build_mi300x

ROCM_SMI = Path(__file__).parent / "fixtures" / "rocm-smi"
PCIE_LEVELS = {"PIX", "PXB", "PHB", "NODE", "SYS"}


def rocm_table(text: str, title: str) -> list[list[str]]:
    """One `GPU0 GPU1 ...` table of rocm-smi --showtopo, as rows of cells without the row label."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if title in line)
    rows = []
    for line in lines[start + 2 :]:
        if line.startswith("="):
            break
        rows.append(line.split()[1:])
    return rows


def rocm_numa(text: str) -> dict[int, int]:
    return {
        int(m[1]): int(m[2]) for m in re.finditer(r"GPU\[(\d+)\]\s*: \(Topology\) Numa Node: (\d+)", text)
    }


def our_gpu_matrix(topology: NodeTopology) -> tuple[list[list[str]], list[str]]:
    header, *rows = [line.split() for line in render_matrix(topology, kinds={DeviceKind.GPU})]
    n = len(header) - 4  # "CPU Affinity" and "NUMA Affinity" are two words each
    return [row[1 : 1 + n] for row in rows], [row[-1] for row in rows]


@pytest.mark.parametrize(
    ("build", "fixture"), [(build_mi300x, "mi300x-showtopo.txt"), (build_mi250x, "mi250x-showtopo.txt")]
)
def test_link_types_weights_and_numa_match_rocm_smi(tmp_path: Path, build, fixture: str) -> None:
    box = build(tmp_path)
    topology = discover(box.root)
    text = (ROCM_SMI / fixture).read_text()
    cells, numa = our_gpu_matrix(topology)

    for i, row in enumerate(rocm_table(text, "Link Type between two GPUs")):
        for j, theirs in enumerate(row):
            ours = cells[i][j]
            if i == j:
                assert ours == "X"
            elif theirs == "XGMI":
                assert ours == "XGMI", (i, j)
            else:
                assert theirs == "PCIE" and ours in PCIE_LEVELS, (i, j, ours)
    assert {i: int(n) for i, n in enumerate(numa)} == rocm_numa(text)
    weights = rocm_table(text, "Weight between two GPUs")
    by_address = {g.pci_address: g.index for g in topology.amd_gpus}
    for gpu in topology.amd_gpus:
        for link in gpu.xgmi_links:
            assert str(link.weight) == weights[gpu.index][by_address[link.peer_pci_address]]
    assert topology.warnings == ()


def test_two_hives_link_only_inside_each_hive(tmp_path: Path) -> None:
    topology = discover(build_mi100_two_hives(tmp_path).root)
    gpus = sorted(topology.amd_gpus, key=lambda g: g.index)
    assert [g.hive_id for g in gpus] == ["0x1111000011110000"] * 4 + ["0x2222000022220000"] * 4
    for a in gpus:
        for b in gpus:
            level = pci_distance(topology, a.pci_address, b.pci_address)
            if a is b:
                assert level.level is Level.X
            elif a.hive_id == b.hive_id:
                assert level == Distance(Level.NV, xgmi=True)
            else:
                assert level.level in (Level.NODE, Level.SYS)
    # GPU0 and GPU4 share socket 0 but not a hive: PCIe through the socket, not XGMI
    assert pci_distance(topology, gpus[0].pci_address, gpus[4].pci_address).label == "NODE"


def test_kfd_properties_become_the_model(tmp_path: Path) -> None:
    topology = discover(build_mi300x(tmp_path).root)
    gpu = topology.amd_gpus[0]
    assert (gpu.index, gpu.kfd_node, gpu.pci_address, gpu.render_minor) == (0, 2, "0000:05:00.0", 128)
    assert gpu.gfx_target_version == 90402 and gpu.name == "ip discovery"
    assert gpu.hive_id == "0x1d2e3f4a5b6c7d8e" and gpu.unique_id == "0x5a7e1d0000000002"
    assert len(gpu.xgmi_links) == 7
    # AMD GPUs also stay compute devices by PCI class, but are not listed twice in the matrix
    assert sum(1 for a in topology.accelerators if a.kind is DeviceKind.GPU) == 8
    assert render_matrix(topology)[0].split()[:9] == [f"GPU{i}" for i in range(8)] + ["NIC0"]
    assert from_json(NodeTopology, to_json(topology)) == topology


def test_location_id_is_bus_and_devfn() -> None:
    assert kfd_pci_address(0, 0xC100) == "0000:c1:00.0"
    assert kfd_pci_address(0x10, (0x3B << 8) | (0x02 << 3) | 5) == "0010:3b:02.5"


def test_xgmi_label_round_trips() -> None:
    assert Distance.parse("XGMI") == Distance(Level.NV, xgmi=True)
    assert Distance(Level.NV, xgmi=True).label == "XGMI"
    # XGMI weighs as NVLink of unknown link count (KFD gives weights, not counts)
    assert Distance(Level.NV, xgmi=True).weight() == Distance(Level.NV).weight()


def test_render_minor_from_the_drm_folder_when_kfd_lacks_it(tmp_path: Path) -> None:
    box = build_mi300x(tmp_path)
    props = box.root / KFD / "2/properties"
    props.write_text(
        "\n".join(line for line in props.read_text().splitlines() if "drm_render_minor" not in line)
    )
    topology = discover(box.root)
    assert topology.amd_gpus[0].render_minor == 128


def test_damaged_kfd_trees_warn_and_keep_the_rest(tmp_path: Path) -> None:
    box = build_mi300x(tmp_path)
    kfd = box.root / KFD
    # node 3: a garbled line; node 4: no location_id; node 5: points at a function that is not there
    (kfd / "3/properties").write_text((kfd / "3/properties").read_text() + "\nhive_id: bogus\n")
    (kfd / "4/properties").write_text(
        "\n".join(
            line for line in (kfd / "4/properties").read_text().splitlines() if "location_id" not in line
        )
    )
    text = (kfd / "5/properties").read_text()
    (kfd / "5/properties").write_text(re.sub(r"location_id \d+", f"location_id {0xEE << 8}", text))

    topology = discover(box.root)

    assert len(topology.amd_gpus) == 6
    assert [g.kfd_node for g in topology.amd_gpus] == [2, 3, 6, 7, 8, 9]
    warnings = "\n".join(topology.warnings)
    assert "/sys/class/kfd/kfd/topology/nodes/3/properties: line" in warnings
    assert "nodes/4/properties: no location_id" in warnings
    assert "nodes/5: PCI address 0000:ee:00.0 is not in /sys/bus/pci/devices" in warnings
    assert "XGMI link to node 4, which is no GPU node" in warnings
    assert "AMD GPU 0000:65:00.0 (amdgpu) has no KFD topology node" in warnings


def test_amdgpu_without_kfd_is_a_warning_not_a_device(tmp_path: Path) -> None:
    box = build_mi300x(tmp_path)
    shutil.rmtree(box.root / KFD)
    topology = discover(box.root)
    assert topology.amd_gpus == ()
    assert sum("has no KFD topology node" in w for w in topology.warnings) == 8
    # still GPUs by PCI class in the matrix, placed as nothing allocatable
    assert render_matrix(topology)[0].split()[:2] == ["GPU0", "GPU1"]


def test_render_prints_the_xgmi_legend_and_the_device_nodes(tmp_path: Path) -> None:
    text = render(discover(build_mi250x(tmp_path).root))
    assert "  XGMI = Connection traversing AMD Infinity Fabric (XGMI) links" in text
    assert "  GPU0: AMD aldebaran (KFD node 4, hive 0x2b3c4d5e6f708192) gedge.io/amd-gpu /dev/kfd" in text
    assert "GPUs: 0 NVIDIA, 8 AMD" in text


def test_compute_partitions_are_devices_of_their_own(tmp_path: Path) -> None:
    # an MI300X node in DPX mode: every OAM is two KFD nodes with one PCI address
    topology = discover(build_mi300x(tmp_path, partitions=2).root)
    assert len(topology.amd_gpus) == 16 and topology.warnings == ()
    first, second = topology.amd_gpus[:2]
    assert (first.device_id, second.device_id) == ("0000:05:00.0::0", "0000:05:00.0::1")
    assert (first.render_minor, second.render_minor) == (128, 129)
    assert all(link.peer_pci_address != first.pci_address for link in first.xgmi_links)
    cells, _ = our_gpu_matrix(topology)
    assert len(cells) == 16
    assert cells[0][1] == "X"  # two partitions of one device
    assert cells[0][2] == "XGMI"
    devices = plugin_devices(topology)["gedge.io/amd-gpu"]
    assert len({d.id for d in devices}) == 16
    assert next(d for d in devices if d.id == "0000:05:00.0::1").device_nodes == (
        "/dev/kfd",
        "/dev/dri/renderD129",
    )
