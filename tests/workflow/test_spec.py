"""Spec validation refuses what cannot run, naming the task and field; expressions parse without eval."""

from __future__ import annotations

import pytest
import yaml

from scheduler_extender.workflow import expr
from scheduler_extender.workflow.spec import WorkflowSpecError, parse_duration, parse_workflow


def _wf(tasks: str, extra: str = "") -> dict:
    return yaml.safe_load(f"metadata: {{name: wf}}\nspec:\n{extra}  tasks:\n{tasks}")


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        (
            "  - {name: a, container: {image: x}, dependencies: [c]}\n"
            "  - {name: b, container: {image: x}, dependencies: [a]}\n"
            "  - {name: c, container: {image: x}, depends: b.Succeeded}\n",
            "dependency cycle a -> c -> b -> a",
        ),
        ("  - {name: a, container: {image: x}, dependencies: [a]}\n", "task 'a' depends on itself"),
        ("  - {name: a, container: {image: x}, dependencies: [ghost]}\n", "depends on 'ghost', not a task"),
        ("  - {name: a, container: {image: x}, depends: 'ghost.Failed'}\n", "depends on 'ghost'"),
        ("  - {name: a, container: {image: x}}\n  - {name: a, container: {image: y}}\n", "'a' used twice"),
        ("  - {name: a, container: {}}\n", "task 'a'.container.image: required"),
        ("  - {name: Bad_Name, container: {image: x}}\n", "tasks[0].name: 'Bad_Name'"),
        ("  - {name: a, container: {image: x}, depends: 'b &&'}\n", "task 'a'.depends"),
        (
            "  - {name: a, container: {image: x}}\n  - {name: b, container: {image: x}, depends: a.Done}\n",
            "unknown result 'Done'",
        ),
        (
            "  - {name: a, container: {image: x}}\n"
            "  - {name: b, container: {image: x}, dependencies: [a], depends: a}\n",
            "either dependencies or depends",
        ),
        (
            "  - {name: a, container: {image: x}, when: '{{workflow.parameters.nope}} == 1'}\n",
            "unknown {{workflow.parameters.nope}}",
        ),
        ("  - {name: a, container: {image: x}, when: 'fast < slow'}\n", "both sides must be numbers"),
        (
            "  - {name: a, container: {image: x, args: ['{{workflow.parameters.zz}}']}}\n",
            "refers to unknown {{workflow.parameters.zz}}",
        ),
        (
            "  - {name: a, container: {image: x, args: ['{{workflow.status}}']}}\n",
            "known only to the exit handler",
        ),
        ("  - {name: a, container: {image: x}, retryStrategy: {limit: -1}}\n", "retryStrategy.limit"),
        (
            "  - {name: a, container: {image: x}, retryStrategy: {retryPolicy: Sometimes}}\n",
            "retryPolicy: 'Sometimes'",
        ),
        (
            "  - {name: a, container: {image: x}, retryStrategy: {backoff: {duration: soon}}}\n",
            "backoff.duration: 'soon'",
        ),
        ("  - {name: a, container: {image: x}, retryStrategy: {backoff: {factor: 0.5}}}\n", "backoff.factor"),
        (
            "  - {name: a, container: {image: x}, activeDeadlineSeconds: 0}\n",
            "activeDeadlineSeconds: expected a positive",
        ),
        ("  - {name: a, container: {image: x}, image: y}\n", "task 'a': unknown field(s) ['image']"),
        (
            "  - {name: a, container: {image: x}, acceleration: {topologyPolicy: tight}}\n",
            "task 'a': gedge.io/topology-policy: 'tight' is not one of",
        ),
        (
            "  - {name: a, container: {image: x}, acceleration: {communication: [SRIOV, IB]}}\n",
            "gedge.io/communication",
        ),
        (
            "  - {name: a, container: {image: x}, annotations: {gedge.io/compute: GPU}}\n",
            "task 'a': gedge.io/compute: not a JSON list",
        ),
        (
            "  - {name: a, container: {image: x}, acceleration: {compute: [GPU]}}\n",
            "lists GPU but the pod requests none",
        ),
        (
            "  - {name: a, container: {image: x}, resources: {limits: {gedge.io/tpu: 1}}}\n",
            "gedge.io/tpu: unknown gedge.io resource",
        ),
        ("  - {name: a, container: {image: x}, runtime: 'cuda 11'}\n", "bad component name"),
        (
            "  - {name: a, container: {image: x}, annotations: {gedge.io/topology-aware: 'yes'}}\n",
            "topology-aware",
        ),
        (
            "  - {name: a, container: {image: x, resources: {}}, resources: {limits: {cpu: 1}}}\n",
            "resources given both",
        ),
        ("  - {name: a, container: {image: x}, runtime: 7}\n", "runtime: expected a list"),
    ],
)
def test_refused_with_a_message_naming_the_fault(tasks, message):
    with pytest.raises(WorkflowSpecError) as info:
        parse_workflow(_wf(tasks))
    assert message in str(info.value)


def test_exit_handler_takes_no_dependencies():
    raw = _wf("  - {name: a, container: {image: x}}\n")
    raw["spec"]["onExit"] = {"name": "bye", "container": {"image": "x"}, "dependencies": ["a"]}
    with pytest.raises(WorkflowSpecError, match="exit handler runs after everything"):
        parse_workflow(raw)


