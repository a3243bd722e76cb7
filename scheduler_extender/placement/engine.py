"""Choose a pod's devices and CPUs on one node: the allocation with the lowest distance cost.

Entry points: `place` (one node) and `score_nodes` (ranking nodes). The parts:
`free` (what is free), `search` (GPUs, then CPUs, then network devices),
`policy` (one module per topology policy), `plans` (the plan memo).

Pure functions over `NodeState` and `PodRequest`. Cost is the weighted sum of
pair distances (gedge_model.distance levels and weights) over GPU<->GPU,
GPU<->VF/RDMA/NIC and every device<->the NUMA nodes of the pinned CPUs; the
allocation records it and its worst level.

How the search stays cheap: per-topology facts come from `topology_index`
(built once per topology object); GPU sets are enumerated exhaustively only
while the number of combinations is small (else grown greedily from every
seed GPU, NVLink and PCIe-switch neighbours first), and for each GPU set the
network devices are picked independently, which is exact because their cost
terms only depend on the GPUs and the CPUs' NUMA nodes.

Decisions worth knowing:
- MIG: only existing, free instances are allocated (the device plugin
  advertises existing instances; they are created out of band). A profile with
  no free instance is refused, naming the profile.
- Policies follow kubelet's Topology Manager: `restricted` admits only an
  allocation whose NUMA span is the narrowest the node's capacity allows for
  the request; `single-numa` (kubelet's `single-numa-node`) puts every device
  and CPU on one NUMA node; `same-switch` is single-numa plus every GPU<->network-device pair (and
  GPU<->GPU pair unless NVLinked) at `PlacementConfig.same_switch_level` (PXB
  by default: one switch hierarchy below the host bridge, which is how
  DGX-class machines wire GPU and NIC) or closer. Devices with an unknown NUMA
  node align with every node.
- Node structure memo: a `PlanMemo` handed to place() keeps plans by
  (structure, free set, pod shape, config), so nodes of one hardware kind in
  one state share one search; the device ids come from each node's own index.
- Node scores weigh packing against distance (`PlacementConfig.packing`): a
  placement carries the share of its main resource it leaves free and whether
  its worst level is the best the empty node offers the pod; and stranding
  (`PlacementConfig.stranding`): the share of the node's CPUs its free GPUs
  would lack (`cpus_per_gpu` each), so CPU pods do not starve a GPU box.
- `topology_aware` false (a pod opting out; alignment is the default): first
  free devices and CPUs in id order, still exclusive and still priced.
- Pinned CPUs: gedge_model.cpu_pool's rule, the one the agent applies, so the
  shared pool keeps a CPU; each CPU counts once, on its own NUMA node, as a core
  with its siblings of that node only.
- NVLink pairs weigh less the more links they have (gedge_model.distance.
  nvlink_weight); among equal costs the closer PCIe path below NVLink wins, then
  the set that leaves free GPUs closest to each other (NVLink partners of busy
  GPUs go first, whole pairs and switch groups stay free).
- `restricted` past MAX_NUMA_SUBSETS NUMA-node sets (more than 8 nodes) grows
  sets from each node instead of enumerating them; a refusal names at most
  MAX_REASONS sets.
- Whole cards (`gedge.io/amd-gpu`, `fpga`, `asic`) sit in the index's device
  list beside the NVIDIA GPUs and are priced by the same pair distances (XGMI at
  the NV level): the first kind a pod asks for is chosen like whole GPUs, every
  further kind grows greedily nearest to the devices already chosen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations

from gedge_model import Allocation, DeviceGrant, Level, NodeState
from gedge_model.allocation import (
    CARD_RESOURCES,
    RESOURCE_GPU,
    RESOURCE_GPU_SHARED,
    RESOURCE_RDMA,
    RESOURCE_SRIOV_VF,
    RESOURCE_SRIOV_VF_VFIO,
)
from scheduler_extender.placement.config import STRATEGIES, Placement, PlacementConfig, Refusal
from scheduler_extender.placement.free import (
    RESOURCE_CPU_EXCLUSIVE,
    FreeSet,
    free_capacity,
    free_set,
    used_by,
)
from scheduler_extender.placement.index import (
    LEVELS,
    NO_NUMA,
    ORDINAL,
    TopologyIndex,
    VfioEntry,
    topology_index,
)
from scheduler_extender.placement.plans import Plan, PlanMemo, materialize
from scheduler_extender.placement.policy import policy_for
from scheduler_extender.placement.request import PodRequest
from scheduler_extender.placement.search import EPS, Choice, Search, describe, needs_of, shortfalls

__all__ = [
    "RESOURCE_CPU_EXCLUSIVE",
    "STRATEGIES",
    "Placement",
    "PlacementConfig",
    "PlanMemo",
    "Refusal",
    "free_capacity",
    "place",
    "score_nodes",
]


DEFAULT_CONFIG = PlacementConfig()


def place(
    state: NodeState,
    request: PodRequest,
    config: PlacementConfig = DEFAULT_CONFIG,
    reserved: Iterable[Allocation] = (),
    plans: PlanMemo | None = None,
) -> Placement | Refusal:
    """The lowest-cost allocation of `request` on this node, or why there is none.

    `state.allocations` and `reserved` are what is already taken (devices by
    (resource, id), CPUs). `plans` keeps searches for nodes of the same kind in
    the same state (None: search every time).
    """
    index = topology_index(state.topology)
    if not index.empty:
        free_set(index, NodeState(state.topology))
    plan: Plan | str
    if plans is None:
        plan = _plan(index, free_set(index, state, reserved), request, config)
    else:
        free = plans.free(index, state, reserved)
        key = (index.structure, free.key, request.shape, config.memo_key)
        kept = plans.get(key)
        if kept is None:
            kept = _plan(index, free, request, config)
            plans.put(key, kept)
        plan = kept
    if isinstance(plan, str):
        return Refusal(plan)
    allocation = materialize(index, state, request, plan)
    cost = plan.cost
    if request.sriov_vfio:
        picked = _pick_vfio(index, state, reserved, request, allocation, config)
        if isinstance(picked, str):
            return Refusal(picked)
        grants, extra = picked
        cost = round(cost + extra, 6)
        allocation = dataclasses.replace(allocation, devices=allocation.devices + grants, cost=cost)
    return Placement(
        allocation,
        cost,
        plan.leftover,
        plan.stranded,
        plan.level_cost,
        plan.free_share,
        plan.at_best,
        plan.strand,
    )


def _pick_vfio(
    index: TopologyIndex,
    state: NodeState,
    reserved: Iterable[Allocation],
    request: PodRequest,
    allocation: Allocation,
    config: PlacementConfig,
) -> tuple[tuple[DeviceGrant, ...], float] | str:
    """The free vfio-pool VFs closest to what the allocation already holds: the sum of weights to its
    GPUs plus its CPUs' NUMA nodes (kept to them under single-numa and same-switch); ties by address.
    Topology-unaware: the first free ones by address."""
    used = used_by(state, reserved)[0].get(RESOURCE_SRIOV_VF_VFIO, set())
    free = [v for v in index.vfio if v.pci not in used]
    want = request.sriov_vfio
    weights = config.weight_by_ordinal
    gpu_pos = [index.gpu_by_uuid[u] for u in allocation.device_ids(RESOURCE_GPU) if u in index.gpu_by_uuid]
    numas = set(allocation.numa_nodes)
    policy = policy_for(request).name
    if policy in ("single-numa", "same-switch") and numas:
        free = [v for v in free if v.numa in numas or v.numa == NO_NUMA]

    def price(vf: VfioEntry) -> float:
        cost = sum(weights[vf.gpu_levels[p]] for p in gpu_pos)
        if numas:
            near = vf.numa == NO_NUMA or vf.numa in numas
            cost += weights[ORDINAL[Level.PHB]] if near else weights[ORDINAL[Level.SYS]]
        return cost

    if len(free) < want:
        return f"needs {want} {RESOURCE_SRIOV_VF_VFIO}, {len(free)} free" + (
            " on the allocation's NUMA nodes" if policy in ("single-numa", "same-switch") and numas else ""
        )
    if request.topology_aware:
        free = sorted(free, key=lambda v: (price(v), v.pci))
    chosen = free[:want]
    grants = tuple(
        DeviceGrant(RESOURCE_SRIOV_VF_VFIO, v.pci, v.pci, None if v.numa == NO_NUMA else v.numa)
        for v in chosen
    )
    return grants, sum(price(v) for v in chosen)


def _plan(index: TopologyIndex, free: FreeSet, request: PodRequest, config: PlacementConfig) -> Plan | str:
    for kind in request.compute:
        if kind != "GPU" and kind not in index.accelerator_kinds:
            return f"needs an {kind} (gedge.io/compute), none on this node"
    short = shortfalls(request, free)
    if short:
        unusable = [index.unusable[r] for r, _ in request.cards if r in index.unusable]
        return "needs " + "; ".join(short) + "".join(f" (not allocatable: {why})" for why in unusable)
    search = Search(index, request, config)
    policy = policy_for(request)
    choice, lacks = policy.choose(search, free)
    if choice is None:
        detail = "; ".join(lacks) if lacks else "no combination fits"
        return f"needs {describe(request)} {policy.where(config)} ({policy.name}); {detail}"

    gpus = index.gpus
    devices: list[tuple[str, int, int]] = []
    for resource, device_id, pos in choice.pick.grants:
        if resource == RESOURCE_GPU or resource in CARD_RESOURCES:
            devices.append((resource, pos, -1))
        elif resource == RESOURCE_GPU_SHARED:
            devices.append((resource, pos, gpus[pos].replica_ids.index(device_id)))
        else:
            devices.append((resource, pos, [u for u, _ in gpus[pos].migs].index(device_id)))
    devices += [(RESOURCE_SRIOV_VF, g.slot, g.members.index(m)) for g, m in choice.vfs]
    devices += [(RESOURCE_RDMA, r.slot, -1) for r in choice.rdmas]
    network: tuple[str, int, int] | None = None
    if choice.vfs:
        network = ("sriov", devices[len(choice.pick.grants)][1], devices[len(choice.pick.grants)][2])
    elif choice.nic is not None:
        network = ("macvlan", choice.nic.slot, -1)
    numas = {gpus[p].numa for p in choice.pick.gpus}
    numas |= {g.numa for g, _ in choice.vfs} | {r.numa for r in choice.rdmas} | set(choice.cpu_numas)
    worst = choice.worst(index)
    leftover = _leftover(request, free, choice)
    empty = _empty(index, free)
    total = leftover + _taken(request, choice) if empty is free else _available(request, empty, choice)
    return Plan(
        devices=tuple(devices),
        cpus=choice.cpus,
        numa_nodes=tuple(sorted(numas - {NO_NUMA})),
        cost=round(choice.cost, 6),
        level_cost=round(choice.cost + _link_bonus(search, choice.pick.gpus), 6),
        worst=LEVELS[worst].value,
        network=network,
        leftover=leftover,
        stranded=_stranded(request, free),
        free_share=round(leftover / total, 6) if total > 0 else 0.0,
        at_best=empty is free or worst <= _best_worst(index, empty, request, config),
        strand=_strand(request, free, empty, choice, config),
    )


def _strand(
    request: PodRequest, free: FreeSet, empty: FreeSet, choice: Choice, config: PlacementConfig
) -> float:
    """The share of the node's CPUs its free whole GPUs would lack afterwards:
    max(0, cpus_per_gpu x whole GPUs left - CPUs pods could still pin) / the node's CPUs.

    Pinnable CPUs follow gedge_model.cpu_pool's rule (the shared pool keeps one), and a GPU the
    choice starts time-slicing or takes whole is no longer whole."""
    total = empty.cpu_count()
    if total <= 0 or config.cpus_per_gpu <= 0:
        return 0.0
    taken = set(choice.pick.gpus)
    whole_left = sum(1 for p in free.whole if p not in taken)
    pinnable_left = min(free.pinnable, free.cpu_count()) - len(choice.cpus)
    lacking = config.cpus_per_gpu * whole_left - pinnable_left
    return round(max(0.0, lacking) / total, 6)


def _empty(index: TopologyIndex, free: FreeSet) -> FreeSet:
    """The node's free set with nothing allocated (place() computes it first)."""
    return index.empty[0] if index.empty else free  # type: ignore[return-value]


