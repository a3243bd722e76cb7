"""One task attempt as a Pod manifest: our scheduler, its runtime composed, owned by its Workflow."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from scheduler_extender.workflow.catalog import Catalog
from scheduler_extender.workflow.composer import Composition, CompositionError, compose
from scheduler_extender.workflow.dag import WorkflowStatus, main_outcome, pod_name
from scheduler_extender.workflow.spec import (
    API_VERSION,
    KIND,
    TaskSpec,
    Workflow,
    WorkflowSpecError,
    reference_values,
    substitute,
)

DEFAULT_SCHEDULER = "gedge-scheduler"
LABEL_WORKFLOW = "gedge.io/workflow"
LABEL_TASK = "gedge.io/task"
LABEL_ATTEMPT = "gedge.io/attempt"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "gedge-flow"
CONTAINER_NAME = "main"


def workflow_selector(name: str) -> str:
    return f"{LABEL_WORKFLOW}={name}"


def _own_env(container: Mapping[str, Any]) -> dict[str, str]:
    return {
        e["name"]: e["value"]
        for e in container.get("env") or []
        if isinstance(e, Mapping)
        and e.get("name") in ("PATH", "LD_LIBRARY_PATH")
        and isinstance(e.get("value"), str)
    }


def compose_task(task: TaskSpec, catalog: Catalog | None) -> Composition:
    if not task.runtime:
        return Composition(components=())
    if catalog is None:
        raise CompositionError(
            f"task {task.name}: runtime {','.join(task.runtime)} given but no runtime catalog"
        )
    try:
        return compose(catalog, task.runtime, container_env=_own_env(task.container))
    except CompositionError as exc:
        raise CompositionError(f"task {task.name}: {exc}") from None


def check_runtimes(workflow: Workflow, catalog: Catalog | None) -> None:
    """Every task's runtime composes, before the first pod exists (nothing half-run)."""
    for task in workflow.spec.all_tasks():
        compose_task(task, catalog)


def build_pod(
    workflow: Workflow,
    task: TaskSpec,
    attempt: int,
    *,
    catalog: Catalog | None,
    status: WorkflowStatus | None = None,
    default_scheduler: str = DEFAULT_SCHEDULER,
) -> dict[str, Any]:
    composition = compose_task(task, catalog)
    values = reference_values(workflow.name, workflow.namespace, workflow.spec.parameters)
    values["task.name"] = task.name
    values["task.attempt"] = str(attempt)
    if status is not None:
        values["workflow.status"] = main_outcome(workflow.spec, status)[0]
    try:
        container: dict[str, Any] = substitute(copy.deepcopy(dict(task.container)), values)
    except WorkflowSpecError as exc:
        raise WorkflowSpecError(f"task {task.name}: {exc}") from None
    container.setdefault("name", CONTAINER_NAME)
    resources = container.get("resources")
    if isinstance(resources, Mapping):
        # quantities as the API writes them: 1 -> "1" (strict clients refuse bare numbers)
        container["resources"] = {
            kind: {name: str(amount) for name, amount in amounts.items()}
            if isinstance(amounts, Mapping)
            else amounts
            for kind, amounts in resources.items()
        }
    if composition.components:
        # the step's own PATH / LD_LIBRARY_PATH already sit at the end of the composed ones;
        # any other variable the step sets itself wins over the catalog's
        own = [e for e in container.get("env") or [] if e.get("name") not in ("PATH", "LD_LIBRARY_PATH")]
        own_names = {e.get("name") for e in own}
        container["env"] = [dict(e) for e in composition.env if e["name"] not in own_names] + own
        container["volumeMounts"] = [
            *container.get("volumeMounts", []),
            *map(dict, composition.volume_mounts),
        ]
    name = pod_name(workflow.name, task.name, attempt)
    labels = {
        **task.labels,
        LABEL_WORKFLOW: workflow.name,
        LABEL_TASK: task.name,
        LABEL_ATTEMPT: str(attempt),
        LABEL_MANAGED_BY: MANAGER,
    }
    annotations = {**task.annotations, **composition.annotations}
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": workflow.namespace,
        "labels": labels,
        "annotations": annotations,
    }
    if workflow.uid:
        metadata["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": workflow.name,
                "uid": workflow.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "schedulerName": workflow.spec.scheduler_name or default_scheduler,
        "containers": [container],
    }
    if composition.volumes:
        spec["volumes"] = [copy.deepcopy(dict(v)) for v in composition.volumes]
    if task.node_selector:
        spec["nodeSelector"] = dict(task.node_selector)
    if task.tolerations:
        spec["tolerations"] = [dict(t) for t in task.tolerations]
    if composition.node_selector_requirements:
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [dict(r) for r in composition.node_selector_requirements]}
                    ]
                }
            }
        }
    if task.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = task.active_deadline_seconds
    if workflow.spec.service_account_name:
        spec["serviceAccountName"] = workflow.spec.service_account_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
