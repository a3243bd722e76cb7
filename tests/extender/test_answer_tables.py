"""Answers kept across requests: every change of a node reaches the next answer, and the kept
answers equal what placing afresh gives (over a source that announces changes and one that does not)."""

from __future__ import annotations

import dataclasses
import threading
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

from gedge_model import NodeState
from scheduler_extender.bind.assume import AssumeCache
from scheduler_extender.http.app import build_app
from scheduler_extender.node_source import NodeView, StaticNodeSource
from scheduler_extender.placement import PlacementConfig, parse_pod_request, place
from scheduler_extender.placement.engine import Placement, score_nodes
from scheduler_extender.verbs import Extender
from scheduler_extender.wire import BindingArgs, decode_extender_args
from tests.extender.conftest import RecordingBinder, pod
from tests.extender.servers import ServerThread, post
from tests.support.synthetic import dgx_like, edge_box, pcie_workstation

SHAPES = [
    ({"gedge.io/gpu": "1"}, None),
    ({"gedge.io/gpu": "2"}, None),
    ({"gedge.io/gpu": "1", "gedge.io/sriov-vf": "1", "gedge.io/rdma": "1"}, None),
    ({"gedge.io/gpu-shared": "1"}, None),
]


class PlainSource:
    """A node source that does not announce changes: the extender places on every request."""

    def __init__(self, states: Mapping[str, NodeState]) -> None:
        self.views = {name: NodeView(state) for name, state in states.items()}

    def node(self, name: str) -> NodeView | None:
        return self.views.get(name)

    def nodes(self) -> Mapping[str, NodeView]:
        return dict(self.views)


def mixed_states() -> dict[str, NodeState]:
    states = {}
    for i in range(4):
        states[f"dgx-{i}"] = NodeState(dgx_like(f"dgx-{i}", timeslice_replicas=1 + 3 * (i % 2)))
        states[f"ws-{i}"] = NodeState(pcie_workstation(f"ws-{i}"))
        states[f"edge-{i}"] = NodeState(edge_box(f"edge-{i}", gpus=1 + i % 2))
    return states


def args(pod_json: dict[str, Any], names: list[str]) -> Any:
    return decode_extender_args({"Pod": pod_json, "Nodes": None, "NodeNames": names})


def bind(extender: Extender, pod_json: dict[str, Any], node: str) -> dict[str, Any]:
    """Bind as kube-scheduler does: after a filter that showed the extender the pod."""
    extender.filter(args(pod_json, [node]))
    meta = pod_json["metadata"]
    return extender.bind(BindingArgs(meta["name"], meta["namespace"], meta["uid"], node))


def expected_scores(states: Mapping[str, NodeState], pod_json: dict[str, Any]) -> dict[str, int]:
    request = parse_pod_request(pod_json)
    placements = {
        name: outcome
        for name, state in states.items()
        if isinstance(outcome := place(state, request, PlacementConfig()), Placement)
    }
    scores = score_nodes(placements)
    return {name: scores.get(name, 0) for name in states}


def test_kept_answers_equal_fresh_placement_and_follow_binds() -> None:
    """Pods of four shapes bound one after another: each filter and prioritize answer over a source
    that announces changes equals the one of an extender placing afresh on every request."""
    states = mixed_states()
    names = sorted(states)
    kept = Extender(StaticNodeSource(states), RecordingBinder())
    fresh = Extender(PlainSource(states), RecordingBinder())
    for i in range(24):
        limits, notes = SHAPES[i % len(SHAPES)]
        spec = pod(f"p-{i}", limits=limits, annotations=notes)
        filtered = kept.filter(args(spec, names))
        expected = fresh.filter(args(spec, names))
        passed = expected["NodeNames"]
        # Asked about every node, the kept answer lists passed nodes in its own order.
        assert {**filtered, "NodeNames": sorted(filtered["NodeNames"])} == expected
        some = names[::-1][1:]
        assert kept.filter(args(spec, some))["NodeNames"] == [n for n in some if n in passed]
        if not passed:
            continue
        scores = kept.prioritize(args(spec, passed))
        assert scores == fresh.prioritize(args(spec, passed))
        # The encoded reply (the whole shape table's when every passed node is asked about) agrees.
        by_host = {s["Host"]: s["Score"] for s in scores}
        encoded = orjson.loads(kept.prioritize_json(args(spec, passed)))
        assert {s["Host"]: s["Score"] for s in encoded} == by_host and len(encoded) == len(passed)
        best = max(scores, key=lambda s: (s["Score"], s["Host"]))["Host"]
        assert bind(kept, spec, best) == {"Error": ""}
        assert bind(fresh, spec, best) == {"Error": ""}