def _best_worst(index: TopologyIndex, empty: FreeSet, request: PodRequest, config: PlacementConfig) -> int:
    """The worst level of the pod's allocation on this node when empty (kept on the index per shape)."""
    key = ("best-worst", request.shape, config.memo_key)
    found = index.grants.get(key)
    if found is None:
        plan = _plan(index, empty, request, config)
        found = len(LEVELS) if isinstance(plan, str) else LEVELS.index(Level(plan.worst))
        index.grants[key] = found
    return found  # type: ignore[return-value]


def _link_bonus(search: Search, gpus: Sequence[int]) -> float:
    """What the GPU pairs' link counts took off the cost (plain NV weight minus each pair's weight)."""
    levels, pairs = search.index.gpu_levels, search.priced.gpu_pairs
    nv, base = ORDINAL[Level.NV], search.config.weight_by_ordinal[ORDINAL[Level.NV]]
    return sum(base - pairs[a][b] for a, b in combinations(gpus, 2) if levels[a][b] == nv)


def _stranded(request: PodRequest, free: FreeSet) -> int:
    count = 0
    if not (request.gpus or request.gpu_shared or request.mig):
        count += len(free.whole) + sum(len(v) for v in free.migs.values())
    if not needs_of(request).rdmas:
        count += len(free.rdmas)
    wanted = {resource for resource, _ in request.cards}
    count += sum(len(ps) for resource, ps in free.cards.items() if resource not in wanted)
    return count


