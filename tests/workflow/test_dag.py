"""The pure engine: order, failure branches, retries, skips, deadlines, fail-fast, exit handler."""

from __future__ import annotations

from datetime import timedelta

import pytest

from scheduler_extender.workflow import dag
from scheduler_extender.workflow.spec import parse_workflow
from tests.workflow.sim import T0, workflow

DIAMOND = """
metadata: {name: wf}
spec:
  tasks:
  - {name: a, container: {image: busybox}}
  - {name: b, container: {image: busybox}, dependencies: [a]}
  - {name: c, container: {image: busybox}, dependencies: [a]}
  - {name: d, container: {image: busybox}, dependencies: [b, c]}
"""


def test_diamond_runs_each_task_once_in_dependency_order():
    sim = workflow(DIAMOND, durations={"b": 5, "c": 2})
    status = sim.run()
    assert status.phase == "Succeeded"
    assert sim.created == [(0, "wf-a-0"), (1, "wf-b-0"), (1, "wf-c-0"), (6, "wf-d-0")]
    assert all(t.phase == "Succeeded" and len(t.attempts) == 1 for t in status.tasks.values())
    assert status.tasks["d"].started_at == T0 + timedelta(seconds=6)


def test_step_is_idempotent_a_live_attempt_is_never_started_again():
    spec = parse_workflow(
        {"metadata": {"name": "wf"}, "spec": {"tasks": [{"name": "a", "container": {"image": "x"}}]}}
    )
    first = dag.step(spec.spec, dag.WorkflowStatus(), T0, workflow="wf")
    assert first.actions == (dag.CreatePod("a", 0, "wf-a-0"),)
    again = dag.step(spec.spec, first.status, T0 + timedelta(seconds=1), workflow="wf")
    assert again.actions == ()
    assert again.status.task("a").phase == "Running"


FAILURE_BRANCH = """
metadata: {name: wf}
spec:
  tasks:
  - {name: train, container: {image: x}}
  - {name: validate, container: {image: x}, dependencies: [train]}
  - {name: report-failure, container: {image: x}, depends: "train.Failed || train.Errored"}
  - {name: serve, container: {image: x}, depends: "validate"}
"""


def test_failure_branch_runs_the_handler_and_omits_the_happy_path():
    sim = workflow(FAILURE_BRANCH, outcomes={"train": ["Failed"]})
    status = sim.run()
    assert sim.phases() == {
        "train": "Failed",
        "validate": "Omitted",
        "report-failure": "Succeeded",
        "serve": "Omitted",
    }
    assert "train=Failed" in status.tasks["validate"].message
    assert status.phase == "Succeeded", "a failure some dependent went on from is handled"


def test_happy_path_omits_the_failure_handler():
    sim = workflow(FAILURE_BRANCH)
    status = sim.run()
    assert sim.phases()["report-failure"] == "Omitted"
    assert sim.started() == ["wf-train-0", "wf-validate-0", "wf-serve-0"]
    assert status.phase == "Succeeded"


def test_unhandled_failure_fails_the_workflow_naming_the_task():
    sim = workflow(DIAMOND, outcomes={"c": ["Failed"]})
    status = sim.run()
    assert status.phase == "Failed"
    assert "c:" in status.message
    assert sim.phases()["d"] == "Omitted"


def test_errored_attempt_is_distinguished_from_failed():
    sim = workflow(FAILURE_BRANCH, outcomes={"train": ["Errored"]})
    sim.run()
    assert sim.phases()["train"] == "Errored"
    assert sim.phases()["report-failure"] == "Succeeded"
    assert "Evicted" in sim.status.tasks["train"].message


RETRY = """
metadata: {name: wf}
spec:
  tasks:
  - name: flaky
    container: {image: x}
    retryStrategy: {limit: 3, backoff: {duration: 10s, factor: 2}}
  - {name: after, container: {image: x}, dependencies: [flaky]}
"""


def test_retries_wait_the_backoff_doubling_each_time():
    sim = workflow(RETRY, outcomes={"flaky": ["Failed", "Failed", "Failed", "Succeeded"]})
    status = sim.run()
    # each attempt runs 1 s; waits are 10, 20, 40 s after the previous attempt ended
    assert sim.created == [
        (0, "wf-flaky-0"),
        (11, "wf-flaky-1"),
        (32, "wf-flaky-2"),
        (73, "wf-flaky-3"),
        (74, "wf-after-0"),
    ]
    assert status.phase == "Succeeded"
    assert [a.phase for a in status.tasks["flaky"].attempts] == ["Failed", "Failed", "Failed", "Succeeded"]


