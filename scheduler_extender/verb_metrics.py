"""What the verbs decided, as Prometheus metrics: refusal classes, placement cost and distance levels, binds.

Refusal reasons are free text written for people ("needs 2 gedge.io/gpu (1
free)"); as labels they would be unbounded, so each is reduced to a class
from a fixed set. Placement quality is recorded when a bind goes through: the
allocation's cost, its worst level, and the level of every pair of devices it
joins (GPU-GPU, GPU-NIC, GPU-CPU, NIC-CPU), priced on the node's own topology.
"""

from __future__ import annotations

import collections
import functools
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gedge_model import Allocation, NodeTopology
from gedge_model.allocation import CARD_RESOURCES, RESOURCE_GPU, RESOURCE_GPU_SHARED, RESOURCE_MIG_PREFIX
from gedge_model.distance import Endpoint, Level, endpoint_distance
from gedge_model.driver import ANNOTATION_MIN_DRIVER
from gedge_model.topology import DeviceKind

REFUSAL_CLASSES = (
    "insufficient-gpu",
    "insufficient-gpu-shared",
    "insufficient-mig",
    "insufficient-vf",
    "insufficient-rdma",
    "insufficient-amd-gpu",
    "insufficient-fpga",
    "insufficient-asic",
    "insufficient-nic",
    "insufficient-cpu",
    "missing-accelerator",
    "driver",
    "policy",
    "stale-node",
    "unknown-node",
    "bad-request",
    "placement-error",
    "other",
)
BIND_FAILURE_CLASSES = (
    "conflict",
    "stale-node",
    "unknown-node",
    "unknown-pod",
    "bad-request",
    "no-fit",
    "binder",
    "other",
)
log = structlog.get_logger("gedge.extender.metrics")

PAIRS = ("gpu-gpu", "gpu-nic", "gpu-cpu", "nic-cpu")
COST_BUCKETS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0)

_SHORTFALLS = (
    (f"{RESOURCE_GPU_SHARED} (", "insufficient-gpu-shared"),
    (f"{RESOURCE_GPU} (", "insufficient-gpu"),
    (RESOURCE_MIG_PREFIX, "insufficient-mig"),
    ("gedge.io/sriov-vf (", "insufficient-vf"),
    ("gedge.io/rdma (", "insufficient-rdma"),
    ("gedge.io/amd-gpu (", "insufficient-amd-gpu"),
    ("gedge.io/fpga (", "insufficient-fpga"),
    ("gedge.io/asic (", "insufficient-asic"),
    ("a data-path NIC", "insufficient-nic"),
    ("pinned CPUs (", "insufficient-cpu"),
)
_STALE = ("stale", "watch stream", "has not reported yet", "no agent address")
_BINDER = ("did not apply the allocation", "binding to node", "bind failed")
_POLICIES = ("(best-effort)", "(restricted)", "(single-numa)", "(same-switch)")


def refusal_class(reason: str) -> str:
    """The class of one node's refusal, as the placement engine and the node cache word it."""
    if "no gedge agent reports this node" in reason:
        return "unknown-node"
    if ANNOTATION_MIN_DRIVER in reason:
        return "driver"
    if any(marker in reason for marker in _STALE):
        return "stale-node"
    if reason.startswith("placement failed"):
        return "placement-error"
    if "(gedge.io/compute)" in reason:
        return "missing-accelerator"
    if any(policy in reason for policy in _POLICIES):
        return "policy"
    if reason.startswith("needs "):
        for marker, cls in _SHORTFALLS:
            if marker in reason:
                return cls
    return "other"


@functools.lru_cache(maxsize=65_536)
def _cached_class(reason: object) -> str:
    return refusal_class(str(reason))


def cached_refusal_class(reason: str) -> str:
    """refusal_class, remembered per reason (the extender keeps a node's reason while it stays the same)."""
    return _cached_class(reason)


@dataclass(frozen=True)
class FilterSummary:
    """What the metrics count of one filter reply."""

    error: str
    """The reply's Error ("" when it answered)."""
    refusals: Mapping[str, int]
    """Refused nodes per class; unresolvable nodes count as unknown-node or stale-node."""
    passed_any: bool
    """Whether any node passed."""


