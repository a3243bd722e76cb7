"""Output parameters: the wrapper run for real under /bin/sh, the message it leaves, and the engine
handing values to later steps (args, env, `when`), with retries when a step leaves none."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from scheduler_extender.workflow import dag
from scheduler_extender.workflow.outputs import (
    HEADER,
    MESSAGE_LIMIT,
    OutputError,
    decode,
    encode,
    wrap_container,
)
from scheduler_extender.workflow.podspec import build_pod
from scheduler_extender.workflow.spec import OutputParameter, WorkflowSpecError, parse_workflow
from tests.workflow.sim import workflow


def _wrapped(tmp_path: Path, script: str, outputs: list[OutputParameter]) -> tuple[list[str], Path]:
    message = tmp_path / "termination-log"
    container = wrap_container(
        {
            "name": "main",
            "image": "x",
            "command": ["/bin/sh", "-c", script],
            "terminationMessagePath": str(message),
        },
        outputs,
    )
    assert container["terminationMessagePolicy"] == "File"
    return [*container["command"], *container["args"]], message


def test_the_wrapper_records_each_file_and_keeps_the_exit_code(tmp_path):
    accuracy, model = tmp_path / "accuracy", tmp_path / "model path"
    outputs = [
        OutputParameter("accuracy", str(accuracy)),
        OutputParameter("model", str(model)),
        OutputParameter("notes", str(tmp_path / "never-written"), default="none"),
    ]
    argv, message = _wrapped(
        tmp_path,
        f"echo 0.93 > '{accuracy}'; printf 'line one\\nline \"two\" $HOME' > '{model}'; exit 3",
        outputs,
    )
    result = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    assert result.returncode == 3, "the step's own exit code is the container's"
    text = message.read_text()
    assert text.startswith(HEADER + "\n")
    assert decode(text, outputs) == {
        "accuracy": "0.93",
        "model": 'line one\nline "two" $HOME',
        "notes": "none",
    }


def test_the_wrapper_passes_arguments_through_untouched(tmp_path):
    out = tmp_path / "args"
    outputs = [OutputParameter("args", str(out))]
    message = tmp_path / "termination-log"
    container = wrap_container(
        {
            "command": ["/bin/sh", "-c", f'printf "%s|" "$@" > \'{out}\'', "step"],
            "args": ["a b", "$(x)", "'q'"],
            "terminationMessagePath": str(message),
        },
        outputs,
    )
    subprocess.run([*container["command"], *container["args"]], check=True, timeout=30)
    assert decode(message.read_text(), outputs) == {"args": "a b|$(x)|'q'|"}


def test_sigterm_reaches_the_step_and_its_outputs_are_still_recorded(tmp_path):
    started, value = tmp_path / "started", tmp_path / "value"
    outputs = [OutputParameter("value", str(value))]
    argv, message = _wrapped(
        tmp_path,
        f"trap 'echo stopped > \"{value}\"; exit 7' TERM; touch '{started}'; while :; do sleep 0.05; done",
        outputs,
    )
    process = subprocess.Popen(argv)
    try:
        for _ in range(2000):
            if started.exists():
                break
            subprocess.run(["sleep", "0.01"], check=True)
        assert started.exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 7
    finally:
        if process.poll() is None:
            process.kill()
    assert decode(message.read_text(), outputs) == {"value": "stopped"}


def test_decode_refuses_what_it_cannot_trust():
    outputs = [OutputParameter("a", "/tmp/a")]
    with pytest.raises(OutputError, match="/tmp/a was not written and has no default"):
        decode(HEADER + "\n", outputs)
    with pytest.raises(OutputError, match="no termination message"):
        decode(None, outputs)
    with pytest.raises(OutputError, match=f"at most {MESSAGE_LIMIT} bytes"):
        decode(encode({"a": "x" * 5000})[:MESSAGE_LIMIT], outputs)
    with pytest.raises(OutputError, match="unexpected line"):
        decode(HEADER + "\nother 1\nx\n", outputs)
    assert decode(encode({"a": "ünï"}), outputs) == {"a": "ünï"}


PIPE = """
metadata: {name: wf}
spec:
  tasks:
  - name: train
    container: {image: t, command: [python, train.py]}
    outputs:
      parameters:
      - {name: accuracy, valueFrom: {path: /tmp/accuracy}}
      - {name: model, valueFrom: {path: /tmp/model}}
    retryStrategy: {limit: 1}
  - name: deploy
    dependencies: [train]
    when: "{{tasks.train.outputs.parameters.accuracy}} > 0.9"
    container:
      image: s
      args: [--model, "{{tasks.train.outputs.parameters.model}}"]
      env: [{name: ACC, value: "{{tasks.train.outputs.parameters.accuracy}}"}]
  - {name: report, dependencies: [deploy], container: {image: r}}
