import pytest

from gedge_model import (
    Allocation,
    DeviceGrant,
    Gpu,
    Level,
    ModelDecodeError,
    NodeTopology,
    NumaNode,
    NvLink,
    PciDevice,
    distance_matrix,
    from_json,
    pci_distance,
    to_json,
)
from gedge_model.distance import Distance


def _pci(address: str, host: str, bridges: tuple[str, ...], numa: int, class_id: int = 0x030200) -> PciDevice:
    return PciDevice(address, class_id, 0x10DE, 0x2330, host, bridges, numa_node=numa)


def _box() -> NodeTopology:
    """Two sockets; socket 0 has a switch (U) with two downstream ports, socket 1 one GPU."""
    pci = (
        _pci("0000:03:00.0", "pci0000:00", ("0000:00:01.0", "0000:01:00.0", "0000:02:00.0"), 0),
        _pci("0000:04:00.0", "pci0000:00", ("0000:00:01.0", "0000:01:00.0", "0000:02:01.0"), 0, 0x020000),
        _pci("0000:05:00.0", "pci0000:00", ("0000:00:02.0",), 0),
        _pci(
            "0000:06:00.0", "pci0000:00", ("0000:00:01.0", "0000:01:00.0", "0000:02:01.0", "0000:07:00.0"), 0
        ),
        _pci("0000:11:00.0", "pci0000:10", ("0000:10:01.0",), 0),
        _pci("0000:81:00.0", "pci0000:80", ("0000:80:01.0",), 1),
    )
    gpus = (
        Gpu(0, "GPU-a", "H100", "0000:03:00.0", 80 << 30, nvlinks=(NvLink("0000:81:00.0", 18),)),
        Gpu(1, "GPU-b", "H100", "0000:81:00.0", 80 << 30, nvlinks=(NvLink("0000:03:00.0", 18),)),
    )
    numa = (
        NumaNode(0, (0, 1), 1 << 30, ((0, 10), (1, 21))),
        NumaNode(1, (2, 3), 1 << 30, ((0, 21), (1, 10))),
    )
    return NodeTopology("box", numa_nodes=numa, pci_devices=pci, gpus=gpus)


@pytest.mark.parametrize(
    ("a", "b", "label"),
    [
        ("0000:03:00.0", "0000:03:00.0", "X"),
        ("0000:03:00.0", "0000:81:00.0", "NV18"),
        ("0000:03:00.0", "0000:04:00.0", "PIX"),  # two downstream ports of one switch
        ("0000:03:00.0", "0000:06:00.0", "PXB"),  # a second switch below
        ("0000:03:00.0", "0000:05:00.0", "PHB"),  # different root ports, same host bridge
        ("0000:03:00.0", "0000:11:00.0", "NODE"),  # other host bridge, same NUMA node
        ("0000:04:00.0", "0000:81:00.0", "SYS"),  # across sockets
    ],
)
def test_pci_distance_levels(a: str, b: str, label: str) -> None:
    box = _box()
    assert pci_distance(box, a, b).label == label
    assert pci_distance(box, b, a).label == label


def test_matrix_is_symmetric_and_has_cpu_columns() -> None:
    points, rows = distance_matrix(_box())
    labels = [p.label for p in points]
    assert labels[:2] == ["GPU0", "GPU1"] and labels[-2:] == ["CPU0", "CPU1"]
    for i, row in enumerate(rows):
        assert row[i].level is Level.X
        for j, d in enumerate(row):
            assert d == rows[j][i]
    assert rows[0][labels.index("CPU0")].level is Level.PHB
    assert rows[0][labels.index("CPU1")].level is Level.SYS


def test_distance_label_roundtrip_and_errors() -> None:
    assert Distance.parse("nv12") == Distance(Level.NV, 12)
    assert Distance.parse(Distance(Level.PXB).label).level is Level.PXB
    with pytest.raises(ValueError, match="'FOO'"):
        Distance.parse("FOO")


def test_topology_json_roundtrip() -> None:
    box = _box()
    assert from_json(NodeTopology, to_json(box)) == box


def test_decode_names_the_field_at_fault() -> None:
    raw = to_json(_box()).replace('"memory_bytes": 85899345920', '"memory_bytes": "lots"', 1)
    with pytest.raises(ModelDecodeError, match=r"NodeTopology\.gpus\[0\]\.memory_bytes"):
        from_json(NodeTopology, raw)


def test_allocation_annotation_validates() -> None:
    alloc = Allocation(
        "uid-1", "ns", "pod", "box", (DeviceGrant("gedge.io/gpu", "GPU-a", "0000:03:00.0", 0),), (0, 1)
    )
    assert Allocation.from_annotation(alloc.to_annotation()) == alloc
    bad = alloc.to_annotation().replace("gedge.io/gpu", "gedge.io/tpu")
    with pytest.raises(ModelDecodeError, match=r"gedge\.io/allocation.*unknown resource 'gedge\.io/tpu'"):
        Allocation.from_annotation(bad)
    with pytest.raises(ModelDecodeError, match="not JSON"):
        Allocation.from_annotation("{nope")


def test_mig_resource_names_are_legal_kubernetes_names() -> None:
    from gedge_model.allocation import is_known_resource, mig_profile_name, mig_resource_name

    assert mig_resource_name("1g.10gb+me") == "gedge.io/mig-1g.10gb.me"
    assert mig_profile_name("gedge.io/mig-1g.10gb.me") == "1g.10gb+me"
    assert mig_profile_name(mig_resource_name("3g.40gb")) == "3g.40gb"
    assert is_known_resource("gedge.io/mig-1g.10gb.me")
    assert not is_known_resource("gedge.io/mig-1g.10gb+me")
