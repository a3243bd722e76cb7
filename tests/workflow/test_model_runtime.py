"""Model-driven runtime choice from the catalog's compatibility metadata, and the spec rules of
serve tasks, models and the workspace."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scheduler_extender.workflow.catalog import CatalogError, catalog_from_dict, load_catalog_file
from scheduler_extender.workflow.composer import CompositionError, choose_runtime
from scheduler_extender.workflow.podspec import build_pod, check_runtimes
from scheduler_extender.workflow.spec import WorkflowSpecError, parse_workflow

REPO = Path(__file__).resolve().parents[2]
CATALOG = load_catalog_file(str(REPO / "deploy" / "runtime-catalog" / "runtime-catalog.yaml"))


def test_the_stack_with_the_oldest_driver_wins_so_the_most_nodes_qualify():
    choice = choose_runtime(CATALOG, "tensorflow", "2.11", "savedmodel")
    assert choice.runtime == ("tf2-py38-2.11", "cuda-11.2", "cudnn-8.2.1")
    assert "needs NVIDIA driver >= 460.27.03" in choice.reason
    assert "tf2-py38-2.11 takes tensorflow>=2.0,<=2.11 (savedmodel, keras, h5)" in choice.reason


def test_a_newer_model_gets_the_newer_stack_and_its_driver():
    choice = choose_runtime(CATALOG, "tensorflow", "2.14", None)
    assert choice.runtime == ("tf2-py310-2.15", "cuda-12.2", "cudnn-8.9")
    assert "535.54.03" in choice.reason


def test_requirements_are_completed_transitively():
    choice = choose_runtime(CATALOG, "tensorrt", "8.6.1", "plan")
    assert choice.runtime == ("tensorrt-8.6", "cuda-11.8", "cudnn-8.9"), "cudnn 8.9 itself needs cuda>=11.8"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            ("tensorflow", "1.15", "savedmodel"),
            "model tensorflow 1.15 (savedmodel): no runtime in the catalog takes it "
            "(tf2-py38-2.11 takes tensorflow>=2.0,<=2.11 (savedmodel, keras, h5); "
            "tf2-py310-2.15 takes tensorflow>=2.0,<=2.15 (savedmodel, keras, h5))",
        ),
        (("pytorch", "2.1", "onnx"), "torch2-py310-2.1 takes pytorch>=1.13,<=2.1 (torchscript, pt)"),
        (
            ("jax", "0.4", None),
            "no runtime in the catalog takes jax models (frameworks it has: onnx, pytorch",
        ),
    ],
)
def test_refusals_name_what_is_incompatible_with_what(model, message):
    with pytest.raises(CompositionError) as caught:
        choose_runtime(CATALOG, *model)
    assert message in str(caught.value)


def test_a_taker_whose_requirements_cannot_be_met_is_named():
    catalog = catalog_from_dict(
        {
            "components": [
                {"name": "cuda", "version": "11.2", "kind": "cuda", "volume": "rt", "mountPath": "/opt/cuda"},
                {
                    "name": "tf2",
                    "version": "2.15",
                    "kind": "python",
                    "volume": "rt",
                    "mountPath": "/opt/py",
                    "requires": ["cuda>=12.2"],
                    "models": [{"framework": "tensorflow", "versions": "<=2.15"}],
                },
            ]
        }
    )
    with pytest.raises(
        CompositionError, match=r"tf2-2.15 requires cuda>=12.2, which the catalog cannot meet"
    ):
        choose_runtime(catalog, "tensorflow", "2.15", None)


def test_bad_model_metadata_in_the_catalog_is_refused():
    raw = {"components": [{"name": "x", "version": "1", "kind": "python", "volume": "rt", "mountPath": "/x"}]}
    raw["components"][0]["models"] = [{"framework": "tensorflow", "versions": "2.11"}]
    with pytest.raises(CatalogError, match=r"component x-1.models\[0\].versions: '2.11' is not a specifier"):
        catalog_from_dict(raw)


def _doc(task: dict, extra: dict | None = None) -> dict:
    return {"metadata": {"name": "wf"}, "spec": {"tasks": [task], **(extra or {})}}


def test_a_model_task_gets_its_chosen_runtime_in_its_pod():
    workflow = parse_workflow(
        _doc(
            {"name": "infer", "model": {"framework": "pytorch", "version": 2.1}, "container": {"image": "x"}}
        )
    )
    choices = check_runtimes(workflow, CATALOG)
    assert choices["infer"].runtime == ("torch2-py310-2.1", "cuda-11.8")
    pod = build_pod(workflow, workflow.spec.task("infer"), 0, catalog=CATALOG)
    assert pod["metadata"]["annotations"]["gedge.io/runtime"] == "torch2-py310-2.1,cuda-11.8"
    assert pod["metadata"]["annotations"]["gedge.io/min-nvidia-driver"] == "520.61.05"


def test_a_model_without_a_catalog_is_refused_naming_workflow_and_task():
    workflow = parse_workflow(
        _doc(
            {
                "name": "infer",
                "model": {"framework": "pytorch", "version": "2.1"},
                "container": {"image": "x"},
            }
        )
    )
    with pytest.raises(CompositionError, match=r"'wf': task 'infer'\.model: pytorch 2\.1 given"):
        check_runtimes(workflow, None)


@pytest.mark.parametrize(
    ("task", "extra", "message"),
    [
        (
            {"name": "a", "runtime": "cuda-11.2", "model": {"framework": "tf", "version": "2"}},
            None,
            "give model (the catalog picks the runtime) or runtime (named by hand), not both",
        ),
        ({"name": "a", "model": {"framework": "tf", "version": "two"}}, None, "'two' is not a version"),
        ({"name": "a", "serve": {"port": 0}}, None, "serve.port: expected the port"),
        ({"name": "a", "serve": {"port": 80, "name": "Bad_Name"}}, None, "serve.name: 'Bad_Name'"),
        ({"name": "a", "serve": {"port": 80, "ttl": "soon"}}, None, "serve.ttl: 'soon' is not a duration"),
        ({"name": "a", "serve": {"port": 80, "readinessProbe": {"x": 1}}}, None, "needs one of httpGet"),
        (
            {"name": "a", "workspace": {"mountPath": "rel"}},
            {"workspace": {"size": "1Gi"}},
            "an absolute path",
        ),
        ({"name": "a"}, {"workspace": {"size": "1Gi", "claimName": "x"}}, "give claimName"),
        ({"name": "a"}, {"workspace": {"size": "lots"}}, "'lots' is not a quantity"),
        ({"name": "a"}, {"workspace": {"size": "1Gi", "accessModes": ["RW"]}}, "'RW' is not one of"),
    ],
)
def test_serve_model_and_workspace_mistakes_name_the_field(task, extra, message):
    task = {"container": {"image": "x"}, **task}
    with pytest.raises(WorkflowSpecError) as caught:
        parse_workflow(_doc(task, extra))
    assert message in str(caught.value)
    assert "'wf'" in str(caught.value)


def test_two_serve_tasks_cannot_share_a_name_and_the_exit_handler_cannot_serve():
    doc = yaml.safe_load(
        """
