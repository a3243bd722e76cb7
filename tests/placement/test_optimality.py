"""The engine's choice costs exactly the exhaustive optimum on small nodes, whatever is already taken."""

from __future__ import annotations

import dataclasses
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from gedge_model import Allocation, DeviceGrant, NodeState
from gedge_model.allocation import mig_resource_name
from scheduler_extender.placement import Placement, PodRequest, Refusal, place
from scheduler_extender.placement.engine import PlanMemo
from tests.support.exact import optimum_cost
from tests.support.synthetic import dgx_like, edge_box, pcie_workstation

TOPOLOGIES = {
    "dgx-nvswitch": lambda: dgx_like("n", vfs_per_nic=2, cores_per_socket=4),
    "dgx-pairs": lambda: dgx_like(
        "n", nvlink="pairs", vfs_per_nic=2, cores_per_socket=4, timeslice_replicas=2
    ),
    "dgx-nolink": lambda: dgx_like("n", nvlink="none", vfs_per_nic=1, cores_per_socket=4),
    "dgx-mig": lambda: dgx_like(
        "n", gpus=4, mig={1: ["3g.40gb", "1g.10gb"], 2: ["1g.10gb"]}, cores_per_socket=4
    ),
    "workstation": lambda: pcie_workstation("n", cores_per_socket=4, vfs=2),
    "edge": lambda: edge_box("n", gpus=2, vfs=2),
}

SHAPES = [
    {"gpus": 1},
    {"gpus": 2, "sriov_vfs": 1},
    {"gpus": 3, "rdma": 1, "cpus": 2, "cpu_pinning": True},
    {"gpus": 1, "sriov_vfs": 2, "rdma": 1, "cpus": 3, "cpu_pinning": True},
    {"gpus": 2, "communication": ("RDMA",), "cpus": 4, "cpu_pinning": True},
    {"gpu_shared": 1, "sriov_vfs": 1, "cpus": 2, "cpu_pinning": True},
    {"mig": (("1g.10gb", 1),), "communication": ("SRIOV",)},
    {"cpus": 6, "cpu_pinning": True, "sriov_vfs": 1},
]


def random_state(topology, rng: random.Random) -> NodeState:
    """Take a random part of the node's devices and CPUs, as earlier pods would have."""
    grants = []
    for gpu in topology.gpus:
        roll = rng.random()
        if gpu.mig_current:
            grants += [
                DeviceGrant(mig_resource_name(m.profile), m.uuid) for m in gpu.mig_instances if roll < 0.4
            ]
        elif roll < 0.3:
            grants.append(DeviceGrant("gedge.io/gpu", gpu.uuid))
        elif roll < 0.45 and gpu.timeslice_replicas > 1:
            grants.append(DeviceGrant("gedge.io/gpu-shared", f"{gpu.uuid}::0"))
    for nic in topology.interfaces:
        grants += [DeviceGrant("gedge.io/sriov-vf", vf.pci_address) for vf in nic.vfs if rng.random() < 0.4]
    grants += [DeviceGrant("gedge.io/rdma", r.name) for r in topology.rdma_devices if rng.random() < 0.3]
    cpus = tuple(c.id for c in topology.cpus if rng.random() < 0.3)
    return NodeState(
        topology, (Allocation("earlier", "ml", "earlier", topology.node_name, tuple(grants), cpus),)
    )


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_engine_cost_equals_the_exhaustive_optimum(name):
    topology = TOPOLOGIES[name]()
    rng = random.Random(name)
    compared = 0
    for trial in range(12):
        state = NodeState(topology) if trial == 0 else random_state(topology, rng)
        for shape in SHAPES:
            request = PodRequest("ml", "p", "uid", topology_aware=True, **shape)
            optimum = optimum_cost(state, request)
            outcome = place(state, request)
            if optimum is None:
                assert isinstance(outcome, Refusal), (shape, outcome)
                continue
            assert isinstance(outcome, Placement), (shape, outcome)
            assert outcome.cost == pytest.approx(optimum), (name, trial, shape)
            compared += 1
    assert compared >= 20


def test_memoized_answers_equal_fresh_searches_across_nodes_of_one_structure():
    """The plan memo is keyed by structure and free set: replaying on a twin node must change nothing."""
    rng = random.Random("memo")
    twins = [
        dgx_like(f"twin-{i}", nvlink="pairs", vfs_per_nic=2, cores_per_socket=4, timeslice_replicas=2)
        for i in range(2)
    ]
    for _ in range(15):
        used = random_state(twins[0], rng)
        # the same devices taken on the twin, by position
        rename = {g.uuid: t.uuid for g, t in zip(twins[0].gpus, twins[1].gpus, strict=True)}
        grants = tuple(
            DeviceGrant(
                d.resource,
                rename.get(d.id.split("::")[0], d.id) + ("::" + d.id.split("::")[1] if "::" in d.id else ""),
            )
            for d in used.allocations[0].devices
        )
        twin_state = NodeState(
            twins[1], (dataclasses.replace(used.allocations[0], node="twin-1", devices=grants),)
        )
        for shape in SHAPES[:6]:
            req = PodRequest("ml", "p", "uid", topology_aware=True, **shape)
            plans = PlanMemo()
            place(used, req, plans=plans)
            memoized = place(twin_state, req, plans=plans)
            assert len(plans) == 1, shape  # the twin was answered from the memo
            fresh = place(twin_state, req)
            assert memoized == fresh, shape


def test_concurrent_calls_give_the_answers_of_sequential_ones():
    """The extender places from several threads; the memo and caches must not mix answers up."""
    rng = random.Random("threads")
    topology = TOPOLOGIES["dgx-pairs"]()
    states = [random_state(topology, rng) for _ in range(12)]
    requests = [PodRequest("ml", "p", "uid", topology_aware=True, **shape) for shape in SHAPES]
    expected = [[place(s, r) for r in requests] for s in states]
    shared = PlanMemo(max_plans=len(states) * len(requests) // 3)  # starts over while threads read it

    def work(_: int) -> list[list[object]]:
        return [[place(s, r, plans=shared) for r in requests] for s in states]

    with ThreadPoolExecutor(max_workers=8) as pool:
        for got in pool.map(work, range(16)):
            assert got == expected
