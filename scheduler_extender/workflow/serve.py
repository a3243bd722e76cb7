"""Serve tasks kept warm: a Deployment + Service per task, and the workflow's workspace claim.

The Deployment's pods are built like any step's (our scheduler, acceleration
annotations, composed runtime, workspace), with `restartPolicy: Always`, the
serve port and a readiness probe (a TCP check on the port unless the task
gives its own). The task counts as Succeeded once every replica of the
current template is Ready; the objects stay after the workflow ends.

Ownership: the Deployment and Service carry the Workflow that last deployed
them as owner, so deleting that Workflow deletes them (Kubernetes' garbage
collector; `gedge-flow delete` does the same where none runs). A later run
(another Workflow whose serve task has the same `serve.name`) takes them over:
when its pod template differs (a new model, new args) the Deployment is
replaced and rolls; when it is the same, nothing restarts. The hash of the
template is kept in the annotation `gedge.io/serve-hash`.

TTL: when the workflow ends, a serve with `ttl` gets the annotation
`gedge.io/expires-at`; `gedge-flow controller` deletes expired serves.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from scheduler_extender.workflow import dag
from scheduler_extender.workflow.catalog import Catalog
from scheduler_extender.workflow.podspec import (
    LABEL_MANAGED_BY,
    LABEL_TASK,
    LABEL_WORKFLOW,
    MANAGER,
    _pod_body,
    owner_references,
)
from scheduler_extender.workflow.spec import TaskSpec, Workflow

LABEL_SERVE = "gedge.io/serve"
ANNOTATION_HASH = "gedge.io/serve-hash"
ANNOTATION_EXPIRES = "gedge.io/expires-at"
PORT_NAME = "serve"
SERVE_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGER},{LABEL_SERVE}"


def _labels(workflow: Workflow, task: TaskSpec) -> dict[str, str]:
    assert task.serve is not None
    return {
        **task.labels,
        LABEL_SERVE: task.serve.name,
        LABEL_WORKFLOW: workflow.name,
        LABEL_TASK: task.name,
        LABEL_MANAGED_BY: MANAGER,
    }


def template_hash(template: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def build_serve(
    workflow: Workflow,
    task: TaskSpec,
    *,
    catalog: Catalog | None,
    status: dag.WorkflowStatus | None,
    default_scheduler: str,
    runtime: tuple[str, ...] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Deployment, Service) for a serve task, as the API takes them."""
    serve = task.serve
    assert serve is not None, f"task {task.name} is not a serve task"
    annotations, spec = _pod_body(
        workflow,
        task,
        0,
        catalog=catalog,
        status=status,
        default_scheduler=default_scheduler,
        runtime=runtime,
    )
    container = spec["containers"][0]
    ports = [p for p in container.get("ports") or [] if p.get("containerPort") != serve.port]
    container["ports"] = [{"name": PORT_NAME, "containerPort": serve.port, "protocol": "TCP"}, *ports]
    container["readinessProbe"] = (
        copy.deepcopy(dict(serve.readiness_probe))
        if serve.readiness_probe
        else {
            "tcpSocket": {"port": serve.port},
            "periodSeconds": 5,
        }
    )
    spec["restartPolicy"] = "Always"
    template_labels = {**task.labels, LABEL_SERVE: serve.name, LABEL_MANAGED_BY: MANAGER}
    template = {"metadata": {"labels": template_labels, "annotations": annotations}, "spec": spec}
    digest = template_hash({"template": template, "replicas": serve.replicas})
    labels = _labels(workflow, task)
    metadata: dict[str, Any] = {
        "name": serve.name,
        "namespace": workflow.namespace,
        "labels": labels,
        "annotations": {ANNOTATION_HASH: digest},
    }
    owners = owner_references(workflow)
    if owners:
        metadata["ownerReferences"] = owners
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": serve.replicas,
            "selector": {"matchLabels": {LABEL_SERVE: serve.name}},
            "progressDeadlineSeconds": serve.progress_deadline_seconds,
            "template": template,
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": copy.deepcopy(metadata),
        "spec": {
            "selector": {LABEL_SERVE: serve.name},
            "ports": [{"name": PORT_NAME, "port": serve.port, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }
    return deployment, service


def endpoint(name: str, namespace: str, port: int) -> str:
    """The in-cluster address of a serve task's Service."""
    return f"{name}.{namespace}.svc:{port}"


def serve_observation(task: TaskSpec, deployment: Mapping[str, Any], namespace: str) -> dag.PodObservation:
    """A serve task's Deployment as the engine reads an attempt: Succeeded once every replica is Ready."""
    assert task.serve is not None
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    wanted = int(spec.get("replicas", task.serve.replicas) or 0)
    current = (status.get("observedGeneration") or 0) >= (meta.get("generation") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    address = endpoint(task.serve.name, namespace, task.serve.port)
    created = _time(meta.get("creationTimestamp"))
    pending = dag.PodObservation(
        name=task.serve.name, task=task.name, attempt=0, phase="Pending", started_at=created, endpoint=address
    )
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "Progressing"
            and condition.get("status") == "False"
            and condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            return replace(
                pending,
                phase="Failed",
                reason="ProgressDeadlineExceeded",
                message=f"{ready}/{wanted} replicas ready after {task.serve.progress_deadline_seconds}s: "
                + (condition.get("message") or ""),
            )
    if current and updated >= wanted and available >= wanted and ready >= wanted:
        return replace(pending, phase="Succeeded")
    if ready or updated:
        return replace(pending, phase="Running")
    note = "" if current else " (rollout not yet observed)"
    return replace(pending, message=f"{ready}/{wanted} replicas ready{note}")


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def workspace_claim(workflow: Workflow) -> dict[str, Any] | None:
    """The PersistentVolumeClaim the workflow creates for its workspace (None: it names an existing one)."""
    workspace = workflow.spec.workspace
    if workspace is None or not workspace.create:
        return None
    metadata: dict[str, Any] = {
        "name": workspace.claim_name,
        "namespace": workflow.namespace,
        "labels": {LABEL_WORKFLOW: workflow.name, LABEL_MANAGED_BY: MANAGER},
    }
    owners = owner_references(workflow)
    if owners:
        metadata["ownerReferences"] = owners
    spec: dict[str, Any] = {
        "accessModes": list(workspace.access_modes),
        "resources": {"requests": {"storage": workspace.size}},
    }
    if workspace.storage_class_name is not None:
        spec["storageClassName"] = workspace.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": spec}


def owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return uid is not None and any(ref.get("uid") == uid for ref in refs)


def expired(obj: Mapping[str, Any], now: datetime) -> bool:
    at = _time(((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_EXPIRES))
    return at is not None and at <= now
