"""gedge-flow: help, dry-run and refusals as a user runs them; run/get/logs/delete over the API boundary."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import structlog
import yaml

from scheduler_extender.workflow import cli
from scheduler_extender.workflow.kube import KubernetesWorkflowApi
from tests.workflow.memory_api import InMemoryApi, MemoryKubelet

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "crds" / "examples" / "train-pipeline.yaml"
CATALOG = REPO / "deploy" / "runtime-catalog" / "runtime-catalog.yaml"
GEDGE_FLOW = Path(sys.executable).parent / "gedge-flow"


def _flow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GEDGE_FLOW), *args], capture_output=True, text=True, timeout=60, check=False)


def test_help_lists_the_commands_with_examples():
    result = _flow("--help")
    assert result.returncode == 0
    for command in ("run", "get", "logs", "delete", "controller"):
        assert command in result.stdout
    assert "gedge-flow run" in result.stdout and "--dry-run" in result.stdout
    sub = _flow("run", "--help")
    assert sub.returncode == 0 and "-p epochs=5" in sub.stdout and "Exit status" in sub.stdout


def test_dry_run_prints_the_pods_in_dependency_order():
    result = _flow(
        "run", str(EXAMPLE), "--dry-run", "--catalog", str(CATALOG), "-n", "ml", "-p", "quantize=false"
    )
    assert result.returncode == 0, result.stderr
    pods = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    names = [f"{p['kind']}/{p['metadata']['name']}" for p in pods]
    assert names == [
        "Pod/resnet-edge-train-0",
        "Pod/resnet-edge-validate-0",
        "Pod/resnet-edge-verify-0",
        "Deployment/resnet-edge-serve",
        "Service/resnet-edge-serve",
        "Pod/resnet-edge-cleanup-0",
    ], "optimize is skipped by its when, report-failure omitted on success; serve is kept warm"
    serve = pods[3]["spec"]["template"]["spec"]
    assert serve["restartPolicy"] == "Always" and serve["schedulerName"] == "gedge-scheduler"
    assert serve["containers"][0]["readinessProbe"] == {"tcpSocket": {"port": 8000}, "periodSeconds": 5}
    train = pods[0]
    assert train["metadata"]["namespace"] == "ml"
    assert train["spec"]["schedulerName"] == "gedge-scheduler"
    assert train["spec"]["containers"][0]["args"] == ["--data", "/data/imagenet-subset", "--epochs", "20"]
    assert train["spec"]["activeDeadlineSeconds"] == 14400
    assert pods[-1]["spec"]["containers"][0]["args"] == ["resnet-edge finished: Succeeded"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-p", "nope=1"], "declares no such parameter"),
        (["-p", "broken"], "expected NAME=VALUE"),
        ([], "runtime cuda-11.2,cudnn-8.2.1,tf2-py38 given but no runtime catalog"),
    ],
)
def test_refusals_exit_2_with_the_reason(extra, message):
    args = ["run", str(EXAMPLE), "--dry-run", *extra]
    if extra:
        args += ["--catalog", str(CATALOG)]
    result = _flow(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_runtime_conflict_is_refused_before_anything_is_submitted(tmp_path):
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["tasks"][0]["runtime"] = "cuda-12.2,cudnn-8.2.1,tf2-py38"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    result = _flow("run", str(bad), "--dry-run", "--catalog", str(CATALOG))
    assert result.returncode == 2
    assert "task train: cudnn-8.2.1 requires cuda>=11.0,<12, but the runtime has cuda-12.2" in result.stderr


@pytest.fixture
def memory_cluster(monkeypatch):
    """The CLI in-process with the in-memory API; the global logging setup it makes is undone after."""
    api = InMemoryApi()
    monkeypatch.setattr(
        KubernetesWorkflowApi, "from_kubeconfig", classmethod(lambda cls, path=None, context=None: api)
    )
    saved = structlog.get_config()
    yield api
    structlog.configure(**saved)


def test_run_get_logs_delete_over_the_api(memory_cluster, capsys, tmp_path):
    doc = yaml.safe_load(EXAMPLE.read_text())
    for task in doc["spec"]["tasks"]:
        task.pop("retryStrategy", None)
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(doc))
    codes = {"validate": 3}
    with MemoryKubelet(
        memory_cluster, outcome=lambda pod: codes.get(pod["metadata"]["labels"]["gedge.io/task"], 0)
    ):
        code = cli.main(["run", str(path), "-n", "ml", "--catalog", str(CATALOG)])
    out = capsys.readouterr().out
    assert code == 0, "report-failure handled the failed validate step"
    assert "workflow ml/resnet-edge submitted" in out
    assert "train Running pod resnet-edge-train-0" in out
    assert "validate Failed - Error; exit code 3" in out
    assert "report-failure Succeeded" in out
    stored = memory_cluster.workflows[("ml", "resnet-edge")]
    assert stored["spec"]["tasks"][0]["runtime"] == "cuda-11.2,cudnn-8.2.1,tf2-py38"

    assert cli.main(["get", "resnet-edge", "-n", "ml"]) == 0
    tree = capsys.readouterr().out
    assert "│  └─✖ validate" in tree and "resnet-edge-validate-0" in tree
    assert "└─✔ cleanup" in tree and "exit handler" in tree

    memory_cluster.logs["resnet-edge-validate-0"] = "accuracy 0.41 < 0.9\n"
    assert cli.main(["logs", "resnet-edge", "validate", "-n", "ml"]) == 0
    assert capsys.readouterr().out == "accuracy 0.41 < 0.9\n"
    assert cli.main(["logs", "resnet-edge", "serve", "-n", "ml"]) == 2
    assert "step serve never ran: Omitted" in capsys.readouterr().err

    assert cli.main(["delete", "resnet-edge", "-n", "ml"]) == 0
    assert "deleted with" in capsys.readouterr().out
    assert memory_cluster.workflows == {} and memory_cluster.pods == {}
    assert cli.main(["get", "resnet-edge", "-n", "ml"]) == 2


def test_run_resumes_a_workflow_that_exists(memory_cluster, capsys, tmp_path):
    path = tmp_path / "wf.yaml"
    path.write_text("metadata: {name: tiny}\nspec:\n  tasks:\n  - {name: only, container: {image: x}}\n")
    with MemoryKubelet(memory_cluster):
        assert cli.main(["run", str(path), "--no-wait"]) == 0
        assert cli.main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "submitted" in out and "exists; resuming it" in out
    assert memory_cluster.pod_creations == ["tiny-only-0"]


def test_controller_mode_drives_every_workflow_created_in_the_namespace(memory_cluster, capsys):
    import os
    import signal
    import threading

    for name, code in (("first", 0), ("second", 5)):
        memory_cluster.create_workflow(
            "ml",
            {
                "metadata": {"name": name},
                "spec": {
                    "tasks": [
                        {"name": "a", "container": {"image": "x"}},
                        {
                            "name": "b",
                            "dependencies": ["a"],
                            "container": {"image": "x", "env": [{"name": "CODE", "value": str(code)}]},
                        },
                    ]
                },
            },
        )

    def exit_code(pod):
        env = pod["spec"]["containers"][0].get("env") or []
        return int(next((e["value"] for e in env if e["name"] == "CODE"), "0"))

    def phases():
        return {n: (w.get("status") or {}).get("phase") for (_, n), w in memory_cluster.workflows.items()}

    def stop_when_done():
        deadline = 60
        while deadline > 0 and phases() != {"first": "Succeeded", "second": "Failed"}:
            threading.Event().wait(0.1)
            deadline -= 0.1
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    watcher = threading.Thread(target=stop_when_done, daemon=True)
    with MemoryKubelet(memory_cluster, outcome=exit_code):
        watcher.start()
        assert cli.main(["controller", "-n", "ml", "--poll", "0.2"]) == 0
    assert phases() == {"first": "Succeeded", "second": "Failed"}
    assert sorted(memory_cluster.pod_creations) == ["first-a-0", "first-b-0", "second-a-0", "second-b-0"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_catalog_from_a_configmap_in_the_cluster(memory_cluster, capsys, tmp_path):
    memory_cluster.config_maps[("gedge-system", "gedge-runtime-catalog")] = yaml.safe_load(
        CATALOG.read_text()
    )
    path = tmp_path / "wf.yaml"
    path.write_text(
        "metadata: {name: cuda}\nspec:\n  tasks:\n"
        "  - {name: only, container: {image: x}, runtime: cuda-11.8}\n"
    )
    with MemoryKubelet(memory_cluster):
        code = cli.main(
            ["run", str(path), "-n", "ml", "--catalog-configmap", "gedge-system/gedge-runtime-catalog"]
        )
    assert code == 0
    pod = memory_cluster.pods[("ml", "cuda-only-0")]
    assert pod["metadata"]["annotations"]["gedge.io/min-nvidia-driver"] == "520.61.05"
    assert cli.main(["run", str(path), "-n", "ml", "--catalog-configmap", "gedge-system/missing"]) == 2
    assert 'configmap gedge-system/missing: configmaps "missing" not found' in capsys.readouterr().err


GOOD_EXAMPLES = sorted((REPO / "deploy" / "crds" / "examples").glob("*.yaml"))
BROKEN_EXAMPLES = sorted((REPO / "deploy" / "crds" / "examples" / "broken").glob("*.yaml"))


def test_lint_passes_the_examples_offline():
    result = _flow("lint", *map(str, GOOD_EXAMPLES), "--catalog", str(CATALOG))
    assert result.returncode == 0, result.stdout
    assert result.stdout.count(": ok (1 workflow)") == len(GOOD_EXAMPLES) >= 2


@pytest.mark.parametrize("path", BROKEN_EXAMPLES, ids=[p.name for p in BROKEN_EXAMPLES])
def test_lint_names_the_workflow_task_and_field_of_each_broken_example(path):
    expected = path.read_text().splitlines()[0].removeprefix("# lint: ")
    doc = yaml.safe_load(path.read_text())
    result = _flow("lint", str(path), "--catalog", str(CATALOG))
    assert result.returncode == 1
    line = result.stdout.strip()
    assert line.startswith(f"{path}: workflow {doc['metadata']['name']!r}: task "), line
    assert expected in line


def test_lint_reports_every_file_and_unreadable_ones(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("metadata: {name: a}\nspec: {tasks: [{name: t, container: {image: x}}]}\n---\n" * 1)
    result = _flow("lint", str(good), str(tmp_path / "missing.yaml"), str(BROKEN_EXAMPLES[0]))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"{good}: ok (1 workflow)"
    assert lines[1] == f"{tmp_path / 'missing.yaml'}: No such file or directory"
    assert lines[2].startswith(str(BROKEN_EXAMPLES[0]))


def _diamond(memory_cluster) -> None:
    memory_cluster.create_workflow(
        "ml",
        yaml.safe_load(
            """