def _taken(request: PodRequest, choice: Choice) -> int:
    """Units of the pod's main resource (as _leftover reads it) the choice takes."""
    if request.gpus:
        return request.gpus
    if request.gpu_shared:
        return request.gpu_shared
    if request.mig:
        return sum(n for _, n in request.mig)
    if request.cards:
        return sum(n for _, n in request.cards)
    if choice.vfs:
        return len(choice.vfs)
    if choice.rdmas:
        return len(choice.rdmas)
    return len(choice.cpus)


def _available(request: PodRequest, free: FreeSet, choice: Choice) -> int:
    """Free units of the pod's main resource (as _leftover reads it) in `free`."""
    return _leftover(request, free, choice) + _taken(request, choice)


def _leftover(request: PodRequest, free: FreeSet, choice: Choice) -> int:
    if request.gpus:
        return len(free.whole) - request.gpus
    if request.gpu_shared:
        return free.free_replicas() - request.gpu_shared
    if request.mig:
        return sum(len(free.migs.get(p, ())) - n for p, n in request.mig)
    if request.cards:
        return sum(len(free.cards.get(r, ())) - n for r, n in request.cards)
    if choice.vfs:
        return free.free_vfs() - len(choice.vfs)
    if choice.rdmas:
        return len(free.rdmas) - len(choice.rdmas)
    return free.cpu_count() - len(choice.cpus)


