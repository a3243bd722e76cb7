"""The NodeAgent service over real gRPC on loopback, with in-process agents over real sysfs roots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.discovery import discover
from gedge_model import Allocation, NodeTopology, from_json
from gedge_model.tls import channel_credentials, expect_peer_name_options, load_tls
from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc
from tests.grpc.agents import AgentHost
from tests.grpc.certs import TestCa

SNAPSHOT = "16amd64-8n2c"


def stub(port: int) -> agent_pb2_grpc.NodeAgentStub:
    return agent_pb2_grpc.NodeAgentStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


def test_state_is_the_discovered_topology_and_health_serves(
    agent_host: AgentHost, snapshot_roots: dict[str, Path]
) -> None:
    root = snapshot_roots[SNAPSHOT]
    agent = agent_host.start_agent(root, "edge-snap")
    try:
        reply = stub(agent.port).GetNodeState(agent_pb2.GetNodeStateRequest(), timeout=10)
        assert reply.state.node_name == "edge-snap"
        assert reply.state.generation == 1
        assert from_json(NodeTopology, reply.state.topology_json) == discover(root, node_name="edge-snap")
        assert json.loads(reply.state.allocations_json) == []
        listed = stub(agent.port).ListAllocations(agent_pb2.ListAllocationsRequest(), timeout=10)
        assert (listed.generation, listed.allocations_json) == (1, "[]")
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{agent.port}"))
        for service in ("", "gedge.agent.v1.NodeAgent"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
    finally:
        agent_host.stop_agent(agent)


def test_watch_sends_full_state_then_each_change(
    agent_host: AgentHost, snapshot_roots: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "node"
    shutil.copytree(snapshot_roots[SNAPSHOT], root, symlinks=True)
    agent = agent_host.start_agent(root, "edge-copy", poll_interval_s=0.1)
    try:
        events = stub(agent.port).WatchNodeState(agent_pb2.WatchNodeStateRequest(), timeout=30)
        first = next(events)
        assert first.generation == 1 and first.agent_instance
        assert 3 in from_json(NodeTopology, first.topology_json).online_cpus

        (root / "sys/devices/system/cpu/cpu3/online").write_text("0\n")
        second = next(events)
        assert second.generation == 2 and second.agent_instance == first.agent_instance
        assert 3 not in from_json(NodeTopology, second.topology_json).online_cpus
        events.cancel()
    finally:
        agent_host.stop_agent(agent)


def test_apply_without_applier_and_bad_allocations_are_refused(
    agent_host: AgentHost, snapshot_roots: dict[str, Path]
) -> None:
    agent = agent_host.start_agent(snapshot_roots[SNAPSHOT], "edge-ro", max_receive_message_bytes=32 * 1024)
    try:
        client = stub(agent.port)
        with pytest.raises(grpc.RpcError) as info:
            client.Apply(agent_pb2.ApplyRequest(allocation_json="{}"), timeout=10)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "without an applier" in info.value.details()

        with pytest.raises(grpc.RpcError) as info:
            client.Apply(agent_pb2.ApplyRequest(allocation_json="x" * 40_000), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        agent_host.stop_agent(agent)


class RecordingApplier:
    """Stands in for ApplyManager where only the service's own checks are under test."""

    def __init__(self) -> None:
        self.allocations: dict[str, Allocation] = {}

    def apply(self, allocation: Allocation) -> None:
        self.allocations[allocation.pod_uid] = allocation

    def release(self, pod_uid: str) -> None:
        self.allocations.pop(pod_uid, None)

    def applied(self) -> tuple[Allocation, ...]:
        return tuple(self.allocations.values())


def test_allocations_are_checked_against_the_node_before_the_applier_runs(
    agent_host: AgentHost, snapshot_roots: dict[str, Path]
) -> None:
    applier = RecordingApplier()
    agent = agent_host.start_agent(snapshot_roots[SNAPSHOT], "edge-chk", applier=applier)
    try:
        client = stub(agent.port)
        cases = [
            ('{"pod_uid": "u1"}', grpc.StatusCode.INVALID_ARGUMENT, "missing field 'namespace'"),
            (
                Allocation("u1", "ml", "p", "edge-other").to_annotation(),
                grpc.StatusCode.FAILED_PRECONDITION,
                "is for node 'edge-other'",
            ),
            (
                Allocation("u1", "ml", "p", "edge-chk", cpus=(99,)).to_annotation(),
                grpc.StatusCode.FAILED_PRECONDITION,
                "CPU 99 is not an online CPU",
            ),
        ]
        for text, code, message in cases:
            with pytest.raises(grpc.RpcError) as info:
                client.Apply(agent_pb2.ApplyRequest(allocation_json=text), timeout=10)
            assert info.value.code() == code
            assert message in info.value.details()
        assert applier.allocations == {}

        good = Allocation("u1", "ml", "p", "edge-chk", cpus=(2, 3))
        assert (
            client.Apply(agent_pb2.ApplyRequest(allocation_json=good.to_annotation()), timeout=10).generation
            == 2
        )
        clash = Allocation("u2", "ml", "q", "edge-chk", cpus=(3,))
        with pytest.raises(grpc.RpcError) as info:
            client.Apply(agent_pb2.ApplyRequest(allocation_json=clash.to_annotation()), timeout=10)
        assert "CPU 3 is held by pod ml/p" in info.value.details()
        assert client.Release(agent_pb2.ReleaseRequest(pod_uid="u1"), timeout=10).generation == 3
        assert client.ListAllocations(agent_pb2.ListAllocationsRequest(), timeout=10).allocations_json == "[]"
    finally:
        agent_host.stop_agent(agent)


def test_allowed_clients_are_enforced_by_certificate_name(
    agent_host: AgentHost, snapshot_roots: dict[str, Path], ca: TestCa
) -> None:
    server = ca.issue("edge-tls")
    agent = agent_host.start_agent(
        snapshot_roots[SNAPSHOT],
        "edge-tls",
        tls_cert=str(server.cert),
        tls_key=str(server.key),
        tls_ca=str(server.ca),
        tls_allowed_clients=("gedge-extender",),
    )

    def call(client_name: str) -> agent_pb2.ListAllocationsResponse:
        issued = ca.issue(client_name)
        material = load_tls(issued.cert, issued.key, issued.ca)
        channel = grpc.secure_channel(
            f"127.0.0.1:{agent.port}", channel_credentials(material), expect_peer_name_options("edge-tls")
        )
        return agent_pb2_grpc.NodeAgentStub(channel).ListAllocations(
            agent_pb2.ListAllocationsRequest(), timeout=30
        )

    try:
        assert call("gedge-extender").generation == 1
        with pytest.raises(grpc.RpcError) as info:
            call("edge-7")
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "edge-7" in info.value.details()
        assert agent.metrics.registry.get_sample_value("gedge_agent_rejected_peers_total") == 1
        with pytest.raises(grpc.RpcError) as info:
            stub(agent.port).ListAllocations(agent_pb2.ListAllocationsRequest(), timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        agent_host.stop_agent(agent)
