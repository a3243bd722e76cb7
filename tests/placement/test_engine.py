"""The engine on synthetic DGX-like, workstation and edge-box topologies built from the model."""

from __future__ import annotations

import dataclasses
from itertools import combinations

import pytest

from gedge_model import Allocation, DeviceGrant, Level, NodeState, pci_distance
from gedge_model.distance import nvlink_weight
from scheduler_extender.placement import (
    Placement,
    PlacementConfig,
    PodRequest,
    Refusal,
    free_capacity,
    place,
    score_nodes,
)
from tests.support.synthetic import dgx_like, edge_box, pcie_workstation


def request(**kw) -> PodRequest:
    kw.setdefault("topology_aware", True)
    return PodRequest("ml", kw.pop("name", "p"), kw.pop("uid", "uid-p"), **kw)


def placed(outcome) -> Placement:
    assert isinstance(outcome, Placement), outcome
    return outcome


def gpu_pcis(allocation: Allocation) -> list[str]:
    return [d.pci_address for d in allocation.devices if d.resource == "gedge.io/gpu"]


def held(node: str, uid: str, devices=(), cpus=()) -> Allocation:
    return Allocation(uid, "ml", uid, node, tuple(DeviceGrant(r, i) for r, i in devices), tuple(cpus))


def test_two_gpus_take_an_nvlink_pair_with_the_vf_and_rdma_under_their_switch():
    topology = dgx_like("dgx", nvlink="pairs")
    state = NodeState(topology)
    alloc = placed(
        place(
            state,
            request(gpus=2, sriov_vfs=1, rdma=1, communication=("SRIOV", "RDMA"), cpus=4, cpu_pinning=True),
        )
    ).allocation
    a, b = gpu_pcis(alloc)
    assert pci_distance(topology, a, b).level is Level.NV
    vf = next(d for d in alloc.devices if d.resource == "gedge.io/sriov-vf")
    rdma = next(d for d in alloc.devices if d.resource == "gedge.io/rdma")
    for gpu in (a, b):
        assert pci_distance(topology, gpu, vf.id).level is Level.PIX
        assert pci_distance(topology, gpu, rdma.pci_address).level is Level.PIX
    assert (
        alloc.network is not None and alloc.network.mode == "sriov" and alloc.network.vf_pci_address == vf.id
    )
    assert alloc.network.master == next(
        i.name for i in topology.interfaces if i.pci_address == rdma.pci_address
    )
    numa = {d.numa_node for d in alloc.devices}
    assert len(numa) == 1
    cpu_numa = {c.numa_node for c in topology.cpus if c.id in alloc.cpus}
    assert cpu_numa == numa and alloc.numa_nodes == tuple(numa)
    # whole cores: both threads of two cores.
    siblings = {c.id: c.thread_siblings for c in topology.cpus}
    assert all(set(siblings[c]) <= set(alloc.cpus) for c in alloc.cpus)
    assert alloc.worst_level == "PHB"  # devices <-> their local CPUs


def test_cost_is_the_weighted_sum_of_pair_distances():
    topology = dgx_like("dgx", nvlink="pairs")
    outcome = placed(place(NodeState(topology), request(gpus=2, sriov_vfs=1, cpus=2, cpu_pinning=True)))
    weights = PlacementConfig().weights
    # NV4 pair + 2 x GPU<->VF PIX + 3 devices x CPU PHB
    expected = nvlink_weight(weights, 4) + 2 * weights[Level.PIX] + 3 * weights[Level.PHB]
    assert outcome.cost == pytest.approx(expected)
    assert outcome.allocation.cost == pytest.approx(expected)


def test_best_gpu_set_is_the_cheapest_over_all_combinations():
    topology = dgx_like("dgx", nvlink="none")
    state = NodeState(topology)
    weights = PlacementConfig().weights
    for n in (2, 3, 4):
        alloc = placed(place(state, request(gpus=n))).allocation

        def cost(pcis):
            return sum(weights[pci_distance(topology, a, b).level] for a, b in combinations(pcis, 2))

        best = min(cost(c) for c in combinations([g.pci_address for g in topology.gpus], n))
        assert cost(gpu_pcis(alloc)) == pytest.approx(best)
        assert alloc.cost == pytest.approx(best)


