"""The node's state as the agent reports it, with a generation that grows with every change.

Discovery and the appliers write here from any thread; watch streams, one per
subscriber, are woken on their own event loops. A slow watcher never holds up
the writer or other watchers: it simply reads the latest state when it wakes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from gedge_model import Allocation, DeviceHealth, NodeState, NodeTopology


@dataclass(frozen=True)
class Snapshot:
    """One generation of the node state, plus which generation last changed the topology."""

    state: NodeState
    topology_generation: int
    reserved: frozenset[str] = frozenset()
    """Pods among the allocations that are reserved: held, not yet attached to cgroups and NIC."""
    not_applying: str = ""
    """Why the agent's pod watch applies nothing now ("" when it applies): extenders place nothing here."""


@dataclass(eq=False)
class Subscription:
    """A watcher's wake-up signal; it reads `NodeStateStore.current()` when woken."""

    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.loop.call_soon_threadsafe(self.wake.set)


class NodeStateStore:
    def __init__(
        self,
        topology: NodeTopology,
        allocations: tuple[Allocation, ...] = (),
        reserved: frozenset[str] = frozenset(),
    ) -> None:
        self.instance = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._snapshot = Snapshot(NodeState(topology, tuple(allocations), 1), 1, frozenset(reserved))
        self._subscribers: set[Subscription] = set()
        self._listeners: list[Callable[[Snapshot], None]] = []
        self._unhealthy: tuple[DeviceHealth, ...] = topology.unhealthy
        self.closed = False

    @property
    def node_name(self) -> str:
        return self._snapshot.state.node_name

    def current(self) -> Snapshot:
        return self._snapshot

    def set_topology(self, topology: NodeTopology) -> bool:
        """Publish a re-discovered topology; returns whether it differed (and so made a new generation).

        The device health last set with `set_unhealthy` is kept: discovery does not judge health."""
        with self._lock:
            state = self._snapshot.state
            if topology.unhealthy != self._unhealthy:
                topology = dataclasses.replace(topology, unhealthy=self._unhealthy)
            if topology == state.topology:
                return False
            if topology.node_name != state.node_name:
                raise ValueError(
                    f"topology is for node {topology.node_name!r}, this agent reports {state.node_name!r}"
                )
            generation = state.generation + 1
            self._snapshot = dataclasses.replace(
                self._snapshot,
                state=NodeState(topology, state.allocations, generation),
                topology_generation=generation,
            )
        self._publish()
        return True

    def set_unhealthy(self, unhealthy: tuple[DeviceHealth, ...]) -> bool:
        """Publish which devices are unhealthy (sorted, one entry per PCI function); whether it changed."""
        with self._lock:
            snap = self._snapshot
            state = snap.state
            if unhealthy == self._unhealthy:
                return False
            self._unhealthy = unhealthy
            topology = dataclasses.replace(state.topology, unhealthy=unhealthy)
            generation = state.generation + 1
            self._snapshot = dataclasses.replace(
                snap, state=NodeState(topology, state.allocations, generation), topology_generation=generation
            )
        self._publish()
        return True

    def set_allocations(
        self, allocations: tuple[Allocation, ...], reserved: frozenset[str] = frozenset()
    ) -> bool:
        """Publish what is applied (`reserved`: which of those pods are only reserved)."""
        reserved = frozenset(reserved)
        with self._lock:
            snap = self._snapshot
            if tuple(allocations) == snap.state.allocations and reserved == snap.reserved:
                return False
            state = NodeState(snap.state.topology, tuple(allocations), snap.state.generation + 1)
            self._snapshot = dataclasses.replace(snap, state=state, reserved=reserved)
        self._publish()
        return True

    def set_not_applying(self, reason: str) -> bool:
        """Publish why the agent applies nothing now ("" once it does); whether it changed."""
        with self._lock:
            snap = self._snapshot
            if reason == snap.not_applying:
                return False
            state = dataclasses.replace(snap.state, generation=snap.state.generation + 1)
            self._snapshot = dataclasses.replace(snap, state=state, not_applying=reason)
        self._publish()
        return True

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> Subscription:
        sub = Subscription(loop)
        with self._lock:
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    def close(self) -> None:
        """Shutting down: wake every watcher so its stream ends now rather than at the grace deadline."""
        self.closed = True
        self._publish()

    @property
    def watcher_count(self) -> int:
        return len(self._subscribers)

    def add_listener(self, listener: Callable[[Snapshot], None]) -> None:
        """Called synchronously after every new generation (metrics, logs)."""
        self._listeners.append(listener)

    def _publish(self) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
            snap = self._snapshot
        for sub in subscribers:
            try:
                sub.notify()
            except RuntimeError:
                self.unsubscribe(sub)
        for listener in self._listeners:
            listener(snap)
