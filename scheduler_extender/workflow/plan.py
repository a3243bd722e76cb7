"""What `gedge-flow run --dry-run` shows: the objects a workflow makes, in order, if every step succeeds.

Steps are pods; a serve task is its Deployment and Service. A step's output
parameters read as `<tasks.NAME.outputs.parameters.X>` where later steps use them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from scheduler_extender.workflow import dag
from scheduler_extender.workflow.catalog import Catalog
from scheduler_extender.workflow.outputs import encode
from scheduler_extender.workflow.podspec import DEFAULT_SCHEDULER, build_pod, check_runtimes
from scheduler_extender.workflow.serve import build_serve, endpoint
from scheduler_extender.workflow.spec import Workflow

START = datetime(2000, 1, 1, tzinfo=UTC)


def planned_pods(
    workflow: Workflow, catalog: Catalog | None, *, default_scheduler: str = DEFAULT_SCHEDULER
) -> list[dict[str, Any]]:
    """Objects in creation order; steps started together keep the order the engine starts them in."""
    choices = check_runtimes(workflow, catalog)
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
                runtime = choices[task.name].runtime if task.model is not None else None
                if task.serve is not None:
                    out.extend(
                        build_serve(
                            workflow,
                            task,
                            catalog=catalog,
                            status=status,
                            default_scheduler=default_scheduler,
                            runtime=runtime,
                        )
                    )
                else:
                    out.append(
                        build_pod(
                            workflow,
                            task,
                            action.attempt,
                            catalog=catalog,
                            status=status,
                            default_scheduler=default_scheduler,
                            runtime=runtime,
                        )
                    )
                placeholders = {
                    o.name: f"<tasks.{task.name}.outputs.parameters.{o.name}>" for o in task.outputs
                }
                pods[action.pod_name] = dag.PodObservation(
                    action.pod_name,
                    action.task,
                    action.attempt,
                    "Succeeded",
                    exit_code=0,
                    finished_at=now,
                    termination_message=encode(placeholders) if placeholders else None,
                    endpoint=endpoint(task.serve.name, workflow.namespace, task.serve.port)
                    if task.serve is not None
                    else None,
                )
        if status.final:
            break
        now += timedelta(seconds=1)
    return out
