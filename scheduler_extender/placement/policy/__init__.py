"""Topology policies, one per module behind one interface (as kubelet's Topology Manager has them).

A policy chooses from a node's free set with a `Search`: `choose` answers the
best `Choice` it admits, or None and why each NUMA-node set failed (a few
reasons, not every set). `where` words the refusal.
"""

from __future__ import annotations

from typing import Protocol

from scheduler_extender.placement.config import PlacementConfig
from scheduler_extender.placement.free import FreeSet
from scheduler_extender.placement.policy.best_effort import BestEffort
from scheduler_extender.placement.policy.none import NoAlignment
from scheduler_extender.placement.policy.restricted import Restricted
from scheduler_extender.placement.policy.single_numa_node import SameSwitch, SingleNumaNode
from scheduler_extender.placement.request import POLICY_ALIASES, PodRequest
from scheduler_extender.placement.search import Choice, Search


class Policy(Protocol):
    name: str
    """The policy as a refusal names it."""

    def choose(self, search: Search, free: FreeSet) -> tuple[Choice | None, list[str]]: ...

    def where(self, config: PlacementConfig) -> str: ...


POLICIES: dict[str, Policy] = {
    "best-effort": BestEffort(),
    "restricted": Restricted(),
    "single-numa": SingleNumaNode(),
    "same-switch": SameSwitch(),
}
NONE = NoAlignment()


def policy_for(request: PodRequest) -> Policy:
    """The request's policy; a pod opting out of topology awareness gets no alignment."""
    if not request.topology_aware:
        return NONE
    name = POLICY_ALIASES.get(request.policy, request.policy)
    found = POLICIES.get(name)
    if found is None:
        raise ValueError(f"unknown topology policy {request.policy!r}; accepted: {', '.join(POLICIES)}")
    return found


__all__ = ["NONE", "POLICIES", "Policy", "policy_for"]
