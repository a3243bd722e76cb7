"""Machines the engine must not trip over: no NUMA information, devices the PCI tree lacks, many GPUs."""

from __future__ import annotations

import dataclasses
import random

import pytest

from gedge_model import Accelerator, Allocation, DeviceGrant, DeviceKind, NodeState
from scheduler_extender.placement import Placement, PodRequest, Refusal, free_capacity, place
from tests.support.exact import optimum_cost
from tests.support.synthetic import dgx_like, edge_box


def request(**kw) -> PodRequest:
    kw.setdefault("topology_aware", True)
    return PodRequest("ml", "p", "uid", **kw)


def without_numa(topology):
    """numa_node -1 everywhere, as on machines whose firmware reports no affinity."""
    return dataclasses.replace(
        topology,
        cpus=tuple(dataclasses.replace(c, numa_node=None) for c in topology.cpus),
        numa_nodes=(),
        pci_devices=tuple(dataclasses.replace(d, numa_node=-1) for d in topology.pci_devices),
    )


def test_unknown_numa_aligns_with_everything():
    topology = without_numa(dgx_like("flat", gpus=4, cores_per_socket=4))
    state = NodeState(topology)
    for policy in ("single-numa", "restricted", "best-effort"):
        outcome = place(state, request(gpus=2, sriov_vfs=1, cpus=4, cpu_pinning=True, policy=policy))
        assert isinstance(outcome, Placement), (policy, outcome)
        assert outcome.allocation.numa_nodes == ()
        assert all(d.numa_node is None for d in outcome.allocation.devices)
    assert free_capacity(state)["cpu"] == len(topology.cpus)


def test_devices_missing_from_the_pci_tree_are_priced_as_far_but_still_placed():
    topology = dgx_like("sparse", gpus=2, vfs_per_nic=2, nvlink="none")
    vf_addresses = {vf.pci_address for nic in topology.interfaces for vf in nic.vfs}
    gpu_addresses = {g.pci_address for g in topology.gpus}
    # the VFs are not in the tree (their PF's distance stands in); GPU 1 is not either
    pruned = dataclasses.replace(
        topology,
        pci_devices=tuple(
            d
            for d in topology.pci_devices
            if d.address not in vf_addresses and d.address != sorted(gpu_addresses)[1]
        ),
    )
    outcome = place(NodeState(pruned), request(gpus=1, sriov_vfs=1))
    assert isinstance(outcome, Placement)
    assert outcome.allocation.devices[0].id == "GPU-sparse-00"
    assert outcome.allocation.worst_level == "PIX"  # the VF's PF sits beside GPU 0
    both = place(NodeState(pruned), request(gpus=2))
    assert isinstance(both, Placement) and both.allocation.worst_level == "SYS"
    assert both.allocation.devices[1].numa_node is None


def test_compute_kinds_need_that_accelerator_on_the_node():
    plain = NodeState(edge_box("plain"))
    refused = place(plain, request(gpu_shared=1, compute=("GPU", "FPGA")))
    assert isinstance(refused, Refusal) and "FPGA" in refused.reason
    fpga = Accelerator("0000:0a:00.0", DeviceKind.FPGA, 0x1172, 0x5052)
    with_fpga = NodeState(dataclasses.replace(plain.topology, node_name="fpga", accelerators=(fpga,)))
    assert isinstance(place(with_fpga, request(gpu_shared=1, compute=("GPU", "FPGA"))), Placement)


@pytest.mark.parametrize("nvlink", ["pairs", "nvswitch", "none"])
def test_sixteen_gpus_grown_greedily_still_reach_the_optimum(nvlink):
    topology = dgx_like("big", gpus=16, nvlink=nvlink, vfs_per_nic=2, cores_per_socket=8)
    state = NodeState(topology)
    for n in (3, 4):
        req = request(gpus=n, sriov_vfs=1, cpus=4, cpu_pinning=True)
        outcome = place(state, req)
        assert isinstance(outcome, Placement)
        assert outcome.cost == pytest.approx(optimum_cost(state, req))


def test_several_replicas_pack_onto_one_gpu_before_spilling():
    topology = dgx_like("ts", gpus=2, timeslice_replicas=2)
    busy = NodeState(
        topology,
        (
            dataclasses.replace(
                place(NodeState(topology), request(gpu_shared=1)).allocation, pod_uid="earlier"
            ),
        ),
    )
    alloc = place(busy, request(gpu_shared=2)).allocation
    ids = sorted(d.id for d in alloc.devices)
    # GPU 0 has one replica left, GPU 1 two: the pod takes both of GPU 1 (one GPU, no spill)
    assert ids == ["GPU-ts-01::0", "GPU-ts-01::1"]
    three = place(busy, request(gpu_shared=3))
    assert isinstance(three, Placement) and len(three.allocation.devices) == 3
    assert isinstance(place(busy, request(gpu_shared=4)), Refusal)


def test_sixteen_gpus_with_busy_ones_still_reach_the_optimum():
    """Free sets where growth from single GPUs misses the best set of NVLink pairs across switches."""
    topology = dgx_like("big", gpus=16, nvlink="pairs", vfs_per_nic=1, cores_per_socket=8)
    rng = random.Random(16)
    uuids = [g.uuid for g in sorted(topology.gpus, key=lambda g: g.index)]
    for trial in range(40):
        busy = rng.sample(uuids, rng.randint(2, 8))
        held = Allocation("busy", "ml", "busy", "big", tuple(DeviceGrant("gedge.io/gpu", u) for u in busy))
        state = NodeState(topology, (held,))
        req = request(gpus=rng.randint(3, 4))
        outcome = place(state, req)
        assert isinstance(outcome, Placement), (trial, outcome)
        assert outcome.cost == pytest.approx(optimum_cost(state, req)), (trial, busy)
