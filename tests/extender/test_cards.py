"""The extender counts AMD GPUs and FPGA/ASIC cards: filter, prioritize and bind over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.discovery import discover
from gedge_model import NodeState
from scheduler_extender.http.app import build_app
from scheduler_extender.verb_metrics import refusal_class
from tests.discovery.amd_box import build_mi100_two_hives
from tests.discovery.card_box import D5005, build_card_box
from tests.extender.conftest import pod
from tests.extender.servers import ServerThread
from tests.extender.test_http import Cluster
from tests.support.synthetic import dgx_like

AMD = "gedge.io/amd-gpu"


@pytest.fixture(scope="module")
def states(tmp_path_factory) -> dict[str, NodeState]:
    root: Path = tmp_path_factory.mktemp("nodes")
    return {
        "mi100": NodeState(discover(build_mi100_two_hives(root / "mi100").root, node_name="mi100")),
        "fpga-edge": NodeState(discover(build_card_box(root / "fpga").root, node_name="fpga-edge")),
        "dgx-1": NodeState(dgx_like("dgx-1")),
    }


@pytest.fixture
def cluster(states: dict[str, NodeState]) -> Iterator[Cluster]:
    c = Cluster(dict(states), [])
    with ServerThread(build_app(c.extender, max_body=1024 * 1024)) as server:
        c.server = server
        yield c


def test_filter_keeps_only_nodes_with_free_cards_and_names_the_shortfall(cluster: Cluster) -> None:
    status, result = cluster.post("filter", cluster.args(pod(limits={AMD: "4"})))
    assert status == 200 and result["Error"] == ""
    assert result["NodeNames"] == ["mi100"]
    assert "4 gedge.io/amd-gpu (0 free)" in result["FailedNodes"]["dgx-1"]
    _, result = cluster.post("filter", cluster.args(pod(limits={"gedge.io/fpga": "1"})))
    assert result["NodeNames"] == ["fpga-edge"]


def test_binds_hand_out_whole_hives_until_the_cards_run_out(cluster: Cluster) -> None:
    hives = []
    for name in ("a", "b"):
        p = pod(name, limits={AMD: "4"})
        cluster.post("filter", cluster.args(p, ["mi100"]))
        assert cluster.bind(p, "mi100") == (200, {"Error": ""})
        allocation = cluster.binder.bound[-1]
        topology = cluster.source.nodes()["mi100"].state.topology
        hives.append({topology.amd_gpu_by_pci(i).hive_id for i in allocation.device_ids(AMD)})
    assert all(len(h) == 1 for h in hives) and hives[0] != hives[1]

    status, result = cluster.post("filter", cluster.args(pod("c", limits={AMD: "1"}), ["mi100"]))
    assert status == 200
    assert result["NodeNames"] == []
    assert "1 gedge.io/amd-gpu (0 free)" in result["FailedNodes"]["mi100"]


def test_fpga_pod_with_a_data_path_is_bound_with_the_card_beside_its_nic(cluster: Cluster) -> None:
    p = pod("f", limits={"gedge.io/fpga": "1"}, annotations={"gedge.io/communication": '["SRIOV"]'})
    status, scores = cluster.post("prioritize", cluster.args(p, ["fpga-edge"]))
    assert status == 200 and scores == [{"Host": "fpga-edge", "Score": 10}]
    cluster.post("filter", cluster.args(p, ["fpga-edge"]))
    assert cluster.bind(p, "fpga-edge") == (200, {"Error": ""})
    (allocation,) = cluster.binder.bound
    assert allocation.device_ids("gedge.io/fpga") == (D5005,)
    assert allocation.network is not None and allocation.network.mode == "sriov"


def test_card_shortfalls_have_their_own_refusal_class(cluster: Cluster) -> None:
    _, result = cluster.post("filter", cluster.args(pod(limits={AMD: "1", "gedge.io/asic": "2"})))
    reasons = result["FailedNodes"]
    assert refusal_class(reasons["fpga-edge"]) == "insufficient-amd-gpu"
    assert refusal_class(reasons["dgx-1"]) == "insufficient-amd-gpu"
    assert refusal_class("needs 1 gedge.io/fpga (0 free)") == "insufficient-fpga"
    assert refusal_class("needs 2 gedge.io/asic (1 free)") == "insufficient-asic"
    assert refusal_class("needs 1 gedge.io/gpu (0 free)") == "insufficient-gpu"