def test_retries_run_out_and_the_last_failure_stands():
    sim = workflow(RETRY, outcomes={"flaky": ["Failed"]})
    status = sim.run()
    assert len(status.tasks["flaky"].attempts) == 4
    assert status.tasks["flaky"].phase == "Failed"
    assert "after 4 attempts" in status.tasks["flaky"].message
    assert status.phase == "Failed"


def test_pending_retry_reports_when_it_will_run():
    spec = parse_workflow(__import__("yaml").safe_load(RETRY)).spec
    status = dag.step(spec, dag.WorkflowStatus(), T0, workflow="wf").status
    pods = {"wf-flaky-0": dag.PodObservation("wf-flaky-0", "flaky", 0, "Failed", exit_code=2, finished_at=T0)}
    status = dag.observe(spec, status, pods, T0)
    result = dag.step(spec, status, T0 + timedelta(seconds=3), workflow="wf")
    assert result.actions == ()
    assert result.wake_at == T0 + timedelta(seconds=10)
    assert result.status.tasks["flaky"].phase == "Pending"
    assert "retry 1/3" in result.status.tasks["flaky"].message
    due = dag.step(spec, result.status, T0 + timedelta(seconds=10), workflow="wf")
    assert due.actions == (dag.CreatePod("flaky", 1, "wf-flaky-1"),)


def test_backoff_max_duration_stops_retrying():
    text = RETRY.replace("factor: 2}", "factor: 2, maxDuration: 30s}")
    sim = workflow(text, outcomes={"flaky": ["Failed"]})
    status = sim.run()
    assert sim.started()[:2] == ["wf-flaky-0", "wf-flaky-1"]
    assert len(status.tasks["flaky"].attempts) == 2, "the third try would start at 32 s > 30 s"
    assert "maxDuration" in status.tasks["flaky"].message


@pytest.mark.parametrize(
    ("policy", "outcome", "attempts"),
    [
        ("OnFailure", "Failed", 3),
        ("OnFailure", "Errored", 1),
        ("OnError", "Failed", 1),
        ("OnError", "Errored", 3),
        ("Always", "Failed", 3),
        ("Always", "Errored", 3),
    ],
)
def test_retry_policy_decides_which_endings_are_retried(policy, outcome, attempts):
    text = f"""
metadata: {{name: wf}}
spec:
  tasks:
  - {{name: t, container: {{image: x}}, retryStrategy: {{limit: 2, retryPolicy: {policy}}}}}
"""
    status = workflow(text, outcomes={"t": [outcome]}).run()
    assert len(status.tasks["t"].attempts) == attempts


WHEN = """
metadata: {name: wf}
spec:
  parameters: {quantize: "false", epochs: 5}
  tasks:
  - {name: train, container: {image: x}}
  - name: quantize
    container: {image: x}
    dependencies: [train]
    when: "{{workflow.parameters.quantize}} == true"
  - name: long-train
    container: {image: x}
    dependencies: [train]
    when: "{{workflow.parameters.epochs}} > 3"
  - {name: serve, container: {image: x}, dependencies: [quantize]}
  - {name: verify-quantized, container: {image: x}, depends: quantize.Succeeded}
  - {name: note-skip, container: {image: x}, depends: "quantize.Skipped && !long-train.Failed"}
"""


def test_when_false_skips_and_a_bare_dependency_goes_on_past_a_skip():
    sim = workflow(WHEN)
    status = sim.run()
    assert sim.phases() == {
        "train": "Succeeded",
        "quantize": "Skipped",
        "long-train": "Succeeded",
        "serve": "Succeeded",
        "verify-quantized": "Omitted",
        "note-skip": "Succeeded",
    }
    assert "quantize" in status.tasks["quantize"].message
    assert status.phase == "Succeeded"


def test_parameter_override_changes_the_path():
    spec = parse_workflow(__import__("yaml").safe_load(WHEN), overrides={"quantize": "true"}).spec
    from tests.workflow.sim import Simulation

    sim = Simulation(spec)
    sim.run()
    assert sim.phases()["quantize"] == "Succeeded"
    assert sim.phases()["verify-quantized"] == "Succeeded"
    assert sim.phases()["note-skip"] == "Omitted"


def test_skip_propagates_as_omitted_through_explicit_success_chains():
    text = """
metadata: {name: wf}
spec:
  tasks:
  - {name: a, container: {image: x}, when: "false"}
  - {name: b, container: {image: x}, depends: a.Succeeded}
  - {name: c, container: {image: x}, depends: b}
"""
    sim = workflow(text)
    status = sim.run()
    assert sim.phases() == {"a": "Skipped", "b": "Omitted", "c": "Omitted"}
    assert sim.created == []
    assert status.phase == "Succeeded"


