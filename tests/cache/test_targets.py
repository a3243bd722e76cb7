"""Agent addresses: the agents file contract and Kubernetes Node objects."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes.client import V1Node, V1NodeAddress, V1NodeStatus, V1ObjectMeta

from scheduler_extender.cache import (
    AgentsFileError,
    AgentTarget,
    ClusterCache,
    load_agents_file,
    target_for_node,
)
from scheduler_extender.cache.targets import dump_agents


def test_agents_file_round_trips(tmp_path: Path) -> None:
    file = tmp_path / "agents.yaml"
    file.write_text(
        "- node: edge-1\n  address: 10.0.0.1:50051\n- {node: edge-2.lab, address: '[fd00::2]:7000'}\n"
    )
    targets = load_agents_file(file)
    assert targets == (AgentTarget("edge-1", "10.0.0.1:50051"), AgentTarget("edge-2.lab", "[fd00::2]:7000"))
    file.write_text(dump_agents(targets))
    assert load_agents_file(file) == targets
    file.write_text("")
    assert load_agents_file(file) == ()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("node: edge-1\n", "expected a list"),
        ("- edge-1\n", "entry 0: expected a mapping"),
        ("- {node: edge-1, address: 'h:1', port: 2}\n", "entry 0: unknown key(s) ['port']"),
        ("- {node: Edge_1, address: 'h:1'}\n", "entry 0: node 'Edge_1' is not a valid node name"),
        ("- {address: 'h:1'}\n", "entry 0: key node is missing"),
        ("- {node: edge-1}\n", "entry 0 (node edge-1): key address is missing"),
        ("- {node: edge-1, address: 'h'}\n", "entry 0 (node edge-1): 'h' is not HOST:PORT"),
        ("- {node: edge-1, address: 'h:70000'}\n", "'h:70000' is not HOST:PORT"),
        ("- {node: edge-1, address: 'bad host:1'}\n", "bad host in 'bad host:1'"),
        (
            "- {node: edge-1, address: 'h:1'}\n- {node: edge-1, address: 'h:2'}\n",
            "entry 1: node edge-1 is listed twice (also entry 0)",
        ),
        ("- [unclosed\n", "not YAML"),
    ],
)
def test_malformed_agents_file_names_the_entry(tmp_path: Path, content: str, message: str) -> None:
    file = tmp_path / "agents.yaml"
    file.write_text(content)
    with pytest.raises(AgentsFileError) as info:
        ClusterCache.from_agents_file(file)
    assert message in str(info.value)
    assert str(file) in str(info.value)


def node(
    name: str, annotations: dict[str, str] | None = None, addresses: list[tuple[str, str]] = ()
) -> V1Node:
    return V1Node(
        metadata=V1ObjectMeta(name=name, annotations=annotations),
        status=V1NodeStatus(addresses=[V1NodeAddress(address=a, type=t) for t, a in addresses]),
    )


def test_node_objects_give_internal_ip_and_port() -> None:
    addresses = [("Hostname", "edge-1"), ("ExternalIP", "203.0.113.9"), ("InternalIP", "10.1.2.3")]
    assert target_for_node(node("edge-1", None, addresses)) == AgentTarget("edge-1", "10.1.2.3:50051")
    assert (
        target_for_node(node("edge-1", {"gedge.io/agent-port": "7443"}, addresses)).address == "10.1.2.3:7443"
    )
    assert target_for_node(node("edge-1", None, addresses), default_port=9000).address == "10.1.2.3:9000"
    assert target_for_node(node("edge-6", None, [("InternalIP", "fd00::6")])).address == "[fd00::6]:50051"


def test_node_without_usable_address_is_kept_with_a_reason() -> None:
    bad_port = target_for_node(node("edge-1", {"gedge.io/agent-port": "http"}, [("InternalIP", "10.1.2.3")]))
    assert bad_port.address is None
    assert bad_port.problem == "annotation gedge.io/agent-port='http' is not a port"
    no_ip = target_for_node(node("edge-2", None, [("Hostname", "edge-2")]))
    assert no_ip.problem == "node has no InternalIP address"
    cache = ClusterCache([bad_port, no_ip])
    cache.start()
    try:
        views = cache.nodes()
        assert not views["edge-1"].fresh and "is not a port" in views["edge-1"].reason
        assert not views["edge-2"].fresh and "no InternalIP" in views["edge-2"].reason
    finally:
        cache.stop()
