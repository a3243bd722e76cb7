"""kubelet's `single-numa-node` (alias `single-numa`): every device and CPU on one NUMA node; and
`same-switch`: that plus every GPU<->network-device pair (and GPU<->GPU pair unless NVLinked) at
PlacementConfig.same_switch_level or closer (the Search applies the level)."""

from __future__ import annotations

from scheduler_extender.placement.config import PlacementConfig
from scheduler_extender.placement.free import FreeSet
from scheduler_extender.placement.policy.numa_sets import search_within
from scheduler_extender.placement.search import Choice, Search


class SingleNumaNode:
    name = "single-numa"

    def choose(self, search: Search, free: FreeSet) -> tuple[Choice | None, list[str]]:
        return search_within(search, free, 1)

    def where(self, config: PlacementConfig) -> str:
        return "on one NUMA node"


class SameSwitch(SingleNumaNode):
    name = "same-switch"

    def where(self, config: PlacementConfig) -> str:
        return f"on one NUMA node, network devices within {config.same_switch_level.value} of the GPUs"