DEPENDS = """
metadata: {name: wf}
spec:
  failFast: false
  tasks:
  - {name: a, container: {image: x}}
  - {name: b, container: {image: x}}
  - {name: c, container: {image: x}}
  - {name: either, container: {image: x}, depends: "a.Failed || b.Failed && c"}
  - {name: grouped, container: {image: x}, depends: "(a.Failed || b.Failed) && c"}
  - {name: negated, container: {image: x}, depends: "!(a.Succeeded) && !b.Errored"}
"""


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ({}, {"either": "Omitted", "grouped": "Omitted", "negated": "Omitted"}),
        ({"a": ["Failed"]}, {"either": "Succeeded", "grouped": "Succeeded", "negated": "Succeeded"}),
        ({"b": ["Failed"]}, {"either": "Succeeded", "grouped": "Succeeded", "negated": "Omitted"}),
        (
            {"b": ["Failed"], "c": ["Failed"]},
            {"either": "Omitted", "grouped": "Omitted", "negated": "Omitted"},
        ),
        (
            {"a": ["Failed"], "b": ["Errored"]},
            {"either": "Succeeded", "grouped": "Succeeded", "negated": "Omitted"},
        ),
    ],
)
def test_depends_expressions_with_precedence_negation_and_groups(outcomes, expected):
    sim = workflow(DEPENDS, outcomes=outcomes)
    sim.run()
    assert {k: sim.phases()[k] for k in expected} == expected


def test_depends_waits_for_every_named_task_to_finish():
    sim = workflow(DEPENDS, outcomes={"a": ["Failed"]}, durations={"b": 10, "c": 3})
    sim.run()
    times = dict((name, t) for t, name in sim.created)
    assert times["wf-either-0"] == 10, "a.Failed already holds at 1 s, but b and c are still running"


FAIL_FAST = """
metadata: {name: wf}
spec:
  tasks:
  - {name: quick-fail, container: {image: x}}
  - {name: slow, container: {image: x}}
  - {name: after-slow, container: {image: x}, dependencies: [slow]}
"""


def test_fail_fast_lets_running_tasks_finish_but_starts_nothing_new():
    sim = workflow(FAIL_FAST, outcomes={"quick-fail": ["Failed"]}, durations={"slow": 20})
    status = sim.run()
    assert sim.phases() == {"quick-fail": "Failed", "slow": "Succeeded", "after-slow": "Omitted"}
    assert "fail-fast: task quick-fail failed" in status.tasks["after-slow"].message
    assert sim.deleted == []
    assert status.phase == "Failed"


def test_without_fail_fast_independent_branches_go_on():
    sim = workflow(
        FAIL_FAST.replace("spec:\n", "spec:\n  failFast: false\n"), outcomes={"quick-fail": ["Failed"]}
    )
    status = sim.run()
    assert sim.phases()["after-slow"] == "Succeeded"
    assert status.phase == "Failed"


def test_fail_fast_ignores_a_failure_a_dependent_expects():
    text = FAIL_FAST + '  - {name: on-fail, container: {image: x}, depends: "quick-fail.Failed"}\n'
    sim = workflow(text, outcomes={"quick-fail": ["Failed"]}, durations={"slow": 5})
    status = sim.run()
    assert sim.phases()["after-slow"] == "Succeeded"
    assert sim.phases()["on-fail"] == "Succeeded"
    assert status.phase == "Succeeded"


TASK_DEADLINE = """
metadata: {name: wf}
spec:
  tasks:
  - name: stuck
    container: {image: x}
    activeDeadlineSeconds: 30
    retryStrategy: {limit: 1, backoff: {duration: 5}}
"""


def test_task_deadline_deletes_the_pod_fails_the_attempt_and_retries():
    sim = workflow(TASK_DEADLINE, outcomes={"stuck": ["hang", "Succeeded"]})
    status = sim.run()
    assert sim.deleted == [(30, "wf-stuck-0")]
    assert sim.created == [(0, "wf-stuck-0"), (35, "wf-stuck-1")]
    first = status.tasks["stuck"].attempts[0]
    assert first.phase == "Failed" and "activeDeadlineSeconds 30" in first.message
    assert status.phase == "Succeeded"


