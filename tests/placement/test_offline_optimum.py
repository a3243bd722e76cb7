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
