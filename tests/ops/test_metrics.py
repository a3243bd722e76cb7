"""The metrics' decisions: refusal classes from the engine's own refusals, pair levels, inventory gauges,
apply counts and workflow counts, read back through prometheus_client registries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from agent.apply.contract import ApplyError
from agent.metrics_apply import ApplyMetrics, MeteredApplier, allocation_kinds
from agent.metrics_inventory import NodeInventoryCollector
from gedge_model import Allocation, NodeState
from gedge_model.distance import Level, pci_distance
from scheduler_extender.placement.engine import Placement, Refusal, place
from scheduler_extender.placement.request import parse_pod_request
from scheduler_extender.verb_metrics import VerbMetrics, allocation_pairs, bind_failure_class, refusal_class
from scheduler_extender.workflow import dag
from scheduler_extender.workflow.metrics import WorkflowMetrics
from scheduler_extender.workflow.spec import Workflow, WorkflowSpec
from tests.extender.conftest import pod
from tests.support.synthetic import dgx_like

AWARE = {"gedge.io/topology-aware": "true"}
MIG = {gpu: ["1g.10gb"] * 7 for gpu in (0, 1)}


def _place(state: NodeState, limits: dict[str, str], annotations: dict[str, str] | None = None):
    return place(state, parse_pod_request(pod("p", limits=limits, annotations=annotations)))


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


@pytest.mark.parametrize(
    ("limits", "annotations", "expected"),
    [
        ({"gedge.io/gpu": "9"}, None, "insufficient-gpu"),
        ({"gedge.io/mig-3g.40gb": "1"}, None, "insufficient-mig"),
        ({"gedge.io/gpu": "5"}, {**AWARE, "gedge.io/topology-policy": "single-numa"}, "policy"),
        ({"gedge.io/gpu": "1"}, {"gedge.io/compute": '["FPGA"]'}, "missing-accelerator"),
        (
            {"cpu": "1000", "memory": "1Gi"},
            {"gedge.io/cpu-pinning": "true"},
            "insufficient-cpu",
        ),
    ],
)
def test_engine_refusals_fall_in_their_class(
    limits: dict[str, str], annotations: dict[str, str] | None, expected: str
) -> None:
    outcome = _place(NodeState(dgx_like("dgx", mig={7: ["1g.10gb"] * 7})), limits, annotations)
    assert isinstance(outcome, Refusal)
    assert refusal_class(outcome.reason) == expected, outcome.reason


def test_filter_body_counts_nodes_by_class_and_the_pod_once() -> None:
    registry = CollectorRegistry()
    metrics = VerbMetrics(registry)
    metrics.observe_filter(
        {
            "NodeNames": [],
            "FailedNodes": {
                "a": "needs 9 gedge.io/gpu (8 free)",
                "b": "needs 9 gedge.io/gpu (0 free)",
            },
            "FailedAndUnresolvableNodes": {
                "c": "no gedge agent reports this node",
                "d": "agent at 10.0.0.4:50051 has not reported yet (connection refused)",
            },
            "Error": "",
        }
    )
    metrics.observe_filter({"NodeNames": None, "Error": "pod ml/p: gedge.io/topology-policy: unknown 'x'"})
    assert _value(registry, "gedge_extender_filter_refusals_total", reason="insufficient-gpu") == 2
    assert _value(registry, "gedge_extender_filter_refusals_total", reason="unknown-node") == 1
    assert _value(registry, "gedge_extender_filter_refusals_total", reason="stale-node") == 1
    assert _value(registry, "gedge_extender_unschedulable_pods_total", reason="insufficient-gpu") == 1
    assert _value(registry, "gedge_extender_unschedulable_pods_total", reason="bad-request") == 1


def test_bind_errors_fall_in_their_class() -> None:
    assert bind_failure_class("gedge.io/gpu G1 on n1 already held by pod ml/other") == "conflict"
    assert (
        bind_failure_class("pod ml/p (u1): never seen in filter, and no API server to ask") == "unknown-pod"
    )
    assert bind_failure_class("pod ml/p: node n1: no gedge agent reports this node") == "unknown-node"
    assert bind_failure_class("pod ml/p: node n1: needs 2 gedge.io/gpu (1 free)") == "no-fit"
    stale = "pod ml/p: node n1: watch stream to agent at 10.0.0.1:50051 gone since 2026-01-01 (40s > TTL 30s)"
    assert bind_failure_class(stale) == "stale-node"
    assert bind_failure_class("pod ml/p: binding to node n1 failed: 409 Conflict") == "binder"
    assert bind_failure_class("pod ml/p: agent on n1 did not apply the allocation: node n1: busy") == "binder"


def test_pairs_are_priced_on_the_node_topology() -> None:
    state = NodeState(dgx_like("dgx"))
    outcome = _place(state, {"gedge.io/gpu": "2", "gedge.io/rdma": "1", "cpu": "2", "memory": "1Gi"}, AWARE)
    assert isinstance(outcome, Placement)
    allocation = outcome.allocation
    pairs = allocation_pairs(state.topology, allocation)
    gpus = [d.pci_address for d in allocation.devices if d.resource == "gedge.io/gpu"]
    nics = [d.pci_address for d in allocation.devices if d.resource == "gedge.io/rdma"]
    assert [level for pair, level in pairs if pair == "gpu-gpu"] == [
        pci_distance(state.topology, gpus[0], gpus[1]).level
    ]
    assert sorted(level for pair, level in pairs if pair == "gpu-nic") == sorted(
        pci_distance(state.topology, g, nics[0]).level for g in gpus
    )
    registry = CollectorRegistry()
    metrics = VerbMetrics(registry)
    metrics.observe_bind("", allocation, state.topology)
    assert _value(registry, "gedge_extender_placements_total", level=Level(allocation.worst_level).value) == 1
    assert _value(registry, "gedge_extender_placement_cost_sum") == pytest.approx(allocation.cost)
    assert sum(
        _value(registry, "gedge_extender_placement_pairs_total", pair="gpu-nic", level=level.value)
        for level in Level
    ) == len(gpus) * len(nics)


def test_inventory_follows_the_node_state() -> None:
    topology = dgx_like("dgx", mig=MIG, timeslice_replicas=4)
    state = NodeState(topology)
    held = []
    for limits in ({"gedge.io/gpu": "1"}, {"gedge.io/mig-1g.10gb": "2"}, {"gedge.io/gpu-shared": "3"}):
        outcome = place(state, parse_pod_request(pod("p", limits=limits)), reserved=held)
        assert isinstance(outcome, Placement), outcome
        held.append(outcome.allocation)
    numa_of = {c.id: c.numa_node for c in topology.cpus}
    pinned = Allocation("u-pin", "ml", "pin", "dgx", cpus=(4, 5, 6))
    state = NodeState(topology, (*held, pinned), 3)
    registry = CollectorRegistry()
    registry.register(NodeInventoryCollector(lambda: state))

    allocated = [
        (s.labels["resource"], s.labels["device"])
        for m in registry.collect()
        if m.name == "gedge_agent_device_allocated"
        for s in m.samples
        if s.value == 1
    ]
    expected = {(d.resource, d.id) for a in held for d in a.devices if d.resource != "gedge.io/gpu-shared"}
    assert sorted(allocated) == sorted(expected)
    in_use = sum(
        s.value
        for m in registry.collect()
        if m.name == "gedge_agent_gpu_timeslice_replicas_in_use"
        for s in m.samples
    )
    assert in_use == 3
    for numa in topology.numa_nodes:
        want = sum(1 for c in pinned.cpus if numa_of[c] == numa.id)
        got = _value(registry, "gedge_agent_numa_exclusive_cpus", node="dgx", numa_node=str(numa.id))
        assert got == want
    gpu0 = next(g for g in topology.gpus if g.index == 0)
    for profile in gpu0.mig_profiles:
        labels = {"node": "dgx", "gpu": gpu0.uuid, "profile": profile.name}
        assert _value(registry, "gedge_agent_mig_profile_remaining", **labels) == profile.available


class _Applier:
    def __init__(self) -> None:
        self.held: dict[str, Allocation] = {}

    def apply(self, allocation: Allocation) -> None:
        if allocation.name == "bad":
            raise ApplyError(f"pod {allocation.pod_uid}: not running on this node")
        self.held[allocation.pod_uid] = allocation

    def release(self, pod_uid: str) -> None:
        self.held.pop(pod_uid, None)

    def applied(self) -> tuple[Allocation, ...]:
        return tuple(self.held.values())


def test_applies_and_failures_are_counted_by_kind() -> None:
    registry = CollectorRegistry()
    applier = MeteredApplier(_Applier(), ApplyMetrics(registry))
    pinned = Allocation("u1", "ml", "ok", "n1", cpus=(1, 2))
    applier.apply(pinned)
    with pytest.raises(ApplyError):
        applier.apply(Allocation("u2", "ml", "bad", "n1"))
    applier.release("u1")
    applier.release("never-applied")
    assert allocation_kinds(pinned) == ("cpuset",)
    assert _value(registry, "gedge_agent_applies_total", op="apply", kind="cpuset") == 1
    assert _value(registry, "gedge_agent_applies_total", op="apply", kind="shared-pool") == 1
    assert _value(registry, "gedge_agent_apply_failures_total", op="apply", kind="shared-pool") == 1
    assert _value(registry, "gedge_agent_apply_failures_total", op="apply", kind="cpuset") == 0
    assert _value(registry, "gedge_agent_applies_total", op="release", kind="cpuset") == 1
    assert _value(registry, "gedge_agent_applies_total", op="release", kind="shared-pool") == 0


def test_workflow_statuses_count_each_attempt_once() -> None:
    registry = CollectorRegistry()
    metrics = WorkflowMetrics(registry)
    workflow = Workflow("pipe", "ml", WorkflowSpec(tasks=()), uid="w1")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    failed = dag.Attempt(0, "pipe-a-0", dag.FAILED, t0, t0, t0 + timedelta(seconds=3))
    running = dag.Attempt(1, "pipe-a-1", dag.RUNNING, t0, t0 + timedelta(seconds=4))
    status = dag.WorkflowStatus(dag.RUNNING, {"a": dag.TaskStatus(dag.RUNNING, (failed, running))})
    metrics.observe(workflow, status)
    metrics.observe(workflow, status)
    assert _value(registry, "gedge_workflow_task_retries_total") == 1
    assert _value(registry, "gedge_workflow_step_attempts_total", phase=dag.FAILED) == 1
    assert _value(registry, "gedge_workflow_step_duration_seconds_sum", phase=dag.FAILED) == 3
    assert _value(registry, "gedge_workflow_tasks", phase=dag.RUNNING) == 1
    done = dag.Attempt(1, "pipe-a-1", dag.SUCCEEDED, t0, t0 + timedelta(seconds=4), t0 + timedelta(seconds=9))
    metrics.observe(
        workflow, dag.WorkflowStatus(dag.SUCCEEDED, {"a": dag.TaskStatus(dag.SUCCEEDED, (failed, done))})
    )
    assert _value(registry, "gedge_workflow_step_duration_seconds_sum", phase=dag.SUCCEEDED) == 5
    assert _value(registry, "gedge_workflow_tasks", phase=dag.RUNNING) == 0
    assert _value(registry, "gedge_workflow_workflows_finished_total", phase=dag.SUCCEEDED) == 1
