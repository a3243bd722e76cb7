"""Choose a pod's devices and CPUs on one node: the allocation with the lowest distance cost.

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
- Node structure memo: plans are kept by (structure, free set, pod shape,
  config), so nodes of one hardware kind in one state share one search; the
  device ids come from each node's own index.
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
import math
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

from gedge_model import DEFAULT_WEIGHTS, Allocation, DeviceGrant, Level, NetworkGrant, NodeState
from gedge_model.allocation import (
    CARD_RESOURCES,
    RESOURCE_GPU,
    RESOURCE_GPU_SHARED,
    RESOURCE_MIG_PREFIX,
    RESOURCE_RDMA,
    RESOURCE_SRIOV_VF,
    RESOURCE_SRIOV_VF_VFIO,
    mig_resource_name,
)
from gedge_model.cpu_pool import pinnable_cpus
from scheduler_extender.placement.index import (
    LEVELS,
    NO_NUMA,
    ORDINAL,
    NetEntry,
    TopologyIndex,
    VfioEntry,
    cpu_level,
    priced,
    topology_index,
)
from scheduler_extender.placement.request import PodRequest

STRATEGIES = ("pack", "spread")
RESOURCE_CPU_EXCLUSIVE = "cpu"
"""free_capacity's key for CPUs not pinned by any pod."""