def test_reserved_and_held_devices_are_never_used_twice():
    topology = dgx_like("dgx", gpus=4, vfs_per_nic=1)
    state = NodeState(
        topology, allocations=(held("dgx", "a", [("gedge.io/gpu", "GPU-dgx-00")], cpus=[0, 32]),)
    )
    reserved = [held("dgx", "b", [("gedge.io/gpu", "GPU-dgx-01"), ("gedge.io/sriov-vf", "0000:15:00.1")])]
    alloc = placed(
        place(state, request(gpus=2, sriov_vfs=1, cpus=2, cpu_pinning=True), reserved=reserved)
    ).allocation
    ids = {d.id for d in alloc.devices}
    assert ids.isdisjoint({"GPU-dgx-00", "GPU-dgx-01", "0000:15:00.1"})
    assert not set(alloc.cpus) & {0, 32}
    refused = place(state, request(gpus=3), reserved=reserved)
    assert isinstance(refused, Refusal) and "3 gedge.io/gpu (2 free)" in refused.reason


def test_single_numa_refuses_what_does_not_fit_one_node_and_names_it():
    state = NodeState(dgx_like("dgx"))
    refused = place(state, request(gpus=5, policy="single-numa"))
    assert isinstance(refused, Refusal)
    assert (
        "one NUMA node (single-numa)" in refused.reason and "node0: 5 gedge.io/gpu (4 free)" in refused.reason
    )
    assert isinstance(place(state, request(gpus=5)), Placement)


def test_restricted_admits_the_narrowest_span_only():
    topology = dgx_like("dgx", gpus=4)
    busy = (held("dgx", "a", [("gedge.io/gpu", "GPU-dgx-00")]),)
    state = NodeState(topology, allocations=busy)
    # 2 GPUs fit on one NUMA node by capacity, so restricted wants them on one; node0 has one left.
    alloc = placed(place(state, request(gpus=2, policy="restricted"))).allocation
    assert alloc.numa_nodes == (1,)
    busy += (held("dgx", "b", [("gedge.io/gpu", "GPU-dgx-02")]),)
    refused = place(NodeState(topology, allocations=busy), request(gpus=2, policy="restricted"))
    assert isinstance(refused, Refusal) and "restricted" in refused.reason
    # 4 GPUs need both NUMA nodes by capacity: restricted admits the two-node span.
    assert placed(place(NodeState(topology), request(gpus=4, policy="restricted"))).allocation.numa_nodes == (
        0,
        1,
    )


def test_same_switch_needs_gpu_and_vf_under_one_switch():
    topology = pcie_workstation("ws")
    state = NodeState(topology)
    alloc = placed(place(state, request(gpus=1, sriov_vfs=1))).allocation
    assert alloc.devices[0].numa_node == 0  # the NIC is on socket 0
    refused = place(state, request(gpus=1, sriov_vfs=1, policy="same-switch"))
    assert isinstance(refused, Refusal) and "same-switch" in refused.reason
    assert "node0: no free network device within PXB of a free GPU" in refused.reason
    dgx = NodeState(dgx_like("dgx"))
    alloc = placed(place(dgx, request(gpus=1, sriov_vfs=1, policy="same-switch"))).allocation
    gpu, vf = alloc.devices[0], alloc.devices[1]
    assert pci_distance(dgx.topology, gpu.pci_address, vf.id).level is Level.PIX


def test_best_effort_places_across_sockets_when_it_must_and_prices_it():
    topology = pcie_workstation("ws")
    busy = (held("ws", "a", [("gedge.io/gpu", "GPU-ws-00"), ("gedge.io/gpu", "GPU-ws-01")]),)
    outcome = placed(place(NodeState(topology, allocations=busy), request(gpus=1, sriov_vfs=1)))
    assert outcome.allocation.worst_level == "SYS"
    assert outcome.cost == PlacementConfig().weights[Level.SYS]


