"""What is free on a node, by kind and NUMA node, in the index's position terms (kubelet's free-set view)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gedge_model import Allocation, NodeState
from gedge_model.allocation import (
    RESOURCE_GPU,
    RESOURCE_GPU_SHARED,
    RESOURCE_MIG_PREFIX,
    RESOURCE_RDMA,
    RESOURCE_SRIOV_VF,
    RESOURCE_SRIOV_VF_VFIO,
    mig_resource_name,
)
from gedge_model.cpu_pool import pinnable_cpus
from scheduler_extender.placement.index import NO_NUMA, NetEntry, TopologyIndex, topology_index

RESOURCE_CPU_EXCLUSIVE = "cpu"
"""free_capacity's key for CPUs not pinned by any pod."""


@dataclass
class FreeSet:
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

    def within(self, index: TopologyIndex, numas: frozenset[int]) -> FreeSet:
        def ok(numa: int) -> bool:
            return numa == NO_NUMA or numa in numas

        gpus = index.gpus
        return FreeSet(
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


def used_by(state: NodeState, reserved: Iterable[Allocation]) -> tuple[dict[str, set[str]], set[int]]:
    devices: dict[str, set[str]] = {}
    cpus: set[int] = set()
    for allocation in (*state.allocations, *reserved):
        for grant in allocation.devices:
            devices.setdefault(grant.resource, set()).add(grant.id)
        cpus.update(allocation.cpus)
    return devices, cpus


def compute_free(index: TopologyIndex, state: NodeState, reserved: Iterable[Allocation]) -> FreeSet:
    used, used_cpus = used_by(state, reserved)
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
    return FreeSet(
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


def free_set(index: TopologyIndex, state: NodeState, reserved: Iterable[Allocation] = ()) -> FreeSet:
    """What is free on the node; the empty node's set is kept on its index."""
    held = tuple(reserved)
    if not held and not state.allocations:
        if not index.empty:
            index.empty.append(compute_free(index, state, ()))
        return index.empty[0]  # type: ignore[return-value]
    return compute_free(index, state, held)


def free_capacity(state: NodeState, reserved: Iterable[Allocation] = ()) -> Mapping[str, int]:
    """Free units per resource name (`cpu` = CPUs no pod has pinned); overlapping kinds count both ways.

    A free whole GPU's time-slice replicas are counted as free replicas too:
    either may be taken, not both.
    """
    index = topology_index(state.topology)
    free = free_set(index, state, reserved)
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
        used = used_by(state, reserved)[0].get(RESOURCE_SRIOV_VF_VFIO, set())
        out[RESOURCE_SRIOV_VF_VFIO] = sum(1 for v in index.vfio if v.pci not in used)
    out[RESOURCE_CPU_EXCLUSIVE] = free.cpu_count()
    return out
