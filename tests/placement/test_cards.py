"""AMD GPUs and FPGA/ASIC cards in the placement engine, on topologies discovered from sysfs trees."""

from __future__ import annotations

import dataclasses
from itertools import combinations
from pathlib import Path

import pytest

from agent.discovery import discover
from gedge_model import Allocation, DeviceGrant, Level, NodeState, NodeTopology, pci_distance
from scheduler_extender.placement import Placement, PodRequest, Refusal, free_capacity, place
from scheduler_extender.placement.request import RequestError, parse_pod_request
from tests.discovery.amd_box import build_mi100_two_hives, build_mi250x, build_mi300x
from tests.discovery.card_box import AGILEX, ALVEO_USER, D5005, VFIO_ASIC, build_card_box
from tests.support.synthetic import dgx_like

AMD = "gedge.io/amd-gpu"
FPGA = "gedge.io/fpga"
ASIC = "gedge.io/asic"


def request(**kw) -> PodRequest:
    kw.setdefault("topology_aware", True)
    return PodRequest("ml", kw.pop("name", "p"), kw.pop("uid", "uid-p"), **kw)


def placed(outcome) -> Allocation:
    assert isinstance(outcome, Placement), outcome
    return outcome.allocation


def ids(allocation: Allocation, resource: str) -> list[str]:
    return [d.id for d in allocation.devices if d.resource == resource]


@pytest.fixture(scope="module")
def mi100(tmp_path_factory) -> NodeTopology:
    return discover(build_mi100_two_hives(tmp_path_factory.mktemp("mi100")).root)


@pytest.fixture(scope="module")
def cards(tmp_path_factory) -> NodeTopology:
    return discover(build_card_box(tmp_path_factory.mktemp("cards")).root)


def hive_of(topology: NodeTopology, address: str) -> str | None:
    gpu = topology.amd_gpu_by_pci(address)
    assert gpu is not None
    return gpu.hive_id


def test_four_amd_gpus_take_one_xgmi_hive(mi100: NodeTopology) -> None:
    alloc = placed(place(NodeState(mi100), request(cards=((AMD, 4),))))
    chosen = ids(alloc, AMD)
    assert len({hive_of(mi100, a) for a in chosen}) == 1
    assert alloc.worst_level == "NV"  # the hive spans both sockets, but every pair is linked
    for a, b in combinations(chosen, 2):
        assert pci_distance(mi100, a, b).label == "XGMI"


def test_without_xgmi_the_same_node_would_take_one_socket_instead(mi100: NodeTopology) -> None:
    unlinked = dataclasses.replace(
        mi100, amd_gpus=tuple(dataclasses.replace(g, xgmi_links=()) for g in mi100.amd_gpus)
    )
    chosen = ids(placed(place(NodeState(unlinked), request(cards=((AMD, 4),)))), AMD)
    assert len({hive_of(mi100, a) for a in chosen}) == 2
    assert {unlinked.pci(a).numa_node for a in chosen} == {0}


def test_two_amd_gpus_with_pinned_cpus_are_a_linked_pair_on_the_cpus_node(mi100: NodeTopology) -> None:
    alloc = placed(place(NodeState(mi100), request(cards=((AMD, 2),), cpus=4, cpu_pinning=True)))
    a, b = ids(alloc, AMD)
    assert pci_distance(mi100, a, b).label == "XGMI"
    numa = {mi100.pci(a).numa_node, mi100.pci(b).numa_node}
    assert len(numa) == 1
    assert {c.numa_node for c in mi100.cpus if c.id in alloc.cpus} == numa
    assert alloc.worst_level == "PHB" and alloc.numa_nodes == tuple(numa)
    assert all(d.pci_address == d.id for d in alloc.devices)


def test_mi250x_single_numa_keeps_the_two_gcds_of_one_package(tmp_path: Path) -> None:
    topology = discover(build_mi250x(tmp_path).root)
    alloc = placed(
        place(
            NodeState(topology),
            request(cards=((AMD, 2),), cpus=16, cpu_pinning=True, policy="single-numa"),
        )
    )
    a, b = ids(alloc, AMD)
    assert a.rsplit(":", 2)[1][0] == b.rsplit(":", 2)[1][0]  # c3/c4, d3/d4, ...: one package
    assert pci_distance(topology, a, b).level is Level.NV
    assert len(alloc.numa_nodes) == 1


def test_fpga_comes_with_the_vf_and_cpus_under_its_switch(cards: NodeTopology) -> None:
    alloc = placed(
        place(
            NodeState(cards),
            request(cards=((FPGA, 1),), communication=("SRIOV",), cpus=2, cpu_pinning=True),
        )
    )
    assert ids(alloc, FPGA) == [D5005]
    (vf,) = ids(alloc, "gedge.io/sriov-vf")
    assert pci_distance(cards, D5005, vf).level is Level.PIX
    assert alloc.network is not None and alloc.network.vf_pci_address == vf
    assert alloc.cpus == (0, 1) and alloc.worst_level == "PHB"


def test_second_fpga_pod_gets_the_next_closest_card_and_counts_follow(cards: NodeTopology) -> None:
    state = NodeState(cards)
    assert {k: v for k, v in free_capacity(state).items() if k.startswith("gedge.io/")} == {
        FPGA: 3,
        ASIC: 1,
        "gedge.io/sriov-vf": 2,
    }
    first = placed(place(state, request(cards=((FPGA, 1),), communication=("SRIOV",))))
    state = dataclasses.replace(state, allocations=(first,))
    assert free_capacity(state)[FPGA] == 2
    second = placed(
        place(state, request(uid="uid-q", name="q", cards=((FPGA, 1),), communication=("SRIOV",)))
    )
    assert ids(second, FPGA) != ids(first, FPGA)
    assert ids(second, FPGA)[0] in (ALVEO_USER, AGILEX)