metadata: {name: wf}
spec:
  tasks:
  - {name: a, container: {image: x}, serve: {port: 80, name: web}}
  - {name: b, container: {image: x}, serve: {port: 81, name: web}}
"""
    )
    with pytest.raises(WorkflowSpecError, match="tasks 'a' and 'b' both serve as 'web'"):
        parse_workflow(doc)
    doc["spec"]["tasks"].pop()
    doc["spec"]["onExit"] = {"name": "z", "container": {"image": "x"}, "serve": {"port": 80}}
    with pytest.raises(WorkflowSpecError, match="the exit handler cannot be a server"):
        parse_workflow(doc)


def test_workspace_mounts_default_to_the_workflows_path_and_name_an_existing_claim():
    workflow = parse_workflow(
        _doc(
            {"name": "a", "container": {"image": "x"}, "workspace": {"subPath": "runs/1"}},
            {"workspace": {"claimName": "shared-data", "mountPath": "/data"}},
        )
    )
    pod = build_pod(workflow, workflow.spec.task("a"), 0, catalog=None)
    assert pod["spec"]["containers"][0]["volumeMounts"] == [
        {"name": "gedge-workspace", "mountPath": "/data", "subPath": "runs/1"}
    ]
    assert pod["spec"]["volumes"] == [
        {"name": "gedge-workspace", "persistentVolumeClaim": {"claimName": "shared-data"}}
    ]
    assert workflow.spec.workspace is not None and not workflow.spec.workspace.create