metadata: {name: shapes}
spec:
  tasks:
  - {name: a, container: {image: x}}
  - {name: b, dependencies: [a], container: {image: x}, serve: {port: 80}}
  - {name: c, dependencies: [a], when: "1 > 2", container: {image: x}}
  onExit: {name: done, container: {image: x}}
"""
        ),
    )


def test_get_draws_the_dag_as_dot_with_phases_and_the_endpoint(memory_cluster, capsys):
    from scheduler_extender.workflow.controller import WorkflowController

    _diamond(memory_cluster)
    with MemoryKubelet(memory_cluster):
        WorkflowController(memory_cluster, catalog=None).run("ml", "shapes")
    capsys.readouterr()
    assert cli.main(["get", "shapes", "-n", "ml", "-o", "dot"]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith('digraph "shapes" {') and dot.rstrip().endswith("}")
    assert '"a" -> "b";' in dot and '"a" -> "c";' in dot
    assert '"b" -> "done" [style=dashed];' in dot and '"c" -> "done" [style=dashed];' in dot
    b = next(line for line in dot.splitlines() if line.startswith('  "b" ['))
    assert "shape=cylinder" in b and "shapes-b.ml.svc:80" in b and 'fillcolor="#a6e3a1"' in b
    c = next(line for line in dot.splitlines() if line.startswith('  "c" ['))
    assert "Skipped" in c and "dashed" in c
    assert cli.main(["get", "shapes", "-n", "ml"]) == 0
    assert "serving at shapes-b.ml.svc:80" in capsys.readouterr().out
    code = cli.main(["get", "shapes", "-n", "ml", "-o", "svg"])
    if shutil.which("dot"):
        assert code == 0 and "<svg" in capsys.readouterr().out
    else:
        assert code == 2 and "needs Graphviz's dot on PATH" in capsys.readouterr().err


def test_get_watch_shows_progress_until_the_workflow_ends(memory_cluster, capsys):
    import threading

    from scheduler_extender.workflow.commands.get import watch
    from scheduler_extender.workflow.controller import ControllerConfig, WorkflowController

    _diamond(memory_cluster)
    shown: list[str] = []
    a_shown_running = threading.Event()

    def show(text: str) -> None:
        shown.append(text)
        if "● a" in text:
            a_shown_running.set()

    def outcome(pod: dict) -> int | None:
        # step a ends only once the watch has shown it running
        held = pod["metadata"]["labels"]["gedge.io/task"] == "a" and not a_shown_running.is_set()
        return None if held else 0

    stop = threading.Event()
    with MemoryKubelet(memory_cluster, outcome=outcome, run_seconds=0.05):
        driver = threading.Thread(
            target=WorkflowController(
                memory_cluster,
                catalog=None,
                config=ControllerConfig(watch_timeout_seconds=1, max_wait_seconds=0.2),
            ).run,
            args=("ml", "shapes"),
            kwargs={"stop": stop},
        )
        driver.start()
        try:
            code = watch(memory_cluster, "ml", "shapes", "tree", 0.05, threading.Event(), show)
        finally:
            stop.set()
            driver.join(timeout=10)
    assert code == 0
    assert len(shown) >= 3, "one view per change"
    assert any("● a" in view for view in shown), "a view while the first step ran"
    assert "✔ shapes" in shown[-1] and "✔ done" in shown[-1]
    assert all("✔ shapes" not in view for view in shown[:-1]), "it stops at the end"


def test_controller_logs_json_with_levels_from_its_start(memory_cluster, capsys):
    import json
    import os
    import signal
    import threading

    before = signal.getsignal(signal.SIGTERM)

    def stop_once_it_handles_sigterm() -> None:
        while signal.getsignal(signal.SIGTERM) is before:
            threading.Event().wait(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_once_it_handles_sigterm, daemon=True).start()
    assert cli.main(["controller", "-n", "ml", "--poll", "0.1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert lines[0]["event"] == "workflow controller starting" and lines[0]["level"] == "info"
    assert lines[0]["namespace"] == "ml" and "timestamp" in lines[0]
    assert lines[-1]["event"] == "workflow controller stopped"


def test_dry_run_of_the_serve_pipeline_shows_outputs_workspace_and_chosen_runtimes():
    example = REPO / "deploy" / "crds" / "examples" / "serve-pipeline.yaml"
    result = _flow("run", str(example), "--dry-run", "--catalog", str(CATALOG))
    assert result.returncode == 0, result.stderr
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert [f"{o['kind']}/{o['metadata']['name']}" for o in objects] == [
        "Pod/resnet-serve-train-0",
        "Pod/resnet-serve-optimize-0",
        "Deployment/resnet",
        "Service/resnet",
    ], "the when on train's accuracy is taken as true in a plan"
    train = objects[0]
    assert train["metadata"]["annotations"]["gedge.io/runtime"] == "tf2-py38-2.11,cuda-11.2,cudnn-8.2.1"
    assert train["spec"]["containers"][0]["command"][:2] == ["/bin/sh", "-c"]
    optimize = objects[1]["spec"]["containers"][0]
    assert {"name": "MODEL_DIR", "value": "<tasks.train.outputs.parameters.model-dir>"} in optimize["env"]
    template = objects[2]["spec"]["template"]
    assert template["metadata"]["annotations"]["gedge.io/runtime"] == "tensorrt-8.6,cuda-11.8,cudnn-8.9"
    assert template["spec"]["containers"][0]["args"][:2] == [
        "--engine",
        "<tasks.optimize.outputs.parameters.engine>",
    ]
    assert {"name": "gedge-workspace", "persistentVolumeClaim": {"claimName": "resnet-serve-workspace"}} in (
        template["spec"]["volumes"]
    )