def test_fpga_and_asic_together_take_the_closest_pair(cards: NodeTopology) -> None:
    alloc = placed(place(NodeState(cards), request(cards=((ASIC, 1), (FPGA, 1)))))
    assert ids(alloc, ASIC) == [VFIO_ASIC]
    assert ids(alloc, FPGA) == [AGILEX]  # same root complex (PHB) beats the Alveo (NODE)


def test_shortfalls_name_the_card_resource(cards: NodeTopology, mi100: NodeTopology) -> None:
    outcome = place(NodeState(cards), request(cards=((FPGA, 4),)))
    assert isinstance(outcome, Refusal) and "needs 4 gedge.io/fpga (3 free)" in outcome.reason
    outcome = place(NodeState(mi100), request(cards=((FPGA, 1),)))
    assert isinstance(outcome, Refusal) and "1 gedge.io/fpga (0 free)" in outcome.reason
    held = Allocation("u1", "ml", "u1", mi100.node_name, (DeviceGrant(AMD, mi100.amd_gpus[0].pci_address),))
    assert free_capacity(NodeState(mi100, allocations=(held,)))[AMD] == 7
    outcome = place(NodeState(dgx_like("dgx")), request(cards=((AMD, 1),)))
    assert isinstance(outcome, Refusal) and "1 gedge.io/amd-gpu (0 free)" in outcome.reason


def test_not_topology_aware_takes_the_first_free_cards(mi100: NodeTopology) -> None:
    alloc = placed(place(NodeState(mi100), request(cards=((AMD, 2),), topology_aware=False)))
    assert ids(alloc, AMD) == [g.pci_address for g in mi100.amd_gpus[:2]]


def _pod(limits: dict[str, str], annotations: dict[str, str] | None = None) -> dict:
    return {
        "metadata": {"name": "p", "namespace": "ml", "uid": "u", "annotations": annotations or {}},
        "spec": {"containers": [{"name": "main", "resources": {"limits": limits}}]},
    }


def test_pods_ask_for_cards_by_resource_name() -> None:
    parsed = parse_pod_request(_pod({AMD: "2", FPGA: "1", "cpu": "2"}, {"gedge.io/compute": '["GPU"]'}))
    assert parsed.cards == ((AMD, 2), (FPGA, 1))
    assert parsed.wants_placement()
    with pytest.raises(RequestError, match=r"gedge\.io/fpga-intel: unknown gedge\.io resource"):
        parse_pod_request(_pod({"gedge.io/fpga-intel": "1"}))
    with pytest.raises(RequestError, match=r"gedge\.io/asic: must be a whole number"):
        parse_pod_request(_pod({ASIC: "500m"}))


def test_cards_whose_device_nodes_are_missing_are_refused_naming_them(tmp_path: Path) -> None:
    box = build_mi100_two_hives(tmp_path / "mi100")
    (box.root / "dev/kfd").unlink()
    topology = discover(box.root)
    assert not any(g.allocatable for g in topology.amd_gpus)
    assert "AMD GPU 0000:10:00.0: /dev/kfd missing on this node; it is not allocatable" in topology.warnings
    outcome = place(NodeState(topology), request(cards=((AMD, 1),)))
    assert isinstance(outcome, Refusal)
    assert outcome.reason.startswith("needs 1 gedge.io/amd-gpu (0 free) (not allocatable: ")
    assert "AMD GPU 0000:10:00.0 lacks /dev/kfd; AMD GPU 0000:20:00.0 lacks /dev/kfd" in outcome.reason

    cards = discover(build_card_box(tmp_path / "cards", dev_nodes=False).root)
    assert cards.cards == ()
    outcome = place(NodeState(cards), request(cards=((FPGA, 1),)))
    assert isinstance(outcome, Refusal)
    assert f"FPGA {D5005} lacks /dev/dfl-port.0" in outcome.reason
    assert f"FPGA {ALVEO_USER} lacks /dev/dri/renderD129, /dev/xclmgmt34816" in outcome.reason


@pytest.mark.parametrize("count", range(2, 9))
def test_amd_gpu_sets_cost_the_exhaustive_minimum(mi100: NodeTopology, count: int) -> None:
    addresses = [g.pci_address for g in mi100.amd_gpus]

    def cost(chosen) -> float:
        return sum(pci_distance(mi100, a, b).weight() for a, b in combinations(chosen, 2))

    best = min(cost(c) for c in combinations(addresses, count))
    outcome = place(NodeState(mi100), request(cards=((AMD, count),)))
    assert isinstance(outcome, Placement)
    assert outcome.cost == pytest.approx(best)
    assert cost(ids(outcome.allocation, AMD)) == pytest.approx(best)


def test_partitions_of_one_gpu_are_granted_once_each_and_packed_together(tmp_path: Path) -> None:
    topology = discover(build_mi300x(tmp_path, partitions=2).root)
    alloc = placed(place(NodeState(topology), request(cards=((AMD, 2),))))
    a, b = ids(alloc, AMD)
    assert a.split("::")[0] == b.split("::")[0] and a != b
    assert [d.pci_address for d in alloc.devices] == [a.split("::")[0]] * 2
    everything = placed(place(NodeState(topology), request(cards=((AMD, 16),))))
    assert len(set(ids(everything, AMD))) == 16
