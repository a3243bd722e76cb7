"""The offline optimum of a whole trace on a small cluster: a mixed-integer model solved by HiGHS.

Every pod of the trace is known in advance, with its arrival and its departure
(`lifetime` later arrivals). The model chooses which pods to place, on which
node and with which devices, so that no device, VF, RDMA device or CPU is held
by two pods at once; first it maximises the pods placed, then, with that many
placed, it minimises the summed cost (the engine's cost: GPU pairs,
GPU<->VF/RDMA and every device<->the NUMA nodes of the pinned CPUs, as
bench/placement.py's `price` recomputes it). Lexicographic: two solves.

Modelled exactly: whole GPUs (one by one, pair weights by NVLink count),
time-slice replicas (a whole GPU takes all of its replicas), MIG instances by
profile per GPU, VFs per physical function, RDMA devices one by one,
`single-numa` (everything on one NUMA node). Relaxed, so the optimum can only
be better than any real schedule: pinned CPUs are counted per NUMA node (not
as cores and threads; the node keeps gedge_model.cpu_pool's shared CPUs), and
`restricted` is solved as best-effort. A pod may go to a node only if the
engine places it there on the empty node.

Work-conserving (`work_conserving=True`): a pod may be refused only if, at
its arrival, it fits no node in the model's own terms (every placement scope
of every node it could go to lacks something: free whole GPUs, a time-slice,
a MIG instance of its profile, a VF, RDMA devices or pinnable CPUs). That is
what kube-scheduler imposes: it binds every pod some node passes. The best
such schedule, even knowing every lifetime, bounds what any scheduler that
binds every pod that fits can reach.

Pods asking for more than one VF, time-slice or MIG instance, or for a macvlan
fallback, are outside the model (ValueError); bench/placement.py's traces ask
for none.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

import highspy
import numpy as np

from gedge_model import DEFAULT_WEIGHTS, Gpu, Level, NetInterface, NodeTopology, pci_distance
from gedge_model.cpu_pool import pinnable_cpus
from scheduler_extender.placement import PodRequest


def quiet_highs() -> highspy.Highs:
    """A solver that prints nothing on stdout: HiGHS writes its banner there when the first one is
    made, before output_flag can be turned off, which split the bench's tables; it goes to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    h.setOptionValue("output_flag", False)
    return h


@dataclass(frozen=True)
class Optimum:
    pods: int
    """Pods placed by the best schedule found."""
    pods_bound: int
    """No schedule places more (HiGHS's dual bound; equals `pods` when proven)."""
    cost: float
    """Summed cost of the best schedule found with `pods` placed."""
    cost_bound: float
    """No schedule with `pods` placed costs less."""
    seconds: float
    variables: int
    rows: int
    cost_of: dict[str, tuple[float, float]]
    """Per named pod set (a strategy's placed pods): the least cost of a schedule placing exactly
    those pods, and its bound: what that strategy's cost is measured against."""
    steps: tuple[int, ...] = ()
    """Trace positions of the pods the best schedule found (most pods) places."""

    @property
    def mean_cost(self) -> float:
        return self.cost / self.pods if self.pods else 0.0


