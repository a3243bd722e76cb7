"""A discrete-event driver for the pure engine: pods run for a set time and end as scripted.

Only the cluster's answer is scripted (how long each pod runs and how it
ends); every decision comes from `dag.observe` and `dag.step`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import yaml

from scheduler_extender.workflow import dag
from scheduler_extender.workflow.spec import WorkflowSpec, parse_workflow

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Simulation:
    spec: WorkflowSpec
    name: str = "wf"
    outcomes: dict[str, list[str]] = field(default_factory=dict)
    """task -> phase of each attempt ("Succeeded", "Failed", "Errored", "hang"); the last repeats."""
    durations: dict[str, float] = field(default_factory=dict)
    messages: dict[str, list[str | None]] = field(default_factory=dict)
    """task -> termination message of each attempt (where outputs travel); the last repeats."""
    now: datetime = T0
    status: dag.WorkflowStatus = field(default_factory=dag.WorkflowStatus)
    pods: dict[str, dict] = field(default_factory=dict)
    created: list[tuple[float, str]] = field(default_factory=list)
    deleted: list[tuple[float, str]] = field(default_factory=list)

    def outcome(self, task: str, attempt: int) -> str:
        script = self.outcomes.get(task, ["Succeeded"])
        return script[min(attempt, len(script) - 1)]

    def observations(self) -> dict[str, dag.PodObservation]:
        out = {}
        for name, pod in self.pods.items():
            done = self.now >= pod["ends"] and pod["result"] != "hang"
            phase = "Running"
            reason = None
            if done:
                phase = "Succeeded" if pod["result"] == "Succeeded" else "Failed"
                reason = "Evicted" if pod["result"] == "Errored" else None
            out[name] = dag.PodObservation(
                name,
                pod["task"],
                pod["attempt"],
                phase,
                reason=reason,
                exit_code=None if not done else (0 if phase == "Succeeded" else 1),
                started_at=pod["started"],
                finished_at=pod["ends"] if done else None,
                termination_message=pod["message"] if done else None,
            )
        return out

    def message(self, task: str, attempt: int) -> str | None:
        script = self.messages.get(task, [None])
        return script[min(attempt, len(script) - 1)]

    def seconds(self) -> float:
        return (self.now - T0).total_seconds()

    def run(self, limit: int = 500) -> dag.WorkflowStatus:
        for _ in range(limit):
            self.status = dag.observe(self.spec, self.status, self.observations(), self.now)
            result = dag.step(self.spec, self.status, self.now, workflow=self.name)
            self.status = result.status
            for action in result.actions:
                if isinstance(action, dag.CreatePod):
                    assert action.pod_name not in self.pods, f"{action.pod_name} created twice"
                    self.created.append((self.seconds(), action.pod_name))
                    self.pods[action.pod_name] = {
                        "task": action.task,
                        "attempt": action.attempt,
                        "started": self.now,
                        "ends": self.now + timedelta(seconds=self.durations.get(action.task, 1.0)),
                        "result": self.outcome(action.task, action.attempt),
                        "message": self.message(action.task, action.attempt),
                    }
                else:
                    self.deleted.append((self.seconds(), action.pod_name))
                    self.pods.pop(action.pod_name, None)
            if self.status.final:
                return self.status
            if result.actions:
                continue
            upcoming = [
                p["ends"] for p in self.pods.values() if p["ends"] > self.now and p["result"] != "hang"
            ]
            if result.wake_at is not None:
                upcoming.append(result.wake_at)
            if not upcoming:
                raise AssertionError(f"stuck at {self.seconds()}s: {self.phases()}")
            self.now = max(min(upcoming), self.now)
        raise AssertionError("no end in sight")

    def phases(self) -> dict[str, str]:
        return {name: t.phase for name, t in self.status.tasks.items()}

    def started(self) -> list[str]:
        return [name for _, name in self.created]


def workflow(text: str, **kwargs) -> Simulation:
    return Simulation(parse_workflow(yaml.safe_load(text)).spec, **kwargs)
