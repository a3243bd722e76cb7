"""The engine's status <-> the Workflow CR's `.status` (camelCase, RFC 3339 times).

Reading is strict: a status the controller cannot trust is an error naming
the field, never silently reset (that could run a finished step again).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from scheduler_extender.workflow.dag import FINAL, Attempt, TaskStatus, WorkflowStatus

_TASK_PHASES = FINAL | {"Pending", "Running"}
MAX_MESSAGE = 1024
"""Messages in the CR are clipped: pod and API errors can be long, and the object has a size limit."""
_WORKFLOW_PHASES = {"Pending", "Running", "Succeeded", "Failed", "Errored"}


class StatusError(ValueError):
    """A Workflow status the controller cannot resume from."""


def format_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise StatusError(f"{where}: expected an RFC 3339 time, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise StatusError(f"{where}: {value!r} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise StatusError(f"{where}: {value!r} has no time zone")
    return parsed.astimezone(UTC)


def clip(message: str, limit: int = MAX_MESSAGE) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None and v != ""}


def attempt_to_dict(a: Attempt) -> dict[str, Any]:
    return _drop_none(
        {
            "number": a.number,
            "podName": a.pod_name,
            "phase": a.phase,
            "createdAt": format_time(a.created_at),
            "startedAt": format_time(a.started_at),
            "finishedAt": format_time(a.finished_at),
            "message": clip(a.message),
            "exitCode": a.exit_code,
            "node": a.node,
            "endpoint": a.endpoint,
        }
    )


def task_to_dict(t: TaskStatus) -> dict[str, Any]:
    return _drop_none(
        {
            "phase": t.phase,
            "podName": t.pod_name,
            "attempts": [attempt_to_dict(a) for a in t.attempts] or None,
            "startedAt": format_time(t.started_at),
            "finishedAt": format_time(t.finished_at),
            "message": clip(t.message),
            "nextAttemptAt": format_time(t.next_attempt_at),
            "runtime": t.runtime,
            "runtimeReason": clip(t.runtime_reason),
            "outputs": {"parameters": dict(t.outputs)} if t.outputs else None,
            "endpoint": t.endpoint,
        }
    )


def status_to_dict(s: WorkflowStatus) -> dict[str, Any]:
    out = _drop_none(
        {
            "phase": s.phase,
            "startedAt": format_time(s.started_at),
            "finishedAt": format_time(s.finished_at),
            "message": clip(s.message, 4 * MAX_MESSAGE),
            "tasks": {name: task_to_dict(t) for name, t in sorted(s.tasks.items())},
        }
    )
    if s.deadline_exceeded:
        out["deadlineExceeded"] = True
    return out


def _mapping(raw: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise StatusError(f"{where}: expected an object, got {type(raw).__name__}")
    return raw


def _int(raw: Any, where: str, *, optional: bool = False) -> int | None:
    if raw is None and optional:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise StatusError(f"{where}: expected an integer, got {raw!r}")
    return raw


def _phase(raw: Any, allowed: set[str] | frozenset[str], where: str) -> str:
    if raw not in allowed:
        raise StatusError(f"{where}: {raw!r} is not one of {sorted(allowed)}")
    return raw


def attempt_from_dict(raw: Any, where: str) -> Attempt:
    block = _mapping(raw, where)
    pod = block.get("podName")
    if not isinstance(pod, str) or not pod:
        raise StatusError(f"{where}.podName: required")
    return Attempt(
        number=_int(block.get("number"), f"{where}.number") or 0,
        pod_name=pod,
        phase=_phase(block.get("phase", "Pending"), _TASK_PHASES - {"Skipped", "Omitted"}, f"{where}.phase"),
        created_at=parse_time(block.get("createdAt"), f"{where}.createdAt"),
        started_at=parse_time(block.get("startedAt"), f"{where}.startedAt"),
        finished_at=parse_time(block.get("finishedAt"), f"{where}.finishedAt"),
        message=str(block.get("message", "")),
        exit_code=_int(block.get("exitCode"), f"{where}.exitCode", optional=True),
        node=block.get("node"),
        endpoint=block.get("endpoint"),
    )


def _outputs(raw: Any, where: str) -> dict[str, str] | None:
    if raw is None:
        return None
    parameters = _mapping(_mapping(raw, where).get("parameters") or {}, f"{where}.parameters")
    if not all(isinstance(v, str) for v in parameters.values()):
        raise StatusError(f"{where}.parameters: values must be strings")
    return {str(k): v for k, v in parameters.items()}


def task_from_dict(raw: Any, where: str) -> TaskStatus:
    block = _mapping(raw, where)
    attempts_raw = block.get("attempts") or []
    if not isinstance(attempts_raw, list):
        raise StatusError(f"{where}.attempts: expected a list")
    attempts = tuple(attempt_from_dict(a, f"{where}.attempts[{i}]") for i, a in enumerate(attempts_raw))
    if [a.number for a in attempts] != sorted({a.number for a in attempts}):
        raise StatusError(f"{where}.attempts: numbers must increase ({[a.number for a in attempts]})")
    outputs = _outputs(block.get("outputs"), f"{where}.outputs")
    if outputs and attempts:
        # kept once, on the task: they are the outputs of its last (succeeded) attempt
        attempts = (*attempts[:-1], dataclasses.replace(attempts[-1], outputs=outputs))
    return TaskStatus(
        phase=_phase(block.get("phase", "Pending"), _TASK_PHASES, f"{where}.phase"),
        attempts=attempts,
        started_at=parse_time(block.get("startedAt"), f"{where}.startedAt"),
        finished_at=parse_time(block.get("finishedAt"), f"{where}.finishedAt"),
        message=str(block.get("message", "")),
        next_attempt_at=parse_time(block.get("nextAttemptAt"), f"{where}.nextAttemptAt"),
        runtime=str(block.get("runtime", "")),
        runtime_reason=str(block.get("runtimeReason", "")),
    )


def status_from_dict(raw: Any) -> WorkflowStatus:
    if raw is None:
        return WorkflowStatus()
    block = _mapping(raw, "status")
    tasks = _mapping(block.get("tasks") or {}, "status.tasks")
    return WorkflowStatus(
        phase=_phase(block.get("phase", "Pending"), _WORKFLOW_PHASES, "status.phase"),
        tasks={str(k): task_from_dict(v, f"status.tasks.{k}") for k, v in tasks.items()},
        started_at=parse_time(block.get("startedAt"), "status.startedAt"),
        finished_at=parse_time(block.get("finishedAt"), "status.finishedAt"),
        message=str(block.get("message", "")),
        deadline_exceeded=bool(block.get("deadlineExceeded", False)),
    )