def test_topology_unaware_takes_first_free_devices():
    state = NodeState(pcie_workstation("ws"))
    alloc = placed(place(state, request(topology_aware=False, gpus=1, sriov_vfs=1))).allocation
    assert alloc.devices[0].id == "GPU-ws-00"
    busy = (held("ws", "a", [("gedge.io/gpu", "GPU-ws-00")]),)
    alloc = placed(place(NodeState(state.topology, busy), request(topology_aware=False, gpus=1))).allocation
    assert alloc.devices[0].id == "GPU-ws-01"


def test_time_slice_pack_and_spread():
    topology = dgx_like("dgx", gpus=2, timeslice_replicas=4)
    busy = (held("dgx", "a", [("gedge.io/gpu-shared", "GPU-dgx-01::0")]),)
    state = NodeState(topology, busy)
    packed = placed(place(state, request(gpu_shared=1))).allocation
    assert packed.devices[0].id == "GPU-dgx-01::1"
    spread = placed(
        place(state, request(gpu_shared=1), PlacementConfig(timeslice_strategy="spread"))
    ).allocation
    assert spread.devices[0].id == "GPU-dgx-00::0"
    # a GPU with a replica in use cannot go whole, and a whole GPU takes its replicas with it
    whole = placed(place(state, request(gpus=1))).allocation
    assert whole.devices[0].id == "GPU-dgx-00"
    state = NodeState(topology, (*busy, held("dgx", "b", [("gedge.io/gpu", "GPU-dgx-00")])))
    assert isinstance(place(state, request(gpus=1)), Refusal)
    assert free_capacity(state)["gedge.io/gpu-shared"] == 3


