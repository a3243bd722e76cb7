"""Reserved CPUs (kubelet's reservedSystemCPUs): reported in the topology, never granted by placement."""

from __future__ import annotations

import dataclasses

import pytest

from gedge_model import NodeState, NodeTopology, from_json, to_json
from scheduler_extender.placement import Placement, PodRequest, Refusal, free_capacity, place
from tests.support.exact import optimum_cost
from tests.support.synthetic import dgx_like, edge_box


def pinned(cpus: int, uid: str = "uid-p", **kw) -> PodRequest:
    kw.setdefault("topology_aware", True)
    return PodRequest("ml", uid, uid, cpus=cpus, cpu_pinning=True, **kw)


def reserving(topology: NodeTopology, *cpus: int) -> NodeTopology:
    return dataclasses.replace(topology, reserved_cpus=tuple(sorted(cpus)))


def test_reserved_cpus_travel_in_the_topology_json():
    topology = reserving(edge_box("edge", cores=2), 0, 2)
    back = from_json(NodeTopology, to_json(topology))
    assert back.reserved_cpus == (0, 2)
    assert back.pinnable_cpus == frozenset({1, 3})
    # a report from an agent without the key still decodes: nothing reserved
    raw = to_json(edge_box("edge", cores=2)).replace(', "reserved_cpus": []', "")
    assert "reserved_cpus" not in raw
    assert from_json(NodeTopology, raw).reserved_cpus == ()


def test_placement_never_grants_a_reserved_cpu_and_splits_its_core_last():
    # cpus 0-3 first threads, 4-7 siblings: core (0, 4) holds reserved CPU 0
    topology = reserving(edge_box("edge", cores=4), 0)
    outcome = place(NodeState(topology), pinned(2))
    assert isinstance(outcome, Placement), outcome
    assert 0 not in outcome.allocation.cpus
    assert outcome.allocation.cpus == (1, 5)  # a whole free core, not CPU 4 beside the system's
    full = place(NodeState(topology), pinned(7))
    assert isinstance(full, Placement), full
    assert full.allocation.cpus == (1, 2, 3, 4, 5, 6, 7)


def test_filter_refuses_when_only_reserved_cpus_would_fit():
    topology = reserving(edge_box("edge", cores=2), 0, 2)  # CPUs 1 and 3 left
    assert free_capacity(NodeState(topology))["cpu"] == 2
    refusal = place(NodeState(topology), pinned(3))
    assert isinstance(refusal, Refusal)
    assert "pinned CPUs" in refusal.reason
    assert optimum_cost(NodeState(topology), pinned(3)) is None
    assert isinstance(place(NodeState(topology), pinned(2)), Placement)


def test_reserved_cpus_on_one_socket_push_single_numa_pods_to_the_other():
    topology = dgx_like("dgx", gpus=0, sockets=2, cores_per_socket=2, rdma=False, vfs_per_nic=0)
    # socket 0: cpus 0,1 (+ siblings 4,5); socket 1: cpus 2,3 (+ 6,7)
    reserved = reserving(topology, 0, 4, 1)
    outcome = place(NodeState(reserved), pinned(3, policy="single-numa-node"))
    assert isinstance(outcome, Placement), outcome
    assert outcome.allocation.cpus == (2, 3, 6)


@pytest.mark.parametrize("reserved", [(), (0, 4)])
def test_nodes_differing_only_in_reserved_cpus_do_not_share_placements(reserved):
    plain = edge_box("edge", cores=4)
    other = reserving(edge_box("edge", cores=4), *reserved)
    first = place(NodeState(plain), pinned(2))
    second = place(NodeState(other), pinned(2))
    assert isinstance(first, Placement) and isinstance(second, Placement)
    assert set(second.allocation.cpus).isdisjoint(reserved)
