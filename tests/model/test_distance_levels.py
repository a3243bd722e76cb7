"""Distance levels on real snapshots and on the odd cases: unknown locality, wide domains, one node."""

from pathlib import Path

import pytest

from agent.discovery import discover
from gedge_model import NodeTopology, NumaNode, PciDevice, distance_matrix, pci_distance

SNAPSHOT = "40intel64-2g2n4c+pcilocality"


@pytest.fixture(scope="module")
def intel40(snapshot_roots: dict[str, Path]) -> NodeTopology:
    return discover(snapshot_roots[SNAPSHOT])


@pytest.mark.parametrize(
    ("a", "b", "label"),
    [
        ("0000:02:00.0", "0000:02:00.1", "PIX"),  # two ports of one NIC behind root port 00:05.0
        ("0000:02:00.0", "0000:03:00.0", "PHB"),  # root ports 00:05.0 and 00:06.0 of one host bridge
        ("0000:01:00.0", "0000:00:1f.2", "PHB"),  # behind a root port vs on the root bus
        ("0000:43:00.0", "0000:40:14.0", "PHB"),  # numa 2 vs unknown, but one host bridge: never SYS
        ("0000:02:00.0", "0000:43:00.0", "SYS"),  # other host bridge, locality unknown on a 4-node machine
    ],
)
def test_levels_on_a_four_node_snapshot(intel40: NodeTopology, a: str, b: str, label: str) -> None:
    assert pci_distance(intel40, a, b).label == label
    assert pci_distance(intel40, b, a).label == label


def test_device_with_unknown_locality_is_remote_to_every_numa_node(intel40: NodeTopology) -> None:
    points, rows = distance_matrix(intel40)
    labels = [p.label for p in points]
    nic0, nic4 = labels.index("NIC0"), labels.index("NIC4")
    cpu_columns = [i for i, p in enumerate(points) if p.label.startswith("CPU")]
    assert [rows[nic0][i].label for i in cpu_columns] == ["SYS"] * 4
    assert [rows[nic4][i].label for i in cpu_columns] == ["SYS", "SYS", "PHB", "SYS"]
    assert rows[nic4][labels.index("RDMA0")].label == "X"  # ib0 and qib0 are one PCI function
    assert rows[cpu_columns[0]][cpu_columns[1]].label == "SYS"


def test_one_node_machine_with_a_wide_domain(snapshot_roots: dict[str, Path]) -> None:
    topo = discover(snapshot_roots["2pa-pcidomain32bits"])
    assert pci_distance(topo, "0000:00:03.0", "10000:00:04.0").label == "NODE"
    assert pci_distance(topo, "0000:00:03.0", "0000:00:02.0").label == "PHB"
    points, rows = distance_matrix(topo)
    assert [(p.label, rows[i][-1].label) for i, p in enumerate(points)] == [
        ("DISPLAY0", "PHB"),
        ("NIC0", "PHB"),
        ("CPU0", "X"),
    ]


def test_unknown_locality_is_node_level_only_on_a_one_node_machine() -> None:
    def dev(address: str, host: str, numa: int | None) -> PciDevice:
        return PciDevice(address, 0x020000, 0x8086, 0x1572, host, numa_node=numa)

    devices = (dev("0000:01:00.0", "pci0000:00", None), dev("0000:81:00.0", "pci0000:80", 0))
    one = NodeTopology("one", numa_nodes=(NumaNode(0, (0, 1)),), pci_devices=devices)
    two = NodeTopology("two", numa_nodes=(NumaNode(0, (0,)), NumaNode(1, (1,))), pci_devices=devices)
    assert pci_distance(one, "0000:01:00.0", "0000:81:00.0").label == "NODE"
    assert pci_distance(two, "0000:01:00.0", "0000:81:00.0").label == "SYS"
