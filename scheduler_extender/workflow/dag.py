"""The workflow engine as pure functions: observed pods and the clock in, a new status and actions out.

`observe` folds what the cluster shows (pods by name) into the status;
`step` decides what happens next: which task gets a pod for which attempt,
which pods must go (deadlines), which tasks are skipped or omitted, and the
workflow's phase. Neither does I/O, so a controller restarted with the
status it left behind makes exactly the decisions the old one would have.

Phases follow Argo Workflows: a task whose `when` is false is Skipped; a task
whose `depends` can no longer hold (or that fail-fast or a deadline stopped)
is Omitted. A bare `a` in `depends`/`dependencies` means `a.Succeeded || a.Skipped`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from scheduler_extender.workflow import expr
from scheduler_extender.workflow.outputs import OutputError
from scheduler_extender.workflow.outputs import decode as decode_outputs
from scheduler_extender.workflow.spec import (
    TaskSpec,
    WorkflowSpec,
    reference_values,
    topological_order,
)

PENDING = "Pending"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
ERRORED = "Errored"
SKIPPED = "Skipped"
OMITTED = "Omitted"
FINAL = frozenset({SUCCEEDED, FAILED, ERRORED, SKIPPED, OMITTED})
ATTEMPT_LIVE = frozenset({PENDING, RUNNING})

ERROR_REASONS = frozenset(
    {
        "Evicted",
        "NodeLost",
        "UnexpectedAdmissionError",
        "Preempting",
        "Shutdown",
        "NodeShutdown",
        "Terminated",
    }
)
"""Pod failure reasons that are the platform's doing, not the program's: the attempt is Errored."""


def pod_name(workflow: str, task: str, attempt: int) -> str:
    """Deterministic, so a restarted controller finds the pod it made instead of making another."""
    return f"{workflow}-{task}-{attempt}"


@dataclass(frozen=True)
class PodObservation:
    """What the controller saw of one of its pods (phase as Kubernetes reports it)."""

    name: str
    task: str
    attempt: int
    phase: str
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    node: str | None = None
    termination_message: str | None = None
    """The main container's, where the wrapper leaves the step's output parameters."""
    endpoint: str | None = None
    """A serve task's Service address (host:port)."""


@dataclass(frozen=True)
class Attempt:
    number: int
    pod_name: str
    phase: str = PENDING
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: str = ""
    exit_code: int | None = None
    node: str | None = None
    outputs: Mapping[str, str] | None = None
    endpoint: str | None = None


@dataclass(frozen=True)
class TaskStatus:
    phase: str = PENDING
    attempts: tuple[Attempt, ...] = ()
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: str = ""
    next_attempt_at: datetime | None = None
    runtime: str = ""
    """The runtime stack the task runs on (named, or chosen from its model), as component ids."""
    runtime_reason: str = ""
    """Why that stack, for a runtime the catalog chose from the task's model."""

    @property
    def pod_name(self) -> str | None:
        return self.attempts[-1].pod_name if self.attempts else None

    @property
    def outputs(self) -> Mapping[str, str]:
        """The output parameters of the attempt that succeeded (empty before that)."""
        if self.phase != SUCCEEDED or not self.attempts:
            return {}
        return self.attempts[-1].outputs or {}

    @property
    def endpoint(self) -> str | None:
        return self.attempts[-1].endpoint if self.attempts else None

    @property
    def final(self) -> bool:
        return self.phase in FINAL


NOT_STARTED = TaskStatus()


@dataclass(frozen=True)
class WorkflowStatus:
    phase: str = PENDING
    tasks: Mapping[str, TaskStatus] = field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: str = ""
    deadline_exceeded: bool = False

    @property
    def final(self) -> bool:
        return self.phase in (SUCCEEDED, FAILED, ERRORED)

    def task(self, name: str) -> TaskStatus:
        return self.tasks.get(name, NOT_STARTED)


@dataclass(frozen=True)
class CreatePod:
    task: str
    attempt: int
    pod_name: str