"""


def test_outputs_feed_when_args_and_env_of_later_steps():
    sim = workflow(PIPE, messages={"train": [encode({"accuracy": "0.95", "model": "/ws/m1"})]})
    status = sim.run()
    assert status.phase == "Succeeded"
    assert status.tasks["train"].outputs == {"accuracy": "0.95", "model": "/ws/m1"}
    assert sim.started() == ["wf-train-0", "wf-deploy-0", "wf-report-0"]
    spec = parse_workflow(yaml.safe_load(PIPE))
    pod = build_pod(spec, spec.spec.task("deploy"), 0, catalog=None, status=status)
    container = pod["spec"]["containers"][0]
    assert container["args"] == ["--model", "/ws/m1"]
    assert container["env"] == [{"name": "ACC", "value": "0.95"}]
    train = build_pod(spec, spec.spec.task("train"), 0, catalog=None, status=status)["spec"]["containers"][0]
    assert train["command"][:2] == ["/bin/sh", "-c"] and train["args"] == ["python", "train.py"]


def test_when_on_an_output_skips_the_step_and_what_needs_it():
    sim = workflow(PIPE, messages={"train": [encode({"accuracy": "0.5", "model": "/ws/m1"})]})
    status = sim.run()
    assert sim.phases() == {"train": "Succeeded", "deploy": "Skipped", "report": "Succeeded"}
    assert "is false" in status.tasks["deploy"].message


def test_a_step_that_leaves_no_output_fails_and_is_retried():
    sim = workflow(PIPE, messages={"train": [HEADER + "\n", encode({"accuracy": "0.97", "model": "/ws/m2"})]})
    status = sim.run()
    train = status.tasks["train"]
    assert [a.phase for a in train.attempts] == ["Failed", "Succeeded"]
    assert "/tmp/accuracy was not written" in train.attempts[0].message
    assert train.outputs == {"accuracy": "0.97", "model": "/ws/m2"}
    assert status.phase == "Succeeded"


def test_outputs_missing_after_the_last_retry_fail_the_step_with_the_reason():
    sim = workflow(PIPE, messages={"train": [HEADER + "\n"]})
    status = sim.run()
    assert status.phase == "Failed"
    assert status.tasks["train"].phase == "Failed"
    assert (
        "/tmp/accuracy was not written and has no default after 2 attempts" in status.tasks["train"].message
    )
    assert status.tasks["deploy"].phase == "Omitted"


def test_a_skipped_producer_leaves_its_consumers_an_error_not_a_guess():
    text = """
metadata: {name: wf}
spec:
  parameters: {train: "false"}
  tasks:
  - name: train
    when: "{{workflow.parameters.train}} == true"
    container: {image: t, command: [t]}
    outputs: {parameters: [{name: acc, valueFrom: {path: /tmp/acc}}]}
  - name: gate
    depends: train.Skipped || train.Succeeded
    when: "{{tasks.train.outputs.parameters.acc}} > 0.5"
    container: {image: g}
"""
    sim = workflow(text)
    status = sim.run()
    assert sim.phases() == {"train": "Skipped", "gate": "Errored"}
    assert "unknown reference {{tasks.train.outputs.parameters.acc}}" in status.tasks["gate"].message


PRODUCER = (
    "- {name: a, container: {image: x, command: [a]}, "
    "outputs: {parameters: [{name: v, valueFrom: {path: /v}}]}}"
)
REF = "'{{tasks.a.outputs.parameters.%s}}'"


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        (
            PRODUCER + "\n- {name: b, container: {image: x, args: [%s]}}" % (REF % "v"),
            "'a' is not among the tasks it runs after",
        ),
        (
            PRODUCER + "\n- {name: b, dependencies: [a], container: {image: x, args: [%s]}}" % (REF % "w"),
            "task 'a' declares outputs ['v']",
        ),
        (
            "- {name: a, container: {image: x}, outputs: {parameters: [{name: v, valueFrom: {path: /v}}]}}",
            "output parameters need container.command",
        ),
        (
            PRODUCER.replace("path: /v", "path: v"),
            "valueFrom.path: an absolute path",
        ),
        (
            "- {name: a, container: {image: x}}\n"
            "- {name: b, dependencies: [a], when: %s, container: {image: x}}" % (REF % "v"),
            "task 'a' declares no outputs",
        ),
        (
            "- {name: a, container: {image: x}}\n"
            "- {name: b, dependencies: [a], container: {image: x, args: ['{{tasks.a.output}}']}}",
            "task outputs are {{tasks.NAME.outputs.parameters.PARAM}}",
        ),
    ],
)
def test_output_references_are_checked_before_anything_runs(tasks, message):
    text = "metadata: {name: wf}\nspec:\n  tasks:\n" + "\n".join("  " + line for line in tasks.splitlines())
    with pytest.raises(WorkflowSpecError, match="workflow 'wf'") as caught:
        parse_workflow(yaml.safe_load(text))
    assert message in str(caught.value)


def test_the_exit_handler_may_read_any_tasks_outputs():
    text = """
metadata: {name: wf}
spec:
  tasks:
  - name: a
    container: {image: x, command: [a]}
    outputs: {parameters: [{name: v, valueFrom: {path: /v}}]}
  onExit: {name: done, container: {image: x, args: ["{{tasks.a.outputs.parameters.v}}"]}}
"""
    sim = workflow(text, messages={"a": [encode({"v": "42"})]})
    status = sim.run()
    assert status.phase == "Succeeded"
    spec = parse_workflow(yaml.safe_load(text))
    pod = build_pod(spec, spec.spec.on_exit, 0, catalog=None, status=status)
    assert pod["spec"]["containers"][0]["args"] == ["42"]
    assert dag.output_values(status) == {"tasks.a.outputs.parameters.v": "42"}


def test_outputs_survive_the_status_round_trip_a_restarted_controller_reads():
    from scheduler_extender.workflow.status import status_from_dict, status_to_dict

    sim = workflow(PIPE, messages={"train": [HEADER + "\n", encode({"accuracy": "0.95", "model": "/ws/m"})]})
    status = sim.run()
    stored = status_to_dict(status)
    assert stored["tasks"]["train"]["outputs"] == {"parameters": {"accuracy": "0.95", "model": "/ws/m"}}
    assert all("outputs" not in a for a in stored["tasks"]["train"]["attempts"]), "kept once, on the task"
    assert dag.output_values(status_from_dict(stored)) == dag.output_values(status)
    assert status_to_dict(status_from_dict(stored)) == stored
