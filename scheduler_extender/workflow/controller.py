"""Drives one Workflow to its end: pods from the engine's decisions, pod phases back through a watch.

Every pass: fold the pods seen into the status (`dag.observe`), decide
(`dag.step`), create or delete pods, write the status subresource. Pods are
named workflow-task-attempt, so after a restart the controller finds the pods
it made (adopts them) instead of making new ones, and a task the status shows
finished is never started again. The pod cache comes from one list followed by
a watch from the list's resourceVersion, relisted when the watch expires.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from scheduler_extender.workflow import dag
from scheduler_extender.workflow.catalog import Catalog
from scheduler_extender.workflow.composer import CompositionError
from scheduler_extender.workflow.kube import AlreadyExists, ApiError, NotFound, WatchExpired, WorkflowApi
from scheduler_extender.workflow.podspec import (
    CONTAINER_NAME,
    DEFAULT_SCHEDULER,
    LABEL_ATTEMPT,
    LABEL_TASK,
    BuildSettings,
    build_pod,
    check_runtimes,
    owner_references,
    runtime_choice,
    workflow_selector,
)
from scheduler_extender.workflow.serve import (
    ANNOTATION_EXPIRES,
    ANNOTATION_HASH,
    LABEL_SERVE,
    SERVE_SELECTOR,
    build_serve,
    expired,
    owned_by,
    serve_observation,
    workspace_claim,
)
from scheduler_extender.workflow.spec import Workflow, WorkflowSpecError, parse_workflow
from scheduler_extender.workflow.status import format_time, parse_time, status_from_dict, status_to_dict

log = structlog.get_logger("gedge.workflow")


@dataclass(frozen=True)
class ControllerConfig:
    scheduler_name: str = DEFAULT_SCHEDULER
    watch_timeout_seconds: int = 30
    max_wait_seconds: float = 30.0
    """Decide again at least this often even without events (a missed event costs no more than this)."""
    serve_poll_seconds: float = 1.0
    """How often a serve task's Deployment is read while it is not Ready yet."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def pod_observation(pod: Mapping[str, Any]) -> dag.PodObservation | None:
    """A pod (API JSON) as the engine reads it; None for a pod without our task/attempt labels."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    task = labels.get(LABEL_TASK)
    attempt = labels.get(LABEL_ATTEMPT)
    if not task or attempt is None or not str(attempt).isdigit():
        return None
    status = pod.get("status") or {}
    exit_code = None
    finished_at = None
    termination: str | None = None
    reason = status.get("reason")
    message = status.get("message")
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if terminated:
            exit_code = terminated.get("exitCode")
            finished_at = parse_time(terminated.get("finishedAt"), "finishedAt")
            if container.get("name") == CONTAINER_NAME or termination is None:
                termination = terminated.get("message")
            if status.get("phase") == "Failed" and not reason:
                reason = terminated.get("reason")
                message = message or terminated.get("message")
        waiting = (container.get("state") or {}).get("waiting")
        if waiting and not message:
            message = "; ".join(p for p in (waiting.get("reason"), waiting.get("message")) if p)
    if status.get("phase") == "Pending" and not message:
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                message = condition.get("message") or condition.get("reason")
    return dag.PodObservation(
        name=meta.get("name", ""),
        task=task,
        attempt=int(attempt),
        phase=status.get("phase") or "Pending",
        reason=reason,
        message=message,
        exit_code=exit_code,
        started_at=parse_time(status.get("startTime"), "startTime"),
        finished_at=finished_at,
        node=(pod.get("spec") or {}).get("nodeName"),
        termination_message=termination,
    )


def _owned_by(pod: Mapping[str, Any], uid: str | None) -> bool:
    if uid is None:
        return True
    refs = (pod.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


@dataclass
class _PodWatcher:
    """Feeds pod events (and full relists after a 410) into the controller's queue until `stop_event`;
    `resource_version` follows the events seen."""

    api: WorkflowApi
    namespace: str
    selector: str
    resource_version: str
    events: queue.Queue[tuple[str, Any]]
    stop_event: threading.Event
    timeout: int

    def start(self) -> None:
        """Run in a daemon thread named after the selector."""
        threading.Thread(target=self.run, name=f"pod-watch-{self.selector}", daemon=True).start()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                for kind, pod in self.api.watch_pods(
                    self.namespace, self.selector, self.resource_version, self.timeout
                ):
                    self.resource_version = (pod.get("metadata") or {}).get(
                        "resourceVersion", self.resource_version
                    )
                    self.events.put(("event", (kind, pod)))
                    if self.stop_event.is_set():
                        return
            except WatchExpired:
                self.relist()
            except Exception as exc:
                log.warning("pod watch failed, listing again", error=str(exc))
                self.events.put(("error", exc))
                if self.stop_event.wait(1.0):
                    return
                self.relist()

    def relist(self) -> None:
        try:
            pods, self.resource_version = self.api.list_pods(self.namespace, self.selector)
        except Exception as exc:
            log.warning("pod list failed", error=str(exc))
            self.stop_event.wait(1.0)
            return
        self.events.put(("list", pods))


class WorkflowController:
    def __init__(
        self,
        api: WorkflowApi,
        *,
        catalog: Catalog | None,
        config: ControllerConfig | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.api = api
        self.catalog = catalog
        self.config = config or ControllerConfig()
        self.clock = clock

    def run(
        self,
        namespace: str,
        name: str,
        *,
        on_update: Callable[[Workflow, dag.WorkflowStatus], None] | None = None,
        stop: threading.Event | None = None,
    ) -> dag.WorkflowStatus:
        """Until the workflow ends (or is deleted, or `stop` is set); returns its last status."""
        stop = stop or threading.Event()
        try:
            workflow = parse_workflow(self.api.get_workflow(namespace, name))
        except WorkflowSpecError as exc:
            return self._refuse(namespace, name, f"invalid workflow: {exc}")
        status = status_from_dict(workflow.raw_status)
        if status.final:
            return status
        try:
            status = self._record_runtimes(workflow, status)
        except CompositionError as exc:
            return self._refuse(namespace, name, str(exc))
        try:
            self._ensure_workspace(workflow)
        except ApiError as exc:
            return self._refuse(namespace, name, f"workspace claim: {exc.message}")
        selector = workflow_selector(workflow.name)
        listed, resource_version = self.api.list_pods(namespace, selector)
        pods = {p["metadata"]["name"]: p for p in listed if _owned_by(p, workflow.uid)}
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        watch_stop = threading.Event()
        watcher = _PodWatcher(
            self.api,
            namespace,
            selector,
            resource_version,
            events,
            watch_stop,
            self.config.watch_timeout_seconds,
        )
        watcher.start()
        written = status_to_dict(status) if workflow.raw_status else {}
        serves_seen: dict[str, dag.PodObservation] = {}
        try:
            while not stop.is_set():
                now = self.clock()
                observations = {n: o for n, p in pods.items() if (o := pod_observation(p)) is not None}
                observations.update(self._serve_observations(workflow, status, serves_seen))
                status = dag.observe(workflow.spec, status, observations, now)
                result = dag.step(workflow.spec, status, now, workflow=workflow.name, namespace=namespace)
                status = result.status
                for action in result.actions:
                    status = self._apply(workflow, status, action, pods, now)
                if status.final:
                    # before the final status: a controller stopped in between marks them again
                    self._finish_serves(workflow, status)
                body = status_to_dict(status)
                if body != written:
                    try:
                        self.api.patch_workflow_status(namespace, name, body)
                    except NotFound:
                        log.info("workflow deleted while running", workflow=f"{namespace}/{name}")
                        return dataclasses.replace(status, message="workflow deleted")
                    written = body
                    log.info("workflow status", workflow=f"{namespace}/{name}", phase=status.phase)
                    if on_update is not None:
                        on_update(workflow, status)
                if status.final:
                    return status
                if result.actions:
                    continue
                wait = self.config.max_wait_seconds
                if self._live_serves(workflow, status):
                    wait = min(wait, self.config.serve_poll_seconds)
                if result.wake_at is not None:
                    wait = max(0.0, min(wait, (result.wake_at - self.clock()).total_seconds()))
                self._wait_for_events(events, pods, wait, workflow.uid, stop)
            return status
        finally:
            watch_stop.set()

    def _wait_for_events(
        self,
        events: queue.Queue[tuple[str, Any]],
        pods: dict[str, dict[str, Any]],
        wait: float,
        uid: str | None,
        stop: threading.Event,
    ) -> None:
        """Block until an event arrives or `wait` passes, then take in everything queued."""
        deadline = time.monotonic() + wait
        while True:
            try:
                item = events.get(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
                break
            except queue.Empty:
                if stop.is_set() or time.monotonic() >= deadline:
                    return
        while True:
            self._take(item, pods, uid)
            try:
                item = events.get_nowait()
            except queue.Empty:
                return

    @staticmethod
    def _take(item: tuple[str, Any], pods: dict[str, dict[str, Any]], uid: str | None) -> None:
        kind, payload = item
        if kind == "list":
            pods.clear()
            pods.update({p["metadata"]["name"]: p for p in payload if _owned_by(p, uid)})
        elif kind == "event":
            event, pod = payload
            pod_name = (pod.get("metadata") or {}).get("name")
            if not pod_name or not _owned_by(pod, uid):
                return
            if event == "DELETED":
                pods.pop(pod_name, None)
            else:
                pods[pod_name] = pod

    def _apply(
        self,
        workflow: Workflow,
        status: dag.WorkflowStatus,
        action: dag.Action,
        pods: dict[str, dict[str, Any]],
        now: datetime,
    ) -> dag.WorkflowStatus:
        namespace = workflow.namespace
        task = workflow.spec.task(action.task)
        if task.serve is not None:
            return self._apply_serve(workflow, status, action, now)
        if isinstance(action, dag.DeletePod):
            log.info("deleting pod", pod=action.pod_name, reason=action.reason)
            try:
                self.api.delete_pod(namespace, action.pod_name)
            except ApiError as exc:
                log.warning("pod delete failed", pod=action.pod_name, error=str(exc))
            return status
        try:
            body = build_pod(workflow, task, action.attempt, **self._build_settings(status, task.name))
        except (CompositionError, WorkflowSpecError) as exc:
            return dag.record_start_failure(status, action.task, action.attempt, str(exc), now)
        try:
            pods[action.pod_name] = self.api.create_pod(namespace, body)
            log.info("created pod", pod=action.pod_name, task=action.task, attempt=action.attempt)
        except AlreadyExists:
            existing = self.api.get_pod(namespace, action.pod_name)
            if not _owned_by(existing, workflow.uid):
                return dag.record_start_failure(
                    status,
                    action.task,
                    action.attempt,
                    f"pod name {action.pod_name} is taken by another owner",
                    now,
                )
            log.info("adopted pod", pod=action.pod_name)
            pods[action.pod_name] = existing
        except ApiError as exc:
            return dag.record_start_failure(
                status, action.task, action.attempt, f"pod {action.pod_name} refused: {exc.message}", now
            )
        return status

    def _record_runtimes(self, workflow: Workflow, status: dag.WorkflowStatus) -> dag.WorkflowStatus:
        """Each task's runtime (named, or chosen from its model) into the status, once: a restarted
        controller keeps the recorded stack even if the catalog changed meanwhile."""
        pending = [t for t in workflow.spec.all_tasks() if not status.task(t.name).runtime]
        if not pending:
            return status
        fresh = not any(t.attempts for t in status.tasks.values())
        choices = check_runtimes(workflow, self.catalog) if fresh else {}
        tasks = dict(status.tasks)
        for task in pending:
            choice = choices.get(task.name)
            if choice is None:
                # a workflow already under way: a task that cannot compose now fails when it starts
                try:
                    choice = runtime_choice(task, self.catalog)
                except CompositionError:
                    continue
            if choice.runtime:
                tasks[task.name] = dataclasses.replace(
                    status.task(task.name), runtime=",".join(choice.runtime), runtime_reason=choice.reason
                )
        return dataclasses.replace(status, tasks=tasks)

    def _ensure_workspace(self, workflow: Workflow) -> None:
        claim = workspace_claim(workflow)
        if claim is None:
            return
        try:
            self.api.create_claim(workflow.namespace, claim)
            log.info("created workspace claim", claim=claim["metadata"]["name"], workflow=workflow.name)
        except AlreadyExists:
            existing = self.api.get_claim(workflow.namespace, claim["metadata"]["name"])
            if workflow.uid and not owned_by(existing, workflow.uid):
                raise ApiError(
                    409, f"claim {claim['metadata']['name']} exists and belongs to something else"
                ) from None

    @staticmethod
    def _live_serves(workflow: Workflow, status: dag.WorkflowStatus) -> list[Any]:
        out = []
        for task in workflow.spec.tasks:
            current = status.task(task.name)
            live = current.attempts and current.attempts[-1].phase in dag.ATTEMPT_LIVE
            if task.serve is not None and not current.final and live:
                out.append(task)
        return out

    def _serve_observations(
        self, workflow: Workflow, status: dag.WorkflowStatus, seen: dict[str, dag.PodObservation]
    ) -> dict[str, dag.PodObservation]:
        """Each live serve task's Deployment, read now (serve tasks are few; no watch needed).

        A Deployment that is gone (or another run's now) is left out: the engine ends that
        attempt. One that cannot be read this time keeps what was last seen of it.
        """
        out = {}
        for task in self._live_serves(workflow, status):
            name = task.serve.name
            try:
                deployment = self.api.get_deployment(workflow.namespace, name)
            except NotFound:
                continue
            except ApiError as exc:
                log.warning("serve unreadable", serve=name, error=exc.message)
                out[name] = seen.get(name) or dag.PodObservation(
                    name, task.name, 0, "Pending", message=f"Deployment unreadable: {exc.message}"
                )
                continue
            if owned_by(deployment, workflow.uid) or workflow.uid is None:
                out[name] = seen[name] = serve_observation(task, deployment, workflow.namespace)
        return out

    def _apply_serve(
        self, workflow: Workflow, status: dag.WorkflowStatus, action: dag.Action, now: datetime
    ) -> dag.WorkflowStatus:
        namespace = workflow.namespace
        task = workflow.spec.task(action.task)
        assert task.serve is not None
        if isinstance(action, dag.DeletePod):
            log.info("deleting serve", serve=task.serve.name, reason=action.reason)
            for delete in (self.api.delete_deployment, self.api.delete_service):
                try:
                    delete(namespace, task.serve.name)
                except ApiError as exc:
                    log.warning("serve delete failed", serve=task.serve.name, error=str(exc))
            return status
        try:
            deployment, service = build_serve(workflow, task, **self._build_settings(status, task.name))
        except (CompositionError, WorkflowSpecError) as exc:
            return dag.record_start_failure(status, action.task, action.attempt, str(exc), now)
        try:
            self._put(workflow, "Deployment", deployment)
            self._put(workflow, "Service", service)
        except ApiError as exc:
            return dag.record_start_failure(
                status, action.task, action.attempt, f"serve {task.serve.name} refused: {exc.message}", now
            )
        return status

    def _build_settings(self, status: dag.WorkflowStatus, task: str) -> BuildSettings:
        """This controller's catalog and scheduler, with the runtime `status` records for `task`."""
        return BuildSettings(
            catalog=self.catalog,
            status=status,
            default_scheduler=self.config.scheduler_name,
            runtime=_recorded_runtime(status, task),
        )

    def _put(self, workflow: Workflow, kind: str, body: dict[str, Any]) -> None:
        """Create, or take over and update an earlier run's object of the same serve name."""
        namespace = workflow.namespace
        name = body["metadata"]["name"]
        create, get, replace = {
            "Deployment": (self.api.create_deployment, self.api.get_deployment, self.api.replace_deployment),
            "Service": (self.api.create_service, self.api.get_service, self.api.replace_service),
        }[kind]
        try:
            create(namespace, body)
            log.info("created serve object", kind=kind, name=name, workflow=workflow.name)
            return
        except AlreadyExists:
            existing = get(namespace, name)
        meta = existing.get("metadata") or {}
        if (meta.get("labels") or {}).get(LABEL_SERVE) != name:
            raise ApiError(409, f"{kind} {name} exists and is not a gedge-flow serve")
        annotations = meta.get("annotations") or {}
        wanted = (body["metadata"].get("annotations") or {}).get(ANNOTATION_HASH)
        same = annotations.get(ANNOTATION_HASH) == wanted
        if owned_by(existing, workflow.uid) and same and ANNOTATION_EXPIRES not in annotations:
            return
        if same:
            # same model and template: keep it warm (no rollout), only take it over
            body = {**existing, "metadata": {**meta, "labels": body["metadata"]["labels"]}}
            body["metadata"]["ownerReferences"] = owner_references(workflow)
            body["metadata"]["annotations"] = {
                k: v for k, v in annotations.items() if k != ANNOTATION_EXPIRES
            }
            body.pop("status", None)
        else:
            body = {**body, "metadata": {**body["metadata"], "resourceVersion": meta.get("resourceVersion")}}
            if kind == "Service":
                spec = dict(body["spec"])
                for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                    if key in (existing.get("spec") or {}):
                        spec[key] = existing["spec"][key]
                body["spec"] = spec
        replace(namespace, name, body)
        log.info("took over serve object", kind=kind, name=name, workflow=workflow.name)

    def _finish_serves(self, workflow: Workflow, status: dag.WorkflowStatus) -> None:
        """Serves stay after the workflow; one with a ttl gets its expiry time."""
        finished = status.finished_at or self.clock()
        for task in workflow.spec.tasks:
            if task.serve is None or task.serve.ttl_seconds is None or not status.task(task.name).attempts:
                continue
            expires = format_time(finished + timedelta(seconds=task.serve.ttl_seconds))
            for kind in ("Deployment", "Service"):
                try:
                    self.api.annotate(
                        kind, workflow.namespace, task.serve.name, {ANNOTATION_EXPIRES: expires}
                    )
                except ApiError as exc:
                    log.warning("serve expiry not recorded", serve=task.serve.name, error=str(exc))

    def _refuse(self, namespace: str, name: str, message: str) -> dag.WorkflowStatus:
        now = self.clock()
        status = dag.WorkflowStatus(phase=dag.FAILED, started_at=now, finished_at=now, message=message)
        log.warning("workflow refused", workflow=f"{namespace}/{name}", reason=message)
        with contextlib.suppress(NotFound):
            self.api.patch_workflow_status(namespace, name, status_to_dict(status))
        return status


def _recorded_runtime(status: dag.WorkflowStatus, task: str) -> tuple[str, ...] | None:
    recorded = status.task(task).runtime
    return tuple(recorded.split(",")) if recorded else None


def sweep_expired_serves(api: WorkflowApi, namespace: str, now: datetime) -> list[str]:
    """Delete the serves whose ttl ran out (Deployment and Service); their names."""
    gone = []
    for deployment in api.list_deployments(namespace, SERVE_SELECTOR):
        if not expired(deployment, now):
            continue
        name = deployment["metadata"]["name"]
        api.delete_deployment(namespace, name)
        api.delete_service(namespace, name)
        log.info("deleted expired serve", serve=f"{namespace}/{name}")
        gone.append(name)
    return gone
