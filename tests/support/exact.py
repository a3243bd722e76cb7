"""The exact optimum of the engine's cost, by exhaustive enumeration: the yardstick for small nodes.

Independent of the engine's search (it prices straight from gedge_model.distance),
so comparing the two checks the engine's pruning. It enumerates every GPU set,
every multiset of VFs by physical function, every RDMA set, every data NIC and
every minimal set of NUMA nodes that can hold the pinned CPUs: exponential, so
only for benchmarks and tests on small nodes. Policies are not applied
(best-effort meaning).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import combinations

from gedge_model import DEFAULT_WEIGHTS, Allocation, Level, NodeState, NodeTopology, pci_distance
from gedge_model.allocation import RESOURCE_GPU, RESOURCE_GPU_SHARED, RESOURCE_RDMA, RESOURCE_SRIOV_VF
from gedge_model.cpu_pool import pinnable_cpus
from scheduler_extender.placement.request import PodRequest


def _numa(topology: NodeTopology, address: str) -> int | None:
    device = topology.pci(address)
    if device is None or device.numa_node is None or device.numa_node < 0:
        return None
    return device.numa_node


def optimum_cost(
    state: NodeState,
    request: PodRequest,
    weights: Mapping[Level, float] = DEFAULT_WEIGHTS,
    reserved: Iterable[Allocation] = (),
) -> float | None:
    """The lowest cost any allocation of `request` can have on this node, None when nothing fits.

    Handles whole GPUs, one time-slice replica or MIG instance, VFs, RDMA devices,
    the macvlan fallback NIC and pinned CPUs.
    """
    topology = state.topology
    used: set[tuple[str, str]] = set()
    used_cpus: set[int] = set()
    for allocation in (*state.allocations, *reserved):
        used.update((d.resource, d.id) for d in allocation.devices)
        used_cpus.update(allocation.cpus)
    used_ids = {i for _, i in used}

    def busy(gpu_uuid: str) -> bool:
        return any(i == gpu_uuid or i.startswith(gpu_uuid + "::") for i in used_ids) or any(
            m.uuid in used_ids for g in topology.gpus if g.uuid == gpu_uuid for m in g.mig_instances
        )

    whole = [g.pci_address for g in topology.gpus if not g.mig_current and not busy(g.uuid)]
    unit_gpus: list[str] = []
    if request.gpu_shared:
        unit_gpus = [
            g.pci_address
            for g in topology.gpus
            if not g.mig_current
            and g.timeslice_replicas > 1
            and (RESOURCE_GPU, g.uuid) not in used
            and any((RESOURCE_GPU_SHARED, f"{g.uuid}::{r}") not in used for r in range(g.timeslice_replicas))
        ]
    for profile, _ in request.mig:
        unit_gpus = [
            g.pci_address
            for g in topology.gpus
            if g.mig_current and any(m.profile == profile and m.uuid not in used_ids for m in g.mig_instances)
        ]
    if (request.gpu_shared or request.mig) and (request.gpu_shared > 1 or sum(n for _, n in request.mig) > 1):
        raise ValueError("optimum_cost handles one time-slice replica or MIG instance")

    pfs = [i for i in topology.interfaces if i.physfn is None]
    vf_slots: list[tuple[str, str]] = []
    for iface in pfs:
        for function in iface.vfs:
            if (RESOURCE_SRIOV_VF, function.pci_address) not in used:
                vf_slots.append((iface.pci_address, function.pci_address))
    rdmas = [r.pci_address for r in topology.rdma_devices if (RESOURCE_RDMA, r.name) not in used]
    vfs_needed = max(request.sriov_vfs, 1 if "SRIOV" in request.communication else 0)
    rdma_needed = max(request.rdma, 1 if "RDMA" in request.communication else 0)
    optional = bool(request.communication) and vfs_needed == 0

    free_by_numa: dict[int | None, int] = {}
    pinnable = topology.pinnable_cpus
    for cpu in topology.cpus:
        if cpu.id in pinnable and cpu.id not in used_cpus:
            key = cpu.numa_node if cpu.numa_node is not None and cpu.numa_node >= 0 else None
            free_by_numa[key] = free_by_numa.get(key, 0) + 1
    cpu_sets: list[tuple[int | None, ...]] = [()]
    if request.cpus > pinnable_cpus(sum(free_by_numa.values())):
        return None
    if request.cpus:
        cpu_sets = []
        keys = sorted(free_by_numa, key=lambda k: -1 if k is None else k)
        for size in range(1, len(keys) + 1):
            for subset in combinations(keys, size):
                total = sum(free_by_numa[k] for k in subset)
                minimal = all(total - free_by_numa[k] < request.cpus for k in subset)
                if total >= request.cpus and minimal:
                    cpu_sets.append(subset)

    priced: dict[tuple[str, str], float] = {}

    def w(a: str, b: str) -> float:
        hit = priced.get((a, b))
        if hit is None:
            hit = priced[(a, b)] = pci_distance(topology, a, b).weight(weights)
        return hit

    def to_cpu(address: str, numa: int | None) -> float:
        own = _numa(topology, address)
        return weights[Level.PHB if own is None or numa is None or own == numa else Level.SYS]

    def vf_distance(gpu: str, pf: str, vf: str) -> float:
        return w(gpu, vf) if topology.pci(vf) is not None else w(gpu, pf)

    if len(whole) < request.gpus or len(vf_slots) < vfs_needed or len(rdmas) < rdma_needed or not cpu_sets:
        return None
    gpu_sets = [tuple(c) for c in combinations(whole, request.gpus)]
    if request.gpu_shared or request.mig:
        gpu_sets = [(*s, u) for s in gpu_sets for u in unit_gpus if u not in s]
    best: float | None = None
    pf_of = {vf: pf for pf, vf in vf_slots}
    vf_by_pf: dict[str, list[str]] = {}
    for pf, vf in vf_slots:
        vf_by_pf.setdefault(pf, []).append(vf)
    # VFs of one PF at one distance are interchangeable: enumerate multisets over representatives.
    representatives = [(pf, vf) for pf, members in vf_by_pf.items() for vf in members[: vfs_needed or 1]]
    vf_choices: list[tuple[str, ...]] = [()]
    if vfs_needed:
        vf_choices = [tuple(v for _, v in combo) for combo in combinations(representatives, vfs_needed)]
    elif optional:
        # a macvlan on a data NIC only when no VF is free
        vf_choices = [(v,) for _, v in representatives] or [("nic:" + pf.pci_address,) for pf in pfs]
    for gpus in gpu_sets:
        base = sum(w(a, b) for a, b in combinations(gpus, 2))
        for numas in cpu_sets:
            cpu_cost = base + sum(to_cpu(g, m) for g in gpus for m in numas)
            for vfs in vf_choices:
                net = 0.0
                for vf in vfs:
                    if vf.startswith("nic:"):
                        nic = vf[4:]
                        net += sum(w(g, nic) for g in gpus) + sum(to_cpu(nic, m) for m in numas)
                    else:
                        pf = pf_of[vf]
                        net += sum(vf_distance(g, pf, vf) for g in gpus)
                        net += sum(to_cpu(vf if topology.pci(vf) else pf, m) for m in numas)
                for chosen in combinations(rdmas, rdma_needed):
                    cost = cpu_cost + net
                    cost += sum(w(g, r) for g in gpus for r in chosen)
                    cost += sum(to_cpu(r, m) for r in chosen for m in numas)
                    if best is None or cost < best:
                        best = cost
    return best
