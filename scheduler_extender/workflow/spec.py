"""A Workflow as written (CR or YAML file), validated into frozen dataclasses.

Every error names the workflow, the task and the field at fault. A spec that
passes here can be run: names are unique, the graph has no cycle, every
`depends`/`when` parses and refers to something that exists.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from scheduler_extender.placement.request import (
    ANNOTATION_COMMUNICATION,
    ANNOTATION_COMPUTE,
    ANNOTATION_RUNTIME,
    ANNOTATION_TOPOLOGY_AWARE,
    ANNOTATION_TOPOLOGY_POLICY,
    RequestError,
    parse_pod_request,
)
from scheduler_extender.workflow import expr

API_GROUP = "gedge.io"
API_VERSION = "gedge.io/v1alpha1"
KIND = "Workflow"
PLURAL = "workflows"

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}")
MAX_TASKS = 500

RETRY_POLICIES = ("Always", "OnFailure", "OnError")

_TASK_FIELDS = {
    "name",
    "container",
    "runtime",
    "resources",
    "acceleration",
    "annotations",
    "labels",
    "nodeSelector",
    "tolerations",
    "dependencies",
    "depends",
    "when",
    "retryStrategy",
    "activeDeadlineSeconds",
}
_SPEC_FIELDS = {
    "parameters",
    "tasks",
    "onExit",
    "failFast",
    "activeDeadlineSeconds",
    "schedulerName",
    "serviceAccountName",
}


class WorkflowSpecError(ValueError):
    """A workflow that cannot run as written; the message names the workflow, task and field."""


@dataclass(frozen=True)
class Backoff:
    duration: float = 0.0
    factor: float = 1.0
    max_duration: float | None = None

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (0 = the first retry)."""
        return self.duration * (self.factor**retry)


@dataclass(frozen=True)
class RetryStrategy:
    limit: int = 0
    policy: str = "OnFailure"
    backoff: Backoff = field(default_factory=Backoff)

    def retries(self, phase: str) -> bool:
        """Whether an attempt that ended in `phase` is worth another try under this policy."""
        return (
            self.policy == "Always"
            or (self.policy == "OnFailure" and phase == "Failed")
            or (self.policy == "OnError" and phase == "Errored")
        )


@dataclass(frozen=True)
class TaskSpec:
    name: str
    container: Mapping[str, Any]
    runtime: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    predecessors: tuple[str, ...] = ()
    depends: expr.Node | None = None
    depends_text: str | None = None
    when: expr.Node | None = None
    when_text: str | None = None
    retry: RetryStrategy = field(default_factory=RetryStrategy)
    active_deadline_seconds: int | None = None


@dataclass(frozen=True)
class WorkflowSpec:
    tasks: tuple[TaskSpec, ...]
    parameters: Mapping[str, str] = field(default_factory=dict)
    on_exit: TaskSpec | None = None
    fail_fast: bool = True
    active_deadline_seconds: int | None = None
    scheduler_name: str | None = None
    service_account_name: str | None = None

    @cached_property
    def _by_name(self) -> dict[str, TaskSpec]:
        return {t.name: t for t in self.all_tasks()}

    @cached_property
    def _dependents(self) -> dict[str, tuple[TaskSpec, ...]]:
        out: dict[str, list[TaskSpec]] = {}
        for t in self.tasks:
            for p in t.predecessors:
                out.setdefault(p, []).append(t)
        return {k: tuple(v) for k, v in out.items()}

    @cached_property
    def order(self) -> tuple[str, ...]:
        """Main tasks with every predecessor first, ties in the order written."""
        return _topological_order(self.tasks)

    def task(self, name: str) -> TaskSpec:
        return self._by_name[name]

    def all_tasks(self) -> tuple[TaskSpec, ...]:
        return self.tasks + ((self.on_exit,) if self.on_exit else ())

    def dependents(self, name: str) -> tuple[TaskSpec, ...]:
        return self._dependents.get(name, ())


@dataclass(frozen=True)
class Workflow:
    name: str
    namespace: str
    spec: WorkflowSpec
    uid: str | None = None
    raw_status: Mapping[str, Any] | None = None


