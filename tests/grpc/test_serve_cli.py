"""`gedge-agent serve` as a real process: the documented flags, /metrics, JSON logs, SIGTERM, bad input."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
from pathlib import Path

import grpc

from gedge_model import NodeTopology, from_json
from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc
from tests.discovery.sysfs_builder import SysfsBuilder
from tests.entry_points import entry_point
from tests.grpc.agents import spawn_agent
from tests.grpc.certs import TestCa

SNAPSHOT = "2pa-pcidomain32bits"


def test_serve_as_documented_then_sigterm(snapshot_roots: dict[str, Path]) -> None:
    agent = spawn_agent(snapshot_roots[SNAPSHOT], "edge-cli")
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{agent.port}")
        reply = agent_pb2_grpc.NodeAgentStub(channel).GetNodeState(
            agent_pb2.GetNodeStateRequest(), timeout=10
        )
        assert reply.state.node_name == "edge-cli"
        with urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert "gedge_agent_state_generation 1.0" in text
        assert 'gedge_agent_grpc_requests_total{code="OK",method="GetNodeState"} 1.0' in text
        assert agent.terminate(timeout=15) == 0
    finally:
        agent.kill()
    records = [json.loads(line) for line in agent.log_lines if line.startswith("{")]
    events = [r["event"] for r in records]
    assert "agent serving" in events and "shutting down" in events and events[-1] == "agent stopped"
    assert all("timestamp" in r and "level" in r for r in records)


def test_environment_configures_the_agent(snapshot_roots: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("node_name: from-file\nmetrics_listen: ''\n")
    agent = spawn_agent(
        snapshot_roots[SNAPSHOT],
        "edge-flag",
        "--config",
        str(config),
        metrics_listen="",
        env={"GEDGE_AGENT_POLL_INTERVAL_S": "0.2"},
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{agent.port}")
        reply = agent_pb2_grpc.NodeAgentStub(channel).GetNodeState(
            agent_pb2.GetNodeStateRequest(), timeout=10
        )
        assert reply.state.node_name == "edge-flag"
    finally:
        agent.terminate()


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [entry_point("gedge-agent"), "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_reserved_cpus_are_reported_to_the_extender(tmp_path: Path) -> None:
    sysfs = SysfsBuilder(tmp_path / "root")
    for cpu in range(4):
        sysfs.cpu(cpu, core=cpu)
    sysfs.cpus_online(range(4))
    agent = spawn_agent(sysfs.root, "edge-reserved", "--reserved-cpus", "0,1,7", metrics_listen="")
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{agent.port}")
        reply = agent_pb2_grpc.NodeAgentStub(channel).GetNodeState(
            agent_pb2.GetNodeStateRequest(), timeout=10
        )
    finally:
        agent.terminate()
    topology = from_json(NodeTopology, reply.state.topology_json)
    assert topology.reserved_cpus == (0, 1, 7)
    assert topology.pinnable_cpus == frozenset({2, 3})
    assert "reserved_cpus: CPU(s) [7] are not online on this node" in topology.warnings


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("listen: 1.2.3.4:5\nmetrics_port: 9\n")
    result = run_serve("--config", str(config))
    assert result.returncode == 2
    assert "unknown key(s) ['metrics_port']" in result.stderr


def test_missing_tls_file_exits_2_naming_it(snapshot_roots: dict[str, Path], tmp_path: Path) -> None:
    result = run_serve(
        "--root",
        str(snapshot_roots[SNAPSHOT]),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "",
        "--tls-cert",
        str(tmp_path / "nope.crt"),
        "--tls-key",
        str(tmp_path / "nope.key"),
        "--tls-ca",
        str(tmp_path / "ca.pem"),
    )
    assert result.returncode == 2
    assert "nope.crt" in result.stderr


def test_tls_csr_without_kubernetes_exits_2_saying_so(
    snapshot_roots: dict[str, Path], tmp_path: Path
) -> None:
    result = run_serve(
        "--root",
        str(snapshot_roots[SNAPSHOT]),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "",
        "--tls-csr",
        "--tls-cert",
        str(tmp_path / "pki" / "tls.crt"),
        "--tls-key",
        str(tmp_path / "pki" / "tls.key"),
        "--tls-ca",
        str(tmp_path / "ca.pem"),
    )
    assert result.returncode == 2
    assert "tls_csr needs Kubernetes (a kubeconfig or the pod's service account)" in result.stderr
    assert not (tmp_path / "pki").exists()


def test_certificate_for_another_node_is_refused_at_start(
    snapshot_roots: dict[str, Path], ca: TestCa
) -> None:
    issued = ca.issue("edge-x")
    result = run_serve(
        "--root",
        str(snapshot_roots[SNAPSHOT]),
        "--node-name",
        "edge-y",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "",
        "--tls-cert",
        str(issued.cert),
        "--tls-key",
        str(issued.key),
        "--tls-ca",
        str(issued.ca),
    )
    assert result.returncode == 2
    assert "names ['edge-x'], not this node 'edge-y'" in result.stderr


def test_port_in_use_is_a_clear_error(snapshot_roots: dict[str, Path]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_serve(
            "--root",
            str(snapshot_roots[SNAPSHOT]),
            "--listen",
            f"127.0.0.1:{port}",
            "--metrics-listen",
            "",
            "--insecure",
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr


def test_without_tls_files_the_agent_refuses_to_start_unless_insecure(
    snapshot_roots: dict[str, Path],
) -> None:
    result = run_serve(
        "--root", str(snapshot_roots[SNAPSHOT]), "--listen", "127.0.0.1:0", "--metrics-listen", ""
    )
    assert result.returncode == 2
    assert (
        "TLS is required: give tls_cert, tls_key and tls_ca (`gedge-agent certs` makes them)" in result.stderr
    )

    agent = spawn_agent(snapshot_roots[SNAPSHOT], "edge-plain", "--insecure", metrics_listen="")
    try:
        warnings = [json.loads(line) for line in agent.log_lines if '"warning"' in line]
        assert any(w["event"].startswith("plaintext gRPC (insecure)") for w in warnings), agent.log_lines
    finally:
        agent.terminate()
