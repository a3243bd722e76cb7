"""Every reservation has one owner: a pod bound again elsewhere gives up the first node at its agent, and
a node's report settles binds at once, whether or not a filter looks at the node."""

from __future__ import annotations

import dataclasses

from gedge_model import Allocation, NodeState
from scheduler_extender.bind.agent import AgentBinder
from scheduler_extender.node_source import NodeView, StaticNodeSource
from scheduler_extender.verbs import Extender
from scheduler_extender.wire import BindingArgs, ExtenderArgs
from tests.extender.conftest import pod
from tests.support.synthetic import edge_box

GPU = {"gedge.io/gpu": "1"}


class RecordingAgents:
    """The agents' Apply/Release as the binder calls them (AgentApplier)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.fail_release = False

    def apply(self, node: str, allocation: Allocation) -> None:
        self.calls.append(("apply", node, allocation.pod_uid))

    def release(self, node: str, pod_uid: str) -> None:
        self.calls.append(("release", node, pod_uid))
        if self.fail_release:
            raise ConnectionError("agent unreachable")


class ReportingSource(StaticNodeSource):
    """Node states that change as agents report, announced to listeners as the cluster cache does."""

    def __init__(self, states: dict[str, NodeState]) -> None:
        super().__init__(states)
        self.listeners = []

    def add_listener(self, listener) -> None:
        self.listeners.append(listener)

    def report(self, state: NodeState) -> None:
        view = NodeView(state)
        self.put(view)
        for listener in self.listeners:
            listener(state.node_name, view)


def _filter(extender: Extender, body: dict, nodes: tuple[str, ...]) -> dict:
    return extender.filter(ExtenderArgs(pod=body, node_names=nodes, nodes=None))


def test_a_pod_bound_again_elsewhere_releases_the_first_nodes_reservation() -> None:
    agents = RecordingAgents()
    source = StaticNodeSource({n: NodeState(edge_box(n, gpus=1)) for n in ("edge-1", "edge-2")})
    extender = Extender(source, AgentBinder(agents))
    body = pod("mover", uid="uid-mover", limits=GPU)
    _filter(extender, body, ("edge-1", "edge-2"))
    assert extender.bind(BindingArgs("mover", "ml", "uid-mover", "edge-1")) == {"Error": ""}
    _filter(extender, body, ("edge-1", "edge-2"))
    assert extender.bind(BindingArgs("mover", "ml", "uid-mover", "edge-2")) == {"Error": ""}
    assert agents.calls == [
        ("apply", "edge-1", "uid-mover"),
        ("release", "edge-1", "uid-mover"),
        ("apply", "edge-2", "uid-mover"),
    ]
    assert extender.cache.held_by("uid-mover").node == "edge-2"
    other = pod("other", uid="uid-other", limits=GPU)
    assert _filter(extender, other, ("edge-1",))["NodeNames"] == ["edge-1"], "edge-1's GPU is free again"


def test_an_unreachable_first_node_does_not_fail_the_new_bind() -> None:
    agents = RecordingAgents()
    agents.fail_release = True
    source = StaticNodeSource({n: NodeState(edge_box(n, gpus=1)) for n in ("edge-1", "edge-2")})
    extender = Extender(source, AgentBinder(agents))
    body = pod("mover", uid="uid-mover", limits=GPU)
    _filter(extender, body, ("edge-1", "edge-2"))
    extender.bind(BindingArgs("mover", "ml", "uid-mover", "edge-1"))
    _filter(extender, body, ("edge-1", "edge-2"))
    assert extender.bind(BindingArgs("mover", "ml", "uid-mover", "edge-2")) == {"Error": ""}
    assert ("release", "edge-1", "uid-mover") in agents.calls


def test_a_nodes_report_settles_binds_without_any_filter() -> None:
    agents = RecordingAgents()
    empty = NodeState(edge_box("edge-1", gpus=1))
    source = ReportingSource({"edge-1": empty})
    extender = Extender(source, AgentBinder(agents))
    body = pod("short", uid="uid-short", limits=GPU)
    _filter(extender, body, ("edge-1",))
    assert extender.bind(BindingArgs("short", "ml", "uid-short", "edge-1")) == {"Error": ""}
    allocation = extender.cache.held_by("uid-short")
    assert allocation is not None

    source.report(dataclasses.replace(empty, allocations=(allocation,), generation=2))
    assert extender.cache.held_by("uid-short") is None, "the report accounts for it now"
    source.report(dataclasses.replace(empty, allocations=(), generation=3))  # released at the agent
    other = pod("next", uid="uid-next", limits=GPU)
    assert _filter(extender, other, ("edge-1",))["NodeNames"] == ["edge-1"]
