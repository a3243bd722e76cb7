from pathlib import Path

from agent.discovery import discover
from tests.conftest import snapshot_names


def test_every_snapshot_discovers_cpus_numa_and_pci(snapshot_roots: dict[str, Path]) -> None:
    assert snapshot_names(), "no sysfs snapshots found"
    for name, root in snapshot_roots.items():
        topo = discover(root)
        assert topo.cpus, name
        assert topo.numa_nodes, name
        assert {c.numa_node for c in topo.cpus} <= {n.id for n in topo.numa_nodes}, name
