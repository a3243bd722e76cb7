"""Counts applies, releases and reconciles, and their failures, by the kind of setup an allocation carries.

A wrapper around the node's applier, so the gRPC Apply path and the pod watch
count the same way without either knowing about metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from agent.apply.contract import AllocationApplier, ApplyError
from gedge_model import Allocation

KINDS = ("cpuset", "shared-pool", "devices", "nic-sriov", "nic-macvlan")
OPERATIONS = ("apply", "release", "reconcile", "refresh")


def allocation_kinds(allocation: Allocation) -> tuple[str, ...]:
    """What applying `allocation` sets up: exclusive cpuset or the shared pool, devices, a data-path NIC."""
    kinds = ["cpuset" if allocation.cpus else "shared-pool"]
    if allocation.devices:
        kinds.append("devices")
    if allocation.network is not None:
        kinds.append(f"nic-{allocation.network.mode}")
    return tuple(kinds)


class ApplyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.operations = Counter(
            "gedge_agent_applies_total",
            "Apply, release, reconcile and shared-pool refresh operations, by kind of setup",
            ["op", "kind"],
            registry=registry,
        )
        self.failures = Counter(
            "gedge_agent_apply_failures_total",
            "Operations that raised ApplyError (nothing was left half-applied), by kind of setup",
            ["op", "kind"],
            registry=registry,
        )
        for op in OPERATIONS:
            for kind in KINDS if op in ("apply", "release") else ("node",):
                self.operations.labels(op, kind)
                self.failures.labels(op, kind)

    def count(self, op: str, kinds: Iterable[str], failed: bool) -> None:
        for kind in kinds:
            self.operations.labels(op, kind).inc()
            if failed:
                self.failures.labels(op, kind).inc()

    @contextmanager
    def counted(self, op: str, kinds: Iterable[str]) -> Iterator[None]:
        """Count `op` once per kind when the block ends, as a failure when it raised."""
        failed = True
        try:
            yield
            failed = False
        finally:
            self.count(op, kinds, failed)


class MeteredApplier:
    """`AllocationApplier` that counts every call of the applier it wraps; reconcile and refresh pass on."""

    def __init__(self, inner: AllocationApplier, metrics: ApplyMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    def apply(self, allocation: Allocation) -> None:
        with self.metrics.counted("apply", allocation_kinds(allocation)):
            self.inner.apply(allocation)

    def release(self, pod_uid: str) -> None:
        held = next((a for a in self.inner.applied() if a.pod_uid == pod_uid), None)
        if held is None:
            self.inner.release(pod_uid)
            return
        with self.metrics.counted("release", allocation_kinds(held)):
            self.inner.release(pod_uid)

    def applied(self) -> tuple[Allocation, ...]:
        return self.inner.applied()

    def reconcile(self, live_pod_uids: Iterable[str]) -> Any:
        return self._node_operation("reconcile", "reconcile", live_pod_uids)

    def refresh_shared_pool(self) -> None:
        self._node_operation("refresh", "refresh_shared_pool")

    def _node_operation(self, op: str, method: str, *args: Any) -> Any:
        try:
            result = getattr(self.inner, method)(*args)
        except ApplyError:
            self.metrics.count(op, ("node",), True)
            raise
        self.metrics.count(op, ("node",), False)
        return result
