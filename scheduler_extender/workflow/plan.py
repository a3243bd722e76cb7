"""What `gedge-flow run --dry-run` shows: the objects a workflow makes, in order, if every step succeeds.

Steps are pods; a serve task is its Deployment and Service. A step's output
parameters read as `<tasks.NAME.outputs.parameters.X>` where later steps use them,
and a `when` that depends on outputs is taken as true (the plan shows the path
on which every step runs).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from scheduler_extender.workflow import dag, expr
from scheduler_extender.workflow.catalog import Catalog
from scheduler_extender.workflow.outputs import encode
from scheduler_extender.workflow.podspec import DEFAULT_SCHEDULER, BuildSettings, build_pod, check_runtimes
from scheduler_extender.workflow.serve import build_serve, endpoint
from scheduler_extender.workflow.spec import OUTPUT_REFERENCE, TaskSpec, Workflow

START = datetime(2000, 1, 1, tzinfo=UTC)


def planned_pods(
    workflow: Workflow, catalog: Catalog | None, *, default_scheduler: str = DEFAULT_SCHEDULER
) -> list[dict[str, Any]]:
    """Objects in creation order; steps started together keep the order the engine starts them in."""
    choices = check_runtimes(workflow, catalog)
    workflow = _assume_output_conditions(workflow)
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
                settings = BuildSettings(
                    catalog=catalog, status=status, default_scheduler=default_scheduler, runtime=runtime
                )
                if task.serve is not None:
                    out.extend(build_serve(workflow, task, **settings))
                else:
                    out.append(build_pod(workflow, task, action.attempt, **settings))
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


def _assume_output_conditions(workflow: Workflow) -> Workflow:
    def unconditional(task: TaskSpec) -> TaskSpec:
        if task.when is None or not any(OUTPUT_REFERENCE.match(r) for r in expr.when_references(task.when)):
            return task
        return dataclasses.replace(task, when=None, when_text=None)

    spec = workflow.spec
    changed = dataclasses.replace(
        spec,
        tasks=tuple(unconditional(t) for t in spec.tasks),
        on_exit=unconditional(spec.on_exit) if spec.on_exit is not None else None,
    )
    return dataclasses.replace(workflow, spec=changed)
