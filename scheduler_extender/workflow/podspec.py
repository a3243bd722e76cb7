"""One task attempt as a Pod manifest: our scheduler, its runtime composed, owned by its Workflow.

A serve task's pod template is built the same way (see `serve`)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, TypedDict

from scheduler_extender.workflow.catalog import Catalog
from scheduler_extender.workflow.composer import (
    Composition,
    CompositionError,
    RuntimeChoice,
    choose_runtime,
    compose,
)
from scheduler_extender.workflow.dag import WorkflowStatus, main_outcome, output_values, pod_name
from scheduler_extender.workflow.outputs import wrap_container
from scheduler_extender.workflow.spec import (
    API_VERSION,
    KIND,
    OUTPUT_REFERENCE,
    TaskSpec,
    Workflow,
    WorkflowSpecError,
    reference_values,
    substitute,
)

DEFAULT_SCHEDULER = "gedge-scheduler"


class BuildSettings(TypedDict):
    """What build_pod and build_serve build every object of one workflow step with."""

    catalog: Catalog | None
    status: WorkflowStatus | None
    """The workflow's status so far: earlier steps' outputs and the runtime chosen for a model task."""
    default_scheduler: str
    """schedulerName of a pod whose task names none."""
    runtime: tuple[str, ...] | None
    """The catalog runtime chosen for a model task; None for other tasks."""


LABEL_WORKFLOW = "gedge.io/workflow"
LABEL_TASK = "gedge.io/task"
LABEL_ATTEMPT = "gedge.io/attempt"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "gedge-flow"
CONTAINER_NAME = "main"
WORKSPACE_VOLUME = "gedge-workspace"


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


def runtime_choice(task: TaskSpec, catalog: Catalog | None) -> RuntimeChoice:
    """The task's runtime: as named, or picked from its model by the catalog's compatibility metadata."""
    if task.model is None:
        return RuntimeChoice(task.runtime, "")
    if catalog is None:
        raise CompositionError(
            f"task {task.name!r}.model: {task.model.describe()} given but no runtime catalog"
        )
    try:
        return choose_runtime(catalog, task.model.framework, task.model.version, task.model.format)
    except CompositionError as exc:
        raise CompositionError(f"task {task.name!r}.model: {exc}") from None


def compose_task(
    task: TaskSpec, catalog: Catalog | None, runtime: tuple[str, ...] | None = None
) -> Composition:
    """`runtime` overrides the task's own (a choice recorded in the status is kept across restarts)."""
    if runtime is None:
        runtime = runtime_choice(task, catalog).runtime
    if not runtime:
        return Composition(components=())
    if catalog is None:
        raise CompositionError(f"task {task.name}: runtime {','.join(runtime)} given but no runtime catalog")
    try:
        return compose(catalog, runtime, container_env=_own_env(task.container))
    except CompositionError as exc:
        raise CompositionError(f"task {task.name}: {exc}") from None


def check_runtimes(workflow: Workflow, catalog: Catalog | None) -> dict[str, RuntimeChoice]:
    """Every task's runtime composes, before the first pod exists (nothing half-run); the choices.

    CompositionError names the workflow, the task and its runtime or model.
    """
    choices = {}
    try:
        for task in workflow.spec.all_tasks():
            choices[task.name] = runtime_choice(task, catalog)
            compose_task(task, catalog, choices[task.name].runtime)
    except CompositionError as exc:
        raise CompositionError(f"workflow {workflow.name!r}: {exc}") from None
    return choices


def _task_values(
    workflow: Workflow, task: TaskSpec, attempt: int, status: WorkflowStatus | None
) -> dict[str, str]:
    values = reference_values(workflow.name, workflow.namespace, workflow.spec.parameters)
    values["task.name"] = task.name
    values["task.attempt"] = str(attempt)
    if status is not None:
        values["workflow.status"] = main_outcome(workflow.spec, status)[0]
        values.update(output_values(status))
    return values


def _pod_body(
    workflow: Workflow,
    task: TaskSpec,
    attempt: int,
    *,
    catalog: Catalog | None,
    status: WorkflowStatus | None,
    default_scheduler: str,
    runtime: tuple[str, ...] | None,
) -> tuple[dict[str, str], dict[str, Any]]:
    """(annotations, pod spec) shared by a step's pod and a serve task's pod template."""
    composition = compose_task(task, catalog, runtime)
    values = _task_values(workflow, task, attempt, status)
    try:
        container: dict[str, Any] = substitute(copy.deepcopy(dict(task.container)), values)
    except WorkflowSpecError as exc:
        producer = _missing_producer(exc, status)
        raise WorkflowSpecError(f"task {task.name}: {exc}{producer}") from None
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
    volumes = [copy.deepcopy(dict(v)) for v in composition.volumes]
    workspace = workflow.spec.workspace
    if task.workspace is not None and workspace is not None:
        mount: dict[str, Any] = {"name": WORKSPACE_VOLUME, "mountPath": task.workspace.mount_path}
        if task.workspace.sub_path:
            mount["subPath"] = task.workspace.sub_path
        if task.workspace.read_only:
            mount["readOnly"] = True
        container["volumeMounts"] = [*container.get("volumeMounts", []), mount]
        volumes.append(
            {"name": WORKSPACE_VOLUME, "persistentVolumeClaim": {"claimName": workspace.claim_name}}
        )
    if task.outputs:
        container = wrap_container(container, task.outputs)
    annotations = {**task.annotations, **composition.annotations}
    spec: dict[str, Any] = {
        "schedulerName": workflow.spec.scheduler_name or default_scheduler,
        "containers": [container],
    }
    if volumes:
        spec["volumes"] = volumes
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
    if workflow.spec.service_account_name:
        spec["serviceAccountName"] = workflow.spec.service_account_name
    return annotations, spec


def _missing_producer(exc: WorkflowSpecError, status: WorkflowStatus | None) -> str:
    """Why an output reference has no value: the producing task's phase."""
    match = OUTPUT_REFERENCE.match(str(exc).split("{{")[-1].rstrip("}"))
    if match is None or status is None:
        return ""
    producer = status.task(match.group(1))
    return f" (task {match.group(1)} is {producer.phase}; only a Succeeded task has outputs)"


def owner_references(workflow: Workflow) -> list[dict[str, Any]]:
    if not workflow.uid:
        return []
    return [
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": workflow.name,
            "uid": workflow.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def build_pod(
    workflow: Workflow,
    task: TaskSpec,
    attempt: int,
    *,
    catalog: Catalog | None,
    status: WorkflowStatus | None = None,
    default_scheduler: str = DEFAULT_SCHEDULER,
    runtime: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    annotations, spec = _pod_body(
        workflow,
        task,
        attempt,
        catalog=catalog,
        status=status,
        default_scheduler=default_scheduler,
        runtime=runtime,
    )
    name = pod_name(workflow.name, task.name, attempt)
    labels = {
        **task.labels,
        LABEL_WORKFLOW: workflow.name,
        LABEL_TASK: task.name,
        LABEL_ATTEMPT: str(attempt),
        LABEL_MANAGED_BY: MANAGER,
    }
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": workflow.namespace,
        "labels": labels,
        "annotations": annotations,
    }
    owners = owner_references(workflow)
    if owners:
        metadata["ownerReferences"] = owners
    spec = {"restartPolicy": "Never", **spec}
    if task.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = task.active_deadline_seconds
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