def test_scores_over_distinct_placements_equal_score_nodes_over_every_node() -> None:
    states = mixed_states()
    extender = Extender(StaticNodeSource(states), RecordingBinder())
    for limits, notes in SHAPES:
        spec = pod("probe", limits=limits, annotations=notes)
        got = {s["Host"]: s["Score"] for s in extender.prioritize(args(spec, sorted(states)))}
        assert got == expected_scores(states, spec)
        subset = sorted(states)[::2]
        got = {s["Host"]: s["Score"] for s in extender.prioritize(args(spec, subset))}
        assert got == expected_scores({n: states[n] for n in subset}, spec)


def test_a_new_report_reaches_the_next_filter() -> None:
    states = {"edge-0": NodeState(edge_box("edge-0", gpus=1))}
    source = StaticNodeSource(states)
    extender = Extender(source, RecordingBinder())
    spec = pod("p", limits={"gedge.io/gpu": "1"})
    assert extender.filter(args(spec, ["edge-0"]))["NodeNames"] == ["edge-0"]
    # The agent reports a pod holding its only GPU.
    taken = Extender(StaticNodeSource(states), RecordingBinder())
    bind(taken, pod("other", limits={"gedge.io/gpu": "1"}), "edge-0")
    held = taken.cache.held("edge-0")
    source.put(NodeView(dataclasses.replace(states["edge-0"], allocations=held, generation=2)))
    answer = extender.filter(args(spec, ["edge-0"]))
    assert answer["NodeNames"] == []
    assert "gedge.io/gpu" in answer["FailedNodes"]["edge-0"]


def test_a_bind_reaches_the_next_filter_of_the_same_shape() -> None:
    extender = Extender(
        StaticNodeSource({"edge-0": NodeState(edge_box("edge-0", gpus=1))}), RecordingBinder()
    )
    first, second = pod("a", limits={"gedge.io/gpu": "1"}), pod("b", limits={"gedge.io/gpu": "1"})
    assert extender.filter(args(first, ["edge-0"]))["NodeNames"] == ["edge-0"]
    assert bind(extender, first, "edge-0") == {"Error": ""}
    assert extender.filter(args(second, ["edge-0"]))["NodeNames"] == []
    extender.cache.release("uid-a")
    assert extender.filter(args(second, ["edge-0"]))["NodeNames"] == ["edge-0"]


def test_a_node_unknown_at_first_is_judged_once_its_agent_reports() -> None:
    source = StaticNodeSource({})
    extender = Extender(source, RecordingBinder())
    spec = pod("p", limits={"gedge.io/gpu": "1"})
    answer = extender.filter(args(spec, ["edge-0"]))
    assert "no gedge agent" in answer["FailedAndUnresolvableNodes"]["edge-0"]
    source.put(NodeView(NodeState(edge_box("edge-0", gpus=1))))
    answer = extender.filter(args(spec, ["edge-0"]))
    assert answer["NodeNames"] == ["edge-0"] and answer["FailedAndUnresolvableNodes"] == {}
    source.drop("edge-0")
    assert "no gedge agent" in extender.filter(args(spec, ["edge-0"]))["FailedAndUnresolvableNodes"]["edge-0"]


class ExpiringSource(StaticNodeSource):
    """Views fresh until a clock passes `fresh_until`, as the live cache's lost streams are: going
    stale is not announced."""

    def __init__(self, states: Mapping[str, NodeState]) -> None:
        super().__init__(states)
        self.now = 0.0

    def node(self, name: str) -> NodeView | None:
        view = super().node(name)
        if view is not None and view.fresh_until is not None and self.now > view.fresh_until:
            return dataclasses.replace(view, fresh=False, reason="watch stream gone", fresh_until=None)
        return view


def test_a_node_that_goes_stale_by_time_alone_is_looked_at_on_every_request() -> None:
    state = NodeState(edge_box("edge-0", gpus=1))
    source = ExpiringSource({})
    source.put(NodeView(state, fresh_until=10.0))
    extender = Extender(source, RecordingBinder())
    spec = pod("p", limits={"gedge.io/gpu": "1"})
    assert extender.filter(args(spec, ["edge-0"]))["NodeNames"] == ["edge-0"]
    source.now = 11.0
    answer = extender.filter(args(spec, ["edge-0"]))
    assert answer["NodeNames"] == []
    assert answer["FailedAndUnresolvableNodes"] == {"edge-0": "watch stream gone"}