@dataclass(frozen=True)
class DeletePod:
    task: str
    pod_name: str
    reason: str


Action = CreatePod | DeletePod


@dataclass(frozen=True)
class StepResult:
    status: WorkflowStatus
    actions: tuple[Action, ...] = ()
    wake_at: datetime | None = None
    """When the next decision falls due without any event (backoff over, a deadline)."""


def _replace_task(status: WorkflowStatus, name: str, task: TaskStatus) -> WorkflowStatus:
    return dataclasses.replace(status, tasks={**status.tasks, name: task})


def _replace_attempt(task: TaskStatus, attempt: Attempt) -> TaskStatus:
    attempts = tuple(attempt if a.number == attempt.number else a for a in task.attempts)
    return dataclasses.replace(task, attempts=attempts)


def _attempt_from_pod(attempt: Attempt, pod: PodObservation, now: datetime, spec: TaskSpec) -> Attempt:
    base = dataclasses.replace(
        attempt,
        started_at=pod.started_at or attempt.started_at,
        node=pod.node or attempt.node,
        endpoint=pod.endpoint or attempt.endpoint,
    )
    if pod.phase == "Succeeded":
        try:
            values = decode_outputs(pod.termination_message, spec.outputs) if spec.outputs else None
        except OutputError as exc:
            return dataclasses.replace(
                base,
                phase=FAILED,
                finished_at=pod.finished_at or now,
                exit_code=pod.exit_code,
                message=f"exited {pod.exit_code or 0} but {exc}",
            )
        return dataclasses.replace(
            base,
            phase=SUCCEEDED,
            finished_at=pod.finished_at or now,
            exit_code=pod.exit_code,
            message="",
            outputs=values,
        )
    if pod.phase == "Failed":
        reason = pod.reason or ""
        phase = ERRORED if reason in ERROR_REASONS else FAILED
        code = f"exit code {pod.exit_code}" if pod.exit_code is not None else ""
        detail = "; ".join(p for p in (reason, pod.message or "", code) if p)
        return dataclasses.replace(
            base, phase=phase, finished_at=pod.finished_at or now, exit_code=pod.exit_code, message=detail
        )
    if pod.phase == "Running":
        return dataclasses.replace(base, phase=RUNNING, message="")
    if pod.phase == "Unknown":
        return dataclasses.replace(base, message="pod phase Unknown (node unreachable?)")
    return dataclasses.replace(base, message=pod.message or pod.reason or "")


def observe(
    spec: WorkflowSpec, status: WorkflowStatus, pods: Mapping[str, PodObservation], now: datetime
) -> WorkflowStatus:
    """Fold the pods the controller sees (its complete, current view) into the status.

    A pod for an attempt the status does not know yet (the controller stopped
    between creating it and recording it) is adopted. A live attempt whose pod
    is gone ends Errored: its pod was deleted before it finished.
    """
    by_task: dict[str, list[PodObservation]] = {}
    for pod in pods.values():
        by_task.setdefault(pod.task, []).append(pod)
    tasks = dict(status.tasks)
    for task_spec in spec.all_tasks():
        task = status.task(task_spec.name)
        if task.final or (not task.attempts and task_spec.name not in by_task):
            continue
        task = _refresh_live_attempt(task, pods, now, task_spec)
        for pod in sorted(by_task.get(task_spec.name, ()), key=lambda p: p.attempt):
            if pod.attempt < len(task.attempts) or any(a.number == pod.attempt for a in task.attempts):
                continue
            previous = task.attempts
            if previous and previous[-1].phase in ATTEMPT_LIVE:
                superseded = dataclasses.replace(
                    previous[-1], phase=ERRORED, finished_at=now, message="superseded by a later attempt"
                )
                previous = (*previous[:-1], superseded)
            adopted = Attempt(pod.attempt, pod.name, PENDING, created_at=pod.started_at or now)
            task = dataclasses.replace(
                task,
                phase=RUNNING,
                attempts=(*previous, adopted),
                started_at=task.started_at or adopted.created_at,
                next_attempt_at=None,
            )
            task = _refresh_live_attempt(task, pods, now, task_spec)
        tasks[task_spec.name] = task
    return dataclasses.replace(status, tasks=tasks)


