"""Certificates made by `gedge-agent certs`, served by a real agent, renewed without a restart."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from gedge_model.certs import CertError, issue_files
from gedge_model.tls import channel_credentials, expect_peer_name_options, load_tls
from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc
from tests.entry_points import entry_point
from tests.grpc.agents import AgentHost

SNAPSHOT = "2pa-pcidomain32bits"
NODE = "edge-rot"


def served_serial(port: int, pki: Path) -> int:
    """Handshake as gedge-extender and return the serial number of the certificate the agent presents."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(pki / "ca.pem")
    context.load_cert_chain(pki / "gedge-extender.pem", pki / "gedge-extender.key")
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def list_as(pki: Path, name: str, port: int) -> agent_pb2.ListAllocationsResponse:
    material = load_tls(pki / f"{name}.pem", pki / f"{name}.key", pki / "ca.pem")
    with grpc.secure_channel(
        f"127.0.0.1:{port}", channel_credentials(material), expect_peer_name_options(NODE)
    ) as channel:
        return agent_pb2_grpc.NodeAgentStub(channel).ListAllocations(
            agent_pb2.ListAllocationsRequest(), timeout=30
        )


def test_certs_command_makes_a_ca_and_private_keys_0600(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    old_umask = os.umask(0)
    try:
        result = subprocess.run(
            [entry_point("gedge-agent"), "certs", "--dir", str(pki), "edge-1", "gedge-extender"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.umask(old_umask)
    assert result.returncode == 0, result.stderr
    for key in ("ca.key", "edge-1.key", "gedge-extender.key"):
        assert stat.S_IMODE((pki / key).stat().st_mode) == 0o600, key
    material = load_tls(pki / "edge-1.pem", pki / "edge-1.key", pki / "ca.pem")
    assert material.names == {"edge-1"}
    ca_before = (pki / "ca.pem").read_bytes()
    issue_files(pki, "edge-2", ips=["10.0.0.2"])
    assert (pki / "ca.pem").read_bytes() == ca_before, "an existing CA is reused"

    (pki / "ca.key").unlink()
    with pytest.raises(CertError, match=r"ca.pem exists but .*ca.key does not"):
        issue_files(pki, "edge-3")
    bad = subprocess.run(
        [entry_point("gedge-agent"), "certs", "--dir", str(tmp_path / "new"), "a/b"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "NAME 'a/b' is not a DNS name" in bad.stderr


def test_agent_picks_up_a_renewed_certificate_and_keeps_its_own_on_a_bad_one(
    agent_host: AgentHost, snapshot_roots: dict[str, Path], tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    for name in (NODE, "gedge-extender", "edge-other"):
        issue_files(pki, name)
    agent = agent_host.start_agent(
        snapshot_roots[SNAPSHOT],
        NODE,
        tls_cert=str(pki / f"{NODE}.pem"),
        tls_key=str(pki / f"{NODE}.key"),
        tls_ca=str(pki / "ca.pem"),
    )
    try:
        first = serial_of(pki / f"{NODE}.pem")
        assert served_serial(agent.port, pki) == first
        assert list_as(pki, "gedge-extender", agent.port).generation == 1

        issue_files(pki, NODE)
        renewed = serial_of(pki / f"{NODE}.pem")
        assert renewed != first
        assert served_serial(agent.port, pki) == renewed
        assert list_as(pki, "gedge-extender", agent.port).generation == 1

        # Another node's certificate put in place is refused: the renewed one stays in use.
        for suffix in ("pem", "key"):
            (pki / f"{NODE}.{suffix}").write_bytes((pki / f"edge-other.{suffix}").read_bytes())
        assert served_serial(agent.port, pki) == renewed
    finally:
        agent_host.stop_agent(agent)


def test_a_certificate_of_another_node_cannot_call_this_agent(
    agent_host: AgentHost, snapshot_roots: dict[str, Path], tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    for name in ("edge-a", "edge-b", "gedge-extender"):
        issue_files(pki, name)
    agent_b = agent_host.start_agent(
        snapshot_roots[SNAPSHOT],
        "edge-b",
        tls_cert=str(pki / "edge-b.pem"),
        tls_key=str(pki / "edge-b.key"),
        tls_ca=str(pki / "ca.pem"),
    )
    try:
        material = load_tls(pki / "edge-a.pem", pki / "edge-a.key", pki / "ca.pem")
        with (
            grpc.secure_channel(
                f"127.0.0.1:{agent_b.port}", channel_credentials(material), expect_peer_name_options("edge-b")
            ) as channel,
            pytest.raises(grpc.RpcError) as info,
        ):
            agent_pb2_grpc.NodeAgentStub(channel).Release(agent_pb2.ReleaseRequest(pod_uid="any"), timeout=30)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "['edge-a'] are not among the allowed clients" in info.value.details()
    finally:
        agent_host.stop_agent(agent_b)
