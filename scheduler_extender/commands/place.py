"""`gedge-extender place`: one pod through filter, prioritize and choose, printed; nothing is bound.

Nodes come from live agents (`--agents FILE`) or from saved reports
(`--topology FILE`, a NodeTopology or NodeState as JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import uuid
from pathlib import Path
from typing import Any

from gedge_common.cli import logging_for_run
from gedge_common.files import FileLoadError, load_yaml, parse_json, read_bounded
from gedge_model import ModelDecodeError, NodeState, NodeTopology, from_json, to_dict
from scheduler_extender.bind.binder import BindError
from scheduler_extender.commands.cluster_access import add_agent_tls, name_agent_tls_flag
from scheduler_extender.commands.render import allocation_summary
from scheduler_extender.node_source import NodeSource, StaticNodeSource
from scheduler_extender.verbs import Extender
from scheduler_extender.wire import BindingArgs, ExtenderArgs

MAX_POD_BYTES = 1024 * 1024
MAX_TOPOLOGY_BYTES = 64 * 1024 * 1024


class PlaceError(RuntimeError):
    """The pod could not be placed; the message says why, per node where that applies."""


class InputError(ValueError):
    """A file or flag the command cannot use; the message names the flag and the file."""


class NoBinder:
    def bind(self, allocation: Any) -> None:
        raise BindError("place only chooses; it never binds")


def register(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "examples:\n"
        "  gedge-extender place --agents agents.yaml --pod pod.yaml \\\n"
        "      --agent-tls-cert pki/gedge-extender.pem --agent-tls-key pki/gedge-extender.key \\\n"
        "      --agent-tls-ca pki/ca.pem                                  # ask the live agents\n"
        "  gedge-agent topology --json > node.json && \\\n"
        "      gedge-extender place --topology node.json --pod pod.yaml --json"
    )
    nodes = parser.add_mutually_exclusive_group(required=True)
    nodes.add_argument("--agents", metavar="FILE", help="YAML list of {node, address}: ask the live agents")
    nodes.add_argument(
        "--topology", metavar="FILE", action="append", help="a node's report as JSON (repeat for more nodes)"
    )
    parser.add_argument("--pod", metavar="FILE", required=True, help="the Pod manifest (YAML or JSON)")
    add_agent_tls(parser)
    parser.add_argument(
        "--insecure", action="store_true", help="plaintext gRPC to agents started with --insecure"
    )
    parser.add_argument(
        "--wait-s", type=float, default=10.0, metavar="S", help="how long to wait for agents (10)"
    )
    parser.add_argument("--json", action="store_true", help="print the allocation as the annotation JSON")
    parser.set_defaults(run=run)


def load_pod(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    try:
        pod = load_yaml(file, what="--pod", limit=MAX_POD_BYTES)
    except FileLoadError as exc:
        raise InputError(str(exc)) from None
    kind = pod.get("kind") if isinstance(pod, dict) else None
    if not isinstance(pod, dict) or kind != "Pod":
        found = f"kind is {kind!r}" if kind is not None else "no kind"
        raise InputError(f"--pod {file}: not a Pod manifest ({found})")
    meta = pod.setdefault("metadata", {})
    if not isinstance(meta, dict) or not meta.get("name"):
        raise InputError(f"--pod {file}: metadata.name is missing")
    meta.setdefault("namespace", "default")
    meta.setdefault("uid", str(uuid.uuid4()))
    return pod


def load_state(path: str | Path) -> NodeState:
    file = Path(path)
    try:
        text = read_bounded(file, what="--topology", limit=MAX_TOPOLOGY_BYTES)
    except FileLoadError as exc:
        raise InputError(str(exc)) from None
    try:
        raw = parse_json(text, source=f"--topology {file}", limit=MAX_TOPOLOGY_BYTES)
    except FileLoadError as exc:
        raise InputError(f"{exc} (`gedge-agent topology --json` writes a node's report)") from None
    try:
        if isinstance(raw, dict) and "topology" in raw:
            return from_json(NodeState, text)
        return NodeState(from_json(NodeTopology, text))
    except ModelDecodeError as exc:
        raise InputError(
            f"--topology {file}: not a node's report ({exc}; `gedge-agent topology --json` writes one)"
        ) from None


def load_states(paths: list[str]) -> dict[str, NodeState]:
    """The saved reports by node name; two files of one node are refused, naming both."""
    states: dict[str, NodeState] = {}
    files: dict[str, str] = {}
    for path in paths:
        state = load_state(path)
        if state.node_name in files:
            raise InputError(
                f"--topology {path}: node {state.node_name!r} again (also in {files[state.node_name]});"
                " give each node once"
            )
        states[state.node_name] = state
        files[state.node_name] = path
    return states


def place_pod(source: NodeSource, pod: dict[str, Any]) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    """Filter, prioritize and choose on the best node, as kube-scheduler would.

    Returns the allocation, the filter result and the scores.
    """
    extender = Extender(source, NoBinder())
    names = tuple(sorted(source.nodes()))
    args = ExtenderArgs(pod=pod, node_names=names, nodes=None)
    filtered = extender.filter(args)
    if filtered["Error"]:
        raise PlaceError(filtered["Error"])
    passed = filtered["NodeNames"]
    if not passed:
        reasons = {**filtered["FailedNodes"], **filtered["FailedAndUnresolvableNodes"]}
        detail = "; ".join(f"{node}: {why}" for node, why in sorted(reasons.items())) or "no nodes"
        raise PlaceError(f"no node fits pod {args.pod_label}: {detail}")
    scores = extender.prioritize(ExtenderArgs(pod=pod, node_names=tuple(passed), nodes=None))
    best = max(scores, key=lambda s: (s["Score"], -passed.index(s["Host"])))
    meta = pod["metadata"]
    chosen = extender.choose(BindingArgs(meta["name"], meta["namespace"], meta["uid"], best["Host"]))
    if isinstance(chosen, str):
        raise PlaceError(chosen)
    extender.cache.release(chosen.pod_uid)
    return chosen, filtered, scores


def run(args: argparse.Namespace) -> int:
    """Logs go to stderr as JSON for the run only; stdout carries the allocation alone."""
    with logging_for_run("warning"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """0 placed; 2 a flag or file that cannot be used (one line naming the flag and the file, for
    --agents also the entry); 1 the pod is not placed (why, per node)."""
    cluster = None
    if args.agents == "" or "" in (args.topology or ()):
        flag = "--agents" if args.agents == "" else "--topology"
        print(f"gedge-extender place: {flag} is empty: name the file", file=sys.stderr)
        return 2
    if not (math.isfinite(args.wait_s) and args.wait_s >= 0):
        print(
            f"gedge-extender place: --wait-s must be finite and not negative, got {args.wait_s}",
            file=sys.stderr,
        )
        return 2
    try:
        pod = load_pod(args.pod)
        if args.agents:
            from gedge_model.tls import TlsConfigError, load_tls
            from scheduler_extender.cache import ClusterCache
            from scheduler_extender.cache.cache import CacheOptions
            from scheduler_extender.cache.targets import AgentsFileError

            files = (args.agent_tls_cert, args.agent_tls_key, args.agent_tls_ca)
            if args.insecure == any(files) or (any(files) and not all(files)):
                raise InputError(
                    "--agents needs --agent-tls-cert, --agent-tls-key and --agent-tls-ca, or --insecure alone"
                )
            try:
                tls = None if args.insecure else load_tls(*files)
            except TlsConfigError as exc:
                raise InputError(name_agent_tls_flag(str(exc))) from None
            try:
                cluster = ClusterCache.from_agents_file(args.agents, CacheOptions(tls=tls), what="--agents")
            except AgentsFileError as exc:
                print(f"gedge-extender place: {exc}", file=sys.stderr)
                return 2
            cluster.start()
            cluster.wait_for(lambda views: all(v.fresh for v in views.values()), args.wait_s)
            source: NodeSource = cluster
        else:
            source = StaticNodeSource(load_states(args.topology))
        allocation, filtered, scores = place_pod(source, pod)
    except InputError as exc:
        print(f"gedge-extender place: {exc}", file=sys.stderr)
        return 2
    except (PlaceError, ValueError) as exc:
        print(f"gedge-extender place: {exc}", file=sys.stderr)
        return 1
    finally:
        if cluster is not None:
            cluster.stop()
    if args.json:
        print(json.dumps(to_dict(allocation), indent=2, sort_keys=True))
        return 0
    view = source.node(allocation.node)
    print(allocation_summary(allocation, view.state.topology if view else None))
    for entry in sorted(scores, key=lambda s: -s["Score"]):
        print(f"  score {entry['Score']:>2}  {entry['Host']}")
    for node, reason in sorted({**filtered["FailedNodes"], **filtered["FailedAndUnresolvableNodes"]}.items()):
        print(f"  refused  {node}: {reason}")
    return 0