def _refresh_live_attempt(
    task: TaskStatus, pods: Mapping[str, PodObservation], now: datetime, spec: TaskSpec
) -> TaskStatus:
    if not task.attempts or task.attempts[-1].phase not in ATTEMPT_LIVE:
        return task
    current = task.attempts[-1]
    pod = pods.get(current.pod_name)
    if pod is None:
        updated = dataclasses.replace(
            current, phase=ERRORED, finished_at=now, message=f"pod {current.pod_name} is gone"
        )
    else:
        updated = _attempt_from_pod(current, pod, now, spec)
    return dataclasses.replace(_replace_attempt(task, updated), phase=RUNNING, message=updated.message)


def _deadline(start: datetime | None, seconds: int | None) -> datetime | None:
    if start is None or seconds is None:
        return None
    return start + timedelta(seconds=seconds)


def _failure_anticipated(spec: WorkflowSpec, name: str) -> bool:
    """Whether some dependent's `depends` names this task's failure (so fail-fast leaves it alone)."""
    for dependent in spec.dependents(name):
        if dependent.depends is None:
            continue
        for node in expr.walk(dependent.depends):
            if isinstance(node, expr.TaskResult) and node.task == name and node.result in (FAILED, ERRORED):
                return True
            if isinstance(node, expr.Not) and name in expr.depends_tasks(node):
                return True
    return False


def _unhandled_failure(spec: WorkflowSpec, status: WorkflowStatus, name: str) -> bool:
    """A failed task counts against the workflow unless a dependent went on (was not omitted) after it."""
    if status.task(name).phase not in (FAILED, ERRORED):
        return False
    return not any(status.task(d.name).phase != OMITTED for d in spec.dependents(name))


def _finish_task(task: TaskStatus, phase: str, now: datetime, message: str) -> TaskStatus:
    return dataclasses.replace(
        task, phase=phase, finished_at=task.finished_at or now, message=message, next_attempt_at=None
    )


