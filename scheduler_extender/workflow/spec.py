"""A Workflow as written (CR or YAML file), validated into frozen dataclasses.

Every error names the workflow, the task and the field at fault. A spec that
passes here can be run: names are unique, the graph has no cycle, every
`depends`/`when` parses and refers to something that exists.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

from packaging.version import InvalidVersion, Version

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

E = TypeVar("E")

API_GROUP = "gedge.io"
API_VERSION = "gedge.io/v1alpha1"
KIND = "Workflow"
PLURAL = "workflows"

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_SERVICE_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
MAX_TASKS = 500

RETRY_POLICIES = ("Always", "OnFailure", "OnError")
OUTPUT_REFERENCE = re.compile(
    r"^tasks\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.outputs\.parameters\.([A-Za-z_][A-Za-z0-9_-]*)$"
)
DEFAULT_WORKSPACE_PATH = "/workspace"
MAX_OUTPUT_PARAMETERS = 32

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
    "outputs",
    "workspace",
    "serve",
    "model",
}
_SPEC_FIELDS = {
    "parameters",
    "workspace",
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
class OutputParameter:
    """One value a step hands on: the text of the file at `path` when its pod ends (Argo's valueFrom.path)."""

    name: str
    path: str
    default: str | None = None


@dataclass(frozen=True)
class WorkspaceMount:
    """Where a task mounts the workflow's shared workspace volume."""

    mount_path: str
    sub_path: str | None = None
    read_only: bool = False


@dataclass(frozen=True)
class WorkspaceSpec:
    """The workflow's shared volume: an existing claim, or one the controller creates for the Workflow."""

    claim_name: str
    create: bool
    size: str | None = None
    storage_class_name: str | None = None
    access_modes: tuple[str, ...] = ("ReadWriteOnce",)
    mount_path: str = DEFAULT_WORKSPACE_PATH


@dataclass(frozen=True)
class ServeSpec:
    """A warm server: a Deployment + Service named `name`, Succeeded once all `replicas` are Ready."""

    name: str
    port: int
    replicas: int = 1
    readiness_probe: Mapping[str, Any] | None = None
    ttl_seconds: float | None = None
    """Kept this long after the workflow ends (None: until the workflow is deleted)."""
    progress_deadline_seconds: int = 600


@dataclass(frozen=True)
class ModelSpec:
    """The model a task runs; the catalog's compatibility metadata picks its runtime stack."""

    framework: str
    version: str
    format: str | None = None

    def describe(self) -> str:
        return f"{self.framework} {self.version}" + (f" ({self.format})" if self.format else "")


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
    outputs: tuple[OutputParameter, ...] = ()
    workspace: WorkspaceMount | None = None
    serve: ServeSpec | None = None
    model: ModelSpec | None = None


@dataclass(frozen=True)
class WorkflowSpec:
    tasks: tuple[TaskSpec, ...]
    parameters: Mapping[str, str] = field(default_factory=dict)
    workspace: WorkspaceSpec | None = None
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

    def ancestors(self, name: str) -> set[str]:
        """Every task that must end before `name` starts (predecessors, theirs, ...)."""
        seen: set[str] = set()
        stack = list(self.task(name).predecessors)
        while stack:
            current = stack.pop()
            if current not in seen:
                seen.add(current)
                stack.extend(self.task(current).predecessors)
        return seen


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


def _mapping(raw: Any, where: str) -> Mapping[Any, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise WorkflowSpecError(f"{where}: expected a mapping, got {type(raw).__name__}")
    return raw


def _fields(raw: Any, where: str, known: Collection[str]) -> Mapping[Any, Any]:
    """`raw` as a mapping (None: empty) with no key outside `known`; WorkflowSpecError names them."""
    block = _mapping(raw, where)
    unknown = set(block) - set(known)
    if unknown:
        raise WorkflowSpecError(f"{where}: unknown field(s) {sorted(unknown)}")
    return block


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
    block = _fields(raw, where, {"topologyAware", "topologyPolicy", "communication", "compute"})
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
    block = _fields(raw, where, {"limit", "retryPolicy", "backoff"})
    limit = block.get("limit", 0)
    if isinstance(limit, str) and limit.isdigit():
        limit = int(limit)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise WorkflowSpecError(f"{where}.limit: expected a non-negative integer, got {limit!r}")
    policy = block.get("retryPolicy", "OnFailure")
    if policy not in RETRY_POLICIES:
        raise WorkflowSpecError(f"{where}.retryPolicy: {policy!r} not one of {RETRY_POLICIES}")
    backoff_raw = _fields(block.get("backoff"), f"{where}.backoff", {"duration", "factor", "maxDuration"})
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


def _absolute_path(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not raw.startswith("/") or ".." in raw.split("/") or raw.rstrip("/") == "":
        raise WorkflowSpecError(f"{where}: an absolute path (not /, no '..') is required, got {raw!r}")
    return raw


def _outputs(raw: Any, where: str, container: Mapping[str, Any]) -> tuple[OutputParameter, ...]:
    block = _fields(raw, where, {"parameters"})
    items = block.get("parameters") or []
    if not isinstance(items, list):
        raise WorkflowSpecError(f"{where}.parameters: expected a list")
    if len(items) > MAX_OUTPUT_PARAMETERS:
        raise WorkflowSpecError(f"{where}.parameters: {len(items)} outputs, at most {MAX_OUTPUT_PARAMETERS}")
    out: list[OutputParameter] = []
    for i, item in enumerate(items):
        here = f"{where}.parameters[{i}]"
        entry = _fields(item, here, {"name", "valueFrom"})
        name = entry.get("name")
        if not isinstance(name, str) or not PARAMETER_NAME.match(name):
            raise WorkflowSpecError(f"{here}.name: {name!r} is not a parameter name")
        if any(o.name == name for o in out):
            raise WorkflowSpecError(f"{here}.name: output {name!r} declared twice")
        value_from = _fields(entry.get("valueFrom"), f"{here}.valueFrom", {"path", "default"})
        path = _absolute_path(value_from.get("path"), f"{here}.valueFrom.path")
        default = value_from.get("default")
        if default is not None and not isinstance(default, str | int | float):
            raise WorkflowSpecError(f"{here}.valueFrom.default: expected a string, got {default!r}")
        out.append(OutputParameter(name, path, None if default is None else str(default)))
    if out and not container.get("command"):
        raise WorkflowSpecError(
            f"{where}: output parameters need container.command (the step's program is wrapped to "
            "collect them when it ends; an image's own entrypoint cannot be read from here)"
        )
    return tuple(out)


def _workspace_mount(raw: Any, where: str) -> WorkspaceMount | None:
    if raw is None:
        return None
    block = _fields(raw, where, {"mountPath", "subPath", "readOnly"})
    mount = _absolute_path(block["mountPath"], f"{where}.mountPath") if "mountPath" in block else ""
    sub_path = block.get("subPath")
    if sub_path is not None and (
        not isinstance(sub_path, str) or sub_path.startswith("/") or ".." in sub_path.split("/")
    ):
        raise WorkflowSpecError(
            f"{where}.subPath: a relative path inside the volume is required, got {sub_path!r}"
        )
    read_only = block.get("readOnly", False)
    if not isinstance(read_only, bool):
        raise WorkflowSpecError(f"{where}.readOnly: expected true or false")
    return WorkspaceMount(mount_path=mount, sub_path=sub_path, read_only=read_only)


def _workspace(raw: Any, where: str, workflow: str) -> WorkspaceSpec | None:
    if raw is None:
        return None
    block = _fields(raw, where, {"claimName", "size", "storageClassName", "accessModes", "mountPath"})
    claim = block.get("claimName")
    size = block.get("size")
    if (claim is None) == (size is None):
        raise WorkflowSpecError(
            f"{where}: give claimName (an existing PersistentVolumeClaim) or size (one the workflow creates)"
        )
    if claim is not None and (not isinstance(claim, str) or not DNS_LABEL.match(claim) or len(claim) > 63):
        raise WorkflowSpecError(f"{where}.claimName: {claim!r} is not a PersistentVolumeClaim name")
    if size is not None and (
        not isinstance(size, str | int) or isinstance(size, bool) or not _QUANTITY.match(str(size))
    ):
        raise WorkflowSpecError(f"{where}.size: {size!r} is not a quantity like 10Gi")
    storage_class = block.get("storageClassName")
    if storage_class is not None and not isinstance(storage_class, str):
        raise WorkflowSpecError(f"{where}.storageClassName: expected a string")
    modes = _string_list(block.get("accessModes"), f"{where}.accessModes") or ("ReadWriteOnce",)
    for mode in modes:
        if mode not in ACCESS_MODES:
            raise WorkflowSpecError(f"{where}.accessModes: {mode!r} is not one of {ACCESS_MODES}")
    mount = _absolute_path(block.get("mountPath", DEFAULT_WORKSPACE_PATH), f"{where}.mountPath")
    return WorkspaceSpec(
        claim_name=claim if claim is not None else f"{workflow}-workspace",
        create=claim is None,
        size=None if size is None else str(size),
        storage_class_name=storage_class,
        access_modes=modes,
        mount_path=mount,
    )


def _serve(raw: Any, where: str, workflow: str, task: str) -> ServeSpec | None:
    if raw is None:
        return None
    block = _fields(
        raw, where, {"name", "port", "replicas", "readinessProbe", "ttl", "progressDeadlineSeconds"}
    )
    name = block.get("name", f"{workflow}-{task}")
    if not isinstance(name, str) or not _SERVICE_NAME.match(name) or len(name) > 63:
        raise WorkflowSpecError(
            f"{where}.name: {name!r} must be a Service name (lowercase letters, digits, '-', "
            "starting with a letter, at most 63 characters)"
        )
    port = block.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise WorkflowSpecError(
            f"{where}.port: expected the port the server listens on (1-65535), got {port!r}"
        )
    replicas = block.get("replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise WorkflowSpecError(f"{where}.replicas: expected a positive integer, got {replicas!r}")
    probe = block.get("readinessProbe")
    if probe is not None:
        probe = dict(_mapping(probe, f"{where}.readinessProbe"))
        if not {"httpGet", "tcpSocket", "exec", "grpc"} & set(probe):
            raise WorkflowSpecError(f"{where}.readinessProbe: needs one of httpGet, tcpSocket, exec, grpc")
    ttl = parse_duration(block["ttl"], f"{where}.ttl") if "ttl" in block else None
    deadline = _positive_int(block.get("progressDeadlineSeconds", 600), f"{where}.progressDeadlineSeconds")
    return ServeSpec(
        name=name,
        port=port,
        replicas=replicas,
        readiness_probe=probe,
        ttl_seconds=ttl,
        progress_deadline_seconds=deadline or 600,
    )


def _model(raw: Any, where: str) -> ModelSpec | None:
    if raw is None:
        return None
    block = _fields(raw, where, {"framework", "version", "format"})
    framework = block.get("framework")
    if not isinstance(framework, str) or not framework.strip():
        raise WorkflowSpecError(f"{where}.framework: required (tensorflow, pytorch, onnx, ...)")
    version = block.get("version")
    if isinstance(version, bool) or not isinstance(version, str | int | float):
        raise WorkflowSpecError(f'{where}.version: required, e.g. "2.11"')
    try:
        Version(str(version))
    except InvalidVersion:
        raise WorkflowSpecError(f"{where}.version: {version!r} is not a version like 2.11") from None
    fmt = block.get("format")
    if fmt is not None and (not isinstance(fmt, str) or not fmt.strip()):
        raise WorkflowSpecError(f"{where}.format: expected a name like savedmodel, onnx, torchscript")
    return ModelSpec(framework.strip().lower(), str(version), fmt.strip().lower() if fmt else None)


def _expression(text: Any, where: str, parse: Callable[[str], E]) -> E:
    """A `depends` or `when` expression parsed; WorkflowSpecError naming `where` otherwise."""
    if not isinstance(text, str):
        raise WorkflowSpecError(f"{where}: expected a string")
    try:
        return parse(text)
    except expr.ExpressionError as exc:
        raise WorkflowSpecError(f"{where}: {exc}") from None


def _task(
    raw: Any, where: str, *, exit_handler: bool = False, workflow: str = ""
) -> tuple[TaskSpec, list[str]]:
    block = _mapping(raw, where)
    name = block.get("name")
    if not isinstance(name, str) or not DNS_LABEL.match(name) or len(name) > 50:
        raise WorkflowSpecError(
            f"{where}.name: {name!r} must be lowercase letters, digits and '-' (at most 50 characters)"
        )
    where = f"workflow {workflow!r}: task {name!r}" if workflow else f"task {name!r}"
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
    model = _model(block.get("model"), f"{where}.model")
    if model is not None and (runtime or ANNOTATION_RUNTIME in annotations):
        raise WorkflowSpecError(
            f"{where}: give model (the catalog picks the runtime) or runtime (named by hand), not both"
        )
    serve = _serve(block.get("serve"), f"{where}.serve", workflow, name)
    outputs = _outputs(block.get("outputs"), f"{where}.outputs", container)
    if serve is not None:
        if exit_handler:
            raise WorkflowSpecError(f"{where}.serve: the exit handler cannot be a server")
        for key in ("outputs", "retryStrategy", "activeDeadlineSeconds"):
            if key in block:
                raise WorkflowSpecError(
                    f"{where}.{key}: a serve task runs until deleted (its Deployment restarts it); "
                    f"{key} does not apply"
                )
    if ANNOTATION_RUNTIME in annotations:
        from_annotation = _string_list(annotations[ANNOTATION_RUNTIME], f"{where}.annotations")
        if runtime and runtime != from_annotation:
            raise WorkflowSpecError(f"{where}: runtime and the {ANNOTATION_RUNTIME} annotation disagree")
        runtime = from_annotation
    if runtime:
        annotations[ANNOTATION_RUNTIME] = ",".join(runtime)
    try:
        validate_pod_request(name, container, annotations)
    except WorkflowSpecError as exc:
        raise WorkflowSpecError(f"workflow {workflow!r}: {exc}" if workflow else str(exc)) from None
    annotations.pop(ANNOTATION_RUNTIME, None)
    dependencies = _string_list(block.get("dependencies"), f"{where}.dependencies")
    depends_text = block.get("depends")
    if exit_handler and (dependencies or depends_text):
        raise WorkflowSpecError(f"{where}: the exit handler runs after everything and takes no dependencies")
    if dependencies and depends_text is not None:
        raise WorkflowSpecError(f"{where}: use either dependencies or depends, not both")
    depends = None
    if depends_text is not None:
        depends = _expression(depends_text, f"{where}.depends", expr.parse_depends)
        predecessors = tuple(sorted(expr.depends_tasks(depends)))
    else:
        if len(set(dependencies)) != len(dependencies):
            raise WorkflowSpecError(f"{where}.dependencies: {list(dependencies)} names a task twice")
        predecessors = dependencies
        if dependencies:
            depends_text = " && ".join(dependencies)
            depends = expr.parse_depends(depends_text)
    when_text = block.get("when")
    when = None if when_text is None else _expression(when_text, f"{where}.when", expr.parse_when)
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
        outputs=outputs,
        workspace=_workspace_mount(block.get("workspace"), f"{where}.workspace"),
        serve=serve,
        model=model,
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
    block = _fields(raw, f"{where}.spec", _SPEC_FIELDS)
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
    workspace = _workspace(block.get("workspace"), f"{where}.spec.workspace", name)
    parsed = [_task(t, f"{where}.spec.tasks[{i}]", workflow=name) for i, t in enumerate(raw_tasks)]
    on_exit = None
    if block.get("onExit") is not None:
        parsed_exit = _task(block["onExit"], f"{where}.spec.onExit", exit_handler=True, workflow=name)
        on_exit = parsed_exit[0]
        parsed.append(parsed_exit)
    names: set[str] = set()
    for task, _ in parsed:
        if task.name in names:
            raise WorkflowSpecError(f"{where}: task name {task.name!r} used twice")
        names.add(task.name)
    for task, _ in parsed:
        for predecessor in task.predecessors:
            if predecessor not in names or (on_exit is not None and predecessor == on_exit.name):
                raise WorkflowSpecError(
                    f"{where}: task {task.name!r} depends on {predecessor!r}, not a task of this workflow"
                )
            if predecessor == task.name:
                raise WorkflowSpecError(f"{where}: task {task.name!r} depends on itself")
    cycle = find_cycle({t.name: t.predecessors for t, _ in parsed})
    if cycle:
        raise WorkflowSpecError(f"{where}: dependency cycle {' -> '.join(cycle)}")
    serve_names: dict[str, str] = {}
    for task, _ in parsed:
        if task.serve is not None:
            if task.serve.name in serve_names:
                raise WorkflowSpecError(
                    f"{where}: tasks {serve_names[task.serve.name]!r} and {task.name!r} both serve as "
                    f"{task.serve.name!r}"
                )
            serve_names[task.serve.name] = task.name
    parsed = [(_with_workspace(task, workspace, where), refs) for task, refs in parsed]
    on_exit = next((t for t, _ in parsed if on_exit is not None and t.name == on_exit.name), None)
    main_names = {t.name for t, _ in parsed if t is not on_exit}
    by_name = {t.name: t for t, _ in parsed}
    ancestry = _ancestry({t.name: t.predecessors for t, _ in parsed})
    values = reference_values(name, namespace, parameters)
    for task, refs in parsed:
        producers = main_names if task is on_exit else ancestry.get(task.name, set())
        when_refs = expr.when_references(task.when) if task.when is not None else set()
        for ref in [*refs, *sorted(when_refs)]:
            _check_output_reference(where, task.name, ref, producers, by_name)
        refs = [r for r in refs if not OUTPUT_REFERENCE.match(r)]
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
            for ref in when_refs:
                if ref not in values and not OUTPUT_REFERENCE.match(ref):
                    raise WorkflowSpecError(
                        f"{where}: task {task.name!r}.when refers to unknown {{{{{ref}}}}}"
                    )
            if not any(OUTPUT_REFERENCE.match(r) for r in when_refs):
                try:
                    expr.evaluate_when(task.when, values)
                except expr.ExpressionError as exc:
                    raise WorkflowSpecError(f"{where}: task {task.name!r}.when: {exc}") from None
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
        workspace=workspace,
        on_exit=on_exit,
        fail_fast=fail_fast,
        active_deadline_seconds=_positive_int(
            block.get("activeDeadlineSeconds"), f"{where}.spec.activeDeadlineSeconds"
        ),
        scheduler_name=scheduler_name,
        service_account_name=service_account,
    )


def _with_workspace(task: TaskSpec, workspace: WorkspaceSpec | None, where: str) -> TaskSpec:
    if task.workspace is None:
        return task
    if workspace is None:
        raise WorkflowSpecError(
            f"{where}: task {task.name!r}.workspace: the workflow has no spec.workspace to mount"
        )
    if task.workspace.mount_path:
        return task
    return dataclasses.replace(
        task, workspace=dataclasses.replace(task.workspace, mount_path=workspace.mount_path)
    )


def _ancestry(edges: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}

    def visit(node: str) -> set[str]:
        if node not in out:
            found: set[str] = set()
            for parent in edges.get(node, ()):
                found |= {parent} | visit(parent)
            out[node] = found
        return out[node]

    for node in edges:
        visit(node)
    return out


def _check_output_reference(
    where: str, task: str, ref: str, producers: set[str], by_name: Mapping[str, TaskSpec]
) -> None:
    if not ref.startswith("tasks."):
        return
    match = OUTPUT_REFERENCE.match(ref)
    if not match:
        raise WorkflowSpecError(
            f"{where}: task {task!r} refers to {{{{{ref}}}}}; task outputs are "
            "{{tasks.NAME.outputs.parameters.PARAM}}"
        )
    producer, parameter = match.group(1), match.group(3)
    if producer not in by_name:
        raise WorkflowSpecError(f"{where}: task {task!r} refers to {{{{{ref}}}}}: no task {producer!r}")
    if producer not in producers:
        raise WorkflowSpecError(
            f"{where}: task {task!r} refers to {{{{{ref}}}}}, but {producer!r} is not among the tasks it "
            "runs after (add it to dependencies or depends)"
        )
    declared = [o.name for o in by_name[producer].outputs]
    if parameter not in declared:
        raise WorkflowSpecError(
            f"{where}: task {task!r} refers to {{{{{ref}}}}}, but task {producer!r} declares "
            + (f"outputs {declared}" if declared else "no outputs")
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
        if parsed.model is not None:
            task["model"] = {**task["model"], "version": parsed.model.version}
        tasks.append(task)
    if spec.get("onExit"):
        spec["onExit"] = tasks.pop()
    spec["tasks"] = tasks
    obj["spec"] = spec
    return obj