class _Model:
    """Columns and rows gathered in Python, handed to HiGHS in one go."""

    def __init__(self) -> None:
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.integer: list[int] = []
        self.rows: list[tuple[float, float, list[int], list[float]]] = []
        self.pricing: list[bool] = []
        """Per row: whether it only serves the cost (the first solve, pods alone, leaves it out)."""
        self.pricing_now = False

    def var(self, upper: float = 1.0) -> int:
        self.lower.append(0.0)
        self.upper.append(upper)
        self.integer.append(1)
        return len(self.lower) - 1

    def row(self, lower: float, upper: float, terms: Sequence[tuple[int, float]]) -> None:
        if terms:
            self.rows.append((lower, upper, [i for i, _ in terms], [c for _, c in terms]))
            self.pricing.append(self.pricing_now)

    def solve(
        self,
        objective: dict[int, float],
        maximize: bool,
        seconds: float,
        priced: bool,
        start: np.ndarray | None = None,
    ) -> tuple[float, float, np.ndarray]:
        h = quiet_highs()
        h.setOptionValue("time_limit", seconds)
        h.setOptionValue("mip_rel_gap", 1e-6)
        n = len(self.lower)
        h.addVars(n, np.array(self.lower), np.array(self.upper))
        h.changeColsIntegrality(
            n, np.arange(n, dtype=np.int32), np.array([highspy.HighsVarType.kInteger] * n)
        )
        if objective:
            keys = np.array(list(objective), dtype=np.int32)
            h.changeColsCost(len(keys), keys, np.array([objective[k] for k in keys], dtype=np.float64))
        rows = [r for r, pricing in zip(self.rows, self.pricing, strict=True) if priced or not pricing]
        starts: list[int] = []
        index: list[int] = []
        value: list[float] = []
        for _, _, cols, coefs in rows:
            starts.append(len(index))
            index += cols
            value += coefs
        h.addRows(
            len(rows),
            np.array([r[0] for r in rows], dtype=np.float64),
            np.array([r[1] for r in rows], dtype=np.float64),
            len(index),
            np.array(starts, dtype=np.int32),
            np.array(index, dtype=np.int32),
            np.array(value, dtype=np.float64),
        )
        h.changeObjectiveSense(highspy.ObjSense.kMaximize if maximize else highspy.ObjSense.kMinimize)
        if start is not None:
            given = highspy.HighsSolution()
            given.col_value = list(start)
            given.value_valid = True
            h.setSolution(given)
        h.run()
        info = h.getInfo()
        solution = np.array(h.getSolution().col_value)
        return info.objective_function_value, info.mip_dual_bound, solution


Need = tuple[list[object], int, float]
"""Keys of one node (GPUs, PFs, ...), how many of them the pod needs, and the units each must have free
(inf: all of it, as a whole GPU)."""


def fit_scopes(
    request: PodRequest,
    topology: NodeTopology,
    whole: Sequence[Gpu],
    mig_gpus: Sequence[Gpu],
    pfs: Sequence[NetInterface],
    by_numa: dict[int, int],
    numa_of: Callable[[str], int | None],
    vfs: int,
    rdmas: int,
) -> list[list[Need]]:
    """Where the pod could fit on the node, in the model's terms: the whole node, or for `single-numa`
    each NUMA node (devices of unknown NUMA node count in each); per scope, what it needs."""
    single = request.policy in ("single-numa", "same-switch") and request.topology_aware
    scopes: list[list[Need]] = []
    for numa in sorted(by_numa) if single else [None]:

        def here(address: str | None, numa: int | None = numa) -> bool:
            return numa is None or address is None or numa_of(address) in (None, numa)

        needs: list[Need] = []
        if request.gpus:
            needs.append(
                ([("gpu", g.pci_address) for g in whole if here(g.pci_address)], request.gpus, math.inf)
            )
        if request.gpu_shared:
            shared = [
                ("gpu", g.pci_address) for g in whole if g.timeslice_replicas > 1 and here(g.pci_address)
            ]
            needs.append((list(shared), 1, 1.0))
        for profile, _ in request.mig:
            migs = [
                ("mig", g.pci_address, profile)
                for g in mig_gpus
                if here(g.pci_address) and any(i.profile == profile for i in g.mig_instances)
            ]
            needs.append((list(migs), 1, 1.0))
        if vfs:
            needs.append(([("pf", pf.pci_address) for pf in pfs if here(pf.vfs[0].pci_address)], 1, 1.0))
        if rdmas:
            rdma = [("rdma", r.name) for r in topology.rdma_devices if here(r.pci_address)]
            needs.append((list(rdma), rdmas, 1.0))
        if request.cpus:
            needs.append((["cpus" if numa is None else ("numa", numa)], 1, float(request.cpus)))
        scopes.append(needs)
    return scopes


