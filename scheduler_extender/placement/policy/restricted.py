"""kubelet's `restricted`: only an allocation on the narrowest NUMA span the node's capacity allows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gedge_model.allocation import RESOURCE_GPU
from scheduler_extender.placement.config import PlacementConfig
from scheduler_extender.placement.free import FreeSet
from scheduler_extender.placement.index import NO_NUMA, TopologyIndex
from scheduler_extender.placement.policy.numa_sets import search_within
from scheduler_extender.placement.request import PodRequest
from scheduler_extender.placement.search import Choice, Search, needs_of


class Restricted:
    name = "restricted"

    def choose(self, search: Search, free: FreeSet) -> tuple[Choice | None, list[str]]:
        return search_within(search, free, narrowest_span(search.index, search.request))

    def where(self, config: PlacementConfig) -> str:
        return "on the fewest NUMA nodes that can hold it"


def min_span(counts: Mapping[int, int], want: int) -> int:
    """Fewest NUMA nodes whose capacity adds up to `want` (kubelet's narrowest preferred hint)."""
    if want <= 0:
        return 0
    total = 0
    for span, count in enumerate(sorted(counts.values(), reverse=True), start=1):
        total += count
        if total >= want:
            return span
    return len(counts) + 1


def narrowest_span(index: TopologyIndex, request: PodRequest) -> int:
    """The NUMA span `restricted` admits: the widest of every resource's narrowest span by capacity."""
    needs = needs_of(request)

    def per_numa(numas: Iterable[int]) -> dict[int, int]:
        out: dict[int, int] = {}
        for numa in numas:
            if numa != NO_NUMA:
                out[numa] = out.get(numa, 0) + 1
        return out

    spans = [
        min_span(
            per_numa(g.numa for g in index.gpus if g.resource == RESOURCE_GPU and not g.mig_mode),
            request.gpus,
        ),
        min_span(per_numa(g.numa for g in index.gpus for _ in g.replica_ids), request.gpu_shared),
        min_span(per_numa(g.numa for g in index.vf_groups for _ in g.members), needs.vfs),
        min_span(per_numa(r.numa for r in index.rdmas), needs.rdmas),
        min_span(
            {
                n: sum(len(set(c) - index.reserved_cpus) for c in cores)
                for n, cores in index.cores.items()
                if n != NO_NUMA
            },
            request.cpus,
        ),
    ]
    for resource, count in request.cards:
        spans.append(min_span(per_numa(g.numa for g in index.gpus if g.resource == resource), count))
    for profile, count in request.mig:
        spans.append(min_span(per_numa(g.numa for g in index.gpus for _, p in g.migs if p == profile), count))
    return max(1, *spans)
