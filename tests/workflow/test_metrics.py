"""Task phase gauges over statuses the engine itself produced: every phase a task can be in is counted."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from scheduler_extender.workflow import dag
from scheduler_extender.workflow.metrics import TASK_PHASES, WorkflowMetrics
from scheduler_extender.workflow.spec import Workflow
from tests.workflow.sim import workflow

FAILURE_BRANCH = """
metadata: {name: wf}
spec:
  tasks:
  - {name: train, container: {image: x}}
  - {name: validate, container: {image: x}, dependencies: [train]}
  - {name: report-failure, container: {image: x}, depends: "train.Failed || train.Errored"}
  - {name: serve, container: {image: x}, depends: "validate"}
"""


def tasks_in(registry: CollectorRegistry, phase: str) -> float | None:
    return registry.get_sample_value("gedge_workflow_tasks", {"phase": phase})


def test_every_task_phase_has_a_gauge():
    registry = CollectorRegistry()
    WorkflowMetrics(registry)
    assert {dag.OMITTED, dag.SKIPPED}.issubset(TASK_PHASES)
    assert all(tasks_in(registry, phase) == 0 for phase in TASK_PHASES)


def test_omitted_tasks_of_a_running_workflow_are_counted():
    sim = workflow(FAILURE_BRANCH, outcomes={"train": ["Failed"], "report-failure": ["hang"]})
    with pytest.raises(AssertionError, match="stuck"):
        sim.run()  # report-failure runs on; the happy path is already omitted
    registry = CollectorRegistry()
    metrics = WorkflowMetrics(registry)
    owner = Workflow("wf", "ml", sim.spec, uid="w1")
    metrics.observe(owner, sim.status)
    assert sim.status.phase == dag.RUNNING
    assert tasks_in(registry, dag.OMITTED) == 2
    assert tasks_in(registry, dag.FAILED) == 1
    assert tasks_in(registry, dag.RUNNING) == 1

    sim.pods["wf-report-failure-0"]["result"] = "Succeeded"
    assert sim.run().final
    metrics.observe(owner, sim.status)
    assert tasks_in(registry, dag.OMITTED) == 0
    assert (
        registry.get_sample_value("gedge_workflow_workflows_finished_total", {"phase": sim.status.phase}) == 1
    )