def test_mig_uses_existing_free_instances_and_refuses_missing_profiles():
    topology = dgx_like("dgx", gpus=2, mig={0: ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb"]})
    state = NodeState(topology, (held("dgx", "a", [("gedge.io/mig-1g.10gb", "MIG-dgx-0-2")]),))
    alloc = placed(place(state, request(mig=(("1g.10gb", 1),)))).allocation
    assert [d.id for d in alloc.devices] == ["MIG-dgx-0-3"]
    assert alloc.devices[0].pci_address == topology.gpus[0].pci_address
    refused = place(state, request(mig=(("1g.10gb", 2),)))
    assert isinstance(refused, Refusal) and "gedge.io/mig-1g.10gb (1 free)" in refused.reason
    # the MIG-mode GPU is never handed out whole
    assert [d.id for d in placed(place(state, request(gpus=1))).allocation.devices] == ["GPU-dgx-01"]
    assert isinstance(place(state, request(gpus=2)), Refusal)


def test_macvlan_when_a_data_path_is_asked_and_no_vf_is_free():
    topology = pcie_workstation("ws", vfs=1)
    vf = topology.interfaces[0].vfs[0].pci_address
    free_vf = placed(place(NodeState(topology), request(gpus=1, communication=("RDMA",)))).allocation
    assert free_vf.network is not None and free_vf.network.mode == "sriov"
    state = NodeState(topology, (held("ws", "a", [("gedge.io/sriov-vf", vf)]),))
    alloc = placed(place(state, request(gpus=1, communication=("RDMA",)))).allocation
    assert alloc.network is not None and alloc.network.mode == "macvlan" and alloc.network.master == "enp48s0"
    assert [d.id for d in alloc.devices if d.resource == "gedge.io/rdma"] == ["mlx5_0"]
    refused = place(state, request(gpus=1, communication=("SRIOV",)))
    assert isinstance(refused, Refusal) and "1 gedge.io/sriov-vf (0 free)" in refused.reason
    no_rdma = place(NodeState(edge_box("edge")), request(gpu_shared=1, communication=("RDMA",)))
    assert isinstance(no_rdma, Refusal) and "gedge.io/rdma" in no_rdma.reason


def test_cpus_keep_cores_whole_and_use_spare_threads_for_odd_counts():
    topology = edge_box("edge", cores=4)  # cpus 0-3 first threads, 4-7 siblings
    busy = (held("edge", "a", cpus=[0]),)  # core (0, 4) split: 4 is a spare thread
    alloc = placed(place(NodeState(topology, busy), request(cpus=3, cpu_pinning=True))).allocation
    assert alloc.cpus == (1, 4, 5)
    alloc = placed(place(NodeState(topology), request(cpus=3, cpu_pinning=True))).allocation
    assert alloc.cpus in ((0, 1, 4), (0, 4, 5))


def test_score_nodes_best_cost_gets_ten_and_pack_breaks_ties():
    config = PlacementConfig(packing=0.0)
    dgx = NodeState(dgx_like("a", nvlink="pairs"))
    ws = NodeState(pcie_workstation("b"))
    partly = NodeState(dgx_like("c", nvlink="pairs"), (held("c", "x", [("gedge.io/gpu", "GPU-c-07")]),))
    req = request(gpus=2, sriov_vfs=1)
    placements = {s.node_name: placed(place(s, req)) for s in (dgx, ws, partly)}
    scores = score_nodes(placements, config)
    assert scores["c"] == 10 and scores["a"] == 9 and scores["b"] < 9
    spread = score_nodes(placements, PlacementConfig(node_strategy="spread", packing=0.0))
    assert spread["a"] == 10 and spread["c"] == 9
    assert all(0 <= s <= 10 for s in scores.values())
    # packing weighs in: the started node leads, the empty one falls behind it
    packed = score_nodes(placements)
    assert packed["c"] == 10 and packed["a"] < 9
    spread = score_nodes(placements, PlacementConfig(node_strategy="spread"))
    assert spread["a"] == 10 and spread["c"] < 9


def _schedule(
    nodes: dict[str, NodeState], asks: list[PodRequest], config: PlacementConfig
) -> list[str | None]:
    """Each pod in turn on the node score_nodes ranks first (ties by name); None where no node fits."""
    states = dict(nodes)
    chosen: list[str | None] = []
    for i, ask in enumerate(asks):
        ask = dataclasses.replace(ask, uid=f"uid-{i}", name=f"p{i}")
        outcomes = {n: place(s, ask, config) for n, s in states.items()}
        placements = {n: o for n, o in outcomes.items() if isinstance(o, Placement)}
        if not placements:
            chosen.append(None)
            continue
        scores = score_nodes(placements, config)
        node = max(sorted(scores), key=lambda n: scores[n])
        chosen.append(node)
        state = states[node]
        states[node] = NodeState(state.topology, (*state.allocations, placements[node].allocation))
    return chosen


def test_packing_keeps_a_whole_box_for_the_large_pod_that_cost_alone_refuses():
    """A 2-GPU pod, then an 8-GPU pod, on a workstation with two GPUs of one socket free and an empty
    NVSwitch box: by cost alone the small pod takes the box (NVLink beats PHB) and the large pod finds
    no node; packing sends the small pod to the workstation, at its best level there, and both fit."""
    busy = [("gedge.io/gpu", "GPU-ws-02"), ("gedge.io/gpu", "GPU-ws-03")]
    nodes = {
        "ws": NodeState(pcie_workstation("ws"), (held("ws", "x", busy),)),
        "dgx": NodeState(dgx_like("dgx")),
    }

    asks = [request(gpus=2), request(gpus=8)]

    assert _schedule(nodes, asks, PlacementConfig(packing=0.0)) == ["dgx", None]
    assert _schedule(nodes, asks, PlacementConfig()) == ["ws", "dgx"]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="pack or spread"):
        PlacementConfig(node_strategy="fill")
    with pytest.raises(ValueError, match="lack"):
        PlacementConfig(weights={Level.X: 0})


def test_nodes_of_one_structure_share_the_search_but_get_their_own_device_ids():
    a, b = dgx_like("node-a"), dgx_like("node-b")
    req = request(gpus=2, sriov_vfs=1, rdma=1, cpus=4, cpu_pinning=True)
    first = placed(place(NodeState(a), req)).allocation
    second = placed(place(NodeState(b), req)).allocation
    assert first.node == "node-a" and second.node == "node-b"
    assert all(d.id.startswith("GPU-node-b") for d in second.devices if d.resource == "gedge.io/gpu")
    b_vfs = {vf.pci_address for nic in b.interfaces for vf in nic.vfs}
    b_rdma = {r.name for r in b.rdma_devices}
    assert {d.id for d in second.devices if d.resource == "gedge.io/sriov-vf"} <= b_vfs
    assert {d.id for d in second.devices if d.resource == "gedge.io/rdma"} <= b_rdma
    assert [d.pci_address for d in first.devices] == [d.pci_address for d in second.devices]
    # b with those devices taken answers differently from a, which still has them free
    taken = NodeState(b, (dataclasses.replace(second, pod_uid="x"),))
    third = placed(place(taken, dataclasses.replace(req, uid="uid-q"))).allocation
    assert {d.id for d in third.devices}.isdisjoint({d.id for d in second.devices})
    assert set(third.cpus).isdisjoint(second.cpus)
    assert third.pod_uid == "uid-q"
    assert placed(place(NodeState(a), req)).allocation == first
    refused = place(NodeState(dgx_like("node-c")), request(gpus=9))
    # kube-scheduler keys reasons by node and counts equal ones: the reason never names the node
    assert isinstance(refused, Refusal) and refused.reason == "needs 9 gedge.io/gpu (8 free)"


def test_a_dearer_node_never_outranks_a_cheaper_one_without_packing():
    config = PlacementConfig(packing=0.0)
    states = [
        NodeState(dgx_like("d0", nvlink="pairs")),
        NodeState(pcie_workstation("w0")),
        NodeState(edge_box("e0", gpus=2)),
        NodeState(dgx_like("d1"), (held("d1", "x", [("gedge.io/gpu", "GPU-d1-00")]),)),
    ]
    for req in (
        request(gpus=1),
        request(gpus=2, sriov_vfs=1),
        request(gpu_shared=1, cpus=2, cpu_pinning=True),
    ):
        placements = {s.node_name: o for s in states if isinstance(o := place(s, req), Placement)}
        scores = score_nodes(placements, config)
        for x, y in combinations(placements, 2):
            if placements[x].cost < placements[y].cost - 1e-9:
                assert scores[x] > scores[y], (req, scores)


def test_cpu_only_pods_prefer_nodes_without_idle_accelerators():
    gpu_node = NodeState(edge_box("gpu-box", gpus=1))
    cpu_node = NodeState(edge_box("cpu-box", gpus=0))
    placements = {
        s.node_name: placed(place(s, request(cpus=2, cpu_pinning=True))) for s in (gpu_node, cpu_node)
    }
    scores = score_nodes(placements)
    assert scores["cpu-box"] == 10 and scores["gpu-box"] == 9


def test_media_extension_mig_profile_is_granted_under_its_legal_resource_name():
    topology = dgx_like("dgx", gpus=2, mig={1: ["1g.10gb+me", "1g.10gb"]})
    alloc = placed(place(NodeState(topology), request(mig=(("1g.10gb+me", 1),)))).allocation
    assert [(d.resource, d.id) for d in alloc.devices] == [("gedge.io/mig-1g.10gb.me", "MIG-dgx-1-0")]
    assert free_capacity(NodeState(topology))["gedge.io/mig-1g.10gb.me"] == 1


def test_spilled_cpus_stay_mostly_on_the_gpu_numa_node():
    topology = pcie_workstation("ws", cores_per_socket=8)  # 16 CPUs per socket
    busy = (held("ws", "a", [("gedge.io/gpu", "GPU-ws-00"), ("gedge.io/gpu", "GPU-ws-01")]),)
    alloc = placed(place(NodeState(topology, busy), request(gpus=1, cpus=20, cpu_pinning=True))).allocation
    assert alloc.devices[0].numa_node == 1
    numa_of = {c.id: c.numa_node for c in topology.cpus}
    on_gpu_node = [c for c in alloc.cpus if numa_of[c] == 1]
    assert len(on_gpu_node) == 16 and len(alloc.cpus) == 20


def test_a_cpu_pod_leaves_a_gpu_box_the_cpus_its_gpus_need():
    """A pod pinning 6 CPUs, then a 2-GPU pod pinning 4, on a 2-GPU box with 8 CPUs and a CPU box with
    16: packing alone sends the CPU pod to the GPU box (it fills more of it), and the GPU pod then
    finds its GPUs without CPUs; stranding sends the CPU pod to the CPU box, and both fit."""
    nodes = {
        "gpu-box": NodeState(edge_box("gpu-box", gpus=2, cores=4)),
        "cpu-box": NodeState(edge_box("cpu-box", gpus=0, cores=8)),
    }
    asks = [request(cpus=6, cpu_pinning=True), request(gpus=2, cpus=4, cpu_pinning=True)]

    assert _schedule(nodes, asks, PlacementConfig(stranding=0.0)) == ["gpu-box", None]
    assert _schedule(nodes, asks, PlacementConfig()) == ["cpu-box", "gpu-box"]
    # what the placements carry: the GPU box would lack 2 x 2 - 1 CPUs of its 8 for its GPUs (2 left
    # unpinned, one of them kept for the shared pool)
    on_gpu_box = placed(place(nodes["gpu-box"], asks[0]))
    assert on_gpu_box.strand == pytest.approx(3 / 8)
    assert placed(place(nodes["cpu-box"], asks[0])).strand == 0.0
    assert placed(place(nodes["gpu-box"], asks[0], PlacementConfig(cpus_per_gpu=0.0))).strand == 0.0


def test_stranding_counts_the_cpu_the_shared_pool_keeps():
    """A pod pinning 4 CPUs, then a 2-GPU pod pinning 4, on a 2-GPU box with 8 CPUs and a CPU box with
    16. On the GPU box the CPU pod leaves 4 unpinned CPUs, but the shared pool keeps one, so only 3
    can be pinned: its GPUs would lack a CPU. Counting 4 free CPUs, stranding saw no lack and packing
    sent the CPU pod to the GPU box, where the GPU pod then failed; counting pinnable CPUs, the CPU pod
    goes to the CPU box and both fit."""
    nodes = {
        "gpu-box": NodeState(edge_box("gpu-box", gpus=2, cores=4)),
        "cpu-box": NodeState(edge_box("cpu-box", gpus=0, cores=8)),
    }
    asks = [request(cpus=4, cpu_pinning=True), request(gpus=2, cpus=4, cpu_pinning=True)]
    assert _schedule(nodes, asks, PlacementConfig()) == ["cpu-box", "gpu-box"]
    # 2 GPUs x 2 CPUs, 3 pinnable left: 1 of the box's 8 CPUs lacking
    assert placed(place(nodes["gpu-box"], asks[0])).strand == pytest.approx(1 / 8)
    assert _schedule(nodes, asks, PlacementConfig(stranding=0.0)) == ["gpu-box", None]


def test_a_gpu_a_pod_starts_time_slicing_needs_no_cpus_for_whole_gpu_pods():
    """A time-slice of a box's only GPU, pinning 3 of its 4 CPUs (all it may pin): the GPU is no longer
    free for a whole-GPU pod, so no CPUs are lacking for it (counting it whole saw 2 - 0 lacking)."""
    box = NodeState(edge_box("box", gpus=1, cores=2))
    outcome = placed(place(box, request(gpu_shared=1, cpus=3, cpu_pinning=True)))
    assert outcome.strand == 0.0
    # a whole-GPU pod on the same box takes the GPU too: nothing left to strand either
    assert placed(place(box, request(gpus=1, cpus=3, cpu_pinning=True))).strand == 0.0
    # a CPU pod leaves the GPU whole and takes the CPUs it would need
    assert placed(place(box, request(cpus=3, cpu_pinning=True))).strand == pytest.approx(2 / 4)


def test_config_rejects_negative_stranding():
    with pytest.raises(ValueError, match="stranding"):
        PlacementConfig(stranding=-1.0)
    with pytest.raises(ValueError, match="cpus_per_gpu"):
        PlacementConfig(cpus_per_gpu=float("nan"))
