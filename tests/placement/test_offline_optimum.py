"""bench/offline_optimum.py: the whole-trace optimum the placement bench measures against."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gedge_model import NodeState, NodeTopology
from scheduler_extender.placement import Placement, PodRequest, place
from tests.support.synthetic import edge_box, pcie_workstation

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from offline_optimum import offline_optimum


def fits_empty(topology: NodeTopology, request: PodRequest) -> bool:
    return isinstance(place(NodeState(topology), request), Placement)


def pod(i: int, **fields: object) -> PodRequest:
    return PodRequest("ml", f"p{i}", f"uid-{i}", **fields)


def test_overlapping_pods_never_share_a_gpu_and_one_leaving_makes_room():
    box = edge_box("edge", gpus=2, timeslice_replicas=1)
    # pods 0..2 overlap (each stays 3 arrivals): two fit; pod 3 arrives after pod 0 left
    requests = [pod(i, gpus=1) for i in range(4)]
    best = offline_optimum([box], requests, [3, 3, 3, 3], fits_empty, seconds=30)
    assert (best.pods, best.pods_bound) == (3, 3)


def test_a_time_sliced_gpu_is_whole_or_shared_never_both():
    box = edge_box("edge", gpus=1, timeslice_replicas=2)
    requests = [pod(0, gpu_shared=1), pod(1, gpus=1), pod(2, gpu_shared=1)]
    best = offline_optimum([box], requests, [5, 5, 5], fits_empty, seconds=30)
    assert best.pods == 2  # both time-slices, not the whole GPU
    assert best.steps == (0, 2)


def test_least_cost_matches_the_engine_on_an_empty_node():
    ws = pcie_workstation("ws")
    request = pod(0, gpus=2, cpus=4, cpu_pinning=True)
    engine = place(NodeState(ws), request)
    assert isinstance(engine, Placement)
    best = offline_optimum([ws], [request], [1], fits_empty, seconds=30, cost_of={"engine": [0]})
    assert best.pods == 1
    assert best.cost == pytest.approx(engine.cost)
    assert best.cost_of["engine"][0] == pytest.approx(engine.cost)


def test_requests_outside_the_model_are_named():
    with pytest.raises(ValueError, match="p0: more than one VF"):
        offline_optimum([edge_box("e")], [pod(0, sriov_vfs=2)], [1], fits_empty)


def test_work_conserving_places_a_pod_that_fits_even_when_refusing_it_pays():
    box = edge_box("edge", gpus=2, timeslice_replicas=1)
    # a 2-GPU pod staying long, then two 1-GPU pods: refusing the first places two
    requests = [pod(0, gpus=2), pod(1, gpus=1), pod(2, gpus=1)]
    free_hand = offline_optimum([box], requests, [5, 5, 5], fits_empty, seconds=30)
    assert (free_hand.pods, free_hand.steps) == (2, (1, 2))
    conserving = offline_optimum([box], requests, [5, 5, 5], fits_empty, seconds=30, work_conserving=True)
    assert (conserving.pods, conserving.steps) == (1, (0,))


def test_work_conserving_may_refuse_only_what_fits_nowhere():
    box = edge_box("edge", gpus=2, timeslice_replicas=1)
    # pod 0 holds one GPU until arrival 3; the 2-GPU pods 1 and 2 arrive meanwhile and fit nowhere,
    # so they may be refused; pod 3 arrives after pod 0 left and must be placed
    requests = [pod(0, gpus=1), pod(1, gpus=2), pod(2, gpus=2), pod(3, gpus=1, cpus=2, cpu_pinning=True)]
    lifetimes = [3, 1, 1, 1]
    free_hand = offline_optimum([box], requests, lifetimes, fits_empty, seconds=30)
    assert (free_hand.pods, free_hand.steps) == (3, (1, 2, 3))  # refusing pod 0 lets both 2-GPU pods in
    conserving = offline_optimum([box], requests, lifetimes, fits_empty, seconds=30, work_conserving=True)
    assert (conserving.pods, conserving.steps) == (2, (0, 3))


def test_work_conserving_single_numa_fits_on_any_one_numa_node():
    ws = pcie_workstation("ws", vfs=2)  # GPUs 0-1 and the NIC's VFs on NUMA node 0, GPUs 2-3 on node 1
    near_nic = {"sriov_vfs": 1, "policy": "single-numa", "topology_aware": True}
    requests = [
        pod(0, gpus=2, **near_nic),  # takes NUMA node 0's GPUs
        pod(1, gpus=1, **near_nic),  # node 0 has no GPU left, node 1 no VF: fits nowhere
        pod(2, gpus=1, policy="single-numa", topology_aware=True),  # fits node 1: must be placed
        pod(3, gpus=1, **near_nic),
    ]
    lifetimes = [9, 9, 9, 9]
    free_hand = offline_optimum([ws], requests, lifetimes, fits_empty, seconds=30)
    assert (free_hand.pods, free_hand.steps) == (3, (1, 2, 3))
    conserving = offline_optimum([ws], requests, lifetimes, fits_empty, seconds=30, work_conserving=True)
    assert (conserving.pods, conserving.steps) == (2, (0, 2))
