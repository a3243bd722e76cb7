"""The engine on the real sysfs snapshots, discovered by the agent's own discovery."""

from __future__ import annotations

import dataclasses

import pytest

from agent.discovery import discover
from gedge_model import DEFAULT_WEIGHTS, Gpu, NodeState, NodeTopology, pci_distance
from scheduler_extender.placement import Placement, PodRequest, Refusal, free_capacity, place


@pytest.fixture(scope="module")
def topologies(snapshot_roots) -> dict[str, NodeTopology]:
    return {name: discover(root, node_name=name.replace("+", "-")) for name, root in snapshot_roots.items()}


def pinned(cpus: int, **kw) -> PodRequest:
    kw.setdefault("topology_aware", True)
    return PodRequest("ml", "p", "uid", cpus=cpus, cpu_pinning=True, **kw)


def with_gpu_at(topology: NodeTopology, address: str) -> NodeTopology:
    gpu = Gpu(0, "GPU-fixture-0", "fixture GPU", address, 16 << 30)
    return dataclasses.replace(topology, gpus=(gpu,))


def test_every_snapshot_pins_its_online_cpus_but_one_for_the_shared_pool(topologies):
    assert topologies
    for name, topology in topologies.items():
        state = NodeState(topology)
        online = set(topology.online_cpus)
        assert free_capacity(state)["cpu"] == len(online), name
        outcome = place(state, pinned(len(online) - 1))
        assert isinstance(outcome, Placement), (name, outcome)
        assert len(online - set(outcome.allocation.cpus)) == 1
        every = place(state, pinned(len(online)))
        assert isinstance(every, Refusal) and "1 kept for the shared pool" in every.reason, (name, every)
        refused = place(state, pinned(len(online) + 1))
        assert isinstance(refused, Refusal) and f"({len(online)} free)" in refused.reason


def test_offline_siblings_leave_single_thread_cores_that_odd_requests_take_first(topologies):
    topology = topologies["16em64t-4s2c2t-offlines"]
    state = NodeState(topology)
    # cpus 6 and 10 lost their siblings (14, 2 offline): a one-CPU request splits no core.
    assert place(state, pinned(1)).allocation.cpus == (6,)
    two = place(state, pinned(2)).allocation.cpus
    siblings = {c.id: set(c.thread_siblings) for c in topology.cpus}
    assert set(two) == siblings[two[0]]
    offline = {c.id for c in topology.cpus if not c.online}
    assert not offline & set(place(state, pinned(len(topology.online_cpus) - 1)).allocation.cpus)


def test_eight_numa_nodes_single_numa_restricted_and_best_effort(topologies):
    state = NodeState(topologies["16amd64-8n2c"])
    assert len(place(state, pinned(2, policy="single-numa")).allocation.numa_nodes) == 1
    refused = place(state, pinned(3, policy="single-numa"))
    assert isinstance(refused, Refusal)
    assert "(single-numa)" in refused.reason
    assert "no NUMA node holds 3 pinned CPUs (at most 2 free on 1)" in refused.reason
    # restricted: 3 CPUs need two 2-CPU nodes at best, so a two-node span is admitted
    assert len(place(state, pinned(3, policy="restricted")).allocation.numa_nodes) == 2
    busy = place(state, pinned(1)).allocation
    state = NodeState(state.topology, (busy,))
    # with one CPU of node0 taken, a 2-CPU single-numa pod goes to another node whole
    numa = place(state, pinned(2, policy="single-numa")).allocation.numa_nodes
    assert len(numa) == 1 and numa != busy.numa_nodes


def test_rdma_and_macvlan_on_the_closest_nic_of_a_real_pci_tree(topologies):
    topology = with_gpu_at(topologies["40intel64-2g2n4c+pcilocality"], "0000:09:03.0")
    alloc = place(
        NodeState(topology),
        PodRequest("ml", "p", "uid", gpus=1, communication=("RDMA",), topology_aware=True),
    ).allocation
    assert [d.id for d in alloc.devices if d.resource == "gedge.io/rdma"] == ["qib0"]
    assert alloc.network is not None and alloc.network.mode == "macvlan"
    gpu = "0000:09:03.0"
    by_name = {i.name: i.pci_address for i in topology.interfaces}
    weight = {name: DEFAULT_WEIGHTS[pci_distance(topology, gpu, pci).level] for name, pci in by_name.items()}
    assert weight[alloc.network.master] == min(weight.values())


def test_small_box_with_a_display_gpu_and_one_nic(topologies):
    topology = with_gpu_at(topologies["2pa-pcidomain32bits"], "0000:00:02.0")
    state = NodeState(topology)
    alloc = place(state, PodRequest("ml", "p", "uid", gpus=1, communication=("RDMA",), topology_aware=True))
    assert isinstance(alloc, Refusal) and "gedge.io/rdma" in alloc.reason
    refused = place(state, PodRequest("ml", "p", "uid", gpus=1, sriov_vfs=1, topology_aware=True))
    assert isinstance(refused, Refusal) and "1 gedge.io/sriov-vf (0 free)" in refused.reason
    ok = place(state, PodRequest("ml", "p", "uid", gpus=1, cpus=1, cpu_pinning=True, topology_aware=True))
    assert isinstance(ok, Placement) and ok.allocation.devices[0].pci_address == "0000:00:02.0"