def refuse_only_when_full(
    m: _Model,
    holds: dict[tuple[str, object], list[tuple[int, int, float]]],
    capacity: dict[tuple[str, object], float],
    scopes: dict[tuple[int, str], list[list[Need]]],
    per_pod: dict[int, list[int]],
    alive_until: Sequence[int],
) -> None:
    """Rows that let pod p go unplaced only if, with the pods before it still there at its arrival,
    every scope of every node it could go to falls short of one need."""
    rooms: dict[tuple[str, object, int, float], int] = {}

    def room(node: str, key: object, t: int, free: float) -> int | None:
        """Column forced to 1 when the key has `free` units free at arrival t (None: always has)."""
        cap = capacity[(node, key)]
        most = 0.0 if free == math.inf else cap - free  # the most usage that still leaves room
        if (node, key, t, most) not in rooms:
            terms = [(c, u) for q, c, u in holds.get((node, key), []) if q < t < alive_until[q]]
            if sum(u * m.upper[c] for c, u in terms) <= most:
                return None
            r = m.var()
            m.row(most + 1, highspy.kHighsInf, [*terms, (r, most + 1)])  # no room: usage > most
            rooms[(node, key, t, most)] = r
        return rooms[(node, key, t, most)]

    for (p, node), node_scopes in scopes.items():
        for needs in node_scopes:
            short: list[int] = []  # per need: a column that may be 1 only when the need is unmet
            for keys, count, free in needs:
                columns: list[int] = []
                always = 0
                for key in keys:
                    if free != math.inf and capacity[(node, key)] < free:
                        continue  # never enough there
                    col = room(node, key, p, free)
                    if col is None:
                        always += 1
                    else:
                        columns.append(col)
                if always >= count:
                    continue  # this need is always met
                # short: fewer than `count` keys have room
                big = len(columns) - (count - 1 - always)
                s = m.var()
                m.row(
                    -highspy.kHighsInf, float(len(columns)), [(c, 1.0) for c in columns] + [(s, float(big))]
                )
                short.append(s)
            m.row(1.0, highspy.kHighsInf, [(s, 1.0) for s in short] + [(c, 1.0) for c in per_pod[p]])


