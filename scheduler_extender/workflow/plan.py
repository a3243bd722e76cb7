"""What `gedge-flow run --dry-run` shows: the pods a workflow makes, in order, if every step succeeds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from scheduler_extender.workflow import dag
from scheduler_extender.workflow.catalog import Catalog
from scheduler_extender.workflow.podspec import DEFAULT_SCHEDULER, build_pod, check_runtimes
from scheduler_extender.workflow.spec import Workflow

START = datetime(2000, 1, 1, tzinfo=UTC)


def planned_pods(
    workflow: Workflow, catalog: Catalog | None, *, default_scheduler: str = DEFAULT_SCHEDULER
) -> list[dict[str, Any]]:
    """Pods in creation order; steps started together keep the order the engine starts them in."""
    check_runtimes(workflow, catalog)
    status = dag.WorkflowStatus()
    pods: dict[str, dag.PodObservation] = {}
    out: list[dict[str, Any]] = []
    now = START
    for _ in range(4 * len(workflow.spec.all_tasks()) + 4):
        status = dag.observe(workflow.spec, status, pods, now)
        result = dag.step(workflow.spec, status, now, workflow=workflow.name, namespace=workflow.namespace)
        status = result.status
        for action in result.actions:
            if isinstance(action, dag.CreatePod):
                task = workflow.spec.task(action.task)
                out.append(
                    build_pod(
                        workflow,
                        task,
                        action.attempt,
                        catalog=catalog,
                        status=status,
                        default_scheduler=default_scheduler,
                    )
                )
                pods[action.pod_name] = dag.PodObservation(
                    action.pod_name, action.task, action.attempt, "Succeeded", exit_code=0, finished_at=now
                )
        if status.final:
            break
        now += timedelta(seconds=1)
    return out
