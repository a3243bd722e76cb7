"""Discovery against hwloc's own reading of the same snapshot (NAME.lstopo.xml beside NAME.tar.bz2).

Drop another snapshot and its lstopo XML into ../shared/fixtures/sysfs and it is compared too.
Where our model deliberately differs from hwloc, the difference is asserted narrowly here.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from agent.discovery import discover
from gedge_model import NodeTopology, PciDevice
from tests.conftest import SYSFS_FIXTURES, snapshot_names
from tests.discovery.lstopo_xml import Lstopo, read_lstopo


@pytest.fixture(scope="module")
def discovered(snapshot_roots: dict[str, Path]) -> dict[str, NodeTopology]:
    return {name: discover(root) for name, root in snapshot_roots.items()}


def _lstopo(name: str) -> Lstopo:
    return read_lstopo(SYSFS_FIXTURES / f"{name}.lstopo.xml")


def _wide_domain(address: str) -> bool:
    return int(address.split(":")[0], 16) > 0xFFFF


@pytest.mark.parametrize("name", snapshot_names())
def test_numa_nodes_and_cpusets_match(name: str, discovered: dict[str, NodeTopology]) -> None:
    topo, hw = discovered[name], _lstopo(name)
    assert {n.id: frozenset(n.cpus) for n in topo.numa_nodes} == hw.numa_cpusets


@pytest.mark.parametrize("name", snapshot_names())
def test_online_pus_match(name: str, discovered: dict[str, NodeTopology]) -> None:
    assert set(discovered[name].online_cpus) == _lstopo(name).pus


@pytest.mark.parametrize("name", snapshot_names())
def test_cores_match(name: str, discovered: dict[str, NodeTopology]) -> None:
    cores: dict[tuple[int | None, int | None], set[int]] = defaultdict(set)
    for cpu in discovered[name].cpus:
        if cpu.online:
            cores[(cpu.package_id, cpu.core_id)].add(cpu.id)
    assert {frozenset(c) for c in cores.values()} == _lstopo(name).cores


@pytest.mark.parametrize("name", snapshot_names())
def test_pci_set_ids_and_classes_match(name: str, discovered: dict[str, NodeTopology]) -> None:
    topo, hw = discovered[name], _lstopo(name)
    ours = {d.address for d in topo.pci_devices}
    # The Debian hwloc 2.9 that wrote the XML is built without 32-bit PCI domains and drops them;
    # we keep every function (2pa-pcidomain32bits has 10000:00:04.0, which newer hwloc shows too).
    assert ours - set(hw.pci) == {a for a in ours if _wide_domain(a)}
    assert set(hw.pci) <= ours
    for address, expected in hw.pci.items():
        dev = topology_pci(topo, address)
        assert (dev.class_id >> 8, dev.vendor_id, dev.device_id) == (
            expected.class_id,
            expected.vendor_id,
            expected.device_id,
        ), address


@pytest.mark.parametrize("name", snapshot_names())
def test_pci_bridge_ancestry_and_host_bridges_match(name: str, discovered: dict[str, NodeTopology]) -> None:
    topo, hw = discovered[name], _lstopo(name)
    ours_by_host: dict[str, set[str]] = defaultdict(set)
    theirs_by_host: dict[int, set[str]] = defaultdict(set)
    for address, expected in hw.pci.items():
        dev = topology_pci(topo, address)
        assert dev.bridges == expected.bridges, address
        ours_by_host[dev.host_bridge].add(address)
        theirs_by_host[expected.host_bridge].add(address)
    assert sorted(map(sorted, ours_by_host.values())) == sorted(map(sorted, theirs_by_host.values()))


@pytest.mark.parametrize("name", snapshot_names())
def test_pci_numa_locality_matches(name: str, discovered: dict[str, NodeTopology]) -> None:
    topo, hw = discovered[name], _lstopo(name)
    for address, expected in hw.pci.items():
        dev = topology_pci(topo, address)
        if len(expected.nodeset) == 1:
            assert dev.numa_node == next(iter(expected.nodeset)), address
        elif dev.numa_source == "sysfs":
            # hwloc places a whole host bridge by the local_cpus of its first device; we trust a
            # function's own numa_node (40intel64-2g2n4c+pcilocality: the InfiniBand HCA says node 2
            # while its host bridge spans the machine). It must still be one of hwloc's nodes.
            assert dev.numa_node in expected.nodeset, address
        else:
            assert dev.numa_node is None and dev.numa_source == "none", address


def test_the_documented_differences_do_occur(discovered: dict[str, NodeTopology]) -> None:
    """The exceptions above are not dead code: each shows up on the snapshot that motivates it."""
    names = set(snapshot_names())
    if "2pa-pcidomain32bits" in names:
        assert any(_wide_domain(d.address) for d in discovered["2pa-pcidomain32bits"].pci_devices)
    if "40intel64-2g2n4c+pcilocality" in names:
        topo = discovered["40intel64-2g2n4c+pcilocality"]
        hca = topology_pci(topo, "0000:43:00.0")
        assert (hca.numa_node, hca.numa_source) == (2, "sysfs")
        assert len(_lstopo("40intel64-2g2n4c+pcilocality").pci["0000:43:00.0"].nodeset) == 4


def topology_pci(topo: NodeTopology, address: str) -> PciDevice:
    dev = topo.pci(address)
    assert dev is not None, f"{address} missing from discovery"
    return dev