def parse_duration(value: Any, where: str) -> float:
    """Seconds from a number or a Go-style duration ("10s", "1m30s", "500ms", "2h")."""
    if isinstance(value, bool):
        raise WorkflowSpecError(f"{where}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise WorkflowSpecError(f"{where}: duration {value!r} is negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return float(text)
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
            return sum(float(n) * scale[u] for n, u in parts)
    raise WorkflowSpecError(f'{where}: {value!r} is not a duration (e.g. 30, "10s", "1m30s", "2h")')


def template_references(value: Any) -> set[str]:
    """Every `{{path}}` inside the strings of a nested structure."""
    if isinstance(value, str):
        return set(_TEMPLATE.findall(value))
    if isinstance(value, Mapping):
        return set().union(*(template_references(v) for v in value.values())) if value else set()
    if isinstance(value, list | tuple):
        return set().union(*(template_references(v) for v in value)) if value else set()
    return set()


def substitute(value: Any, values: Mapping[str, str]) -> Any:
    """A copy of `value` with every `{{path}}` replaced; an unknown path is an error."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            if match.group(1) not in values:
                raise WorkflowSpecError(f"unknown reference {{{{{match.group(1)}}}}}")
            return values[match.group(1)]

        return _TEMPLATE.sub(replace, value)
    if isinstance(value, Mapping):
        return {k: substitute(v, values) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [substitute(v, values) for v in value]
    return value


def _mapping(raw: Any, where: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise WorkflowSpecError(f"{where}: expected a mapping, got {type(raw).__name__}")
    return raw


def _string_map(raw: Any, where: str) -> dict[str, str]:
    out = {}
    for key, value in _mapping(raw, where).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise WorkflowSpecError(f"{where}.{key}: keys and values must be strings, got {value!r}")
        out[key] = value
    return out


def _positive_int(raw: Any, where: str) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
        raise WorkflowSpecError(f"{where}: expected a positive integer, got {raw!r}")
    return raw


def _string_list(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise WorkflowSpecError(f"{where}: expected a list of strings, got {raw!r}")
    return tuple(raw)


def validate_pod_request(task: str, container: Mapping[str, Any], annotations: Mapping[str, str]) -> None:
    """The task's pod as the extender will read it: the same parser, so the two never disagree."""
    pod = {
        "metadata": {"name": task, "annotations": dict(annotations)},
        "spec": {"containers": [{"name": "main", **container}]},
    }
    try:
        parse_pod_request(pod)
    except RequestError as exc:
        raise WorkflowSpecError(f"task {task!r}: {exc.field}: {str(exc).split(': ', 2)[-1]}") from None


def _acceleration(raw: Any, where: str) -> dict[str, str]:
    """The structured `acceleration` block as the annotations the extender reads."""
    block = _mapping(raw, where)
    unknown = set(block) - {"topologyAware", "topologyPolicy", "communication", "compute"}
    if unknown:
        raise WorkflowSpecError(f"{where}: unknown field(s) {sorted(unknown)}")
    out: dict[str, str] = {}
    if "topologyAware" in block:
        if not isinstance(block["topologyAware"], bool):
            raise WorkflowSpecError(f"{where}.topologyAware: expected true or false")
        out[ANNOTATION_TOPOLOGY_AWARE] = "true" if block["topologyAware"] else "false"
    if "topologyPolicy" in block:
        out[ANNOTATION_TOPOLOGY_POLICY] = str(block["topologyPolicy"])
    for key, annotation in (("communication", ANNOTATION_COMMUNICATION), ("compute", ANNOTATION_COMPUTE)):
        if key in block:
            out[annotation] = json.dumps(list(_string_list(block[key], f"{where}.{key}")))
    return out


def _retry(raw: Any, where: str) -> RetryStrategy:
    if raw is None:
        return RetryStrategy()
    block = _mapping(raw, where)
    unknown = set(block) - {"limit", "retryPolicy", "backoff"}
    if unknown:
        raise WorkflowSpecError(f"{where}: unknown field(s) {sorted(unknown)}")
    limit = block.get("limit", 0)
    if isinstance(limit, str) and limit.isdigit():
        limit = int(limit)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise WorkflowSpecError(f"{where}.limit: expected a non-negative integer, got {limit!r}")
    policy = block.get("retryPolicy", "OnFailure")
    if policy not in RETRY_POLICIES:
        raise WorkflowSpecError(f"{where}.retryPolicy: {policy!r} not one of {RETRY_POLICIES}")
    backoff_raw = _mapping(block.get("backoff"), f"{where}.backoff")
    unknown = set(backoff_raw) - {"duration", "factor", "maxDuration"}
    if unknown:
        raise WorkflowSpecError(f"{where}.backoff: unknown field(s) {sorted(unknown)}")
    factor = backoff_raw.get("factor", 1)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or factor < 1:
        raise WorkflowSpecError(f"{where}.backoff.factor: expected a number >= 1, got {factor!r}")
    backoff = Backoff(
        duration=parse_duration(backoff_raw.get("duration", 0), f"{where}.backoff.duration"),
        factor=float(factor),
        max_duration=(
            parse_duration(backoff_raw["maxDuration"], f"{where}.backoff.maxDuration")
            if "maxDuration" in backoff_raw
            else None
        ),
    )
    return RetryStrategy(limit=limit, policy=policy, backoff=backoff)


def _task(raw: Any, where: str, *, exit_handler: bool = False) -> tuple[TaskSpec, list[str]]:
    block = _mapping(raw, where)
    name = block.get("name")
    if not isinstance(name, str) or not DNS_LABEL.match(name) or len(name) > 50:
        raise WorkflowSpecError(
            f"{where}.name: {name!r} must be lowercase letters, digits and '-' (at most 50 characters)"
        )
    where = f"task {name!r}"
    unknown = set(block) - _TASK_FIELDS
    if unknown:
        raise WorkflowSpecError(f"{where}: unknown field(s) {sorted(unknown)}")
    container = dict(_mapping(block.get("container"), f"{where}.container"))
    if not isinstance(container.get("image"), str) or not container["image"]:
        raise WorkflowSpecError(f"{where}.container.image: required")
    if "resources" in block:
        if "resources" in container:
            raise WorkflowSpecError(f"{where}: resources given both on the task and in its container")
        container["resources"] = copy.deepcopy(dict(_mapping(block["resources"], f"{where}.resources")))
    annotations = _string_map(block.get("annotations"), f"{where}.annotations")
    for key, value in _acceleration(block.get("acceleration"), f"{where}.acceleration").items():
        if key in annotations and annotations[key] != value:
            raise WorkflowSpecError(f"{where}: {key} given both as acceleration and annotation, differently")
        annotations[key] = value
    runtime = _string_list(block.get("runtime"), f"{where}.runtime")
    if ANNOTATION_RUNTIME in annotations:
        from_annotation = _string_list(annotations[ANNOTATION_RUNTIME], f"{where}.annotations")
        if runtime and runtime != from_annotation:
            raise WorkflowSpecError(f"{where}: runtime and the {ANNOTATION_RUNTIME} annotation disagree")
        runtime = from_annotation
    if runtime:
        annotations[ANNOTATION_RUNTIME] = ",".join(runtime)
    validate_pod_request(name, container, annotations)
    annotations.pop(ANNOTATION_RUNTIME, None)
    dependencies = _string_list(block.get("dependencies"), f"{where}.dependencies")
    depends_text = block.get("depends")
    if exit_handler and (dependencies or depends_text):
        raise WorkflowSpecError(f"{where}: the exit handler runs after everything and takes no dependencies")
    if dependencies and depends_text is not None:
        raise WorkflowSpecError(f"{where}: use either dependencies or depends, not both")
    depends = None
    if depends_text is not None:
        if not isinstance(depends_text, str):
            raise WorkflowSpecError(f"{where}.depends: expected a string")
        try:
            depends = expr.parse_depends(depends_text)
        except expr.ExpressionError as exc:
            raise WorkflowSpecError(f"{where}.depends: {exc}") from None
        predecessors = tuple(sorted(expr.depends_tasks(depends)))
    else:
        if len(set(dependencies)) != len(dependencies):
            raise WorkflowSpecError(f"{where}.dependencies: {list(dependencies)} names a task twice")
        predecessors = dependencies
        if dependencies:
            depends_text = " && ".join(dependencies)
            depends = expr.parse_depends(depends_text)
    when_text = block.get("when")
    when = None
    if when_text is not None:
        if not isinstance(when_text, str):
            raise WorkflowSpecError(f"{where}.when: expected a string")
        try:
            when = expr.parse_when(when_text)
        except expr.ExpressionError as exc:
            raise WorkflowSpecError(f"{where}.when: {exc}") from None
    tolerations = block.get("tolerations") or []
    if not isinstance(tolerations, list) or not all(isinstance(t, Mapping) for t in tolerations):
        raise WorkflowSpecError(f"{where}.tolerations: expected a list of mappings")
    task = TaskSpec(
        name=name,
        container=container,
        runtime=runtime,
        annotations=annotations,
        labels=_string_map(block.get("labels"), f"{where}.labels"),
        node_selector=_string_map(block.get("nodeSelector"), f"{where}.nodeSelector"),
        tolerations=tuple(dict(t) for t in tolerations),
        predecessors=predecessors,
        depends=depends,
        depends_text=depends_text,
        when=when,
        when_text=when_text,
        retry=_retry(block.get("retryStrategy"), f"{where}.retryStrategy"),
        active_deadline_seconds=_positive_int(
            block.get("activeDeadlineSeconds"), f"{where}.activeDeadlineSeconds"
        ),
    )
    return task, sorted(template_references(container))


def _parameters(raw: Any, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in _mapping(raw, where).items():
        if not isinstance(key, str) or not PARAMETER_NAME.match(key):
            raise WorkflowSpecError(f"{where}: {key!r} is not a parameter name")
        if isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, str | int | float):
            raise WorkflowSpecError(f"{where}.{key}: expected a string or number, got {value!r}")
        out[key] = str(value)
    return out


def find_cycle(edges: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle as a path that ends where it started, or None; `edges` maps a task to its predecessors."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in edges:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def reference_values(name: str, namespace: str, parameters: Mapping[str, str]) -> dict[str, str]:
    """What `{{...}}` can name in a task's container and `when`."""
    values = {f"workflow.parameters.{k}": v for k, v in parameters.items()}
    values["workflow.name"] = name
    values["workflow.namespace"] = namespace
    return values


POD_TIME_REFERENCES = ("task.name", "task.attempt", "workflow.status")


def parse_spec(
    raw: Any, *, name: str, namespace: str = "default", overrides: Mapping[str, str] | None = None
) -> WorkflowSpec:
    where = f"workflow {name!r}"
    block = _mapping(raw, f"{where}.spec")
    unknown = set(block) - _SPEC_FIELDS
    if unknown:
        raise WorkflowSpecError(f"{where}.spec: unknown field(s) {sorted(unknown)}")
    parameters = _parameters(block.get("parameters"), f"{where}.spec.parameters")
    for key, value in (overrides or {}).items():
        if key not in parameters:
            raise WorkflowSpecError(
                f"{where}: parameter {key!r} is set but the workflow declares no such parameter"
            )
        parameters[key] = value
    raw_tasks = block.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise WorkflowSpecError(f"{where}.spec.tasks: expected a non-empty list")
    if len(raw_tasks) > MAX_TASKS:
        raise WorkflowSpecError(f"{where}.spec.tasks: {len(raw_tasks)} tasks, at most {MAX_TASKS}")
    parsed = [_task(t, f"{where}.spec.tasks[{i}]") for i, t in enumerate(raw_tasks)]
    on_exit = None
    if block.get("onExit") is not None:
        parsed_exit = _task(block["onExit"], f"{where}.spec.onExit", exit_handler=True)
        on_exit = parsed_exit[0]
        parsed.append(parsed_exit)
    names: set[str] = set()
    for task, _ in parsed:
        if task.name in names:
            raise WorkflowSpecError(f"{where}: task name {task.name!r} used twice")
        names.add(task.name)
    main_names = {t.name for t, _ in parsed if t is not on_exit}
    values = reference_values(name, namespace, parameters)
    for task, refs in parsed:
        for predecessor in task.predecessors:
            if predecessor not in main_names:
                raise WorkflowSpecError(
                    f"{where}: task {task.name!r} depends on {predecessor!r}, not a task of this workflow"
                )
            if predecessor == task.name:
                raise WorkflowSpecError(f"{where}: task {task.name!r} depends on itself")
        for ref in refs:
            if ref not in values and ref not in POD_TIME_REFERENCES:
                raise WorkflowSpecError(
                    f"{where}: task {task.name!r}.container refers to unknown {{{{{ref}}}}}"
                )
            if ref == "workflow.status" and task is not on_exit:
                raise WorkflowSpecError(
                    f"{where}: task {task.name!r}: {{{{workflow.status}}}} is known only to the exit handler"
                )
        if task.when is not None:
            for ref in expr.when_references(task.when):
                if ref not in values:
                    raise WorkflowSpecError(
                        f"{where}: task {task.name!r}.when refers to unknown {{{{{ref}}}}}"
                    )
            try:
                expr.evaluate_when(task.when, values)
            except expr.ExpressionError as exc:
                raise WorkflowSpecError(f"{where}: task {task.name!r}.when: {exc}") from None
    cycle = find_cycle({t.name: t.predecessors for t, _ in parsed})
    if cycle:
        raise WorkflowSpecError(f"{where}: dependency cycle {' -> '.join(cycle)}")
    fail_fast = block.get("failFast", True)
    if not isinstance(fail_fast, bool):
        raise WorkflowSpecError(f"{where}.spec.failFast: expected true or false")
    scheduler_name = block.get("schedulerName")
    if scheduler_name is not None and not isinstance(scheduler_name, str):
        raise WorkflowSpecError(f"{where}.spec.schedulerName: expected a string")
    service_account = block.get("serviceAccountName")
    if service_account is not None and not isinstance(service_account, str):
        raise WorkflowSpecError(f"{where}.spec.serviceAccountName: expected a string")
    return WorkflowSpec(
        tasks=tuple(t for t, _ in parsed if t is not on_exit),
        parameters=parameters,
        on_exit=on_exit,
        fail_fast=fail_fast,
        active_deadline_seconds=_positive_int(
            block.get("activeDeadlineSeconds"), f"{where}.spec.activeDeadlineSeconds"
        ),
        scheduler_name=scheduler_name,
        service_account_name=service_account,
    )


def parse_workflow(
    obj: Any, *, namespace: str | None = None, overrides: Mapping[str, str] | None = None
) -> Workflow:
    """A Workflow object (as from the API or a YAML file) -> Workflow, or WorkflowSpecError."""
    if not isinstance(obj, Mapping):
        raise WorkflowSpecError(f"a Workflow must be a mapping, got {type(obj).__name__}")
    if obj.get("kind", KIND) != KIND:
        raise WorkflowSpecError(f"kind {obj.get('kind')!r} is not {KIND}")
    if obj.get("apiVersion", API_VERSION) != API_VERSION:
        raise WorkflowSpecError(f"apiVersion {obj.get('apiVersion')!r} is not {API_VERSION}")
    metadata = _mapping(obj.get("metadata"), "metadata")
    name = metadata.get("name")
    if not isinstance(name, str) or not DNS_LABEL.match(name) or len(name) > 50:
        raise WorkflowSpecError(
            f"metadata.name: {name!r} must be lowercase letters, digits and '-' (at most 50 characters)"
        )
    ns = namespace or metadata.get("namespace") or "default"
    spec = parse_spec(obj.get("spec"), name=name, namespace=ns, overrides=overrides)
    return Workflow(name=name, namespace=ns, spec=spec, uid=metadata.get("uid"), raw_status=obj.get("status"))


def topological_order(spec: WorkflowSpec) -> tuple[str, ...]:
    """Main tasks with every predecessor first, ties in the order written."""
    return spec.order


def _topological_order(tasks: tuple[TaskSpec, ...]) -> tuple[str, ...]:
    placed: dict[str, None] = {}
    remaining = list(tasks)
    while remaining:
        ready = [t for t in remaining if all(p in placed for p in t.predecessors)]
        if not ready:
            raise WorkflowSpecError(f"dependency cycle among {sorted(t.name for t in remaining)}")
        placed.update((t.name, None) for t in ready)
        remaining = [t for t in remaining if t.name not in placed]
    return tuple(placed)


def api_object(
    raw: Mapping[str, Any], *, namespace: str | None = None, overrides: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A Workflow from a file in the form the CRD stores: runtime as one string, parameters as strings.

    Files may write `runtime` as a list and parameters as numbers; the API
    server wants what the annotation and the schema say. Validates first.
    """
    workflow = parse_workflow(raw, namespace=namespace, overrides=overrides)
    obj = copy.deepcopy(dict(raw))
    obj["apiVersion"] = API_VERSION
    obj["kind"] = KIND
    metadata = dict(obj.get("metadata") or {})
    metadata["namespace"] = workflow.namespace
    for key in ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"):
        metadata.pop(key, None)
    obj["metadata"] = metadata
    obj.pop("status", None)
    spec = dict(obj["spec"])
    spec["parameters"] = dict(workflow.spec.parameters)
    if not spec["parameters"]:
        del spec["parameters"]
    tasks = []
    for task in [*spec.get("tasks", []), *([spec["onExit"]] if spec.get("onExit") else [])]:
        task = dict(task)
        parsed = workflow.spec.task(task["name"])
        if parsed.runtime:
            task["runtime"] = ",".join(parsed.runtime)
        if isinstance(task.get("dependencies"), str):
            task["dependencies"] = list(parsed.predecessors)
        tasks.append(task)
    if spec.get("onExit"):
        spec["onExit"] = tasks.pop()
    spec["tasks"] = tasks
    obj["spec"] = spec
    return obj