def offline_optimum(
    cluster: Sequence[NodeTopology],
    requests: Sequence[PodRequest],
    lifetimes: Sequence[int],
    fits_empty: Callable[[NodeTopology, PodRequest], bool],
    seconds: float = 60.0,
    cost_of: dict[str, Sequence[int]] | None = None,
    work_conserving: bool = False,
    least_cost: bool = True,
) -> Optimum:
    """Most pods, then least cost, over the whole trace; `seconds` bounds each of the two solves.

    `lifetimes[i]`: arrivals after which pod i leaves; `fits_empty(node, pod)`:
    whether the pod may go to that node at all; `cost_of`: named sets of trace
    positions whose least cost to price as well; `work_conserving`: refuse a
    pod only when it fits nowhere at its arrival (module docstring);
    `least_cost=False`: only the most pods (the cost is that of the first
    schedule found, its bound 0).
    """
    started = time.perf_counter()
    w = DEFAULT_WEIGHTS
    m = _Model()
    placed: list[int] = []
    cost: dict[int, float] = {}
    # (node, resource key) -> [(pod, column, units)]: what each pod would hold there
    holds: dict[tuple[str, object], list[tuple[int, int, float]]] = {}
    capacity: dict[tuple[str, object], float] = {}

    def hold(node: str, key: object, pod: int, col: int, units: float = 1.0) -> None:
        holds.setdefault((node, key), []).append((pod, col, units))

    factors: dict[int, tuple[int, int]] = {}
    # (pod, node) -> its placement scopes (the node, or each NUMA node for single-numa), each a list of
    # needs (keys, how many of them, units each must have free): the pod fits a scope meeting every need
    scopes: dict[tuple[int, str], list[list[Need]]] = {}

    def both(a: int, b: int, weight: float) -> int:
        """A column worth `weight` that is the product of binary columns a and b."""
        z = m.var()
        factors[z] = (a, b)
        m.pricing_now = True
        m.row(-1.0, highspy.kHighsInf, [(z, 1.0), (a, -1.0), (b, -1.0)])
        m.row(-highspy.kHighsInf, 0.0, [(z, 1.0), (a, -1.0)])
        m.row(-highspy.kHighsInf, 0.0, [(z, 1.0), (b, -1.0)])
        m.pricing_now = False
        cost[z] = cost.get(z, 0.0) + weight
        return z

    def products(
        left: list[tuple[str, int]],
        right: list[tuple[str, int]],
        weight: Callable[[str, str], float],
        per_left: int | None,
        per_right: int | None,
    ) -> None:
        """Products of every left and right column; each left column's products sum to `per_left` times
        it (None: at least it), each right column's to `per_right` times it (the model's own sums, each
        multiplied by a column: what keeps the relaxation tight)."""
        by_left: dict[int, list[int]] = {}
        by_right: dict[int, list[int]] = {}
        for la, lc in left:
            for ra, rc in right:
                z = both(lc, rc, weight(la, ra))
                by_left.setdefault(lc, []).append(z)
                by_right.setdefault(rc, []).append(z)
        m.pricing_now = True
        for cols, per in ((by_left, per_left), (by_right, per_right)):
            for col, zs in cols.items():
                terms = [(z, 1.0) for z in zs] + [(col, -float(per or 1))]
                m.row(0.0, 0.0 if per is not None else highspy.kHighsInf, terms)
        m.pricing_now = False

    for topology in cluster:
        name = topology.node_name
        distance: dict[tuple[str, str], float] = {}

        def wt(
            a: str,
            b: str,
            topology: NodeTopology = topology,
            distance: dict[tuple[str, str], float] = distance,
        ) -> float:
            if (a, b) not in distance:
                distance[(a, b)] = pci_distance(topology, a, b).weight(w)
            return distance[(a, b)]

        def numa_of(address: str, topology: NodeTopology = topology) -> int | None:
            device = topology.pci(address)
            return device.numa_node if device is not None and (device.numa_node or 0) >= 0 else None

        def to_cpu(address: str, numa: int, numa_of: Callable[[str], int | None] = numa_of) -> float:
            own = numa_of(address)
            return w[Level.PHB if own is None or own == numa else Level.SYS]

        whole = [g for g in topology.gpus if not g.mig_current]
        for g in whole:
            capacity[(name, ("gpu", g.pci_address))] = max(1, g.timeslice_replicas)
        mig_gpus = [g for g in topology.gpus if g.mig_current]
        for g in mig_gpus:
            for inst in g.mig_instances:
                key = (name, ("mig", g.pci_address, inst.profile))
                capacity[key] = capacity.get(key, 0) + 1
        pfs = [i for i in topology.interfaces if i.physfn is None and i.vfs]
        for pf in pfs:
            capacity[(name, ("pf", pf.pci_address))] = len(pf.vfs)
        for r in topology.rdma_devices:
            capacity[(name, ("rdma", r.name))] = 1
        reserved = topology.reserved_cpus if hasattr(topology, "reserved_cpus") else frozenset()
        pinnable = topology.pinnable_cpus
        by_numa: dict[int, int] = {}
        for cpu in topology.cpus:
            if cpu.id in pinnable and cpu.numa_node is not None:
                by_numa[cpu.numa_node] = by_numa.get(cpu.numa_node, 0) + 1
        for numa, count in by_numa.items():
            capacity[(name, ("numa", numa))] = count
        capacity[(name, "cpus")] = pinnable_cpus(len(topology.cpus), len(reserved))

        for p, request in enumerate(requests):
            vfs = max(request.sriov_vfs, 1 if "SRIOV" in request.communication else 0)
            rdmas = max(request.rdma, 1 if "RDMA" in request.communication else 0)
            if vfs > 1 or request.gpu_shared > 1 or sum(n for _, n in request.mig) > 1:
                raise ValueError(f"pod {request.name}: more than one VF, time-slice or MIG instance")
            if request.communication and not vfs:
                raise ValueError(f"pod {request.name}: a macvlan fallback is outside the model")
            if not fits_empty(topology, request):
                continue
            a = m.var()
            placed.append(a)
            hold(name, "pod", p, a)
            gpu_cols: list[tuple[str, int]] = []  # (GPU address, column) of whatever GPU units the pod takes
            if request.gpus:
                ys = []
                for g in whole:
                    y = m.var()
                    ys.append((g.pci_address, y))
                    hold(name, ("gpu", g.pci_address), p, y, max(1, g.timeslice_replicas))
                m.row(0.0, 0.0, [(y, 1.0) for _, y in ys] + [(a, -float(request.gpus))])
                pairs: dict[int, list[int]] = {y: [] for _, y in ys}
                for (ga, ya), (gb, yb) in combinations(ys, 2):
                    z = both(ya, yb, wt(ga, gb))
                    pairs[ya].append(z)
                    pairs[yb].append(z)
                m.pricing_now = True
                for y, zs in pairs.items():  # a chosen GPU pairs with the k-1 others
                    m.row(0.0, 0.0, [(z, 1.0) for z in zs] + [(y, -float(request.gpus - 1))])
                m.pricing_now = False
                gpu_cols += ys
            if request.gpu_shared:
                ss = []
                for g in whole:
                    if g.timeslice_replicas > 1:
                        s = m.var()
                        ss.append((g.pci_address, s))
                        hold(name, ("gpu", g.pci_address), p, s)
                m.row(0.0, 0.0, [(s, 1.0) for _, s in ss] + [(a, -1.0)])
                gpu_cols += ss
            for profile, _ in request.mig:
                ms = []
                for g in mig_gpus:
                    if any(i.profile == profile for i in g.mig_instances):
                        col = m.var()
                        ms.append((g.pci_address, col))
                        hold(name, ("mig", g.pci_address, profile), p, col)
                m.row(0.0, 0.0, [(c, 1.0) for _, c in ms] + [(a, -1.0)])
                gpu_cols += ms
            nets: list[tuple[str, int]] = []  # (device address, column)
            if vfs:
                vs = []
                for pf in pfs:
                    v = m.var()
                    vs.append((pf.vfs[0].pci_address, v))
                    hold(name, ("pf", pf.pci_address), p, v)
                m.row(0.0, 0.0, [(v, 1.0) for _, v in vs] + [(a, -1.0)])
                nets += vs
            if rdmas:
                rs = []
                for r in topology.rdma_devices:
                    col = m.var()
                    rs.append((r.pci_address, col))
                    hold(name, ("rdma", r.name), p, col)
                m.row(0.0, 0.0, [(c, 1.0) for _, c in rs] + [(a, -float(rdmas))])
                nets += rs
            units = request.gpus or 1
            if vfs:
                products(gpu_cols, nets[: len(pfs)], wt, vfs, units)
            if rdmas:
                products(gpu_cols, nets[len(pfs) if vfs else 0 :], wt, rdmas, units)
            cpu_used: list[tuple[int, int]] = []  # (NUMA node, column: 1 when the pod pins CPUs there)
            if request.cpus:
                cs = []
                for numa, count in by_numa.items():
                    c = m.var(float(count))
                    q = m.var()
                    m.row(-highspy.kHighsInf, 0.0, [(c, 1.0), (q, -float(count))])
                    m.row(-highspy.kHighsInf, 0.0, [(q, 1.0), (c, -1.0)])
                    cs.append(c)
                    cpu_used.append((numa, q))
                    hold(name, ("numa", numa), p, c)
                    hold(name, "cpus", p, c)
                m.row(0.0, 0.0, [(c, 1.0) for c in cs] + [(a, -float(request.cpus))])
                devices = gpu_cols + nets
                if devices:
                    products(
                        devices,
                        [(str(n), q) for n, q in cpu_used],
                        lambda d, n: to_cpu(d, int(n)),
                        None,
                        None,
                    )
            if request.policy in ("single-numa", "same-switch") and request.topology_aware:
                numas = sorted(by_numa)
                pick = {numa: m.var() for numa in numas}
                m.row(0.0, 0.0, [(o, 1.0) for o in pick.values()] + [(a, -1.0)])
                for address, col in gpu_cols + nets:
                    device_numa = numa_of(address)
                    if device_numa is not None:
                        m.row(-highspy.kHighsInf, 0.0, [(col, 1.0), (pick[device_numa], -1.0)])
                for numa, q in cpu_used:
                    m.row(-highspy.kHighsInf, 0.0, [(q, 1.0), (pick[numa], -1.0)])
            scopes[(p, name)] = fit_scopes(
                request, topology, whole, mig_gpus, pfs, by_numa, numa_of, vfs=vfs, rdmas=rdmas
            )

    # one node per pod
    per_pod: dict[int, list[int]] = {}
    for (_, held), entries in holds.items():
        if held == "pod":
            for p, col, _ in entries:
                per_pod.setdefault(p, []).append(col)
    for cols in per_pod.values():
        m.row(0.0, 1.0, [(c, 1.0) for c in cols])
    # at every arrival, what the pods still there hold fits the node
    alive_from = list(range(len(requests)))
    alive_until = [i + lifetimes[i] for i in range(len(requests))]
    for (node, held), entries in holds.items():
        if held == "pod":
            continue
        cap = capacity[(node, held)]
        leaving = set(alive_until)
        for t in range(len(requests)):
            if t + 1 not in leaving and t + 1 < len(requests):
                continue  # nobody leaves before the next arrival: the next row holds this one's pods
            terms = [(col, units) for p, col, units in entries if alive_from[p] <= t < alive_until[p]]
            if sum(units * (m.upper[col]) for col, units in terms) > cap:
                m.row(-highspy.kHighsInf, float(cap), terms)

    if work_conserving:
        refuse_only_when_full(m, holds, capacity, scopes, per_pod, alive_until)
    most, most_bound, found = m.solve({a: 1.0 for a in placed}, maximize=True, seconds=seconds, priced=False)
    start = np.round(found)
    for z, (a, b) in factors.items():  # the first solve left the products free: make them products
        start[z] = start[a] * start[b]
    pods = round(most)
    placed_steps = tuple(sorted(p for p, cols in per_pod.items() if any(found[c] > 0.5 for c in cols)))
    rows = len(m.rows)
    priced_sets: dict[str, tuple[float, float]] = {}
    for label, steps in (cost_of or {}).items():
        wanted = set(steps)
        for p, cols in per_pod.items():
            m.row(1.0 if p in wanted else 0.0, 1.0 if p in wanted else 0.0, [(c, 1.0) for c in cols])
        value, bound, _ = m.solve(cost, maximize=False, seconds=seconds, priced=True)
        priced_sets[label] = (value, bound)
        del m.rows[rows:], m.pricing[rows:]
    least, least_bound = math.inf, 0.0
    if least_cost:
        m.row(float(pods), highspy.kHighsInf, [(a, 1.0) for a in placed])
        least, least_bound, _ = m.solve(cost, maximize=False, seconds=seconds, priced=True, start=start)
    if not math.isfinite(least):  # no better schedule found in time: the first one, priced
        least = float(sum(weight * start[z] for z, weight in cost.items()))
    return Optimum(
        pods=pods,
        pods_bound=int(most_bound + 1e-6),
        cost=least,
        cost_bound=least_bound,
        seconds=time.perf_counter() - started,
        variables=len(m.lower),
        rows=rows,
        cost_of=priced_sets,
        steps=placed_steps,
    )
