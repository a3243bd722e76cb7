"""Workflow metrics: tasks by phase, step durations and retries, from the statuses the controller writes.

`WorkflowMetrics.observe` has the signature of `WorkflowController.run`'s
`on_update`, so the controller needs no metrics code: every status it writes
passes through here. Workflow names are not labels (they grow without bound);
figures are summed over the workflows one controller drives.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from scheduler_extender.workflow import dag
from scheduler_extender.workflow.spec import Workflow

TASK_PHASES = (dag.PENDING, dag.RUNNING, dag.SUCCEEDED, dag.FAILED, dag.ERRORED, dag.SKIPPED, dag.OMITTED)
WORKFLOW_PHASES = (dag.PENDING, dag.RUNNING, dag.SUCCEEDED, dag.FAILED, dag.ERRORED)
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 12 * 3600)


class _LiveTasks(Collector):
    def __init__(self, metrics: WorkflowMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        tasks = GaugeMetricFamily(
            "gedge_workflow_tasks", "Tasks of the unfinished workflows, by phase", labels=["phase"]
        )
        workflows = GaugeMetricFamily(
            "gedge_workflow_active_workflows", "Unfinished workflows, by phase", labels=["phase"]
        )
        task_phases, workflow_phases = self._metrics.live()
        for phase in TASK_PHASES:
            tasks.add_metric([phase], task_phases[phase])
        for phase in (dag.PENDING, dag.RUNNING):
            workflows.add_metric([phase], workflow_phases[phase])
        yield tasks
        yield workflows


class WorkflowMetrics:
    """Thread-safe: the controller command drives each workflow on a thread of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.step_seconds = Histogram(
            "gedge_workflow_step_duration_seconds",
            "Run time of one step attempt's pod, start to finish, by how it ended",
            ["phase"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.attempts = Counter(
            "gedge_workflow_step_attempts_total", "Step attempts that ended, by phase", ["phase"], registry=r
        )
        self.retries = Counter(
            "gedge_workflow_task_retries_total", "Attempts started after a task's first one", registry=r
        )
        self.finished = Counter(
            "gedge_workflow_workflows_finished_total", "Workflows that ended, by phase", ["phase"], registry=r
        )
        for phase in (dag.SUCCEEDED, dag.FAILED, dag.ERRORED):
            self.step_seconds.labels(phase)
            self.attempts.labels(phase)
            self.finished.labels(phase)
        self._lock = threading.Lock()
        self._live: dict[str, dag.WorkflowStatus] = {}
        self._seen_attempts: dict[str, set[tuple[str, int]]] = {}
        self._ended_attempts: dict[str, set[tuple[str, int]]] = {}
        self.registry.register(_LiveTasks(self))

    def observe(self, workflow: Workflow, status: dag.WorkflowStatus) -> None:
        """Take in one written status (use as the controller's `on_update`)."""
        key = f"{workflow.namespace}/{workflow.name}/{workflow.uid or ''}"
        with self._lock:
            seen = self._seen_attempts.setdefault(key, set())
            ended = self._ended_attempts.setdefault(key, set())
            for task, task_status in status.tasks.items():
                for attempt in task_status.attempts:
                    ident = (task, attempt.number)
                    if ident not in seen:
                        seen.add(ident)
                        if attempt.number > 0:
                            self.retries.inc()
                    if attempt.phase in (dag.SUCCEEDED, dag.FAILED, dag.ERRORED) and ident not in ended:
                        ended.add(ident)
                        self.attempts.labels(attempt.phase).inc()
                        if attempt.started_at is not None and attempt.finished_at is not None:
                            seconds = (attempt.finished_at - attempt.started_at).total_seconds()
                            self.step_seconds.labels(attempt.phase).observe(max(0.0, seconds))
            if status.final:
                self._live.pop(key, None)
                self._seen_attempts.pop(key, None)
                self._ended_attempts.pop(key, None)
                self.finished.labels(status.phase).inc()
            else:
                self._live[key] = status

    def live(self) -> tuple[Tally[str], Tally[str]]:
        """(tasks by phase, workflows by phase) over the unfinished workflows."""
        with self._lock:
            statuses = list(self._live.values())
        tasks: Tally[str] = Tally()
        workflows: Tally[str] = Tally()
        for status in statuses:
            workflows[status.phase] += 1
            for task_status in status.tasks.values():
                tasks[task_status.phase] += 1
        return tasks, workflows
