"""NUMA-node sets for the aligning policies: which sets to search, and the best choice within a span."""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import combinations

from gedge_model.allocation import (
    RESOURCE_GPU,
    RESOURCE_GPU_SHARED,
    RESOURCE_RDMA,
    RESOURCE_SRIOV_VF,
    mig_resource_name,
)
from scheduler_extender.placement.free import FreeSet
from scheduler_extender.placement.index import LEVELS, NO_NUMA, TopologyIndex
from scheduler_extender.placement.request import PodRequest
from scheduler_extender.placement.search import Choice, Search, needs_of, shortfalls


def numa_ids(index: TopologyIndex) -> list[int]:
    found = {g.numa for g in index.gpus} | {n.numa for n in (*index.vf_groups, *index.rdmas, *index.nics)}
    found |= set(index.cores)
    return sorted(found - {NO_NUMA})


MAX_NUMA_SUBSETS = 128
"""Most NUMA-node sets `restricted` searches one by one; beyond it (more than 8 nodes, as kubelet's
Topology Manager refuses), sets are grown from every node instead of enumerated."""
MAX_REASONS = 3
"""NUMA-node sets a refusal names; the rest are counted."""


def free_by_numa(
    index: TopologyIndex, request: PodRequest, free: FreeSet
) -> list[tuple[str, int, dict[int, int]]]:
    """(what, units wanted, NUMA id -> free units) per resource the pod asks for; NO_NUMA aligns anywhere."""
    needs = needs_of(request)

    def count(numas: Iterable[int]) -> dict[int, int]:
        out: dict[int, int] = {}
        for numa in numas:
            out[numa] = out.get(numa, 0) + 1
        return out

    gpus = index.gpus
    wanted = [
        (RESOURCE_GPU, request.gpus, count(gpus[p].numa for p in free.whole)),
        (
            RESOURCE_GPU_SHARED,
            request.gpu_shared,
            count(gpus[p].numa for p, ids in free.replicas.items() for _ in ids),
        ),
        (RESOURCE_SRIOV_VF, needs.vfs, count(g.numa for g, members in free.vfs for _ in members)),
        (RESOURCE_RDMA, needs.rdmas, count(r.numa for r in free.rdmas)),
        ("pinned CPUs", request.cpus, {n: free.cpu_count(n) for n in free.cores}),
    ]
    wanted += [
        (mig_resource_name(profile), n, count(gpus[p].numa for p, _ in free.migs.get(profile, ())))
        for profile, n in request.mig
    ]
    return [(what, n, by_numa) for what, n, by_numa in wanted if n > 0]


def numa_subsets(
    search: Search, free: FreeSet, numas: list[int], width: int
) -> tuple[list[tuple[int, ...]], str | None]:
    """The NUMA-node sets of `width` nodes to search, or why none of them can hold the request
    (checked when there are more sets than a refusal names).

    Every set while there are at most MAX_NUMA_SUBSETS; else one set grown from
    each node, adding the node that covers most of what is still missing (nearest
    by SLIT on ties), plus the `width` nodes with the most free units.
    """
    wanted = free_by_numa(search.index, search.request, free)
    every = math.comb(len(numas), width)
    for what, n, by_numa in wanted if every > MAX_REASONS else ():
        anywhere = by_numa.get(NO_NUMA, 0)
        top = sorted((c for numa, c in by_numa.items() if numa != NO_NUMA), reverse=True)[:width]
        if anywhere + sum(top) < n:
            nodes = "NUMA node holds" if width == 1 else f"{width} NUMA nodes hold"
            return [], f"no {nodes} {n} {what} (at most {anywhere + sum(top)} free on {width})"
    if every <= MAX_NUMA_SUBSETS:
        return [tuple(c) for c in combinations(numas, width)], None

    def missing(chosen: Iterable[int]) -> float:
        chosen = tuple(chosen)
        return sum(
            max(0, n - by_numa.get(NO_NUMA, 0) - sum(by_numa.get(m, 0) for m in chosen)) / n
            for _, n, by_numa in wanted
        )

    order = search.index.numa_order
    subsets: dict[tuple[int, ...], None] = {}
    for seed in numas:
        rank = {m: i for i, m in enumerate(order.get(seed, ()))}
        chosen = [seed]
        while len(chosen) < width:
            rest = [m for m in numas if m not in chosen]
            chosen.append(min(rest, key=lambda m: (missing((*chosen, m)), rank.get(m, len(rank)), m)))
        subsets[tuple(sorted(chosen))] = None
    richest = sorted(numas, key=lambda m: (missing((m,)), m))[:width]
    subsets[tuple(sorted(richest))] = None
    return list(subsets), None


def search_within(search: Search, free: FreeSet, span: int) -> tuple[Choice | None, list[str]]:
    """Best choice whose devices and CPUs lie on at most `span` NUMA nodes; else what each set lacks.

    The unconstrained best is tried first: when it already lies within `span`
    nodes it is also the best of the constrained set, and one search suffices.
    The reasons name at most MAX_REASONS sets.
    """
    unconstrained = search.best(free, checked=True)
    if unconstrained is not None and unconstrained.span <= span:
        return unconstrained, []
    numas = numa_ids(search.index)
    width = min(span, len(numas))
    subsets, hopeless = numa_subsets(search, free, numas, width) if numas else ([()], None)
    if hopeless is not None:
        return None, [hopeless]
    best: Choice | None = None
    lacks: list[str] = []
    untold = 0
    for subset in subsets:
        allowed = free.within(search.index, frozenset(subset))
        short = shortfalls(search.request, allowed)
        choice = None if short else search.best(allowed, checked=True)
        if choice is not None and choice.span <= span and choice.better_than(best):
            best = choice
        elif choice is None:
            if len(lacks) >= MAX_REASONS:
                untold += 1
                continue
            where = "+".join(f"node{n}" for n in subset) or "node"
            if not short and search.switch_limit is not None:
                short = [f"no free network device within {LEVELS[search.switch_limit].value} of a free GPU"]
            lacks.append(f"{where}: " + ("; ".join(short) if short else "no aligned combination"))
    if best is None and untold:
        lacks.append(f"{untold} more NUMA node set(s) likewise")
    return best, lacks
