"""Faults that peer projects' bug reports found, replayed on the engine: each input with its right answer."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import pytest

from agent.deviceplugin.devices import plugin_devices
from agent.discovery import NvmlGpuSource, discover
from gedge_model import (
    Allocation,
    DeviceGrant,
    Distance,
    Gpu,
    Level,
    NodeState,
    NodeTopology,
    NvLink,
    PciDevice,
    pci_distance,
)
from gedge_model.cpu_pool import pinnable_cpus
from scheduler_extender.placement import (
    Placement,
    PlacementConfig,
    PodRequest,
    Refusal,
    free_capacity,
    parse_pod_request,
    place,
    score_nodes,
)
from tests.discovery.fake_nvml import FakeMigDevice, FakeProfile
from tests.discovery.gpu_box import build_box
from tests.discovery.sysfs_builder import SysfsBuilder
from tests.support.synthetic import cpus_and_numa


def request(**kw) -> PodRequest:
    return PodRequest("ml", kw.pop("name", "p"), kw.pop("uid", "uid-p"), **kw)


def placed(outcome) -> Placement:
    assert isinstance(outcome, Placement), outcome
    return outcome


def pod(limits: dict[str, str], annotations: dict[str, str] | None = None) -> dict:
    return {
        "metadata": {"name": "p", "namespace": "ml", "uid": "uid-p", "annotations": annotations or {}},
        "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}]},
    }


def nvlinked_box(node: str, sockets: tuple[int, ...], links: dict[tuple[int, int], int]) -> NodeTopology:
    """GPUs each on a root port of their own host bridge (GPU i on NUMA node sockets[i]), NVLinks as given."""
    cpus, numa = cpus_and_numa(max(sockets) + 1, 4)
    pci = []
    gpus = []
    for i, socket in enumerate(sockets):
        address = f"0000:{0x10 * (i + 1):02x}:00.0"
        host = f"pci0000:{0x10 * (i + 1) - 1:02x}"
        pci.append(
            PciDevice(address, 0x030200, 0x10DE, 0x20B2, host, (f"{address[:5]}00:01.0",), None, socket)
        )
        peers = []
        for (a, b), count in links.items():
            if i in (a, b):
                other = b if i == a else a
                peers.append(NvLink(f"0000:{0x10 * (other + 1):02x}:00.0", count))
        gpus.append(Gpu(i, f"GPU-{node}-{i}", "GPU", address, 80 << 30, nvlinks=tuple(peers)))
    return NodeTopology(node, cpus, numa, tuple(pci), gpus=tuple(gpus))


def gpu_indexes(topology: NodeTopology, allocation: Allocation) -> tuple[int, ...]:
    by_uuid = {g.uuid: g.index for g in topology.gpus}
    return tuple(sorted(by_uuid[d.id] for d in allocation.devices if d.resource == "gedge.io/gpu"))


# 1. NUMA cells that split SMT siblings ------------------------------------------------------------------


def split_siblings_vm(root: Path) -> NodeTopology:
    """`-smp 4,threads=2 -numa node,cpus=0,2 -numa node,cpus=1,3`: siblings (0,1),(2,3) across the nodes."""
    b = SysfsBuilder(root)
    for cpu in range(4):
        siblings = (0, 1) if cpu < 2 else (2, 3)
        b.cpu(cpu, core=cpu // 2, siblings=siblings)
    b.cpus_online(range(4))
    b.node(0, (0, 2), 1 << 20, (10, 20))
    b.node(1, (1, 3), 1 << 20, (20, 10))
    b.nodes_online((0, 1))
    b.write("proc/sys/kernel/hostname", "vm")
    return discover(root, node_name="vm")


def test_smt_siblings_split_across_numa_cells_count_once_and_keep_their_node(tmp_path: Path):
    topology = split_siblings_vm(tmp_path)
    assert any("SMT siblings 0,1 lie on NUMA nodes 0,1" in w for w in topology.warnings), topology.warnings
    state = NodeState(topology)
    assert free_capacity(state)["cpu"] == 4
    refused = place(state, request(cpus=5, cpu_pinning=True))
    assert isinstance(refused, Refusal) and "needs 5 pinned CPUs (4 free)" in refused.reason
    node_of = {c.id: c.numa_node for c in topology.cpus}
    one = placed(place(state, request(cpus=2, cpu_pinning=True, policy="single-numa"))).allocation
    assert len(set(one.cpus)) == 2 and one.numa_nodes == (node_of[one.cpus[0]],)
    assert {node_of[c] for c in one.cpus} == set(one.numa_nodes)
    for n in (1, 3):
        allocation = placed(place(state, request(cpus=n, cpu_pinning=True))).allocation
        assert len(set(allocation.cpus)) == n
        assert set(allocation.numa_nodes) == {node_of[c] for c in allocation.cpus}


# 2. More than 8 NUMA nodes with `restricted` ------------------------------------------------------------


def many_nodes(count: int) -> NodeTopology:
    cpus, numa = cpus_and_numa(count, 4, threads=1)
    return NodeTopology(f"numa{count}", cpus, numa)


def one_cpu_of_each_node(topology: NodeTopology, nodes) -> Allocation:
    cpus = tuple(next(c.id for c in topology.cpus if c.numa_node == n) for n in nodes)
    return Allocation("other", "ml", "other", topology.node_name, (), cpus)


@pytest.mark.parametrize("count", [16, 20])
def test_restricted_on_many_numa_nodes_refuses_with_a_short_reason(count: int):
    topology = many_nodes(count)
    state = NodeState(topology, (one_cpu_of_each_node(topology, range(count)),))
    refused = place(state, request(cpus=32, cpu_pinning=True, policy="restricted"))
    assert isinstance(refused, Refusal)
    assert "no 8 NUMA nodes hold 32 pinned CPUs (at most 24 free on 8)" in refused.reason
    assert len(refused.reason) < 500, len(refused.reason)


def test_restricted_on_many_numa_nodes_still_finds_the_set_that_fits():
    topology = many_nodes(16)
    # nodes 13, 14 and 15 keep all 4 CPUs; every other node has one pinned
    state = NodeState(topology, (one_cpu_of_each_node(topology, range(13)),))
    allocation = placed(place(state, request(cpus=12, cpu_pinning=True, policy="restricted"))).allocation
    assert allocation.numa_nodes == (13, 14, 15)
    empty = placed(place(NodeState(topology), request(cpus=32, cpu_pinning=True, policy="restricted")))
    assert len(empty.allocation.numa_nodes) == 8
    # a set the search cannot find lists a few NUMA node sets, not all of them
    odd = NodeState(topology, (one_cpu_of_each_node(topology, range(16)),))
    refused = place(odd, request(cpus=12, gpus=0, cpu_pinning=True, policy="restricted"))
    assert isinstance(refused, Refusal) and len(refused.reason) < 500


# 3. Pinning every CPU: filter and node apply one rule ---------------------------------------------------


def test_a_pod_pinning_every_cpu_is_refused_where_the_node_would_refuse_it():
    topology = many_nodes(2)
    state = NodeState(topology)
    every = place(state, request(cpus=8, cpu_pinning=True))
    assert isinstance(every, Refusal)
    assert "needs 8 pinned CPUs (8 free, 1 kept for the shared pool)" in every.reason
    allocation = placed(place(state, request(cpus=7, cpu_pinning=True))).allocation
    assert len(allocation.cpus) == 7
    held = NodeState(topology, (allocation,))
    assert isinstance(place(held, request(cpus=1, cpu_pinning=True, uid="u2")), Refusal)


def test_the_shared_pool_rule_keeps_one_cpu_or_the_reserved_ones():
    assert [pinnable_cpus(n) for n in (0, 1, 2, 8)] == [0, 0, 1, 7]
    assert pinnable_cpus(8, reserved=2) == 6
    assert pinnable_cpus(2, reserved=5) == 0
    with pytest.raises(ValueError, match="negative"):
        pinnable_cpus(-1)


# 4. Single-GPU pods keep NVLink pairs whole (k8s-device-plugin#1193) -----------------------------------

NV12_PAIRS = {(0, 2): 12, (1, 3): 12, (4, 5): 12, (6, 7): 12}


def test_single_gpu_pods_take_partners_of_busy_gpus_so_every_pair_keeps_nvlink():
    topology = nvlinked_box("nv", (0, 0, 0, 0, 1, 1, 1, 1), NV12_PAIRS)
    state = NodeState(topology)
    for i, n in enumerate((1, 1, 2, 2, 2)):
        allocation = placed(place(state, request(gpus=n, uid=f"u{i}", name=f"p{i}"))).allocation
        allocation = Allocation(f"u{i}", "ml", f"p{i}", "nv", allocation.devices)
        state = NodeState(topology, (*state.allocations, allocation))
        picked = gpu_indexes(topology, allocation)
        if n == 2:
            assert tuple(sorted(picked)) in NV12_PAIRS, picked
    singles = {gpu_indexes(topology, a)[0] for a in state.allocations[:2]}
    assert tuple(sorted(singles)) in NV12_PAIRS


# 5. NVLink bandwidth counts -------------------------------------------------------------------------


def test_a_pair_with_more_nvlinks_is_closer():
    assert Distance(Level.NV, 12).weight() < Distance(Level.NV, 2).weight() < Distance(Level.NV, 1).weight()
    assert Distance(Level.NV, 1).weight() < Distance(Level.PIX).weight()
    topology = nvlinked_box("mixed", (0, 0, 0), {(0, 1): 1, (1, 2): 2, (0, 2): 1})
    allocation = placed(place(NodeState(topology), request(gpus=2))).allocation
    assert gpu_indexes(topology, allocation) == (1, 2)
    a, b = (topology.gpus[i].pci_address for i in (1, 2))
    assert allocation.cost == pytest.approx(pci_distance(topology, a, b).weight())


# 6. MIG profiles beyond +me -------------------------------------------------------------------------

RTX_PRO_6000_PROFILES = [
    FakeProfile(0, 14, "1g.24gb", 1, 4, 24064, 4),
    FakeProfile(10, 47, "1g.24gb+gfx", 1, 4, 24064, 3),
    FakeProfile(13, 48, "1g.24gb-me", 1, 4, 24064, 4),
    FakeProfile(15, 49, "1g.24gb+me.all", 1, 1, 24064, 1),
    FakeProfile(11, 50, "2g.48gb+gfx", 2, 2, 48128, 2),
]


def test_every_nvml_profile_name_is_discovered_advertised_and_requested(tmp_path: Path):
    box = build_box(tmp_path, "A100", mig_gpu0=True)
    gpu = box.nvml._gpus[0]
    gpu.profiles = RTX_PRO_6000_PROFILES
    gpu.mig_devices = [FakeMigDevice("MIG-rtx-gfx-0", 1, 0, 47, 0, 1)]
    topology = discover(box.root, gpu_source=NvmlGpuSource(box.nvml), node_name="rtx")
    assert [m.profile for m in topology.gpus[0].mig_instances] == ["1g.24gb+gfx"]
    assert not any("MIG" in w for w in topology.warnings), topology.warnings
    advertised = plugin_devices(topology)
    assert [d.id for d in advertised["gedge.io/mig-1g.24gb.gfx"]] == ["MIG-rtx-gfx-0"]
    wanted = parse_pod_request(pod({"gedge.io/mig-1g.24gb.gfx": "1"}))
    assert wanted.mig == (("1g.24gb+gfx", 1),)
    allocation = placed(place(NodeState(topology), wanted)).allocation
    assert [(d.resource, d.id) for d in allocation.devices] == [("gedge.io/mig-1g.24gb.gfx", "MIG-rtx-gfx-0")]
    for profile in ("1g.24gb-me", "1g.24gb+me.all", "2g.48gb+gfx"):
        assert parse_pod_request(pod({f"gedge.io/mig-{profile.replace('+', '.')}": "1"})).mig == (
            (profile, 1),
        )


def test_a_profile_outside_nvml_naming_warns_and_is_not_advertised(tmp_path: Path):
    box = build_box(tmp_path, "A100", mig_gpu0=True)
    gpu = box.nvml._gpus[0]
    gpu.profiles = [FakeProfile(10, 47, "1g.24gb+odd", 1, 4, 24064, 3)]
    gpu.mig_devices = [FakeMigDevice("MIG-odd-0", 1, 0, 47, 0, 1)]
    topology = discover(box.root, gpu_source=NvmlGpuSource(box.nvml), node_name="odd")
    assert any("'1g.24gb+odd' is outside NVML's naming" in w for w in topology.warnings), topology.warnings
    assert not [r for r in plugin_devices(topology) if r.startswith("gedge.io/mig-")]


# 7. Alignment is the default ------------------------------------------------------------------------


def test_without_annotations_a_two_gpu_pod_gets_an_nvlink_pair_and_opting_out_takes_first_free():
    topology = nvlinked_box("pairs", (0, 0, 0, 0), {(0, 2): 4, (1, 3): 4})
    state = NodeState(topology)
    default = placed(place(state, parse_pod_request(pod({"gedge.io/gpu": "2"})))).allocation
    assert gpu_indexes(topology, default) in ((0, 2), (1, 3))
    assert default.worst_level == "NV"
    opted_out = parse_pod_request(pod({"gedge.io/gpu": "2"}, {"gedge.io/topology-aware": "false"}))
    assert gpu_indexes(topology, placed(place(state, opted_out)).allocation) == (0, 1)


# 8. kubelet's policy name ---------------------------------------------------------------------------


def test_single_numa_node_is_kubelets_name_for_single_numa():
    topology = nvlinked_box("two", (0, 1), {})
    state = NodeState(topology)
    for spelling in ("single-numa-node", "single-numa"):
        annotations = {"gedge.io/topology-policy": spelling}
        refused = place(state, parse_pod_request(pod({"gedge.io/gpu": "2"}, annotations)))
        assert isinstance(refused, Refusal) and "on one NUMA node" in refused.reason
        one = placed(place(state, parse_pod_request(pod({"gedge.io/gpu": "1"}, annotations))))
        assert len(one.allocation.numa_nodes) == 1


def test_pairs_of_the_nvlinked_box_are_what_the_model_says():
    topology = nvlinked_box("check", (0, 0, 0, 0, 1, 1, 1, 1), NV12_PAIRS)
    levels = {
        (a.index, b.index): pci_distance(topology, a.pci_address, b.pci_address).label
        for a, b in combinations(topology.gpus, 2)
    }
    assert levels[(0, 2)] == "NV12" and levels[(0, 1)] == "NODE" and levels[(0, 4)] == "SYS"


def test_link_counts_choose_gpus_inside_a_node_but_packing_chooses_the_node():
    many = nvlinked_box("nv12", (0, 0, 0, 0), {(0, 1): 12, (2, 3): 12})
    few = nvlinked_box("nv4", (0, 0, 0, 0), {(0, 1): 4, (2, 3): 4})
    gpus = sorted(few.gpus, key=lambda g: g.index)
    started = NodeState(
        few, (Allocation("u0", "ml", "p0", "nv4", (DeviceGrant("gedge.io/gpu", gpus[0].uuid),)),)
    )
    ask = request(gpus=2)
    placements = {"nv12": placed(place(NodeState(many), ask)), "nv4": placed(place(started, ask))}
    assert placements["nv12"].cost < placements["nv4"].cost
    assert placements["nv12"].rank_cost == placements["nv4"].rank_cost
    assert score_nodes(placements, PlacementConfig(packing=0.0)) == {"nv4": 10, "nv12": 9}
    scores = score_nodes(placements)  # packing adds to the same side: the started node leads further
    assert scores["nv4"] == 10 and scores["nv12"] < 9
    assert gpu_indexes(few, placements["nv4"].allocation) == (2, 3)
