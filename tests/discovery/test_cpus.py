from pathlib import Path

from agent.discovery import discover
from agent.discovery.cpus import read_cpus
from agent.discovery.sysfs import SysfsTree
from tests.discovery.sysfs_builder import SysfsBuilder


def _two_sockets_sparse(b: SysfsBuilder) -> None:
    """Nodes 0 and 2 (no node 1), SMT pairs, CPU 5 offline by its own file, CPU 7 by the global list."""
    for cpu in range(8):
        online = cpu not in (5, 7)
        b.cpu(
            cpu,
            online=online,
            core=cpu % 4 // 2,
            package=cpu // 4,
            siblings=(cpu - cpu % 2, cpu - cpu % 2 + 1),
            online_file=cpu not in (0, 7),
        )
    b.write("sys/devices/system/cpu/cpu5/online", "0")
    b.cpus_online((0, 1, 2, 3, 4, 6))
    b.node(0, (0, 1, 2, 3), 4 << 20, (10, 32))
    b.node(2, (4, 5, 6, 7), 8 << 20, (32, 10))
    b.nodes_online((0, 2))


def test_offline_cpus_and_sparse_numa_ids(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path)
    _two_sockets_sparse(b)
    fs = SysfsTree(tmp_path)
    inv = read_cpus(fs)
    assert fs.warnings == []
    assert [c.id for c in inv.cpus if c.online] == [0, 1, 2, 3, 4, 6]
    assert [c.id for c in inv.cpus if not c.online] == [5, 7]
    by_id = {c.id: c for c in inv.cpus}
    assert (by_id[2].package_id, by_id[2].core_id, by_id[2].thread_siblings) == (0, 1, (2, 3))
    assert by_id[5].numa_node == 2 and by_id[5].core_id is None
    assert [n.id for n in inv.numa_nodes] == [0, 2]
    node2 = inv.numa_nodes[1]
    assert node2.cpus == (4, 6), "a node lists its online CPUs only"
    assert node2.memory_bytes == (8 << 20) * 1024
    assert node2.distance_to(0) == 32 and node2.distance_to(2) == 10 and node2.distance_to(1) is None


def test_cpu0_without_online_file_is_online(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path)
    b.cpu(0, online_file=False)
    b.cpu(1, online=False)
    inv = read_cpus(SysfsTree(tmp_path))
    assert [(c.id, c.online) for c in inv.cpus] == [(0, True), (1, False)]


def test_no_numa_directory_is_one_node_with_proc_meminfo(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path)
    for cpu in range(4):
        b.cpu(cpu, package=0)
    b.write("proc/meminfo", "MemTotal:       16384 kB\nMemFree: 1 kB")
    inv = read_cpus(SysfsTree(tmp_path))
    assert len(inv.numa_nodes) == 1
    node = inv.numa_nodes[0]
    assert (node.id, node.cpus, node.memory_bytes, node.distances) == (
        0,
        (0, 1, 2, 3),
        16384 * 1024,
        ((0, 10),),
    )
    assert {c.numa_node for c in inv.cpus} == {0}


def test_cpumap_when_cpulist_is_missing(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path)
    for cpu in range(4):
        b.cpu(cpu)
    b.write("sys/devices/system/node/node0/cpumap", "00000000,0000000f")
    inv = read_cpus(SysfsTree(tmp_path))
    assert inv.numa_nodes[0].cpus == (0, 1, 2, 3)


def test_overlapping_numa_nodes_collapse_with_a_warning(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path)
    for cpu in range(4):
        b.cpu(cpu)
    b.node(0, (0, 1, 2, 3), 1024, (10, 10))
    b.node(1, (0, 1, 2, 3), 2048, (10, 10))
    fs = SysfsTree(tmp_path)
    inv = read_cpus(fs)
    assert [(n.id, n.cpus, n.memory_bytes) for n in inv.numa_nodes] == [(0, (0, 1, 2, 3), 1024 * 1024)]
    assert len(fs.warnings) == 1 and fs.warnings[0].startswith("/sys/devices/system/node: NUMA nodes [0, 1]")


def test_odd_attributes_warn_and_discovery_completes(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path)
    b.cpu(0)
    b.cpu(1)
    (tmp_path / "sys/devices/system/cpu/cpu1/topology/core_id").unlink()
    b.write("sys/devices/system/cpu/cpu1/online", "maybe")
    b.node(0, (0, 1), 1024, (10, 20))  # two distances for one node
    topo = discover(tmp_path, node_name="odd")
    assert topo.online_cpus == (0, 1)
    assert topo.numa_nodes[0].distances == ()
    assert set(topo.warnings) == {
        "/sys/devices/system/cpu/cpu1/topology/core_id: missing",
        "/sys/devices/system/cpu/cpu1/online: expected 0 or 1, got 'maybe'",
        "/sys/devices/system/node/node0/distance: 2 distances for 1 online nodes",
    }


def test_empty_root_gives_an_empty_node_and_a_warning(tmp_path: Path) -> None:
    topo = discover(tmp_path, node_name="empty")
    assert topo.cpus == () and topo.pci_devices == ()
    assert "/sys/devices/system/cpu: no CPUs found" in topo.warnings


def test_online_cpu_outside_every_numa_node_is_a_warning(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path)
    for cpu in range(3):
        b.cpu(cpu)
    b.node(0, (0, 1), 1024, (10,))
    topo = discover(tmp_path, node_name="x")
    assert topo.cpus[2].numa_node is None
    assert topo.warnings == ("/sys/devices/system/cpu/cpu2: online but in no NUMA node's CPU list",)