WORKFLOW_DEADLINE = """
metadata: {name: wf}
spec:
  activeDeadlineSeconds: 60
  tasks:
  - {name: a, container: {image: x}}
  - {name: forever, container: {image: x}, dependencies: [a], retryStrategy: {limit: 5}}
  - {name: after, container: {image: x}, dependencies: [forever]}
  - name: parallel
    container: {image: x}
    dependencies: [a]
    retryStrategy: {limit: 5, backoff: {duration: 70}}
  onExit: {name: cleanup, container: {image: x, args: ["{{workflow.status}}"]}}
"""


def test_workflow_deadline_stops_everything_then_runs_the_exit_handler():
    sim = workflow(WORKFLOW_DEADLINE, outcomes={"forever": ["hang"], "parallel": ["Failed"]})
    status = sim.run()
    assert (60, "wf-forever-0") in sim.deleted
    assert sim.phases()["forever"] == "Failed"
    assert sim.phases()["after"] == "Omitted"
    assert sim.phases()["parallel"] == "Failed", (
        "a retry waiting for its backoff is not started after the deadline"
    )
    assert len(status.tasks["parallel"].attempts) == 1
    assert sim.phases()["cleanup"] == "Succeeded"
    assert sim.created[-1] == (60, "wf-cleanup-0")
    assert status.phase == "Failed" and "activeDeadlineSeconds" in status.message


EXIT = """
metadata: {name: wf}
spec:
  tasks:
  - {name: a, container: {image: x}}
  - {name: b, container: {image: x}, dependencies: [a]}
  onExit: {name: notify, container: {image: x}}
"""


@pytest.mark.parametrize(("outcomes", "phase"), [({}, "Succeeded"), ({"a": ["Failed"]}, "Failed")])
def test_exit_handler_runs_last_whatever_the_outcome(outcomes, phase):
    sim = workflow(EXIT, outcomes=outcomes)
    status = sim.run()
    assert sim.started()[-1] == "wf-notify-0"
    assert status.tasks["notify"].phase == "Succeeded"
    assert status.phase == phase


def test_failing_exit_handler_fails_the_workflow():
    sim = workflow(EXIT, outcomes={"notify": ["Failed"]})
    status = sim.run()
    assert status.phase == "Failed"
    assert "exit handler notify" in status.message


def test_observe_adopts_a_pod_the_status_never_recorded():
    spec = parse_workflow(__import__("yaml").safe_load(DIAMOND)).spec
    status = dag.WorkflowStatus(phase="Running", started_at=T0)
    pods = {"wf-a-0": dag.PodObservation("wf-a-0", "a", 0, "Running", started_at=T0, node="edge-1")}
    seen = dag.observe(spec, status, pods, T0 + timedelta(seconds=5))
    assert seen.tasks["a"].phase == "Running"
    assert seen.tasks["a"].attempts[0].node == "edge-1"
    assert dag.step(spec, seen, T0 + timedelta(seconds=5), workflow="wf").actions == ()


def test_observe_marks_a_vanished_pod_errored():
    spec = parse_workflow(__import__("yaml").safe_load(DIAMOND)).spec
    started = dag.step(spec, dag.WorkflowStatus(), T0, workflow="wf").status
    seen = dag.observe(spec, started, {}, T0 + timedelta(seconds=5))
    assert seen.tasks["a"].attempts[0].phase == "Errored"
    assert "wf-a-0 is gone" in seen.tasks["a"].attempts[0].message


def test_observe_keeps_the_recorded_failure_when_a_later_attempt_is_adopted():
    spec = parse_workflow(__import__("yaml").safe_load(RETRY)).spec
    started = dag.step(spec, dag.WorkflowStatus(), T0, workflow="wf").status
    pods = {
        "wf-flaky-0": dag.PodObservation("wf-flaky-0", "flaky", 0, "Failed", exit_code=3, finished_at=T0),
        "wf-flaky-1": dag.PodObservation("wf-flaky-1", "flaky", 1, "Pending"),
    }
    seen = dag.observe(spec, started, pods, T0 + timedelta(seconds=20))
    attempts = seen.tasks["flaky"].attempts
    assert [(a.number, a.phase) for a in attempts] == [(0, "Failed"), (1, "Pending")]
    assert attempts[0].message == "exit code 3"


def test_pod_deadline_exceeded_is_a_failure_and_eviction_an_error():
    spec = parse_workflow(__import__("yaml").safe_load(DIAMOND)).spec
    started = dag.step(spec, dag.WorkflowStatus(), T0, workflow="wf").status
    for reason, phase in (("DeadlineExceeded", "Failed"), ("Evicted", "Errored"), (None, "Failed")):
        pods = {"wf-a-0": dag.PodObservation("wf-a-0", "a", 0, "Failed", reason=reason)}
        assert dag.observe(spec, started, pods, T0).tasks["a"].attempts[0].phase == phase
