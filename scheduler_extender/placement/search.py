"""The search for one pod on one node's free set, in named steps.

As kubelet's cpu_assignment.go takes sockets, then cores, then threads, `Search.best`
takes (1) the GPU side (`gpu_picks`: whole GPUs, time-slices, MIG instances,
cards), (2) the CPU side (`cpu_options`: pinned CPUs filled from each NUMA node
first), (3) the network side (`network`: VFs, RDMA devices, a data NIC for
each GPU pick and CPU option), keeping the cheapest `Choice` and pruning by
lower bounds. Policies (placement.policy) call it on filtered free sets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

from gedge_model import Level
from gedge_model.allocation import (
    RESOURCE_GPU,
    RESOURCE_GPU_SHARED,
    RESOURCE_RDMA,
    RESOURCE_SRIOV_VF,
    mig_resource_name,
)
from scheduler_extender.placement.config import PlacementConfig
from scheduler_extender.placement.free import FreeSet
from scheduler_extender.placement.index import (
    NO_NUMA,
    ORDINAL,
    NetEntry,
    TopologyIndex,
    cpu_level,
    priced,
)
from scheduler_extender.placement.request import PodRequest

EPS = 1e-9


@dataclass(frozen=True)
class GpuPick:
    grants: tuple[tuple[str, str, int], ...]
    """(resource, device id, GPU pos)."""
    gpus: tuple[int, ...]
    """Distinct physical GPUs, ascending."""
    frag: float
    pair_cost: float
    pcie: float = 0.0
    """Weight of the PCIe paths below the GPU pairs: among equal costs, NVLink sets on one switch first."""


@dataclass(frozen=True)
class Choice:
    cost: float
    span: int
    frag: float
    pick: GpuPick
    cpus: tuple[int, ...]
    cpu_numas: tuple[int, ...]
    vfs: tuple[tuple[NetEntry, str], ...]
    rdmas: tuple[NetEntry, ...]
    nic: NetEntry | None
    remote: int = 0
    """Pinned CPUs off the NUMA nodes of the pod's devices (when CPUs spill over several nodes)."""

    def better_than(self, other: Choice | None) -> bool:
        """Cheaper first; then fewer NUMA nodes, fewer remote CPUs, less fragmentation."""
        if other is None or self.cost < other.cost - EPS:
            return True
        if self.cost > other.cost + EPS:
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
class Needs:
    vfs: int
    rdmas: int
    optional_vf: bool
    """A data path is asked for without demanding SR-IOV: a VF if one is free, else a macvlan."""


def needs_of(request: PodRequest) -> Needs:
    vfs = max(request.sriov_vfs, 1 if "SRIOV" in request.communication else 0)
    rdmas = max(request.rdma, 1 if "RDMA" in request.communication else 0)
    return Needs(vfs, rdmas, bool(request.communication) and vfs == 0)


def describe(request: PodRequest) -> str:
    parts = []
    if request.gpus:
        parts.append(f"{request.gpus} {RESOURCE_GPU}")
    if request.gpu_shared:
        parts.append(f"{request.gpu_shared} {RESOURCE_GPU_SHARED}")
    parts += [f"{n} {mig_resource_name(p)}" for p, n in request.mig]
    parts += [f"{n} {resource}" for resource, n in request.cards]
    needs = needs_of(request)
    if needs.vfs:
        parts.append(f"{needs.vfs} {RESOURCE_SRIOV_VF}")
    if needs.rdmas:
        parts.append(f"{needs.rdmas} {RESOURCE_RDMA}")
    if request.cpus:
        parts.append(f"{request.cpus} pinned CPUs")
    return ", ".join(parts) or "nothing"


def shortfalls(request: PodRequest, free: FreeSet) -> list[str]:
    """What `free` lacks for the request, one phrase per resource ('2 gedge.io/gpu (1 free)')."""
    needs = needs_of(request)
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