class _Step:
    def __init__(
        self, spec: WorkflowSpec, status: WorkflowStatus, now: datetime, workflow: str, namespace: str
    ):
        self.spec = spec
        self.status = status
        self.now = now
        self.workflow = workflow
        self.namespace = namespace
        self.actions: list[Action] = []
        self.wakes: list[datetime] = []

    def set(self, name: str, task: TaskStatus) -> None:
        self.status = _replace_task(self.status, name, task)

    def wake(self, at: datetime | None) -> None:
        if at is not None:
            self.wakes.append(at)

    def start(self, spec: TaskSpec, number: int) -> None:
        task = self.status.task(spec.name)
        name = spec.serve.name if spec.serve is not None else pod_name(self.workflow, spec.name, number)
        attempt = Attempt(number, name, PENDING, created_at=self.now)
        self.set(
            spec.name,
            dataclasses.replace(
                task,
                phase=RUNNING,
                attempts=(*task.attempts, attempt),
                started_at=task.started_at or self.now,
                message="",
                next_attempt_at=None,
            ),
        )
        self.actions.append(CreatePod(spec.name, number, name))
        self.wake(_deadline(self.now, spec.active_deadline_seconds))

    def stop_attempt(self, spec: TaskSpec, message: str) -> None:
        task = self.status.task(spec.name)
        current = task.attempts[-1]
        self.actions.append(DeletePod(spec.name, current.pod_name, message))
        stopped = dataclasses.replace(current, phase=FAILED, finished_at=self.now, message=message)
        self.set(spec.name, dataclasses.replace(_replace_attempt(task, stopped), message=message))

    def enforce_task_deadlines(self) -> None:
        for spec in self.spec.all_tasks():
            task = self.status.task(spec.name)
            if task.final or not task.attempts or task.attempts[-1].phase not in ATTEMPT_LIVE:
                continue
            current = task.attempts[-1]
            deadline = _deadline(current.started_at or current.created_at, spec.active_deadline_seconds)
            if deadline is not None and self.now >= deadline:
                self.stop_attempt(spec, f"exceeded activeDeadlineSeconds {spec.active_deadline_seconds}")
            else:
                self.wake(deadline)

    def settle_attempts(self) -> None:
        """Turn ended attempts into a retry (after its backoff) or the task's final phase."""
        for spec in self.spec.all_tasks():
            allow_retry = spec is self.spec.on_exit or not self.status.deadline_exceeded
            task = self.status.task(spec.name)
            if task.final or not task.attempts or task.attempts[-1].phase in ATTEMPT_LIVE:
                continue
            last = task.attempts[-1]
            if last.phase == SUCCEEDED:
                self.set(spec.name, _finish_task(task, SUCCEEDED, last.finished_at or self.now, ""))
                continue
            retries_used = len(task.attempts) - 1
            retry = spec.retry
            failure = last.message or last.phase.lower()
            if not allow_retry or not retry.retries(last.phase) or retries_used >= retry.limit:
                suffix = f" after {len(task.attempts)} attempts" if len(task.attempts) > 1 else ""
                self.set(
                    spec.name, _finish_task(task, last.phase, last.finished_at or self.now, failure + suffix)
                )
                continue
            next_at = (last.finished_at or self.now) + timedelta(seconds=retry.backoff.delay(retries_used))
            first = task.attempts[0].started_at or task.attempts[0].created_at or self.now
            limit = retry.backoff.max_duration
            if limit is not None and (next_at - first).total_seconds() > limit:
                self.set(
                    spec.name,
                    _finish_task(
                        task,
                        last.phase,
                        last.finished_at or self.now,
                        f"{failure}; no retry: backoff maxDuration {limit:g}s would be exceeded",
                    ),
                )
                continue
            if self.now >= next_at:
                self.start(spec, last.number + 1)
            else:
                self.set(
                    spec.name,
                    dataclasses.replace(
                        task,
                        phase=PENDING,
                        next_attempt_at=next_at,
                        message=f"{failure}; retry {retries_used + 1}/{retry.limit} at {next_at.isoformat()}",
                    ),
                )
                self.wake(next_at)

    def stop_reason(self) -> str | None:
        """Why no new task may start: the workflow deadline, or fail-fast after an unexpected failure."""
        if self.status.deadline_exceeded:
            return "workflow activeDeadlineSeconds exceeded"
        if self.spec.fail_fast:
            for spec in self.spec.tasks:
                phase = self.status.task(spec.name).phase
                if phase in (FAILED, ERRORED) and not _failure_anticipated(self.spec, spec.name):
                    return f"fail-fast: task {spec.name} {phase.lower()}"
        return None

    def main_done(self) -> bool:
        return all(self.status.task(t.name).final for t in self.spec.tasks)

    def schedule_ready(self) -> None:
        values = reference_values(self.workflow, self.namespace, self.spec.parameters)
        values.update(output_values(self.status))
        for name in topological_order(self.spec):
            spec = self.spec.task(name)
            task = self.status.task(name)
            if task.final or task.attempts:
                continue
            results = {p: self.status.task(p).phase for p in spec.predecessors}
            if not all(phase in FINAL for phase in results.values()):
                continue
            reason = self.stop_reason()
            if reason is not None:
                self.set(name, _finish_task(task, OMITTED, self.now, f"not started: {reason}"))
                continue
            if spec.depends is not None and not expr.evaluate_depends(spec.depends, results):
                seen = ", ".join(f"{p}={results[p]}" for p in sorted(results))
                self.set(
                    name,
                    _finish_task(task, OMITTED, self.now, f"depends {spec.depends_text!r} is false ({seen})"),
                )
                continue
            if spec.when is not None:
                try:
                    go = expr.evaluate_when(spec.when, values)
                except expr.ExpressionError as exc:
                    self.set(name, _finish_task(task, ERRORED, self.now, f"when {spec.when_text!r}: {exc}"))
                    continue
                if not go:
                    self.set(name, _finish_task(task, SKIPPED, self.now, f"when {spec.when_text!r} is false"))
                    continue
            self.start(spec, 0)

    def main_phase(self) -> tuple[str, str]:
        return main_outcome(self.spec, self.status)

    def enforce_workflow_deadline(self) -> None:
        deadline = _deadline(self.status.started_at, self.spec.active_deadline_seconds)
        if deadline is None or self.status.deadline_exceeded or self.main_done():
            return
        if self.now < deadline:
            self.wake(deadline)
            return
        self.status = dataclasses.replace(self.status, deadline_exceeded=True)
        for spec in self.spec.tasks:
            task = self.status.task(spec.name)
            if task.final:
                continue
            if task.attempts and task.attempts[-1].phase in ATTEMPT_LIVE:
                self.stop_attempt(spec, "workflow activeDeadlineSeconds exceeded")
            elif task.attempts:
                continue
            else:
                self.set(spec.name, _finish_task(task, OMITTED, self.now, "not started: workflow deadline"))

    def run(self) -> StepResult:
        if self.status.final:
            return StepResult(self.status)
        if self.status.started_at is None:
            self.status = dataclasses.replace(self.status, phase=RUNNING, started_at=self.now)
        self.enforce_task_deadlines()
        self.enforce_workflow_deadline()
        self.settle_attempts()
        self.schedule_ready()
        if not self.main_done():
            return self.result()
        phase, message = self.main_phase()
        handler = self.spec.on_exit
        if handler is not None:
            task = self.status.task(handler.name)
            if not task.final and not task.attempts:
                self.start(handler, 0)
                return self.result()
            if not task.final:
                return self.result()
            if task.phase in (FAILED, ERRORED):
                phase = FAILED
                message = "; ".join(p for p in (message, f"exit handler {handler.name}: {task.message}") if p)
        self.status = dataclasses.replace(self.status, phase=phase, finished_at=self.now, message=message)
        self.wakes.clear()
        return self.result()

    def result(self) -> StepResult:
        return StepResult(self.status, tuple(self.actions), min(self.wakes) if self.wakes else None)


