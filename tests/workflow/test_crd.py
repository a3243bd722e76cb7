"""The Workflow CRD: a valid apiextensions/v1 object with a structural schema that agrees with the parser."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from scheduler_extender.workflow import spec as spec_module
from scheduler_extender.workflow.catalog import load_catalog_file
from scheduler_extender.workflow.controller import ControllerConfig, WorkflowController
from scheduler_extender.workflow.podspec import check_runtimes
from scheduler_extender.workflow.spec import api_object, parse_workflow
from scheduler_extender.workflow.status import status_to_dict
from tests.workflow.memory_api import InMemoryApi, MemoryKubelet

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "deploy" / "crds" / "workflows.gedge.io.yaml"
EXAMPLES = sorted((REPO / "deploy" / "crds" / "examples").glob("*.yaml"))
TRAIN = REPO / "deploy" / "crds" / "examples" / "train-pipeline.yaml"
CATALOG = load_catalog_file(str(REPO / "deploy" / "runtime-catalog" / "runtime-catalog.yaml"))
CRD = yaml.safe_load(CRD_PATH.read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _as_jsonschema(node: Any) -> Any:
    """The OpenAPI schema as JSON Schema, as the API server applies it with strict field validation.

    x-kubernetes-int-or-string becomes its anyOf; an object with properties and
    no x-kubernetes-preserve-unknown-fields takes no other fields (kubectl's
    default `--validate=strict` refuses them instead of pruning them).
    """
    if isinstance(node, dict):
        out = {k: _as_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
        if (
            "properties" in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
            and "metadata" not in node["properties"]
        ):
            out["additionalProperties"] = False
        if node.get("x-kubernetes-int-or-string"):
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if out.get("format") == "date-time":
            out["pattern"] = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
        return out
    if isinstance(node, list):
        return [_as_jsonschema(v) for v in node]
    return node


VALIDATOR = jsonschema.Draft7Validator(_as_jsonschema(SCHEMA))


def structural_problems(node: dict[str, Any], path: str = "") -> list[str]:
    """The rules of a structural schema (apiextensions v1) that matter here."""
    problems = []
    special = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    if "type" not in node and not special:
        problems.append(f"{path or '/'}: no type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties together")
    if "properties" in node and node.get("type") != "object":
        problems.append(f"{path}: properties on a non-object")
    if node.get("type") == "array" and "items" not in node:
        problems.append(f"{path}: array without items")
    for key in ("oneOf", "anyOf", "allOf", "not"):
        if key in node:
            problems.append(f"{path}: {key} (types must be given directly)")
    for name, child in (node.get("properties") or {}).items():
        problems += structural_problems(child, f"{path}/{name}")
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(node["additionalProperties"], f"{path}/*")
    if isinstance(node.get("items"), dict):
        problems += structural_problems(node["items"], f"{path}[]")
    return problems


def test_crd_is_a_valid_apiextensions_v1_object():
    kubernetes_validate.validate(CRD, "1.31.0", strict=True)
    assert CRD["apiVersion"] == "apiextensions.k8s.io/v1"
    assert CRD["metadata"]["name"] == f"{CRD['spec']['names']['plural']}.{CRD['spec']['group']}"
    version = CRD["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert version["served"] and version["storage"]


def test_crd_schema_is_structural():
    assert structural_problems(SCHEMA) == []


def test_structural_check_catches_a_typeless_node():
    broken = copy.deepcopy(SCHEMA)
    del broken["properties"]["spec"]["properties"]["failFast"]["type"]
    assert structural_problems(broken) == ["/spec/failFast: no type"]


def test_crd_task_fields_are_exactly_the_parsers():
    task_props = set(SCHEMA["properties"]["spec"]["properties"]["tasks"]["items"]["properties"])
    assert task_props == spec_module._TASK_FIELDS
    assert set(SCHEMA["properties"]["spec"]["properties"]) == spec_module._SPEC_FIELDS


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_pass_the_schema_the_parser_and_the_catalog(path):
    doc = yaml.safe_load(path.read_text())
    assert list(VALIDATOR.iter_errors(doc)) == []
    check_runtimes(parse_workflow(doc), CATALOG)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["spec"]["tasks"][0].update(name="Train"), "name"),
        (lambda d: d["spec"]["tasks"][0]["acceleration"].update(topologyPolicy="tight"), "topologyPolicy"),
        (lambda d: d["spec"]["tasks"][0].update(runtime=["cuda-11.2"]), "runtime"),
        (lambda d: d["spec"]["tasks"][0]["retryStrategy"].update(retryPolicy="Never"), "retryPolicy"),
        (lambda d: d["spec"]["tasks"][0]["container"].pop("image"), "image"),
        (lambda d: d["spec"].update(tasks=[]), "tasks"),
        (lambda d: d["spec"]["onExit"].update(dependencies=["train"]), "dependencies"),
    ],
)
def test_schema_rejects_what_the_parser_rejects(mutate, field):
    doc = yaml.safe_load(TRAIN.read_text())
    mutate(doc)
    errors = list(VALIDATOR.iter_errors(doc))
    assert errors, f"schema accepted a bad {field}"
    assert any(field in "/".join(map(str, e.absolute_path)) + e.message for e in errors)


def test_file_form_is_normalised_into_what_the_crd_stores():
    raw = yaml.safe_load(
        """
metadata: {name: quick}
spec:
  parameters: {epochs: 3, fast: true}
  tasks:
  - {name: a, container: {image: x}, runtime: [cuda-12.2, cudnn-8.9]}
  - {name: b, container: {image: x}, dependencies: a}
"""
    )
    assert list(VALIDATOR.iter_errors(raw))
    obj = api_object(raw, namespace="ml")
    assert list(VALIDATOR.iter_errors(obj)) == []
    assert obj["spec"]["tasks"][0]["runtime"] == "cuda-12.2,cudnn-8.9"
    assert obj["spec"]["parameters"] == {"epochs": "3", "fast": "true"}
    assert obj["metadata"]["namespace"] == "ml"
    assert parse_workflow(obj).spec == parse_workflow(raw, namespace="ml").spec


def test_status_the_controller_writes_fits_the_status_schema():
    doc = yaml.safe_load(TRAIN.read_text())
    doc["spec"]["parameters"]["quantize"] = "false"
    for task in doc["spec"]["tasks"]:
        task.pop("retryStrategy", None)
    api = InMemoryApi()
    api.create_workflow("ml", doc)
    codes = {"verify": 2}
    with MemoryKubelet(api, outcome=lambda pod: codes.get(pod["metadata"]["labels"]["gedge.io/task"], 0)):
        status = WorkflowController(
            api, catalog=CATALOG, config=ControllerConfig(watch_timeout_seconds=1, max_wait_seconds=0.5)
        ).run("ml", doc["metadata"]["name"])
    assert status.phase == "Failed"
    stored = api.workflows[("ml", doc["metadata"]["name"])]
    assert list(VALIDATOR.iter_errors(stored)) == []
    assert stored["status"] == status_to_dict(status)
    phases = {name: entry["phase"] for name, entry in stored["status"]["tasks"].items()}
    assert phases["optimize"] == "Skipped" and phases["verify"] == "Failed" and phases["serve"] == "Omitted"
    assert phases["cleanup"] == "Succeeded"