class Search:
    """One request against one node's index; `best` runs over any (policy-filtered) free set."""

    def __init__(self, index: TopologyIndex, request: PodRequest, config: PlacementConfig) -> None:
        self.index = index
        self.request = request
        self.config = config
        self.priced = priced(index, config.weight_by_ordinal)
        self.needs = needs_of(request)
        self.aware = request.topology_aware
        same_switch = request.topology_aware and request.policy == "same-switch"
        self.switch_limit = ORDINAL[config.same_switch_level] if same_switch else None

    # GPU side

    def gpu_picks(self, free: FreeSet) -> list[GpuPick]:
        """Candidate GPU-side choices, cheapest GPU pairs first, one per class of equivalent choices."""
        request = self.request
        picks = [GpuPick((), (), 0.0, 0.0)]
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

    def _distinct(self, picks: list[GpuPick]) -> list[GpuPick]:
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

    def _replica_rank(self, free: FreeSet) -> dict[int, int]:
        """Per GPU, the preference for one more replica: lower is preferred."""
        if self.config.timeslice_strategy == "pack":
            return {pos: len(ids) for pos, ids in free.replicas.items()}
        return {pos: -len(ids) for pos, ids in free.replicas.items()}

    def _pair_cost(self, gpus: Sequence[int]) -> float:
        pairs = self.priced.gpu_pairs
        return sum(pairs[a][b] for a, b in combinations(gpus, 2))

    def _whole(self, pool: list[int], n: int, resource: str) -> list[GpuPick]:
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

        def pick(ordered: tuple[int, ...], cost: float) -> GpuPick:
            grants = tuple((resource, gpus[p].uuid, p) for p in ordered)
            inside = sum(max(0.0, far - pairs[a][b]) for a, b in combinations(ordered, 2))
            frag = round(sum(frag_of[p] for p in ordered) - 2 * inside, 9)
            below = round(sum(pcie[a][b] for a, b in combinations(ordered, 2)), 9)
            return GpuPick(grants, ordered, frag, cost, below)

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
        self, base: GpuPick, units: list[tuple[str, str, int]], count: int, rank: Mapping[int, int]
    ) -> list[GpuPick]:
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

    def _grow(self, base: GpuPick, units: list[tuple[str, str, int]], rank: Mapping[int, int]) -> GpuPick:
        gpus = tuple(sorted({*base.gpus, *(u[2] for u in units)}))
        frag = base.frag + sum(rank.get(u[2], 0) for u in units)
        return GpuPick(base.grants + tuple(units), gpus, frag, self._pair_cost(gpus))

    # CPU side

    def cpu_options(self, free: FreeSet) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """(cpus, their NUMA nodes) choices: filled from each NUMA node first, spilling by SLIT order."""
        n = self.request.cpus
        if not n:
            return [((), ())]
        if free.cpu_count() < n:
            return []
        if not self.aware:
            return [take_cpus(free, sorted(free.cores), n)]
        # keyed by the CPUs: spilling from node 0 to 1 and from 1 to 0 are both kept
        options: dict[tuple[int, ...], tuple[tuple[int, ...], tuple[int, ...]]] = {}
        for numa in sorted(free.cores):
            if not free.cores[numa] and not free.threads.get(numa):
                continue
            order = [m for m in self.index.numa_order.get(numa, (numa,)) if m in free.cores]
            option = take_cpus(free, order, n)
            options.setdefault(option[0], option)
        return list(options.values())

    # network side and the whole evaluation

    def _allowed(self, entries: Iterable[NetEntry], gpus: tuple[int, ...]) -> list[NetEntry]:
        limit = self.switch_limit
        if limit is None or not gpus:
            return list(entries)
        return [e for e in entries if max(e.gpu_levels[g] for g in gpus) <= limit]

    def network(
        self,
        cost: float,
        bound: float,
        to_cpus: Mapping[int, float] | None,
        vf_base: list[tuple[float, NetEntry]],
        rd_base: list[tuple[float, NetEntry]],
        nic_base: list[tuple[float, NetEntry]],
        vf_members: Mapping[int, list[str]],
    ) -> tuple[float, list[tuple[NetEntry, str]], list[NetEntry], NetEntry | None] | None:
        """Step 3: the VFs, RDMA devices and data NIC for one GPU pick and CPU option, cheapest first.

        `*_base`: (price towards the pick's GPUs, entry) per allowed entry; `to_cpus`: what a
        device on each NUMA node pays towards the CPU option's nodes (None: no pinned CPUs).
        Answers (cost with them, vfs, rdmas, nic), or None when they are short or cost past `bound`.
        """
        needs, aware = self.needs, self.aware
        want_vfs = needs.vfs or (1 if needs.optional_vf else 0)
        vfs: list[tuple[NetEntry, str]] = []
        if want_vfs:
            priced_vfs = [(p + to_cpus[e.numa], e) for p, e in vf_base] if to_cpus is not None else vf_base
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
                return None
        rdmas: list[NetEntry] = []
        if needs.rdmas:
            priced_rd = [(p + to_cpus[e.numa], e) for p, e in rd_base] if to_cpus is not None else rd_base
            if len(priced_rd) < needs.rdmas:
                return None
            if aware:
                masters = {g.master for g, _ in vfs}
                priced_rd = sorted(priced_rd, key=lambda p: (p[0], masters.isdisjoint(p[1].netdevs)))
            for price, entry in priced_rd[: needs.rdmas]:
                rdmas.append(entry)
                cost += price
        nic = None
        if needs.optional_vf and not vfs:
            priced_nic = [(p + to_cpus[e.numa], e) for p, e in nic_base] if to_cpus is not None else nic_base
            if not priced_nic:
                return None
            if aware:
                netdevs = {d for r in rdmas for d in r.netdevs}
                priced_nic = sorted(priced_nic, key=lambda p: (p[0], p[1].ident not in netdevs))
            price, nic = priced_nic[0]
            cost += price
        if cost > bound:
            return None
        return cost, vfs, rdmas, nic

    def best(self, free: FreeSet, checked: bool = False) -> Choice | None:
        """The cheapest choice from `free`; `checked` says the caller saw no shortfall already.

        Step 1 `gpu_picks`, step 2 `cpu_options`, step 3 `network` for each pair of them, skipping
        a pick or option whose lower bound cannot beat the best so far.
        """
        if not checked and shortfalls(self.request, free):
            return None
        needs = self.needs
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
        best: Choice | None = None
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
                network = self.network(
                    cost, bound, to_cpus if cpu_numas else None, vf_base, rd_base, nic_base, vf_members
                )
                if network is None:
                    continue
                cost, vfs, rdmas, nic = network
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
                choice = Choice(
                    cost, len(numas), pick.frag, pick, cpus, cpu_numas, tuple(vfs), tuple(rdmas), nic, remote
                )
                if choice.better_than(best):
                    best = choice
                    bound = cost + EPS
        return best


def _first(item: tuple[float, object]) -> float:
    return item[0]


def take_cpus(free: FreeSet, order: Sequence[int], n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
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
