"""What the extender's HTTP verbs read and call: nodes as the cache holds them, and the agents' apply.

The live gRPC cache and the agents' gRPC clients implement these; tests of the
verbs may pass a `StaticNodeSource` built from real discovered topologies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gedge_model import Allocation, NodeState


@dataclass(frozen=True)
class NodeView:
    """One node in the cache: its last reported state, and whether that report is still live."""

    state: NodeState
    fresh: bool = True
    reason: str | None = None
    """Why the node is not fresh (stream gone since ..., never connected, wrong identity)."""
    address: str | None = None
    fresh_until: float | None = None
    """time.monotonic() at which a fresh view turns stale by itself (its stream is gone, the TTL
    runs); None when only a new report or a listener call can change the view."""


class NodeSource(Protocol):
    def node(self, name: str) -> NodeView | None: ...

    def nodes(self) -> Mapping[str, NodeView]: ...


NodeListener = Callable[[str, "NodeView | None"], None]
"""(node name, its new view or None when dropped): called after a node's view changed."""


@runtime_checkable
class ObservableNodeSource(NodeSource, Protocol):
    """A source that announces every change of a node's view (except going stale by `fresh_until`).

    The extender keeps per-node answers across requests only for such sources.
    """

    def add_listener(self, listener: NodeListener) -> None: ...


class AgentApplier(Protocol):
    """Makes a bind real on a node run without Kubernetes (the agent's gRPC Apply/Release)."""

    def apply(self, node: str, allocation: Allocation) -> None: ...

    def release(self, node: str, pod_uid: str) -> None: ...


class StaticNodeSource:
    """A fixed set of node states, for the one-shot `place` command and for tests."""

    def __init__(self, states: Mapping[str, NodeState] | None = None) -> None:
        self._views = {name: NodeView(state) for name, state in (states or {}).items()}
        self._listeners: list[NodeListener] = []

    def put(self, view: NodeView) -> None:
        self._views[view.state.node_name] = view
        for listener in self._listeners:
            listener(view.state.node_name, view)

    def drop(self, name: str) -> None:
        if self._views.pop(name, None) is not None:
            for listener in self._listeners:
                listener(name, None)

    def add_listener(self, listener: NodeListener) -> None:
        self._listeners.append(listener)

    def node(self, name: str) -> NodeView | None:
        return self._views.get(name)

    def nodes(self) -> Mapping[str, NodeView]:
        return dict(self._views)
