"""`best-effort` (the default): the lowest-cost allocation on any NUMA nodes."""

from __future__ import annotations

from scheduler_extender.placement.config import PlacementConfig
from scheduler_extender.placement.free import FreeSet
from scheduler_extender.placement.search import Choice, Search


class BestEffort:
    name = "best-effort"

    def choose(self, search: Search, free: FreeSet) -> tuple[Choice | None, list[str]]:
        return search.best(free, checked=True), []

    def where(self, config: PlacementConfig) -> str:
        return "on one NUMA node"
