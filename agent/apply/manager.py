"""ApplyManager: makes an allocation real on the node (cpusets, data-path NIC) and survives kill -9.

Cpusets are converged, not patched: from the checkpointed allocations the
manager derives every container's cpuset (pinned pods get their exclusive CPUs,
every other container the shared pool, as kubelet's static CPU manager does)
and writes the difference. The NIC part is undone from a record written before
it starts. So whatever point a crash hits, `reconcile` can finish the work for
a live pod or undo it for a gone one.

Without Kubernetes the caller that binds a pod does not know where it will run,
so an apply for a pod the resolver cannot place may reserve it (`reserve_unresolved`):
the allocation is recorded and its CPUs leave the shared pool, and a later apply
of the same allocation, once the runtime is known, attaches cgroups and NIC.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from agent.apply.cgroups import (
    CgroupDriver,
    CgroupError,
    CgroupVersion,
    CpusetTree,
    QosClass,
    container_cgroup,
    container_cgroups_by_pod,
    kubepods_dir,
    normalize_container_id,
    validate_pod_uid,
)
from agent.apply.checkpoint import (
    CheckpointData,
    CheckpointError,
    CheckpointStore,
    Intent,
    NicRecord,
    PodRecord,
)
from agent.apply.contract import ApplyError
from agent.apply.cpuset import Cpuset
from agent.apply.nic.applier import NicApplier, NicError
from gedge_model import Allocation
from gedge_model.cpu_pool import pinnable_cpus
from gedge_model.cpulist import format_cpulist

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PodRuntime:
    """What the node runtime knows of a pod: its QoS tier, running containers and network namespace."""

    qos: QosClass
    container_ids: tuple[str, ...] = ()
    netns: str | None = None


class PodResolver(Protocol):
    """Pod UID -> runtime facts (under Kubernetes: pod status and CRI); None when the pod is not here."""

    def resolve(self, pod_uid: str) -> PodRuntime | None: ...


@dataclass
class StaticPodResolver:
    """A resolver over a fixed table (nodes without Kubernetes, where the caller knows the pods)."""

    pods: dict[str, PodRuntime] = field(default_factory=dict)

    def resolve(self, pod_uid: str) -> PodRuntime | None:
        return self.pods.get(pod_uid)


@dataclass(frozen=True)
class ReconcileReport:
    finished: tuple[str, ...] = ()
    undone: tuple[str, ...] = ()
    released: tuple[str, ...] = ()
    repaired: tuple[str, ...] = ()


def _noop(_: str) -> None:
    return None


class ApplyManager:
    """`contract.AllocationApplier` over real cgroups and netlink, with a write-ahead checkpoint."""

    def __init__(
        self,
        *,
        cgroup_root: Path,
        cgroup_driver: CgroupDriver,
        cgroup_version: CgroupVersion,
        checkpoint_path: Path,
        resolver: PodResolver,
        nic: NicApplier | None = None,
        reserved_cpus: Iterable[int] = (),
        reserve_unresolved: bool = False,
        on_step: Callable[[str], None] | None = None,
        pinned_elsewhere: Callable[[], Mapping[str, frozenset[int]]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._started = clock()
        self.cgroup_root = cgroup_root
        self.driver = cgroup_driver
        self.tree = CpusetTree(cgroup_root, cgroup_version)
        self.store = CheckpointStore(checkpoint_path)
        self.resolver = resolver
        self.nic = nic
        self.reserved_cpus = frozenset(reserved_cpus)
        self.reserve_unresolved = reserve_unresolved
        self.on_step = on_step or _noop
        self.pinned_elsewhere = pinned_elsewhere
        """Pods pinned by the runtime at creation (NRI) that the checkpoint may not hold yet: pod uid ->
        CPUs. Converging keeps them on those CPUs and off the shared pool."""
        self._lock = threading.RLock()

    # -- contract ---------------------------------------------------------------------------------

    def apply(self, allocation: Allocation) -> None:
        uid = allocation.pod_uid
        with self._lock:
            data = self._settle(self._load())
            existing = data.pod(uid)
            if existing is not None and existing.allocation != allocation:
                raise ApplyError(
                    f"pod {uid}: already applied with a different allocation; release it before applying anew"
                )
            runtime = self.resolver.resolve(uid)
            if runtime is None:
                if not self.reserve_unresolved:
                    raise ApplyError(f"pod {uid}: not running on this node")
                if existing is None:
                    self._reserve(allocation, data)
                return
            self._validate(allocation, runtime, data)
            nic_record = existing.nic if existing is not None else None
            if allocation.network is not None:
                assert self.nic is not None and runtime.netns is not None
                if nic_record is None or nic_record.pod_netns != runtime.netns:
                    try:
                        if nic_record is not None:
                            self._nic_release(uid, nic_record)
                        nic_record = self.nic.plan(uid, allocation.network, runtime.netns)
                    except NicError as exc:
                        raise ApplyError(str(exc)) from None
            record = PodRecord(allocation=allocation, nic=nic_record)
            self._write_ahead(record, data, existing)
            log.info(
                "attached" if existing is not None and existing.reserved else "applied",
                pod=uid,
                cpus=format_cpulist(allocation.cpus),
                nic=nic_record is not None,
            )

    def _reserve(self, allocation: Allocation, data: CheckpointData) -> None:
        """Hold the allocation for a pod whose runtime is not known yet: recorded, CPUs exclusive."""
        self._validate(allocation, None, data)
        record = PodRecord(allocation=allocation, reserved=True, reserved_at=self._clock())
        self._write_ahead(record, data, None)
        log.info("reserved", pod=allocation.pod_uid, cpus=format_cpulist(allocation.cpus))

    def _write_ahead(self, record: PodRecord, data: CheckpointData, existing: PodRecord | None) -> None:
        self._save(CheckpointData(pods=data.pods, intent=Intent(op="apply", record=record)))
        self.on_step("intent")
        try:
            self._do_apply(record, data.with_pod(record))
        except (CgroupError, NicError) as exc:
            self._undo_failed(record, data, existing)
            raise ApplyError(f"pod {record.allocation.pod_uid}: {exc}") from None

    def release(self, pod_uid: str) -> None:
        with self._lock:
            data = self._settle(self._load())
            record = data.pod(pod_uid)
            if record is None:
                return
            self._save(CheckpointData(pods=data.pods, intent=Intent(op="release", record=record)))
            self.on_step("intent")
            try:
                self._do_release(record, data.without_pod(pod_uid))
            except (CgroupError, NicError) as exc:
                raise ApplyError(f"pod {pod_uid}: release: {exc}") from None
            log.info("released", pod=pod_uid)

    def expire_reservations(self, ttl_s: float) -> tuple[str, ...]:
        """Release every reservation older than `ttl_s` seconds that no Apply with the pod's runtime
        attached: its binder moved the pod elsewhere, lost the answer, or died. Returns their pod UIDs.
        A reservation recorded without a time counts from this manager's start."""
        now = self._clock()
        with self._lock:
            stale = [
                p.allocation.pod_uid
                for p in self._load().pods
                if p.reserved and now - (self._started if p.reserved_at is None else p.reserved_at) > ttl_s
            ]
            for uid in stale:
                self.release(uid)
                log.info("reservation expired", pod=uid, ttl_s=ttl_s)
        return tuple(stale)

    def applied(self) -> tuple[Allocation, ...]:
        """Every recorded allocation, reserved ones included: their CPUs and devices are taken."""
        with self._lock:
            return tuple(p.allocation for p in self._load().pods)

    def reserved_pod_uids(self) -> frozenset[str]:
        """The recorded pods whose cgroups and NIC wait for their runtime."""
        with self._lock:
            return frozenset(p.allocation.pod_uid for p in self._load().pods if p.reserved)

    def reconcile_recorded(self) -> ReconcileReport | None:
        """`reconcile` for nodes without a pod list: every recorded pod is live, for the caller that
        applied it releases it. None when the checkpoint records nothing to settle."""
        with self._lock:
            data = self._load()
            if not data.pods and data.intent is None:
                return None
            return self.reconcile(p.allocation.pod_uid for p in data.pods)

    # -- restart ----------------------------------------------------------------------------------

    def reconcile(self, live_pod_uids: Iterable[str]) -> ReconcileReport:
        """Finish or undo a half-done operation, free what gone pods held, repair what drifted.

        Run it on start with the pods that exist. An interrupted operation that cannot be
        settled, or a cgroup tree that cannot be written, raises ApplyError (nothing is guessed).
        """
        try:
            return self._reconcile(set(live_pod_uids))
        except (CgroupError, NicError) as exc:
            raise ApplyError(f"reconcile: {exc}") from None

    def _reconcile(self, live: set[str]) -> ReconcileReport:
        finished: list[str] = []
        undone: list[str] = []
        released: list[str] = []
        repaired: list[str] = []
        with self._lock:
            self.store.remove_stale_temps()
            data = self._load()
            if data.intent is not None:
                intent = data.intent
                uid = intent.record.allocation.pod_uid
                if intent.op == "apply" and uid in live:
                    try:
                        self._do_apply(intent.record, data.with_pod(intent.record))
                        finished.append(uid)
                    except (CgroupError, NicError) as exc:
                        log.warning("unfinishable apply undone", pod=uid, error=str(exc))
                        self._undo_failed(intent.record, data, data.pod(uid))
                        undone.append(uid)
                else:
                    self._do_release(intent.record, data.without_pod(uid))
                    (undone if intent.op == "apply" else finished).append(uid)
                data = self._load()
            for record in data.pods:
                uid = record.allocation.pod_uid
                if uid not in live:
                    try:
                        self.release(uid)
                        released.append(uid)
                    except ApplyError as exc:
                        log.error(
                            "release of a gone pod failed; retried on the next call", pod=uid, error=str(exc)
                        )
            data = self._load()
            self._converge_cpusets(data)
            for record in data.pods:
                if record.nic is not None and self.nic is not None and not self.nic.is_applied(record.nic):
                    assert record.allocation.network is not None
                    try:
                        self.nic.apply(record.nic, record.allocation.network, _noop)
                        repaired.append(record.allocation.pod_uid)
                    except NicError as exc:
                        log.warning("NIC repair failed", pod=record.allocation.pod_uid, error=str(exc))
        report = ReconcileReport(tuple(finished), tuple(undone), tuple(released), tuple(repaired))
        log.info("reconciled", **{k: list(v) for k, v in report.__dict__.items()})
        return report

    def refresh_shared_pool(self) -> None:
        """Re-derive every container's cpuset (new containers start on all CPUs); run it periodically."""
        with self._lock:
            try:
                self._converge_cpusets(self._load())
            except CgroupError as exc:
                raise ApplyError(f"refreshing the shared CPU pool: {exc}") from None

    # -- internals --------------------------------------------------------------------------------

    def _load(self) -> CheckpointData:
        try:
            return self.store.load()
        except CheckpointError as exc:
            raise ApplyError(str(exc)) from None

    def _save(self, data: CheckpointData) -> None:
        self.store.save(data)

    def _settle(self, data: CheckpointData) -> CheckpointData:
        """A pending intent (an operation cut short) is undone or finished before anything new starts."""
        if data.intent is None:
            return data
        uid = data.intent.record.allocation.pod_uid
        if data.intent.op == "apply":
            self._undo_failed(data.intent.record, data, data.pod(uid))
        else:
            try:
                self._do_release(data.intent.record, data.without_pod(uid))
            except (CgroupError, NicError) as exc:
                raise ApplyError(f"pod {uid}: an interrupted release could not be finished: {exc}") from None
        return self._load()

    def _allowed(self) -> Cpuset:
        base = kubepods_dir(self.cgroup_root, self.driver)
        if not base.is_dir():
            raise CgroupError(f"no kubepods cgroup at {base} (wrong cgroup root or driver?)")
        return self.tree.effective(base)

    def _validate(self, allocation: Allocation, runtime: PodRuntime | None, data: CheckpointData) -> None:
        """Refuse what cannot be applied; without a runtime (a reservation) the pod's cgroups and netns
        are checked later, when it attaches."""
        uid = allocation.pod_uid
        containers = runtime.container_ids if runtime is not None else ()
        try:
            validate_pod_uid(uid)
            for cid in containers:
                normalize_container_id(cid)
            allowed = self._allowed()
        except (ValueError, CgroupError) as exc:
            raise ApplyError(f"pod {uid}: {exc}") from None
        cpus = frozenset(allocation.cpus)
        if cpus:
            outside = cpus - allowed.cpus
            if outside:
                raise ApplyError(
                    f"pod {uid}: cpus {format_cpulist(outside)} are not in the node's pod CPUs "
                    f"{format_cpulist(allowed.cpus)}"
                )
            reserved = cpus & self.reserved_cpus
            if reserved:
                raise ApplyError(f"pod {uid}: cpus {format_cpulist(reserved)} are reserved for the system")
            others = {c for p in data.pods if p.allocation.pod_uid != uid for c in p.allocation.cpus}
            if self.pinned_elsewhere is not None:
                others |= {c for pod, held in self.pinned_elsewhere().items() if pod != uid for c in held}
            taken = cpus & others
            if taken:
                raise ApplyError(f"pod {uid}: cpus {format_cpulist(taken)} are exclusive to another pod")
            unpinned = allowed.cpus - others
            if len(cpus) > pinnable_cpus(len(unpinned), len(unpinned & self.reserved_cpus)):
                raise ApplyError(f"pod {uid}: pinning cpus {format_cpulist(cpus)} empties the shared pool")
        bad_numa = set(allocation.numa_nodes) - allowed.mems
        if bad_numa:
            mems = format_cpulist(allowed.mems)
            raise ApplyError(f"pod {uid}: NUMA nodes {sorted(bad_numa)} not in the node's {mems}")
        if allocation.network is not None:
            if self.nic is None:
                raise ApplyError(f"pod {uid}: a data-path NIC was granted but this agent has no NIC applier")
            if runtime is not None and runtime.netns is None:
                raise ApplyError(f"pod {uid}: a data-path NIC was granted but the pod's netns is unknown")
        if cpus and runtime is not None:
            for cid in containers:
                try:
                    container_cgroup(self.cgroup_root, self.driver, runtime.qos, uid, cid)
                except CgroupError as exc:
                    raise ApplyError(str(exc)) from None

    def _targets(self, data: CheckpointData) -> dict[Path, Cpuset]:
        allowed = self._allowed()
        pinned = {
            p.allocation.pod_uid: Cpuset(
                frozenset(p.allocation.cpus), frozenset(p.allocation.numa_nodes) or allowed.mems
            )
            for p in data.pods
            if p.allocation.cpus
        }
        if self.pinned_elsewhere is not None:
            for uid, cpus in self.pinned_elsewhere().items():
                if uid not in pinned and cpus:
                    pinned[uid] = Cpuset(frozenset(cpus), allowed.mems)
        exclusive = frozenset(c for s in pinned.values() for c in s.cpus)
        shared = Cpuset(allowed.cpus - exclusive, allowed.mems)
        return {
            path: pinned.get(uid, shared)
            for uid, paths in container_cgroups_by_pod(self.cgroup_root, self.driver).items()
            for path in paths
        }

    def _converge_cpusets(self, data: CheckpointData) -> None:
        counter = iter(range(1 << 30))
        self.tree.apply(self._targets(data), on_write=lambda path, _: self.on_step(f"cpuset:{next(counter)}"))

    def _do_apply(self, record: PodRecord, after: CheckpointData) -> None:
        self._converge_cpusets(after)
        if record.nic is not None:
            assert self.nic is not None and record.allocation.network is not None
            self.nic.apply(record.nic, record.allocation.network, self.on_step)
        self._save(CheckpointData(pods=after.pods))
        self.on_step("commit")

    def _do_release(self, record: PodRecord, after: CheckpointData) -> None:
        if record.nic is not None:
            self._nic_release(record.allocation.pod_uid, record.nic)
            self.on_step("nic:released")
        self._converge_cpusets(after)
        self._save(CheckpointData(pods=after.pods))
        self.on_step("commit")

    def _nic_release(self, uid: str, nic_record: NicRecord) -> None:
        if self.nic is None:
            raise NicError(f"pod {uid}: checkpoint holds a data-path NIC but this agent has no NIC applier")
        self.nic.release(nic_record)

    def _undo_failed(self, record: PodRecord, before: CheckpointData, existing: PodRecord | None) -> None:
        """Back to `before`: the NIC part goes unless it was already there, cpusets follow `before`."""
        uid = record.allocation.pod_uid
        restored = before.without_pod(uid)
        if existing is not None:
            restored = restored.with_pod(existing)
        if record.nic is not None and (existing is None or existing.nic != record.nic):
            try:
                self._nic_release(uid, record.nic)
            except NicError as exc:
                log.error("undo of data-path NIC failed", pod=uid, error=str(exc))
        try:
            self._converge_cpusets(restored)
        except CgroupError as exc:
            log.error("undo of cpusets failed", pod=uid, error=str(exc))
        self._save(CheckpointData(pods=restored.pods))