# -- node scores ----------------------------------------------------------------------------------------


def score_nodes(
    placements: Mapping[str, Placement], config: PlacementConfig = DEFAULT_CONFIG
) -> dict[str, int]:
    """0..10 per node: the best-ranked nodes score 10 or 9, the rest 8..0 linearly by rank.

    A node's rank is its `Placement.rank_cost` (NVLink pairs at the plain NV
    weight, so more links per pair do not pull pods off a node packing would
    fill) plus `config.packing` times the share of the pod's main resource it
    would leave free (pack; spread: the share it would take), plus
    `config.stranding` times the share of the node's CPUs its free GPUs would
    then lack (`Placement.strand`: a pod taking the CPUs a GPU box needs for its
    GPUs leaves those GPUs unusable by pods that pin CPUs). Nodes where the
    pod gets the best level the node offers it when empty (`at_best`) rank
    before those where fragmentation costs it a level.

    Among the best-ranked nodes, 10 goes to those stranding the fewest
    accelerators the pod does not use, then by the pack/spread strategy: pack
    prefers the fewest free units of the pod's resource left (filling started
    nodes keeps others whole for large pods), spread the most.
    """
    if not placements:
        return {}
    sign = 1 if config.node_strategy == "pack" else -1

    def packing(p: Placement) -> float:
        return config.packing * (p.free_share if sign > 0 else 1.0 - p.free_share)

    ranks = {name: p.rank_cost + packing(p) + config.stranding * p.strand for name, p in placements.items()}
    spread = max(ranks.values()) - min(ranks.values()) + 1.0
    ranks = {name: r + (0.0 if placements[name].at_best else spread) for name, r in ranks.items()}
    low, high = min(ranks.values()), max(ranks.values())

    def fit(p: Placement) -> tuple[int, int]:
        return (p.stranded, sign * p.leftover)

    preferred = min(fit(placements[name]) for name, rank in ranks.items() if rank <= low + EPS)
    scores = {}
    for name, rank in ranks.items():
        if rank <= low + EPS:
            scores[name] = 10 if fit(placements[name]) == preferred else 9
        else:
            scores[name] = max(0, min(8, round(8 * (high - rank) / (high - low))))
    return scores
