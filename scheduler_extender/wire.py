"""The kube-scheduler extender v1 wire types (k8s.io/kube-scheduler/extender/v1), decoded and encoded.

The Go types carry no JSON tags, so kube-scheduler sends and reads Go field names
(`Pod`, `Nodes`, `NodeNames`, ...). Its decoder matches names ignoring case, so
this decoder does too (an exact match wins). Of `Nodes` and `NodeNames` exactly
the one for the configured nodeCacheCapable mode is set; the other is `null`, and
a reply mirrors the mode of the request it answers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

MAX_EXTENDER_PRIORITY = 10
MIN_EXTENDER_PRIORITY = 0


class WireError(ValueError):
    """The request body does not match the extender v1 types; the message names the field."""


def field(obj: Mapping[Any, Any], name: str) -> Any:
    """A Go-style lookup: the exact key first, else any key equal ignoring case, else None.

    Keys of any type are skipped, not trusted to be the strings JSON gives.
    """
    if name in obj:
        return obj[name]
    folded = name.casefold()
    for key, value in obj.items():
        if isinstance(key, str) and key.casefold() == folded:
            return value
    return None


@overload
def _object(raw: Any, path: str, *, required: Literal[True] = ...) -> dict[str, Any]: ...
@overload
def _object(raw: Any, path: str, *, required: bool) -> dict[str, Any] | None: ...
def _object(raw: Any, path: str, *, required: bool = True) -> dict[str, Any] | None:
    """`raw` when it is a JSON object; WireError naming `path` otherwise (None when not required)."""
    if raw is None:
        if required:
            raise WireError(f"{path}: missing")
        return None
    if not isinstance(raw, dict):
        raise WireError(f"{path}: expected an object, got {type(raw).__name__}")
    return raw


def _string(raw: Any, path: str) -> str:
    if not isinstance(raw, str):
        raise WireError(f"{path}: expected a string, got {'null' if raw is None else type(raw).__name__}")
    return raw


def object_name(obj: Mapping[str, Any], path: str) -> str:
    meta = _object(field(obj, "metadata"), f"{path}.metadata")
    assert meta is not None
    name = _string(field(meta, "name"), f"{path}.metadata.name")
    if not name:
        raise WireError(f"{path}.metadata.name: empty")
    return name


def object_uid(obj: Mapping[str, Any], path: str) -> str:
    meta = _object(field(obj, "metadata"), f"{path}.metadata")
    assert meta is not None
    return _string(field(meta, "uid"), f"{path}.metadata.uid")


@dataclass(frozen=True)
class ExtenderArgs:
    """Filter and prioritize input: the pod and its candidate nodes."""

    pod: dict[str, Any]
    node_names: tuple[str, ...] | None
    """Set when kube-scheduler runs the extender nodeCacheCapable."""
    nodes: tuple[dict[str, Any], ...] | None
    """Full v1.Node objects, set when not nodeCacheCapable."""

    @property
    def candidates(self) -> tuple[str, ...]:
        if self.node_names is not None:
            return self.node_names
        return tuple(object_name(n, f"ExtenderArgs.Nodes.items[{i}]") for i, n in enumerate(self.nodes or ()))

    @property
    def pod_label(self) -> str:
        """namespace/name of the pod, for messages; never raises."""
        meta = raw if isinstance(raw := self.pod.get("metadata"), dict) else {}
        return f"{meta.get('namespace') or 'default'}/{meta.get('name') or '<unnamed>'}"


def decode_extender_args(raw: Any) -> ExtenderArgs:
    body = _object(raw, "ExtenderArgs")
    assert body is not None
    pod = _object(field(body, "Pod"), "ExtenderArgs.Pod")
    assert pod is not None
    names_raw = field(body, "NodeNames")
    nodes_raw = field(body, "Nodes")
    node_names: tuple[str, ...] | None = None
    nodes: tuple[dict[str, Any], ...] | None = None
    if names_raw is not None:
        if not isinstance(names_raw, list):
            raise WireError(f"ExtenderArgs.NodeNames: expected a list, got {type(names_raw).__name__}")
        node_names = tuple(names_raw)
        if not {str}.issuperset(map(type, node_names)):  # one C-level pass: thousands of names per call
            bad = next(i for i, n in enumerate(node_names) if type(n) is not str)
            _string(node_names[bad], f"ExtenderArgs.NodeNames[{bad}]")
    if nodes_raw is not None:
        node_list = _object(nodes_raw, "ExtenderArgs.Nodes")
        assert node_list is not None
        items = field(node_list, "items")
        if items is not None and not isinstance(items, list):
            raise WireError(f"ExtenderArgs.Nodes.items: expected a list, got {type(items).__name__}")
        nodes = tuple(_object(item, f"ExtenderArgs.Nodes.items[{i}]") for i, item in enumerate(items or ()))
        for i, node in enumerate(nodes):
            object_name(node, f"ExtenderArgs.Nodes.items[{i}]")
    if node_names is None and nodes is None:
        raise WireError("ExtenderArgs: neither NodeNames nor Nodes is set")
    return ExtenderArgs(pod=pod, node_names=node_names, nodes=nodes)


def encode_filter_result(
    args: ExtenderArgs | None,
    passed: Sequence[str] = (),
    failed: Mapping[str, str] | None = None,
    unresolvable: Mapping[str, str] | None = None,
    error: str = "",
) -> dict[str, Any]:
    """ExtenderFilterResult in the nodeCacheCapable mode of `args` (NodeNames when unknown)."""
    result: dict[str, Any] = {
        "Nodes": None,
        "NodeNames": None,
        "FailedNodes": dict(failed or {}),
        "FailedAndUnresolvableNodes": dict(unresolvable or {}),
        "Error": error,
    }
    if error:
        return result
    if args is not None and args.nodes is not None:
        keep = set(passed)
        by_name = {object_name(n, "node"): n for n in args.nodes}
        result["Nodes"] = {"metadata": {}, "items": [by_name[name] for name in by_name if name in keep]}
    else:
        result["NodeNames"] = list(passed)
    return result


def encode_host_priorities(scores: Mapping[str, int]) -> list[dict[str, Any]]:
    """HostPriorityList: a bare JSON list of {Host, Score}, scores clamped to 0..10."""
    low, high = MIN_EXTENDER_PRIORITY, MAX_EXTENDER_PRIORITY
    return [
        {"Host": host, "Score": score if low <= score <= high else (low if score < low else high)}
        for host, score in scores.items()
    ]


@dataclass(frozen=True)
class BindingArgs:
    pod_name: str
    pod_namespace: str
    pod_uid: str
    node: str

    @property
    def pod_label(self) -> str:
        return f"{self.pod_namespace}/{self.pod_name}"


def decode_binding_args(raw: Any) -> BindingArgs:
    body = _object(raw, "ExtenderBindingArgs")
    assert body is not None
    values = {}
    for name in ("PodName", "PodNamespace", "PodUID", "Node"):
        value = _string(field(body, name), f"ExtenderBindingArgs.{name}")
        if not value:
            raise WireError(f"ExtenderBindingArgs.{name}: empty")
        values[name] = value
    return BindingArgs(values["PodName"], values["PodNamespace"], values["PodUID"], values["Node"])


def encode_binding_result(error: str = "") -> dict[str, Any]:
    return {"Error": error}


@dataclass(frozen=True)
class NodeVictims:
    pod_uids: tuple[str, ...]
    num_pdb_violations: int = 0


@dataclass(frozen=True)
class PreemptionArgs:
    """ExtenderPreemptionArgs: the pod, and per node the pods kube-scheduler would evict for it.

    nodeCacheCapable sends `NodeNameToMetaVictims` (pod UIDs); otherwise
    `NodeNameToVictims` (full pods), reduced here to UIDs alike.
    """

    pod: dict[str, Any]
    victims: dict[str, NodeVictims]


def _pdb(raw: Any, path: str) -> int:
    if raw is None:
        return 0
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise WireError(f"{path}: expected an integer, got {raw!r}")
    return raw


def _node_victims(entry: Any, path: str, uid_of: Callable[[dict[str, Any], str], str]) -> NodeVictims:
    """One node's victims, {Pods, NumPDBViolations}; `uid_of(pod, path)` reads a victim's uid
    (MetaPod: its UID field, a full Pod: metadata.uid)."""
    item = _object(entry, path)
    assert item is not None
    pods = field(item, "Pods") or []
    if not isinstance(pods, list):
        raise WireError(f"{path}.Pods: expected a list")
    uids = tuple(
        uid_of(_object(p, f"{path}.Pods[{i}]") or {}, f"{path}.Pods[{i}]") for i, p in enumerate(pods)
    )
    return NodeVictims(uids, _pdb(field(item, "NumPDBViolations"), f"{path}.NumPDBViolations"))


def decode_preemption_args(raw: Any) -> PreemptionArgs:
    body = _object(raw, "ExtenderPreemptionArgs")
    assert body is not None
    pod = _object(field(body, "Pod"), "ExtenderPreemptionArgs.Pod")
    assert pod is not None
    victims: dict[str, NodeVictims] = {}
    meta = _object(field(body, "NodeNameToMetaVictims"), "NodeNameToMetaVictims", required=False)
    full = _object(field(body, "NodeNameToVictims"), "NodeNameToVictims", required=False)
    for node, entry in (meta or {}).items():
        victims[node] = _node_victims(
            entry,
            f"ExtenderPreemptionArgs.NodeNameToMetaVictims.{node}",
            lambda p, where: _string(field(p, "UID"), f"{where}.UID"),
        )
    for node, entry in (full or {}).items():
        if node not in victims:
            victims[node] = _node_victims(
                entry, f"ExtenderPreemptionArgs.NodeNameToVictims.{node}", object_uid
            )
    return PreemptionArgs(pod=pod, victims=victims)


def encode_preemption_result(victims: Mapping[str, NodeVictims]) -> dict[str, Any]:
    """ExtenderPreemptionResult: always NodeNameToMetaVictims, as kube-scheduler expects."""
    return {
        "NodeNameToMetaVictims": {
            node: {"Pods": [{"UID": uid} for uid in v.pod_uids], "NumPDBViolations": v.num_pdb_violations}
            for node, v in victims.items()
        }
    }