def filter_summary(body: Mapping[str, Any]) -> FilterSummary:
    """The summary of an ExtenderFilterResult as a dict."""
    error = body.get("Error") or ""
    if error:
        return FilterSummary(str(error), {}, False)
    classes = collections.Counter(map(_cached_class, (body.get("FailedNodes") or {}).values()))
    for reason in (body.get("FailedAndUnresolvableNodes") or {}).values():
        classes["unknown-node" if _cached_class(reason) == "unknown-node" else "stale-node"] += 1
    passed = bool(body.get("NodeNames")) or bool((body.get("Nodes") or {}).get("items"))
    return FilterSummary("", classes, passed)


def _reason_of(error: str) -> str:
    """The refusal in a bind's Error ("pod NS/NAME: node NODE: REASON")."""
    for subject in ("pod ", "node "):
        if error.startswith(subject) and ": " in error:
            error = error.split(": ", 1)[1]
    return error


def bind_failure_class(error: str) -> str:
    """The class of a bind's Error, as Extender.bind and the binders word it."""
    if "already held by pod" in error or "already holds an allocation" in error:
        return "conflict"
    if "never seen in filter" in error or "cannot read it from the API server" in error:
        return "unknown-pod"
    if "UID is" in error:
        return "bad-request"
    if any(marker in error for marker in _BINDER):
        return "binder"
    cls = refusal_class(_reason_of(error))
    if cls in ("stale-node", "unknown-node"):
        return cls
    return "other" if cls == "other" else "no-fit"


def _gpu_resource(resource: str) -> bool:
    """The compute side of a pair: NVIDIA GPUs, MIG, AMD GPUs and FPGA/ASIC cards alike."""
    return resource in (RESOURCE_GPU, RESOURCE_GPU_SHARED, *CARD_RESOURCES) or resource.startswith(
        RESOURCE_MIG_PREFIX
    )


def allocation_pairs(topology: NodeTopology, allocation: Allocation) -> list[tuple[str, Level]]:
    """(pair kind, distance level) for every pair of endpoints the allocation joins."""

    def endpoint(kind: DeviceKind, address: str) -> Endpoint:
        device = topology.pci(address)
        return Endpoint(address, kind, address, address, device.numa_node if device else None)

    gpus: dict[str, Endpoint] = {}
    nics: dict[str, Endpoint] = {}
    for grant in allocation.devices:
        if grant.pci_address is None:
            continue
        if _gpu_resource(grant.resource):
            gpus.setdefault(grant.pci_address, endpoint(DeviceKind.GPU, grant.pci_address))
        else:
            nics.setdefault(grant.pci_address, endpoint(DeviceKind.NIC, grant.pci_address))
    network = allocation.network
    if network is not None:
        address = network.vf_pci_address or next(
            (i.pci_address for i in topology.interfaces if i.name == network.master), None
        )
        if address is not None:
            nics.setdefault(address, endpoint(DeviceKind.NIC, address))
    numa_of_cpu = {cpu.id: cpu.numa_node for cpu in topology.cpus}
    numas = {n for c in allocation.cpus if (n := numa_of_cpu.get(c)) is not None} or set(
        allocation.numa_nodes
    )
    cpus = [Endpoint(f"CPU{n}", DeviceKind.CPU, f"node{n}", None, n) for n in sorted(numas)]

    def levels(pair: str, left: list[Endpoint], right: list[Endpoint]) -> Iterator[tuple[str, Level]]:
        for a, b in itertools.product(left, right):
            yield pair, endpoint_distance(topology, a, b).level

    gpu_list, nic_list = list(gpus.values()), list(nics.values())
    found = [
        ("gpu-gpu", endpoint_distance(topology, a, b).level) for a, b in itertools.combinations(gpu_list, 2)
    ]
    found += levels("gpu-nic", gpu_list, nic_list)
    found += levels("gpu-cpu", gpu_list, cpus)
    found += levels("nic-cpu", nic_list, cpus)
    return found