@dataclass(frozen=True)
class PlacementConfig:
    weights: Mapping[Level, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    timeslice_strategy: str = "pack"
    """pack: fill GPUs that already run time-sliced pods; spread: prefer the least shared GPU."""
    node_strategy: str = "pack"
    """score_nodes tie-break: pack prefers nodes left with fewer free units, spread with more."""
    same_switch_level: Level = Level.PXB
    """The farthest GPU<->network-device level `same-switch` accepts."""
    max_exhaustive: int = 256
    """Largest number of GPU combinations tried exhaustively; beyond it, greedy growth from every seed."""

    def __post_init__(self) -> None:
        for label, value in (
            ("timeslice_strategy", self.timeslice_strategy),
            ("node_strategy", self.node_strategy),
        ):
            if value not in STRATEGIES:
                raise ValueError(f"{label} must be pack or spread, not {value!r}")
        missing = [level.value for level in Level if level not in self.weights]
        if missing:
            raise ValueError(f"weights lack level(s) {', '.join(missing)}")
        if any(not math.isfinite(w) or w < 0 for w in self.weights.values()):
            raise ValueError("weights must be finite and non-negative")
        if self.max_exhaustive < 1:
            raise ValueError("max_exhaustive must be at least 1")
        by_ordinal = tuple(float(self.weights[level]) for level in LEVELS)
        object.__setattr__(self, "_by_ordinal", by_ordinal)
        memo = (by_ordinal, self.timeslice_strategy, self.same_switch_level, self.max_exhaustive)
        object.__setattr__(self, "_memo_key", memo)

    # _by_ordinal and _memo_key are set in __post_init__ and kept out of the dataclass fields (and so
    # out of eq, repr and replace); mypy only knows attributes a frozen dataclass declares.
    @property
    def weight_by_ordinal(self) -> tuple[float, ...]:
        return self._by_ordinal  # type: ignore[attr-defined]

    @property
    def memo_key(self) -> tuple[object, ...]:
        """What of the configuration place() depends on (node_strategy only matters to score_nodes)."""
        return self._memo_key  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Placement:
    allocation: Allocation
    cost: float
    leftover: int = 0
    """Free units of the pod's main resource left on the node afterwards (score_nodes' tie-break)."""
    stranded: int = 0
    """Free accelerators (GPUs, MIG instances, RDMA devices) of kinds the pod does not use: a pod
    taking CPUs or VFs on such a node may leave them unusable, so packing prefers nodes with fewer."""
    level_cost: float | None = None
    """The cost with every NVLink pair at the plain NV weight, whatever its link count: what
    score_nodes ranks nodes by (None: `cost`), so link counts choose GPUs inside a node but do not
    pull pods off a node that packing would fill."""

    @property
    def rank_cost(self) -> float:
        return self.cost if self.level_cost is None else self.level_cost


@dataclass(frozen=True)
class Refusal:
    reason: str


# -- what is free ---------------------------------------------------------------------------------


@dataclass
class _Free:
    """The node's free devices and CPUs, by kind; filtered copies serve the NUMA-bound policies."""

    whole: list[int]
    """Free whole NVIDIA GPUs (positions)."""
    cards: dict[str, list[int]]
    """Card resource (gedge.io/amd-gpu, fpga, asic) -> free positions in the index's device list."""
    replicas: dict[int, list[str]]
    migs: dict[str, list[tuple[int, str]]]
    vfs: list[tuple[NetEntry, list[str]]]
    rdmas: list[NetEntry]
    nics: list[NetEntry]
    cores: dict[int, list[tuple[int, ...]]]
    """NUMA id -> free full cores."""
    threads: dict[int, list[int]]
    """NUMA id -> free CPUs of partly used cores."""
    shared_used: dict[int, int]
    """GPU pos -> time-slice replicas in use (pack/spread)."""
    pinnable: int = 0
    """CPUs pods may still pin on the whole node (gedge_model.cpu_pool's rule), whatever NUMA subset."""
    unpinned: int = 0
    """CPUs no pod has pinned on the whole node."""
    key: tuple[object, ...] = ()
    """All of the above in position terms: equal keys on equal structures mean equal placements."""

    def within(self, index: TopologyIndex, numas: frozenset[int]) -> _Free:
        def ok(numa: int) -> bool:
            return numa == NO_NUMA or numa in numas

        gpus = index.gpus
        return _Free(
            whole=[p for p in self.whole if ok(gpus[p].numa)],
            cards={r: [p for p in ps if ok(gpus[p].numa)] for r, ps in self.cards.items()},
            replicas={p: ids for p, ids in self.replicas.items() if ok(gpus[p].numa)},
            migs={k: [(p, u) for p, u in v if ok(gpus[p].numa)] for k, v in self.migs.items()},
            vfs=[(g, m) for g, m in self.vfs if ok(g.numa)],
            rdmas=[r for r in self.rdmas if ok(r.numa)],
            nics=[n for n in self.nics if ok(n.numa)],
            cores={n: c for n, c in self.cores.items() if ok(n)},
            threads={n: t for n, t in self.threads.items() if ok(n)},
            shared_used=self.shared_used,
            pinnable=self.pinnable,
            unpinned=self.unpinned,
            key=(self.key, tuple(sorted(numas))),
        )

    def cpu_count(self, numa: int | None = None) -> int:
        keys = self.cores.keys() if numa is None else (numa,)
        return sum(len(core) for k in keys for core in self.cores.get(k, ())) + sum(
            len(self.threads.get(k, ())) for k in keys
        )

    def free_vfs(self) -> int:
        return sum(len(m) for _, m in self.vfs)

    def free_replicas(self) -> int:
        return sum(len(v) for v in self.replicas.values())


def _used(state: NodeState, reserved: Iterable[Allocation]) -> tuple[dict[str, set[str]], set[int]]:
    devices: dict[str, set[str]] = {}
    cpus: set[int] = set()
    for allocation in (*state.allocations, *reserved):
        for grant in allocation.devices:
            devices.setdefault(grant.resource, set()).add(grant.id)
        cpus.update(allocation.cpus)
    return devices, cpus


_free_cache: dict[int, tuple[weakref.ref[NodeState], tuple[Allocation, ...], _Free]] = {}


def _free(index: TopologyIndex, state: NodeState, reserved: Iterable[Allocation]) -> _Free:
    """What is free on the node, kept per state object (a state never changes) and reserved set."""
    held = tuple(reserved)
    key = id(state)
    hit = _free_cache.get(key)
    if (
        hit is not None
        and hit[0]() is state
        and len(hit[1]) == len(held)
        and all(a is b for a, b in zip(hit[1], held, strict=True))
    ):
        return hit[2]
    if not held and not state.allocations:
        if not index.empty:
            index.empty.append(_compute_free(index, state, ()))
        return index.empty[0]  # type: ignore[return-value]  # index.py cannot name _Free (import cycle)
    free = _compute_free(index, state, held)

    def drop(_: object, key: int = key) -> None:
        # runs inside garbage collection, possibly while this thread holds a lock: take none
        entry = _free_cache.get(key)
        if entry is not None and entry[0]() is None:
            _free_cache.pop(key, None)

    _free_cache[key] = (weakref.ref(state, drop), held, free)
    return free


def _compute_free(index: TopologyIndex, state: NodeState, reserved: Iterable[Allocation]) -> _Free:
    used, used_cpus = _used(state, reserved)
    used_cpus |= index.reserved_cpus
    whole_used = used.get(RESOURCE_GPU, set())
    shared_ids = used.get(RESOURCE_GPU_SHARED, set())
    shared_used: dict[int, int] = {}
    for device_id in shared_ids:
        pos = index.gpu_by_uuid.get(device_id.split("::", 1)[0])
        if pos is not None:
            shared_used[pos] = shared_used.get(pos, 0) + 1
    mig_used: set[str] = set()
    mig_busy: set[int] = set()
    for resource, ids in used.items():
        if resource.startswith(RESOURCE_MIG_PREFIX):
            mig_used |= ids
            mig_busy.update(index.gpu_by_mig[i] for i in ids if i in index.gpu_by_mig)

    whole: list[int] = []
    cards: dict[str, list[int]] = {}
    replicas: dict[int, list[str]] = {}
    migs: dict[str, list[tuple[int, str]]] = {}
    for gpu in index.gpus:
        if gpu.resource != RESOURCE_GPU:
            if gpu.uuid not in used.get(gpu.resource, ()):
                cards.setdefault(gpu.resource, []).append(gpu.pos)
            continue
        if gpu.mig_mode:
            for uuid, profile in gpu.migs:
                if uuid not in mig_used:
                    migs.setdefault(profile, []).append((gpu.pos, uuid))
            continue
        if gpu.uuid in whole_used:
            continue
        if gpu.pos not in shared_used and gpu.pos not in mig_busy:
            whole.append(gpu.pos)
        free_replicas = [r for r in gpu.replica_ids if r not in shared_ids]
        if free_replicas:
            replicas[gpu.pos] = free_replicas

    vf_used = used.get(RESOURCE_SRIOV_VF, set())
    vfs = []
    for group in index.vf_groups:
        members = [m for m in group.members if m not in vf_used]
        if members:
            vfs.append((group, members))
    rdma_used = used.get(RESOURCE_RDMA, set())

    cores: dict[int, list[tuple[int, ...]]] = {}
    threads: dict[int, list[int]] = {}
    for numa, numa_cores in index.cores.items():
        if not used_cpus:
            cores[numa], threads[numa] = list(numa_cores), []
            continue
        full = []
        partial: list[int] = []
        for core in numa_cores:
            if used_cpus.isdisjoint(core):
                full.append(core)
            else:
                partial.extend(c for c in core if c not in used_cpus)
        cores[numa] = full
        threads[numa] = partial
    unpinned = sum(len(core) for found in cores.values() for core in found)
    unpinned += sum(len(found) for found in threads.values())
    rdmas = [r for r in index.rdmas if r.ident not in rdma_used]
    gpus = index.gpus
    key = (
        tuple(whole),
        tuple(sorted((r, tuple(ps)) for r, ps in cards.items())),
        tuple((pos, tuple(gpus[pos].replica_ids.index(r) for r in ids)) for pos, ids in replicas.items()),
        tuple(
            (profile, tuple((pos, [u for u, _ in gpus[pos].migs].index(uuid)) for pos, uuid in found))
            for profile, found in sorted(migs.items())
        ),
        tuple((group.slot, tuple(group.members.index(m) for m in members)) for group, members in vfs),
        tuple(r.slot for r in rdmas),
        tuple(sorted(used_cpus)),
    )
    return _Free(
        whole=whole,
        cards=cards,
        replicas=replicas,
        migs=migs,
        vfs=vfs,
        rdmas=rdmas,
        nics=list(index.nics),
        cores=cores,
        threads=threads,
        shared_used=shared_used,
        # the agent's rule over every unpinned CPU, the reserved ones (never granted here) included
        pinnable=pinnable_cpus(unpinned + len(index.reserved_cpus), len(index.reserved_cpus)),
        unpinned=unpinned,
        key=key,
    )


def free_capacity(state: NodeState, reserved: Iterable[Allocation] = ()) -> Mapping[str, int]:
    """Free units per resource name (`cpu` = CPUs no pod has pinned); overlapping kinds count both ways.

    A free whole GPU's time-slice replicas are counted as free replicas too:
    either may be taken, not both.
    """
    index = topology_index(state.topology)
    free = _free(index, state, reserved)
    out: dict[str, int] = {}
    if any(g.resource == RESOURCE_GPU for g in index.gpus):
        out[RESOURCE_GPU] = len(free.whole)
    for gpu in index.gpus:
        if gpu.resource != RESOURCE_GPU:
            out[gpu.resource] = len(free.cards.get(gpu.resource, ()))
    if any(g.replica_ids for g in index.gpus):
        out[RESOURCE_GPU_SHARED] = free.free_replicas()
    for gpu in index.gpus:
        for _, profile in gpu.migs:
            out.setdefault(mig_resource_name(profile), 0)
    for profile, instances in free.migs.items():
        out[mig_resource_name(profile)] = len(instances)
    if index.vf_groups:
        out[RESOURCE_SRIOV_VF] = free.free_vfs()
    if index.rdmas:
        out[RESOURCE_RDMA] = len(free.rdmas)
    if index.vfio:
        used = _used(state, reserved)[0].get(RESOURCE_SRIOV_VF_VFIO, set())
        out[RESOURCE_SRIOV_VF_VFIO] = sum(1 for v in index.vfio if v.pci not in used)
    out[RESOURCE_CPU_EXCLUSIVE] = free.cpu_count()
    return out


# -- the search -------------------------------------------------------------------------------------

_EPS = 1e-9


@dataclass(frozen=True)
class _GpuPick:
    grants: tuple[tuple[str, str, int], ...]
    """(resource, device id, GPU pos)."""
    gpus: tuple[int, ...]
    """Distinct physical GPUs, ascending."""
    frag: float
    pair_cost: float
    pcie: float = 0.0
    """Weight of the PCIe paths below the GPU pairs: among equal costs, NVLink sets on one switch first."""


@dataclass(frozen=True)
class _Choice:
    cost: float
    span: int
    frag: float
    pick: _GpuPick
    cpus: tuple[int, ...]
    cpu_numas: tuple[int, ...]
    vfs: tuple[tuple[NetEntry, str], ...]
    rdmas: tuple[NetEntry, ...]
    nic: NetEntry | None
    remote: int = 0
    """Pinned CPUs off the NUMA nodes of the pod's devices (when CPUs spill over several nodes)."""

    def better_than(self, other: _Choice | None) -> bool:
        """Cheaper first; then fewer NUMA nodes, fewer remote CPUs, less fragmentation."""
        if other is None or self.cost < other.cost - _EPS:
            return True
        if self.cost > other.cost + _EPS:
            return False
        mine = (self.span, self.remote, self.pick.pcie, self.frag)
        return mine < (other.span, other.remote, other.pick.pcie, other.frag)

    def worst(self, index: TopologyIndex) -> int:
        """The farthest level among the pairs the cost counts."""
        gpus = self.pick.gpus
        levels = [index.gpu_levels[a][b] for a, b in combinations(gpus, 2)]
        nets = [g for g, _ in self.vfs] + list(self.rdmas) + ([self.nic] if self.nic else [])
        levels += [n.gpu_levels[g] for n in nets for g in gpus]
        device_numas = [index.gpus[g].numa for g in gpus] + [n.numa for n in nets]
        levels += [cpu_level(a, m) for a in device_numas for m in self.cpu_numas]
        return max(levels, default=0)


@dataclass(frozen=True)
class _Needs:
    vfs: int
    rdmas: int
    optional_vf: bool
    """A data path is asked for without demanding SR-IOV: a VF if one is free, else a macvlan."""


def _needs(request: PodRequest) -> _Needs:
    vfs = max(request.sriov_vfs, 1 if "SRIOV" in request.communication else 0)
    rdmas = max(request.rdma, 1 if "RDMA" in request.communication else 0)
    return _Needs(vfs, rdmas, bool(request.communication) and vfs == 0)


def _describe(request: PodRequest) -> str:
    parts = []
    if request.gpus:
        parts.append(f"{request.gpus} {RESOURCE_GPU}")
    if request.gpu_shared:
        parts.append(f"{request.gpu_shared} {RESOURCE_GPU_SHARED}")
    parts += [f"{n} {mig_resource_name(p)}" for p, n in request.mig]
    parts += [f"{n} {resource}" for resource, n in request.cards]
    needs = _needs(request)
    if needs.vfs:
        parts.append(f"{needs.vfs} {RESOURCE_SRIOV_VF}")
    if needs.rdmas:
        parts.append(f"{needs.rdmas} {RESOURCE_RDMA}")
    if request.cpus:
        parts.append(f"{request.cpus} pinned CPUs")
    return ", ".join(parts) or "nothing"


def _shortfalls(request: PodRequest, free: _Free) -> list[str]:
    """What `free` lacks for the request, one phrase per resource ('2 gedge.io/gpu (1 free)')."""
    needs = _needs(request)
    out = []

    def check(want: int, have: int, what: str) -> None:
        if want > have:
            out.append(f"{want} {what} ({have} free)")

    check(request.gpus, len(free.whole), RESOURCE_GPU)
    check(request.gpu_shared, free.free_replicas(), RESOURCE_GPU_SHARED)
    for profile, n in request.mig:
        check(n, len(free.migs.get(profile, ())), mig_resource_name(profile))
    for resource, n in request.cards:
        check(n, len(free.cards.get(resource, ())), resource)
    check(needs.vfs, free.free_vfs(), RESOURCE_SRIOV_VF)
    check(needs.rdmas, len(free.rdmas), RESOURCE_RDMA)
    if needs.optional_vf and not free.vfs and not free.nics:
        out.append("a data-path NIC for gedge.io/communication (none)")
    if request.cpus:
        have = free.cpu_count()
        if request.cpus > have:
            out.append(f"{request.cpus} pinned CPUs ({have} free)")
        elif request.cpus > free.pinnable:
            out.append(
                f"{request.cpus} pinned CPUs ({free.unpinned} free, "
                f"{free.unpinned - free.pinnable} kept for the shared pool)"
            )
    return out


class _Search:
    """One request against one node's index; `best` runs over any (policy-filtered) free set."""

    def __init__(self, index: TopologyIndex, request: PodRequest, config: PlacementConfig) -> None:
        self.index = index
        self.request = request
        self.config = config
        self.priced = priced(index, config.weight_by_ordinal)
        self.needs = _needs(request)
        self.aware = request.topology_aware
        same_switch = request.topology_aware and request.policy == "same-switch"
        self.switch_limit = ORDINAL[config.same_switch_level] if same_switch else None

    # GPU side

    def gpu_picks(self, free: _Free) -> list[_GpuPick]:
        """Candidate GPU-side choices, cheapest GPU pairs first, one per class of equivalent choices."""
        request = self.request
        picks = [_GpuPick((), (), 0.0, 0.0)]
        if request.gpus:
            picks = self._whole(free.whole, request.gpus, RESOURCE_GPU)
        if request.gpu_shared:
            units = [(RESOURCE_GPU_SHARED, rid, pos) for pos, ids in free.replicas.items() for rid in ids]
            rank = self._replica_rank(free)
            picks = [
                ext
                for pick in picks
                for ext in self._extend(
                    pick, [u for u in units if u[2] not in pick.gpus], request.gpu_shared, rank
                )
            ]
        if request.mig:
            left: dict[int, int] = {}
            for instances in free.migs.values():
                for pos, _ in instances:
                    left[pos] = left.get(pos, 0) + 1
            for profile, count in request.mig:
                units = [(mig_resource_name(profile), uuid, pos) for pos, uuid in free.migs.get(profile, ())]
                picks = [ext for pick in picks for ext in self._extend(pick, units, count, left)]
        for resource, count in request.cards:
            if not picks:
                break
            pool = free.cards.get(resource, [])
            if not picks[0].gpus:
                picks = self._whole(pool, count, resource)
                continue
            units = [(resource, self.index.gpus[pos].uuid, pos) for pos in pool]
            picks = [ext for pick in picks for ext in self._extend(pick, units, count, {})]
        if len(picks) > 1 and (request.gpu_shared or request.mig or request.cards):
            picks = self._distinct(picks)
        return picks

    def _distinct(self, picks: list[_GpuPick]) -> list[_GpuPick]:
        """Drop picks equivalent to an earlier one: same GPU classes, pair cost and fragmentation."""
        classes = self.index.gpu_class
        seen: set[tuple[object, ...]] = set()
        out = []
        for pick in sorted(picks, key=lambda p: (p.pair_cost, p.pcie, p.frag)):
            key = (
                tuple(sorted(classes[g] for g in pick.gpus)),
                round(pick.pair_cost, 9),
                pick.pcie,
                pick.frag,
            )
            if key not in seen:
                seen.add(key)
                out.append(pick)
        return out

    def _replica_rank(self, free: _Free) -> dict[int, int]:
        """Per GPU, the preference for one more replica: lower is preferred."""
        if self.config.timeslice_strategy == "pack":
            return {pos: len(ids) for pos, ids in free.replicas.items()}
        return {pos: -len(ids) for pos, ids in free.replicas.items()}

    def _pair_cost(self, gpus: Sequence[int]) -> float:
        pairs = self.priced.gpu_pairs
        return sum(pairs[a][b] for a, b in combinations(gpus, 2))

    def _whole(self, pool: list[int], n: int, resource: str) -> list[_GpuPick]:
        """Sets of n whole devices from `pool` (NVIDIA GPUs or one card resource): every combination
        while few (else grown from each seed), one per class."""
        if len(pool) < n:
            return []
        gpus, classes = self.index.gpus, self.index.gpu_class
        pairs, levels = self.priced.gpu_pairs, self.index.gpu_levels
        pcie = self.priced.gpu_pcie_pairs
        # what taking a GPU costs later requests: its closeness (SYS weight minus pair weight) to every
        # other free GPU, so NVLink partners of busy GPUs and GPUs of emptier switches go first and
        # whole NVLink pairs, cliques and switch groups stay free for larger pods
        far = self.priced.far
        frag_of = {p: sum(max(0.0, far - pairs[p][q]) for q in pool if q != p) for p in pool}

        def pick(ordered: tuple[int, ...], cost: float) -> _GpuPick:
            grants = tuple((resource, gpus[p].uuid, p) for p in ordered)
            inside = sum(max(0.0, far - pairs[a][b]) for a, b in combinations(ordered, 2))
            frag = round(sum(frag_of[p] for p in ordered) - 2 * inside, 9)
            below = round(sum(pcie[a][b] for a, b in combinations(ordered, 2)), 9)
            return _GpuPick(grants, ordered, frag, cost, below)

        if not self.aware:
            first = tuple(pool[:n])
            return [pick(first, self._pair_cost(first))]
        if n == 1:
            seen_single: set[tuple[int, float]] = set()
            singles = []
            for p in pool:
                if (classes[p], round(frag_of[p], 9)) not in seen_single:
                    seen_single.add((classes[p], round(frag_of[p], 9)))
                    singles.append(pick((p,), 0.0))
            return sorted(singles, key=lambda c: c.frag)
        if math.comb(len(pool), n) <= self.config.max_exhaustive:
            candidates: Iterable[tuple[int, ...]] = combinations(pool, n)
        else:
            grown: dict[tuple[int, ...], None] = {}
            # grown from every GPU and every pair: a set of NVLink pairs joined across PCIe is then
            # reached from either of its pairs, not only from the GPU nearest to everything
            seeds = [[p] for p in pool] + [list(pair) for pair in combinations(pool, 2)]
            for seed in seeds:
                chosen = list(seed)
                rest = [p for p in pool if p not in seed]
                while len(chosen) < n:
                    best = min(
                        rest,
                        key=lambda p: (
                            sum(pairs[p][c] for c in chosen),
                            sum(pcie[p][c] for c in chosen),
                            frag_of[p],
                            p,
                        ),
                    )
                    chosen.append(best)
                    rest.remove(best)
                grown[tuple(sorted(chosen))] = None
            candidates = grown
        seen: set[tuple[object, ...]] = set()
        out = []
        if n == 2:
            limit = self.switch_limit is not None
            for a, b in candidates:
                cost = pairs[a][b]
                key2 = (
                    min(classes[a], classes[b]),
                    max(classes[a], classes[b]),
                    cost,
                    levels[a][b] if limit else 0,
                    pcie[a][b],
                    round(frag_of[a] + frag_of[b], 9),
                )
                if key2 not in seen:
                    seen.add(key2)
                    out.append(pick((a, b), cost))
            return sorted(out, key=lambda c: (c.pair_cost, c.pcie, c.frag))
        for combo in candidates:
            pair_list = list(combinations(combo, 2))
            cost = sum(pairs[a][b] for a, b in pair_list)
            frag = round(sum(frag_of[p] for p in combo), 9)
            # equal classes, pair cost, farthest pair and fragmentation: an equivalent choice
            key = (
                tuple(sorted(classes[p] for p in combo)),
                round(cost, 9),
                max(levels[a][b] for a, b in pair_list),
                round(sum(pcie[a][b] for a, b in pair_list), 9),
                frag,
            )
            if key not in seen:
                seen.add(key)
                out.append(pick(combo, cost))
        return sorted(out, key=lambda c: (c.pair_cost, c.pcie, c.frag))

    def _extend(
        self, base: _GpuPick, units: list[tuple[str, str, int]], count: int, rank: Mapping[int, int]
    ) -> list[_GpuPick]:
        """`count` more units (replicas or MIG instances), nearest to the GPUs already chosen.

        With no GPU chosen yet, every GPU holding a unit seeds one candidate.
        """
        taken = {g[1] for g in base.grants}
        per_gpu: dict[int, int] = {}
        kept = []
        for unit in units:
            # units of one GPU are interchangeable: no more than `count` of them matter
            if unit[1] not in taken and per_gpu.get(unit[2], 0) < count:
                per_gpu[unit[2]] = per_gpu.get(unit[2], 0) + 1
                kept.append(unit)
        units = kept
        if len(units) < count:
            return []
        if not self.aware:
            return [self._grow(base, units[:count], rank)]
        pairs = self.priced.gpu_pairs
        if base.gpus:
            seeds: list[int | None] = [None]
        else:
            classes = self.index.gpu_class
            seen_seed: set[tuple[int, int]] = set()
            seeds = []
            for pos in sorted({u[2] for u in units}, key=lambda p: (rank.get(p, 0), p)):
                if (classes[pos], rank.get(pos, 0)) not in seen_seed:
                    seen_seed.add((classes[pos], rank.get(pos, 0)))
                    seeds.append(pos)
        out = []
        for seed in seeds:
            gpus = list(base.gpus) if seed is None else [seed]
            left = list(units)
            chosen: list[tuple[str, str, int]] = []
            while len(chosen) < count:
                best = min(left, key=lambda u: (sum(pairs[u[2]][g] for g in gpus), rank.get(u[2], 0), u[2]))
                chosen.append(best)
                left.remove(best)
                if best[2] not in gpus:
                    gpus.append(best[2])
            out.append(self._grow(base, chosen, rank))
        return out

    def _grow(self, base: _GpuPick, units: list[tuple[str, str, int]], rank: Mapping[int, int]) -> _GpuPick:
        gpus = tuple(sorted({*base.gpus, *(u[2] for u in units)}))
        frag = base.frag + sum(rank.get(u[2], 0) for u in units)
        return _GpuPick(base.grants + tuple(units), gpus, frag, self._pair_cost(gpus))

    # CPU side

    def cpu_options(self, free: _Free) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """(cpus, their NUMA nodes) choices: filled from each NUMA node first, spilling by SLIT order."""
        n = self.request.cpus
        if not n:
            return [((), ())]
        if free.cpu_count() < n:
            return []
        if not self.aware:
            return [_take_cpus(free, sorted(free.cores), n)]
        # keyed by the CPUs: spilling from node 0 to 1 and from 1 to 0 are both kept
        options: dict[tuple[int, ...], tuple[tuple[int, ...], tuple[int, ...]]] = {}
        for numa in sorted(free.cores):
            if not free.cores[numa] and not free.threads.get(numa):
                continue
            order = [m for m in self.index.numa_order.get(numa, (numa,)) if m in free.cores]
            option = _take_cpus(free, order, n)
            options.setdefault(option[0], option)
        return list(options.values())

    # network side and the whole evaluation

    def _allowed(self, entries: Iterable[NetEntry], gpus: tuple[int, ...]) -> list[NetEntry]:
        limit = self.switch_limit
        if limit is None or not gpus:
            return list(entries)
        return [e for e in entries if max(e.gpu_levels[g] for g in gpus) <= limit]

    def best(self, free: _Free, checked: bool = False) -> _Choice | None:
        """The cheapest choice from `free`; `checked` says the caller saw no shortfall already."""
        if not checked and _shortfalls(self.request, free):
            return None
        needs, aware = self.needs, self.aware
        want_vfs = needs.vfs or (1 if needs.optional_vf else 0)
        rows = self.priced.net_rows
        near, far = self.priced.near, self.priced.far
        gpu_numa = [g.numa for g in self.index.gpus]
        cpu_numa = self.index.cpu_numa

        # per CPU option, what a device on each NUMA node pays towards those CPUs
        numa_ids = {*gpu_numa, *(e.numa for e in self.index.nets), NO_NUMA}
        options = [
            (
                cpus,
                numas,
                {n: sum(near if n == m or n < 0 or m < 0 else far for m in numas) for n in numa_ids},
            )
            for cpus, numas in self.cpu_options(free)
        ]
        vf_members = {g.slot: m for g, m in free.vfs}
        vf_entries = [g for g, _ in free.vfs]
        best: _Choice | None = None
        bound = math.inf
        nv = ORDINAL[Level.NV]
        # per GPU, the cheapest network entry of each kind it could get: a bound before pricing sets
        rows_by_gpu = list(zip(*rows, strict=True)) if rows else []
        cheapest_vf = [min((row[e.slot] for e in vf_entries), default=0.0) for row in rows_by_gpu]
        cheapest_rd = [min((row[e.slot] for e in free.rdmas), default=0.0) for row in rows_by_gpu]
        cpu_floor = min(near, far) if self.request.cpus else 0.0
        for pick in self.gpu_picks(free):
            gpus = pick.gpus
            if pick.pair_cost > bound:
                continue
            rough = pick.pair_cost + cpu_floor * (len(gpus) + want_vfs + needs.rdmas)
            if needs.vfs:
                rough += needs.vfs * sum(cheapest_vf[g] for g in gpus)
            if needs.rdmas:
                rough += needs.rdmas * sum(cheapest_rd[g] for g in gpus)
            if rough > bound:
                continue
            if self.switch_limit is not None:
                levels = self.index.gpu_levels
                if any(levels[a][b] > max(self.switch_limit, nv) for a, b in combinations(gpus, 2)):
                    continue
            # network entries with their GPU-side price, before CPUs
            vf_base = (
                [(sum(rows[e.slot][g] for g in gpus), e) for e in self._allowed(vf_entries, gpus)]
                if want_vfs
                else []
            )
            rd_base = (
                [(sum(rows[e.slot][g] for g in gpus), e) for e in self._allowed(free.rdmas, gpus)]
                if needs.rdmas
                else []
            )
            nic_base = (
                [(sum(rows[e.slot][g] for g in gpus), e) for e in self._allowed(free.nics, gpus)]
                if needs.optional_vf
                else []
            )
            # a lower bound over every CPU option: skip the pick when it cannot beat the best so far
            low = pick.pair_cost
            if self.request.cpus:
                low += min(near, far) * (len(gpus) + want_vfs + needs.rdmas)
            if vf_base:
                low += min(vf_base, key=_first)[0] * min(
                    want_vfs, sum(len(vf_members[e.slot]) for _, e in vf_base)
                )
            if rd_base:
                low += min(rd_base, key=_first)[0] * needs.rdmas
            if low > bound:
                continue
            for cpus, cpu_numas, to_cpus in options:
                cost = (
                    pick.pair_cost + sum(to_cpus[gpu_numa[g]] for g in gpus) if cpu_numas else pick.pair_cost
                )
                if cost > bound:
                    continue
                vfs: list[tuple[NetEntry, str]] = []
                if want_vfs:
                    priced_vfs = [(p + to_cpus[e.numa], e) for p, e in vf_base] if cpu_numas else vf_base
                    if want_vfs == 1 and priced_vfs:
                        priced_vfs = [min(priced_vfs, key=_first) if aware else priced_vfs[0]]
                    elif aware:
                        priced_vfs = sorted(priced_vfs, key=_first)
                    for price, entry in priced_vfs:
                        for member in vf_members[entry.slot]:
                            if len(vfs) == want_vfs:
                                break
                            vfs.append((entry, member))
                            cost += price
                    if len(vfs) < needs.vfs or cost > bound:
                        continue
                rdmas: list[NetEntry] = []
                if needs.rdmas:
                    priced_rd = [(p + to_cpus[e.numa], e) for p, e in rd_base] if cpu_numas else rd_base
                    if len(priced_rd) < needs.rdmas:
                        continue
                    if aware:
                        masters = {g.master for g, _ in vfs}
                        priced_rd = sorted(priced_rd, key=lambda p: (p[0], masters.isdisjoint(p[1].netdevs)))
                    for price, entry in priced_rd[: needs.rdmas]:
                        rdmas.append(entry)
                        cost += price
                nic = None
                if needs.optional_vf and not vfs:
                    priced_nic = [(p + to_cpus[e.numa], e) for p, e in nic_base] if cpu_numas else nic_base
                    if not priced_nic:
                        continue
                    if aware:
                        netdevs = {d for r in rdmas for d in r.netdevs}
                        priced_nic = sorted(priced_nic, key=lambda p: (p[0], p[1].ident not in netdevs))
                    price, nic = priced_nic[0]
                    cost += price
                if cost > bound:
                    continue
                numas = {gpu_numa[g] for g in gpus}
                numas.update((e.numa for e, _ in vfs), (e.numa for e in rdmas))
                if nic is not None:
                    numas.add(nic.numa)
                numas.discard(NO_NUMA)
                remote = 0
                if len(cpu_numas) > 1 and numas:
                    remote = sum(1 for c in cpus if cpu_numa.get(c, NO_NUMA) not in numas)
                numas.update(cpu_numas)
                numas.discard(NO_NUMA)
                choice = _Choice(
                    cost, len(numas), pick.frag, pick, cpus, cpu_numas, tuple(vfs), tuple(rdmas), nic, remote
                )
                if choice.better_than(best):
                    best = choice
                    bound = cost + _EPS
        return best


def _first(item: tuple[float, object]) -> float:
    return item[0]


def _take_cpus(free: _Free, order: Sequence[int], n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """n CPUs along `order`: whole cores first, then spare threads of split cores, splitting a core last."""
    taken: list[int] = []
    numas: list[int] = []
    for numa in order:
        if len(taken) >= n:
            break
        before = len(taken)
        unused_cores = []
        for core in free.cores.get(numa, ()):
            if len(core) <= n - len(taken):
                taken.extend(core)
            else:
                unused_cores.append(core)
        taken.extend(free.threads.get(numa, ())[: n - len(taken)])
        for core in unused_cores:
            if len(taken) >= n:
                break
            taken.extend(core[: n - len(taken)])
        if len(taken) > before:
            numas.append(numa)
    return tuple(sorted(taken)), tuple(sorted(numas))


# -- policies -----------------------------------------------------------------------------------------


def _min_span(counts: Mapping[int, int], want: int) -> int:
    """Fewest NUMA nodes whose capacity adds up to `want` (kubelet's narrowest preferred hint)."""
    if want <= 0:
        return 0
    total = 0
    for span, count in enumerate(sorted(counts.values(), reverse=True), start=1):
        total += count
        if total >= want:
            return span
    return len(counts) + 1


def _narrowest_span(index: TopologyIndex, request: PodRequest) -> int:
    """The NUMA span `restricted` admits: the widest of every resource's narrowest span by capacity."""
    needs = _needs(request)

    def per_numa(numas: Iterable[int]) -> dict[int, int]:
        out: dict[int, int] = {}
        for numa in numas:
            if numa != NO_NUMA:
                out[numa] = out.get(numa, 0) + 1
        return out

    spans = [
        _min_span(
            per_numa(g.numa for g in index.gpus if g.resource == RESOURCE_GPU and not g.mig_mode),
            request.gpus,
        ),
        _min_span(per_numa(g.numa for g in index.gpus for _ in g.replica_ids), request.gpu_shared),
        _min_span(per_numa(g.numa for g in index.vf_groups for _ in g.members), needs.vfs),
        _min_span(per_numa(r.numa for r in index.rdmas), needs.rdmas),
        _min_span(
            {
                n: sum(len(set(c) - index.reserved_cpus) for c in cores)
                for n, cores in index.cores.items()
                if n != NO_NUMA
            },
            request.cpus,
        ),
    ]
    for resource, count in request.cards:
        spans.append(_min_span(per_numa(g.numa for g in index.gpus if g.resource == resource), count))
    for profile, count in request.mig:
        spans.append(
            _min_span(per_numa(g.numa for g in index.gpus for _, p in g.migs if p == profile), count)
        )
    return max(1, *spans)


def _numa_ids(index: TopologyIndex) -> list[int]:
    found = {g.numa for g in index.gpus} | {n.numa for n in (*index.vf_groups, *index.rdmas, *index.nics)}
    found |= set(index.cores)
    return sorted(found - {NO_NUMA})


MAX_NUMA_SUBSETS = 128
"""Most NUMA-node sets `restricted` searches one by one; beyond it (more than 8 nodes, as kubelet's
Topology Manager refuses), sets are grown from every node instead of enumerated."""
MAX_REASONS = 3
"""NUMA-node sets a refusal names; the rest are counted."""


def _free_by_numa(
    index: TopologyIndex, request: PodRequest, free: _Free
) -> list[tuple[str, int, dict[int, int]]]:
    """(what, units wanted, NUMA id -> free units) per resource the pod asks for; NO_NUMA aligns anywhere."""
    needs = _needs(request)

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


def _numa_subsets(
    search: _Search, free: _Free, numas: list[int], width: int
) -> tuple[list[tuple[int, ...]], str | None]:
    """The NUMA-node sets of `width` nodes to search, or why none of them can hold the request
    (checked when there are more sets than a refusal names).

    Every set while there are at most MAX_NUMA_SUBSETS; else one set grown from
    each node, adding the node that covers most of what is still missing (nearest
    by SLIT on ties), plus the `width` nodes with the most free units.
    """
    wanted = _free_by_numa(search.index, search.request, free)
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


def _search_within(search: _Search, free: _Free, span: int) -> tuple[_Choice | None, list[str]]:
    """Best choice whose devices and CPUs lie on at most `span` NUMA nodes; else what each set lacks.

    The unconstrained best is tried first: when it already lies within `span`
    nodes it is also the best of the constrained set, and one search suffices.
    The reasons name at most MAX_REASONS sets.
    """
    unconstrained = search.best(free, checked=True)
    if unconstrained is not None and unconstrained.span <= span:
        return unconstrained, []
    numas = _numa_ids(search.index)
    width = min(span, len(numas))
    subsets, hopeless = _numa_subsets(search, free, numas, width) if numas else ([()], None)
    if hopeless is not None:
        return None, [hopeless]
    best: _Choice | None = None
    lacks: list[str] = []
    untold = 0
    for subset in subsets:
        allowed = free.within(search.index, frozenset(subset))
        short = _shortfalls(search.request, allowed)
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


def place(
    state: NodeState,
    request: PodRequest,
    config: PlacementConfig = PlacementConfig(),
    reserved: Iterable[Allocation] = (),
) -> Placement | Refusal:
    """The lowest-cost allocation of `request` on this node, or why there is none.

    `state.allocations` and `reserved` are what is already taken (devices by
    (resource, id), CPUs).
    """
    index = topology_index(state.topology)
    free = _free(index, state, reserved)
    key = (index.structure, free.key, request.shape, config.memo_key)
    plan = _plans.get(key)
    if plan is None:
        plan = _plan(index, free, request, config)
        if len(_plans) >= MAX_PLANS:
            _plans.clear()
        _plans[key] = plan
    if isinstance(plan, str):
        return Refusal(f"node {state.node_name}: {plan}")
    allocation = _materialize(index, state, request, plan)
    cost = plan.cost
    if request.sriov_vfio:
        picked = _pick_vfio(index, state, reserved, request, allocation, config)
        if isinstance(picked, str):
            return Refusal(f"node {state.node_name}: {picked}")
        grants, extra = picked
        cost = round(cost + extra, 6)
        allocation = dataclasses.replace(allocation, devices=allocation.devices + grants, cost=cost)
    return Placement(allocation, cost, plan.leftover, plan.stranded, plan.level_cost)


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
    used = _used(state, reserved)[0].get(RESOURCE_SRIOV_VF_VFIO, set())
    free = [v for v in index.vfio if v.pci not in used]
    want = request.sriov_vfio
    weights = config.weight_by_ordinal
    gpu_pos = [index.gpu_by_uuid[u] for u in allocation.device_ids(RESOURCE_GPU) if u in index.gpu_by_uuid]
    numas = set(allocation.numa_nodes)
    policy = request.policy if request.topology_aware else "best-effort"
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


MAX_PLANS = 32_768
_plans: dict[tuple[object, ...], _Plan | str] = {}
"""(structure, free key, request shape, config) -> plan or refusal text: nodes of one kind in one
state share the search, whatever their names."""


def forget_plans() -> None:
    """Drop memoized plans, so the next place() searches again (benchmarks measuring the search)."""
    _plans.clear()


@dataclass(frozen=True)
class _Plan:
    """A placement in position terms: device references are (resource, GPU pos or net slot, member)."""

    devices: tuple[tuple[str, int, int], ...]
    cpus: tuple[int, ...]
    numa_nodes: tuple[int, ...]
    cost: float
    worst: str
    network: tuple[str, int, int] | None
    leftover: int
    stranded: int
    level_cost: float


def _plan(index: TopologyIndex, free: _Free, request: PodRequest, config: PlacementConfig) -> _Plan | str:
    for kind in request.compute:
        if kind != "GPU" and kind not in index.accelerator_kinds:
            return f"needs an {kind} (gedge.io/compute), none on this node"
    short = _shortfalls(request, free)
    if short:
        unusable = [index.unusable[r] for r, _ in request.cards if r in index.unusable]
        return "needs " + "; ".join(short) + "".join(f" (not allocatable: {why})" for why in unusable)
    search = _Search(index, request, config)
    policy = request.policy if request.topology_aware else "best-effort"
    if policy == "best-effort":
        choice = search.best(free, checked=True)
        lacks: list[str] = []
    else:
        span = 1 if policy in ("single-numa", "same-switch") else _narrowest_span(index, request)
        choice, lacks = _search_within(search, free, span)
    if choice is None:
        where = "on one NUMA node" if policy != "restricted" else "on the fewest NUMA nodes that can hold it"
        extra = ""
        if policy == "same-switch":
            extra = f", network devices within {config.same_switch_level.value} of the GPUs"
        detail = "; ".join(lacks) if lacks else "no combination fits"
        return f"needs {_describe(request)} {where}{extra} ({policy}); {detail}"

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
    return _Plan(
        devices=tuple(devices),
        cpus=choice.cpus,
        numa_nodes=tuple(sorted(numas - {NO_NUMA})),
        cost=round(choice.cost, 6),
        level_cost=round(choice.cost + _link_bonus(search, choice.pick.gpus), 6),
        worst=LEVELS[choice.worst(index)].value,
        network=network,
        leftover=_leftover(request, free, choice),
        stranded=_stranded(request, free),
    )


def _link_bonus(search: _Search, gpus: Sequence[int]) -> float:
    """What the GPU pairs' link counts took off the cost (plain NV weight minus each pair's weight)."""
    levels, pairs = search.index.gpu_levels, search.priced.gpu_pairs
    nv, base = ORDINAL[Level.NV], search.config.weight_by_ordinal[ORDINAL[Level.NV]]
    return sum(base - pairs[a][b] for a, b in combinations(gpus, 2) if levels[a][b] == nv)


def _stranded(request: PodRequest, free: _Free) -> int:
    count = 0
    if not (request.gpus or request.gpu_shared or request.mig):
        count += len(free.whole) + sum(len(v) for v in free.migs.values())
    if not _needs(request).rdmas:
        count += len(free.rdmas)
    wanted = {resource for resource, _ in request.cards}
    count += sum(len(ps) for resource, ps in free.cards.items() if resource not in wanted)
    return count


def _leftover(request: PodRequest, free: _Free, choice: _Choice) -> int:
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


def _grant(index: TopologyIndex, ref: tuple[str, int, int]) -> DeviceGrant:
    found = index.grants.get(ref)
    if found is None:
        resource, owner, member = ref
        if resource == RESOURCE_SRIOV_VF:
            group = index.vf_groups[owner]
            address, numa = group.members[member], group.numa
            found = DeviceGrant(resource, address, address, None if numa == NO_NUMA else numa)
        elif resource == RESOURCE_RDMA:
            rdma = index.nets[owner]
            found = DeviceGrant(resource, rdma.ident, rdma.pci, None if rdma.numa == NO_NUMA else rdma.numa)
        else:
            gpu = index.gpus[owner]
            if resource == RESOURCE_GPU or resource in CARD_RESOURCES:
                device_id = gpu.uuid
            elif resource == RESOURCE_GPU_SHARED:
                device_id = gpu.replica_ids[member]
            else:
                device_id = gpu.migs[member][0]
            found = DeviceGrant(resource, device_id, gpu.pci, None if gpu.numa == NO_NUMA else gpu.numa)
        index.grants[ref] = found
    return found  # type: ignore[return-value]  # one cache for device and network grants, keyed apart


def _network(index: TopologyIndex, ref: tuple[str, int, int]) -> NetworkGrant:
    key = ("network", *ref)
    found = index.grants.get(key)
    if found is None:
        mode, slot, member = ref
        if mode == "sriov":
            group = index.vf_groups[slot]
            found = NetworkGrant(mode="sriov", master=group.master, vf_pci_address=group.members[member])
        else:
            found = NetworkGrant(mode="macvlan", master=index.nets[slot].master)
        index.grants[key] = found
    return found  # type: ignore[return-value]


def _materialize(index: TopologyIndex, state: NodeState, request: PodRequest, plan: _Plan) -> Allocation:
    return Allocation(
        pod_uid=request.uid or f"{request.namespace}/{request.name}",
        namespace=request.namespace,
        name=request.name,
        node=state.node_name,
        devices=tuple(_grant(index, ref) for ref in plan.devices),
        cpus=plan.cpus,
        numa_nodes=plan.numa_nodes,
        cost=plan.cost,
        worst_level=plan.worst,
        network=None if plan.network is None else _network(index, plan.network),
    )


# -- node scores ----------------------------------------------------------------------------------------


def score_nodes(
    placements: Mapping[str, Placement], config: PlacementConfig = PlacementConfig()
) -> dict[str, int]:
    """0..10 per node: the lowest-cost nodes score 10 or 9, the rest 8..0 linearly by cost.

    Cost here is `Placement.rank_cost`: NVLink pairs at the plain NV weight, so
    a node with more links per pair does not outrank one packing would fill.

    Among the lowest-cost nodes, 10 goes to those stranding the fewest
    accelerators the pod does not use, then by the pack/spread strategy: pack
    prefers the fewest free units of the pod's resource left (filling started
    nodes keeps others whole for large pods), spread the most. A node with a
    cheaper allocation always outranks a dearer one.
    """
    if not placements:
        return {}
    costs = {name: p.rank_cost for name, p in placements.items()}
    low, high = min(costs.values()), max(costs.values())
    sign = 1 if config.node_strategy == "pack" else -1

    def fit(p: Placement) -> tuple[int, int]:
        return (p.stranded, sign * p.leftover)

    preferred = min(fit(placements[name]) for name, cost in costs.items() if cost <= low + _EPS)
    scores = {}
    for name, cost in costs.items():
        if cost <= low + _EPS:
            scores[name] = 10 if fit(placements[name]) == preferred else 9
        else:
            scores[name] = max(0, min(8, round(8 * (high - cost) / (high - low))))
    return scores
