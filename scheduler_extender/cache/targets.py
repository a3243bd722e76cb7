"""Where each node's agent listens: the static agents file, and Kubernetes Node objects.

The agents file is a contract kept stable: a YAML list of `{node: NAME, address: HOST:PORT}`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gedge_common.files import FileLoadError, load_yaml
from gedge_common.listen import valid_host

AGENT_PORT_ANNOTATION = "gedge.io/agent-port"
DEFAULT_AGENT_PORT = 50051
MAX_AGENTS_FILE_BYTES = 1024 * 1024
"""5000 nodes (the most a Kubernetes cluster has) take about 300 KB; the YAML parser needs seconds a MiB,
so a larger file is refused before parsing rather than holding up the start."""

_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class AgentsFileError(ValueError):
    """The agents file is unreadable or malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class AgentTarget:
    """One node's agent. `problem` is set when no address could be derived (the node is then never fresh)."""

    node: str
    address: str | None
    problem: str | None = None


def valid_node_name(name: str) -> bool:
    return len(name) <= 253 and bool(_NODE_NAME.match(name))


def address_problem(address: str) -> str | None:
    """Why `address` is not HOST:PORT (HOST an IPv4 address, a DNS name or an IPv6 address in
    brackets; PORT 1..65535 in ASCII digits), or None."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or len(port) > 5 or not 1 <= int(port) <= 65535:
        return f"{address!r} is not HOST:PORT with a port in 1..65535"
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"bad IPv6 host in {address!r}"
        return f"bad IPv6 host in {address!r} (no %zone)" if "%" in host else None
    if not valid_host(host):
        return f"bad host in {address!r}"
    return None


def load_agents_file(path: str | Path, *, what: str = "agents file") -> tuple[AgentTarget, ...]:
    """The targets of the file at `path`; AgentsFileError, one line starting `WHAT PATH: `, names the
    entry and key at fault (a command passes its flag as `what`: `--agents /etc/gedge/agents.yaml: ...`)."""
    file = Path(path)
    try:
        raw = load_yaml(file, what=what, limit=MAX_AGENTS_FILE_BYTES)
    except FileLoadError as exc:
        raise AgentsFileError(" ".join(str(exc).split())) from None
    return parse_agents(raw, source=f"{what} {file}")


def parse_agents(raw: Any, source: str = "agents") -> tuple[AgentTarget, ...]:
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise AgentsFileError(f"{source}: expected a list of {{node, address}}, got {type(raw).__name__}")
    targets: list[AgentTarget] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(raw):
        where = f"{source}: entry {index}"
        if not isinstance(entry, dict):
            raise AgentsFileError(f"{where}: expected a mapping with node and address, got {entry!r}")
        unknown = sorted(set(entry) - {"node", "address"})
        if unknown:
            raise AgentsFileError(f"{where}: unknown key(s) {unknown} (only node and address)")
        if "node" not in entry:
            raise AgentsFileError(f"{where}: key node is missing (each entry is {{node, address}})")
        node, address = entry["node"], entry.get("address")
        if not isinstance(node, str) or not valid_node_name(node):
            raise AgentsFileError(f"{where}: node {node!r} is not a valid node name")
        if "address" not in entry:
            raise AgentsFileError(f"{where} (node {node}): key address is missing (HOST:PORT of its agent)")
        if not isinstance(address, str):
            raise AgentsFileError(f"{where} (node {node}): address {address!r} is not HOST:PORT")
        problem = address_problem(address)
        if problem:
            raise AgentsFileError(f"{where} (node {node}): {problem}")
        if node in seen:
            raise AgentsFileError(f"{where}: node {node} is listed twice (also entry {seen[node]})")
        seen[node] = index
        targets.append(AgentTarget(node, address))
    return tuple(targets)


def dump_agents(targets: Iterable[AgentTarget]) -> str:
    return yaml.safe_dump([{"node": t.node, "address": t.address} for t in targets], sort_keys=False)


def target_for_node(node: Any, default_port: int = DEFAULT_AGENT_PORT) -> AgentTarget:
    """The agent of a kubernetes.client.V1Node: InternalIP plus the annotated or default port."""
    name = node.metadata.name
    annotations = node.metadata.annotations or {}
    port_text = annotations.get(AGENT_PORT_ANNOTATION)
    port = default_port
    if port_text is not None:
        text = str(port_text).strip()
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            return AgentTarget(name, None, f"annotation {AGENT_PORT_ANNOTATION}={port_text!r} is not a port")
        port = int(text)
    addresses = (node.status.addresses if node.status else None) or []
    internal = next((a.address for a in addresses if a.type == "InternalIP"), None)
    if not internal:
        return AgentTarget(name, None, "node has no InternalIP address")
    host = f"[{internal}]" if ":" in internal else internal
    return AgentTarget(name, f"{host}:{port}")