def step(
    spec: WorkflowSpec, status: WorkflowStatus, now: datetime, *, workflow: str, namespace: str = "default"
) -> StepResult:
    """Everything that is due at `now`, as a new status and the pod actions that make it true."""
    return _Step(spec, status, now, workflow, namespace).run()


def output_values(status: WorkflowStatus) -> dict[str, str]:
    """`{{tasks.NAME.outputs.parameters.X}}` -> value, for every task that succeeded with outputs."""
    return {
        f"tasks.{name}.outputs.parameters.{key}": value
        for name, task in status.tasks.items()
        for key, value in task.outputs.items()
    }


def main_outcome(spec: WorkflowSpec, status: WorkflowStatus) -> tuple[str, str]:
    """The main tasks' verdict (phase, message); `{{workflow.status}}` for the exit handler."""
    if status.deadline_exceeded:
        return FAILED, "workflow activeDeadlineSeconds exceeded"
    failed = [t.name for t in spec.tasks if _unhandled_failure(spec, status, t.name)]
    if failed:
        return FAILED, "; ".join(f"{n}: {status.task(n).message}" for n in failed)
    return SUCCEEDED, ""


def record_start_failure(
    status: WorkflowStatus, task: str, attempt: int, message: str, now: datetime
) -> WorkflowStatus:
    """The pod for this attempt could not be made (API refusal, runtime no longer composes): Errored."""
    current = status.task(task)
    ended = tuple(
        dataclasses.replace(a, phase=ERRORED, finished_at=now, message=message) if a.number == attempt else a
        for a in current.attempts
    )
    return _replace_task(status, task, dataclasses.replace(current, attempts=ended, message=message))
