"""A node as the extender sees it: topology, what is already allocated, and how fresh it is."""

from __future__ import annotations

from dataclasses import dataclass

from gedge_model.allocation import Allocation
from gedge_model.topology import NodeTopology


@dataclass(frozen=True)
class NodeState:
    """What an agent reports: its topology plus the allocations it holds, at a generation.

    The generation grows by one with every change the agent sends, so a receiver
    can tell a newer report from an older one.
    """

    topology: NodeTopology
    allocations: tuple[Allocation, ...] = ()
    """What the agent has applied or reserved on the node, from its checkpoint."""
    generation: int = 0

    @property
    def node_name(self) -> str:
        return self.topology.node_name

    def used_device_ids(self) -> frozenset[tuple[str, str]]:
        """(resource, device id) of every grant held."""
        return frozenset((d.resource, d.id) for a in self.allocations for d in a.devices)

    def used_cpus(self) -> frozenset[int]:
        """CPU ids pinned by any allocation."""
        return frozenset(c for a in self.allocations for c in a.cpus)