class SmallLogCache(AssumeCache):
    CHANGE_LOG = 8


def test_assume_cache_change_log_names_changed_nodes_and_gives_up_past_its_size() -> None:
    cache = SmallLogCache()
    start = cache.sequence()
    extender = Extender(
        StaticNodeSource({"edge-0": NodeState(edge_box("edge-0", gpus=2))}), RecordingBinder(), cache=cache
    )
    bind(extender, pod("a", limits={"gedge.io/gpu": "1"}), "edge-0")
    changed, now = cache.changes_since(start)  # type: ignore[misc]
    assert set(changed) == {"edge-0"} and now == cache.sequence()
    assert cache.changes_since(now) == ([], now)
    for _ in range(SmallLogCache.CHANGE_LOG):
        cache.release("uid-a")
        bind(extender, pod("a", limits={"gedge.io/gpu": "1"}), "edge-0")
    assert cache.changes_since(start) is None


class BlockingSource(StaticNodeSource):
    """Holds the first node lookup until released: a filter that is busy for as long as a test wants."""

    def __init__(self, states: Mapping[str, NodeState]) -> None:
        super().__init__(states)
        self.entered, self.release = threading.Event(), threading.Event()

    def node(self, name: str) -> NodeView | None:
        self.entered.set()
        assert self.release.wait(timeout=30)
        return super().node(name)


def test_healthz_answers_while_a_filter_is_busy() -> None:
    source = BlockingSource({"edge-0": NodeState(edge_box("edge-0", gpus=1))})
    extender = Extender(source, RecordingBinder())
    with ServerThread(build_app(extender)) as server, ThreadPoolExecutor(1) as pool:
        body = {"Pod": pod("p", limits={"gedge.io/gpu": "1"}), "Nodes": None, "NodeNames": ["edge-0"]}
        pending = pool.submit(post, f"{server.url}/filter", body)
        assert source.entered.wait(timeout=30)
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as reply:
            assert reply.read() == b"ok"
        assert not pending.done()
        source.release.set()
        status, answer = pending.result(timeout=30)
    assert status == 200 and answer["NodeNames"] == ["edge-0"]


@pytest.mark.parametrize("names", [["edge-0", 7], [None]])
def test_node_names_that_are_not_strings_are_refused_naming_the_index(names: list[Any]) -> None:
    from scheduler_extender.wire import WireError

    with pytest.raises(WireError, match=r"NodeNames\[\d\]: expected a string"):
        decode_extender_args({"Pod": pod("p"), "Nodes": None, "NodeNames": names})


@pytest.mark.parametrize("announcing", [True, False])
def test_a_bind_after_a_filter_reserves_what_placing_afresh_gives(announcing: bool) -> None:
    """The bind takes the filter's answer for its node while the node is as the filter saw it, and
    places again once it changed (here: another pod bound there in between)."""
    states = mixed_states()
    source = StaticNodeSource(states) if announcing else PlainSource(states)
    extender = Extender(source, RecordingBinder())
    names = sorted(states)
    for i, (limits, notes) in enumerate(SHAPES * 3):
        first, second = (pod(f"b-{i}-{k}", limits=limits, annotations=notes) for k in range(2))
        for spec in (first, second):
            extender.filter(args(spec, names))
        passed = extender.filter(args(first, names))["NodeNames"]
        node = passed[i % len(passed)]
        for spec in (first, second):
            request = parse_pod_request(spec)
            reserved = extender.cache.held(node)
            expected = place(states[node], request, PlacementConfig(), reserved)
            meta = spec["metadata"]
            answer = extender.bind(BindingArgs(meta["name"], meta["namespace"], meta["uid"], node))
            if isinstance(expected, Placement):
                assert answer == {"Error": ""}
                held = extender.cache.held_by(meta["uid"])
                assert held is not None
                assert (held.devices, held.cpus, held.cost) == (
                    expected.allocation.devices,
                    expected.allocation.cpus,
                    expected.allocation.cost,
                )
                assert (held.pod_uid, held.name, held.node) == (meta["uid"], meta["name"], node)
            else:
                assert (
                    answer["Error"]
                    == f"pod {meta['namespace']}/{meta['name']}: node {node}: {expected.reason}"
                )