def test_exit_handler_may_read_the_workflow_status():
    raw = _wf("  - {name: a, container: {image: x}}\n")
    raw["spec"]["onExit"] = {"name": "bye", "container": {"image": "x", "args": ["{{workflow.status}}"]}}
    assert parse_workflow(raw).spec.on_exit.name == "bye"


def test_unknown_parameter_override_is_refused():
    raw = _wf("  - {name: a, container: {image: x}}\n", "  parameters: {epochs: 3}\n")
    with pytest.raises(WorkflowSpecError, match="no such parameter"):
        parse_workflow(raw, overrides={"epoch": "4"})
    assert parse_workflow(raw, overrides={"epochs": "4"}).spec.parameters == {"epochs": "4"}


def test_wrong_kind_and_names_are_refused():
    with pytest.raises(WorkflowSpecError, match="kind 'Pod'"):
        parse_workflow({"kind": "Pod", "metadata": {"name": "x"}})
    with pytest.raises(WorkflowSpecError, match=r"metadata\.name"):
        parse_workflow({"metadata": {"name": "UPPER"}, "spec": {"tasks": []}})
    with pytest.raises(WorkflowSpecError, match="non-empty list"):
        parse_workflow({"metadata": {"name": "x"}, "spec": {"tasks": []}})


def test_acceleration_block_becomes_the_design_annotations_and_runtime_string_splits():
    raw = _wf(
        "  - name: train\n"
        "    container: {image: x}\n"
        "    runtime: cuda-11.2, cudnn-8.2.1,tf2-py38\n"
        "    acceleration: {topologyAware: true, topologyPolicy: single-numa,\n"
        "                   communication: [RDMA], compute: [GPU]}\n"
        "    resources: {limits: {gedge.io/gpu: 1}}\n"
    )
    task = parse_workflow(raw).spec.tasks[0]
    assert task.runtime == ("cuda-11.2", "cudnn-8.2.1", "tf2-py38")
    assert dict(task.annotations) == {
        "gedge.io/topology-aware": "true",
        "gedge.io/topology-policy": "single-numa",
        "gedge.io/communication": '["RDMA"]',
        "gedge.io/compute": '["GPU"]',
    }
    assert task.container["resources"] == {"limits": {"gedge.io/gpu": 1}}


def test_runtime_annotation_is_read_as_the_runtime():
    raw = _wf("  - {name: a, container: {image: x}, annotations: {gedge.io/runtime: 'cuda-12.2'}}\n")
    task = parse_workflow(raw).spec.tasks[0]
    assert task.runtime == ("cuda-12.2",)
    assert "gedge.io/runtime" not in task.annotations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(30, 30.0), ("30", 30.0), ("10s", 10.0), ("1m30s", 90.0), ("2h", 7200.0), ("500ms", 0.5), ("1.5s", 1.5)],
)
def test_durations(text, seconds):
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize("text", ["", "10 s", "s", "-3", "1d", True, "10s5"])
def test_bad_durations(text):
    with pytest.raises(WorkflowSpecError):
        parse_duration(text, "x")


def test_depends_precedence_and_grouping():
    tree = expr.parse_depends("a || b.Failed && !c")
    assert tree == expr.Or(
        expr.TaskResult("a", None),
        expr.And(expr.TaskResult("b", "Failed"), expr.Not(expr.TaskResult("c", None))),
    )
    grouped = expr.parse_depends("(a || b.Failed) && !c")
    results = {"a": "Succeeded", "b": "Succeeded", "c": "Succeeded"}
    assert expr.evaluate_depends(tree, results) is True
    assert expr.evaluate_depends(grouped, results) is False


@pytest.mark.parametrize(
    "text", ["", "a &&", "(a", "a)", "a b", "a.Failed.x", "a; rm -rf /", "__import__('os')", "a ||| b", "A"]
)
def test_depends_syntax_errors(text):
    with pytest.raises(expr.ExpressionError):
        expr.parse_depends(text)


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("{{p.x}} == 3", {"p.x": "3.0"}, True),
        ("{{p.x}} > 10", {"p.x": "9"}, False),
        ("{{p.x}} == 'a b'", {"p.x": "a b"}, True),
        ("{{p.x}} != fast", {"p.x": "fast"}, False),
        ("{{p.x}}", {"p.x": "True"}, True),
        ("!{{p.x}} || {{p.y}} >= 2", {"p.x": "true", "p.y": "2"}, True),
        ("({{p.x}} == a || {{p.x}} == b) && {{p.y}} < 1", {"p.x": "b", "p.y": "0"}, True),
        ("{{p.x}} == 'x && true'", {"p.x": "x && true"}, True),
    ],
)
def test_when_evaluation(text, values, expected):
    assert expr.evaluate_when(expr.parse_when(text), values) is expected


def test_when_value_cannot_inject_operators():
    tree = expr.parse_when("{{p.x}} == safe")
    assert expr.evaluate_when(tree, {"p.x": "x || true"}) is False
    with pytest.raises(expr.ExpressionError, match="neither true nor false"):
        expr.evaluate_when(expr.parse_when("{{p.x}}"), {"p.x": "1 == 1"})