class _AssumeCacheSize(Collector):
    """Allocations the extender holds beyond the agents' reports, read at scrape time."""

    def __init__(self, extender: Any) -> None:
        self._extender = extender

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "gedge_extender_assumed_allocations",
            "Allocations held in the assume cache (reserved by a bind, or bound and not yet reported)",
        )
        family.add_metric([], len(self._extender.cache.pod_uids()))
        yield family


class VerbMetrics:
    """Filter refusals, placement quality and bind outcomes, on the extender's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.filter_refusals = Counter(
            "gedge_extender_filter_refusals_total",
            "Nodes filter refused for a pod, by reason class",
            ["reason"],
            registry=registry,
        )
        self.unschedulable = Counter(
            "gedge_extender_unschedulable_pods_total",
            "Filter calls that left a pod no node, by the most common reason class",
            ["reason"],
            registry=registry,
        )
        self.placements = Counter(
            "gedge_extender_placements_total",
            "Pods bound with devices or pinned CPUs, by the worst distance level of their allocation",
            ["level"],
            registry=registry,
        )
        self.cost = Histogram(
            "gedge_extender_placement_cost",
            "Distance cost of the allocation bind chose (sum of pair weights)",
            buckets=COST_BUCKETS,
            registry=registry,
        )
        self.pairs = Counter(
            "gedge_extender_placement_pairs_total",
            "Device pairs joined by bound allocations, by pair kind and distance level",
            ["pair", "level"],
            registry=registry,
        )
        self.bind_failures = Counter(
            "gedge_extender_bind_failures_total",
            "Binds answered with an Error, by class (conflict: another bind holds the devices)",
            ["reason"],
            registry=registry,
        )
        self.bind_retries = Counter(
            "gedge_extender_bind_retries_total",
            "Binds for a pod that already held a reservation (kube-scheduler asking again)",
            registry=registry,
        )
        for reason in REFUSAL_CLASSES:
            self.filter_refusals.labels(reason)
            self.unschedulable.labels(reason)
        for reason in BIND_FAILURE_CLASSES:
            self.bind_failures.labels(reason)
        for level in Level:
            self.placements.labels(level.value)
            for pair in PAIRS:
                self.pairs.labels(pair, level.value)

    def watch(self, extender: Any) -> None:
        self.registry.register(_AssumeCacheSize(extender))

    def observe_filter(self, body: Mapping[str, Any]) -> None:
        """Count each refused node's class; a pod left with no node counts once, by the commonest class."""
        try:
            self._observe_filter(filter_summary(body))
        except Exception:  # a metric must never turn an answer into an error
            log.exception("filter_metrics_failed")

    def observe_filter_summary(self, summary: FilterSummary) -> None:
        """observe_filter of a reply already summarized (the extender counts classes per node state)."""
        try:
            self._observe_filter(summary)
        except Exception:  # a metric must never turn an answer into an error
            log.exception("filter_metrics_failed")

    def _observe_filter(self, summary: FilterSummary) -> None:
        if summary.error:
            self.unschedulable.labels("bad-request").inc()
            return
        # Thousands of refused nodes per call at cluster scale: one counter step per class.
        classes = {cls: count for cls, count in summary.refusals.items() if count}
        for cls, count in classes.items():
            self.filter_refusals.labels(cls).inc(count)
        if classes and not summary.passed_any:
            commonest = max(classes, key=lambda c: (classes[c], c))
            self.unschedulable.labels(commonest).inc()

    def observe_bind(self, error: str, allocation: Allocation | None, topology: NodeTopology | None) -> None:
        try:
            self._observe_bind(error, allocation, topology)
        except Exception:  # the bind went through whatever the metrics make of it
            log.exception("bind_metrics_failed")

    def _observe_bind(self, error: str, allocation: Allocation | None, topology: NodeTopology | None) -> None:
        if error:
            self.bind_failures.labels(bind_failure_class(error)).inc()
            return
        if allocation is None or not (allocation.devices or allocation.cpus):
            return
        self.placements.labels(Level(allocation.worst_level.rstrip("0123456789")).value).inc()
        self.cost.observe(allocation.cost)
        if topology is not None:
            for pair, level in allocation_pairs(topology, allocation):
                self.pairs.labels(pair, level.value).inc()
