"""gedge.io/min-nvidia-driver over real HTTP: nodes whose reported driver is older, unknown or absent are
refused with a reason naming both versions, binds and preemption agree, and the refusals count as "driver"."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gedge_model import NodeState, NodeTopology
from scheduler_extender.bind.assume import AssumeCache
from scheduler_extender.http.app import build_app
from scheduler_extender.node_source import StaticNodeSource
from scheduler_extender.verb_metrics import refusal_class
from scheduler_extender.verbs import Extender
from tests.extender.conftest import RecordingBinder, pod
from tests.extender.servers import ServerThread, post
from tests.support.synthetic import edge_box

MIN = "gedge.io/min-nvidia-driver"
NODES = ["new", "old", "cpu-only", "odd"]


def with_driver(topology: NodeTopology, driver: str | None) -> NodeTopology:
    return replace(topology, gpus=tuple(replace(g, driver_version=driver) for g in topology.gpus))


class Cluster:
    def __init__(self) -> None:
        states = {
            "new": NodeState(edge_box("new", timeslice_replicas=1)),  # 535.104.05
            "old": NodeState(with_driver(edge_box("old", timeslice_replicas=1), "525.60.13")),
            "cpu-only": NodeState(NodeTopology(node_name="cpu-only")),
            "odd": NodeState(with_driver(edge_box("odd", timeslice_replicas=1), "rc-9")),
        }
        self.binder = RecordingBinder()
        self.warnings: list[tuple[str, str]] = []
        self.extender = Extender(
            StaticNodeSource(states),
            self.binder,
            cache=AssumeCache(),
            warn=lambda p, reason, message: self.warnings.append((reason, message)),
        )
        self.registry = CollectorRegistry()
        self.url = ""

    def post(self, verb: str, body: dict[str, Any]) -> dict[str, Any]:
        status, result = post(f"{self.url}/{verb}", body)
        assert status == 200, result
        return result

    def filter(self, pod_json: dict[str, Any], names: list[str] = NODES) -> dict[str, Any]:
        return self.post("filter", {"Pod": pod_json, "Nodes": None, "NodeNames": names})

    def bind(self, pod_json: dict[str, Any], node: str) -> str:
        meta = pod_json["metadata"]
        body = {"PodName": meta["name"], "PodNamespace": "ml", "PodUID": meta["uid"], "Node": node}
        return self.post("bind", body)["Error"]

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    with ServerThread(build_app(c.extender, registry=c.registry)) as server:
        c.url = server.url
        yield c


def test_gpu_pod_goes_only_where_the_driver_is_new_enough(cluster: Cluster) -> None:
    result = cluster.filter(pod("p", limits={"gedge.io/gpu": "1"}, annotations={MIN: "535.54.03"}))
    assert result["NodeNames"] == ["new"]  # 535.104.05 >= 535.54.03: minor 104 > 54
    failed = result["FailedNodes"]
    assert failed["old"] == "node driver 525.60.13 < 535.54.03 required by gedge.io/min-nvidia-driver"
    assert failed["cpu-only"] == (
        "no NVIDIA driver reported, 535.54.03 required by gedge.io/min-nvidia-driver"
    )
    assert failed["odd"] == (
        "node driver 'rc-9' is not a version, 535.54.03 required by gedge.io/min-nvidia-driver"
    )
    assert {refusal_class(reason) for reason in failed.values()} == {"driver"}
    assert cluster.sample("gedge_extender_filter_refusals_total", reason="driver") == 3


@pytest.mark.parametrize(
    ("minimum", "passed"),
    [("535.104.05", ["new"]), ("525.60.13", ["new", "old"]), ("470.57", ["new", "old"]), ("550.54", [])],
)
def test_a_minimum_at_or_below_the_node_driver_passes(
    cluster: Cluster, minimum: str, passed: list[str]
) -> None:
    result = cluster.filter(pod("p", limits={"gedge.io/gpu": "1"}, annotations={MIN: minimum}))
    assert sorted(result["NodeNames"]) == passed
    unschedulable = cluster.sample("gedge_extender_unschedulable_pods_total", reason="driver")
    assert unschedulable == (0 if passed else 1)


def test_the_memo_does_not_mix_pods_of_one_shape_with_different_minimums(cluster: Cluster) -> None:
    limits = {"gedge.io/gpu": "1"}
    assert sorted(cluster.filter(pod("a", limits=limits))["NodeNames"]) == ["new", "odd", "old"]
    assert cluster.filter(pod("b", limits=limits, annotations={MIN: "535.54.03"}))["NodeNames"] == ["new"]
    assert sorted(cluster.filter(pod("c", limits=limits))["NodeNames"]) == ["new", "odd", "old"]


def test_a_pod_asking_only_for_a_driver_is_filtered_and_bound(cluster: Cluster) -> None:
    step = pod("step", limits={"cpu": "1", "memory": "1Gi"}, annotations={MIN: "535.54.03"})
    result = cluster.filter(step)
    assert result["NodeNames"] == ["new"]
    assert set(result["FailedNodes"]) == {"old", "cpu-only", "odd"}
    assert cluster.bind(step, "old") == (
        "pod ml/step: node old: node driver 525.60.13 < 535.54.03 required by gedge.io/min-nvidia-driver"
    )
    assert cluster.bind(step, "new") == ""
    bound = cluster.binder.bound[-1]
    assert (bound.pod_uid, bound.node, bound.devices) == ("uid-step", "new", ())
    plain = pod("plain", limits={"cpu": "1", "memory": "1Gi"})
    assert cluster.filter(plain, ["old", "unreported"])["NodeNames"] == ["old", "unreported"]


def test_preemption_never_keeps_a_node_whose_driver_is_too_old(cluster: Cluster) -> None:
    step = pod("step", limits={"cpu": "1", "memory": "1Gi"}, annotations={MIN: "535.54.03"})
    victims = {"Pods": [{"UID": "uid-victim"}], "NumPDBViolations": 0}
    result = cluster.post(
        "preempt",
        {"Pod": step, "NodeNameToMetaVictims": {"new": victims, "old": victims, "cpu-only": victims}},
    )
    assert result == {"NodeNameToMetaVictims": {"new": victims}}


@pytest.mark.parametrize("value", ["latest", "535", "535.54.03.1", ""])
def test_a_malformed_minimum_is_an_error_naming_pod_and_annotation(cluster: Cluster, value: str) -> None:
    result = cluster.filter(pod("p", limits={"gedge.io/gpu": "1"}, annotations={MIN: value}))
    assert result["Error"] == (
        f"pod ml/p: gedge.io/min-nvidia-driver: {value!r} is not an NVIDIA driver version like 535.54.03"
    )
    assert not result.get("NodeNames")
    assert cluster.warnings[-1] == ("InvalidAccelerationRequest", result["Error"])
