"""Node certificates through the real CertificateSigningRequest API (signer gedge.io/agent).

`gedge-extender csr-signer` runs as deploy/'s gedge-csr-signer service account
(its RBAC from deploy/tls/csr-signer.yaml) with a CA of this module and short
certificates; agents ask with the gedge-agent token bound to a pod on their node,
as kubelet projects it, so the API server records the node in the CSR.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import ssl
import stat
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from prometheus_client.utils import floatToGoString

from agent.certificates import CertificateRequestError, NodeCertificate, make_request
from gedge_model.certs import create_ca, issue
from gedge_model.tls import TlsMaterial, channel_credentials, expect_peer_name_options
from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc
from tests.e2e.cluster_objects import node_object, register_node, wait_for
from tests.e2e.conftest import control_plane, e2e_bin_dir, kube_api  # noqa: F401
from tests.e2e.control_plane import ControlPlane, kubeconfig_text
from tests.e2e.edge_cluster import DEPLOY, RBAC_KINDS, SYSTEM_NAMESPACE, manifests, token_kubeconfig
from tests.e2e.processes import ManagedProcess
from tests.e2e.test_admission_policy import _create_if_missing, agent_kubeconfig
from tests.grpc.agents import ISOLATED, REPO, spawn_agent

pytestmark = pytest.mark.e2e
SIGNER_DURATION_S = 30
"""Short enough that the agent renews within the test (at 70-90% of 33 s: 30 s and a tenth backdated)."""


@dataclass
class Signing:
    ca_cert: bytes
    ca_key: bytes
    ca_path: Path
    """The CA certificate as the signer published it (ConfigMap gedge-ca-bundle), written out."""
    nodes: tuple[str, str]
    workdir: Path


def _certificates(kubeconfig: Path) -> k8s.CertificatesV1Api:
    return k8s.CertificatesV1Api(k8s_config.new_client_from_config(config_file=str(kubeconfig)))


@pytest.fixture(scope="module")
def signing(
    control_plane: ControlPlane,  # noqa: F811
    kube_api: k8s.ApiClient,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Signing]:
    workdir = tmp_path_factory.mktemp("csr")
    _create_if_missing(kube_api, manifests(DEPLOY / "namespace.yaml"))
    for path in (DEPLOY / "agent" / "rbac.yaml", DEPLOY / "tls" / "csr-signer.yaml"):
        _create_if_missing(kube_api, manifests(path, RBAC_KINDS))
    ca_cert, ca_key = create_ca()
    (workdir / "ca.crt").write_bytes(ca_cert)
    fd = os.open(workdir / "ca.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(ca_key)
    signer_kubeconfig = token_kubeconfig(
        control_plane, kube_api, "gedge-csr-signer", workdir / "signer.kubeconfig"
    )
    signer = ManagedProcess(
        "gedge-csr-signer",
        [
            str(REPO / ".venv" / "bin" / "gedge-extender"),
            "csr-signer",
            "--kubeconfig",
            str(signer_kubeconfig),
            "--ca-cert",
            str(workdir / "ca.crt"),
            "--ca-key",
            str(workdir / "ca.key"),
            "--certificate-duration-s",
            str(SIGNER_DURATION_S),
            "--ca-configmap",
            f"{SYSTEM_NAMESPACE}/gedge-ca-bundle",
        ],
        control_plane.log_dir / "gedge-csr-signer.log",
    ).start()
    core = k8s.CoreV1Api(kube_api)
    suffix = uuid.uuid4().hex[:6]
    nodes = (f"csr-a-{suffix}", f"csr-b-{suffix}")
    for name in nodes:
        register_node(core, node_object(name, cpu="100m", memory="64Mi", pods="4"))
    try:

        def bundle() -> k8s.V1ConfigMap | None:
            with contextlib.suppress(ApiException):
                return core.read_namespaced_config_map("gedge-ca-bundle", SYSTEM_NAMESPACE)
            return None

        published = wait_for(bundle, lambda cm: cm is not None, timeout=60, describe=lambda _: signer.tail())
        assert published.data["ca.crt"].encode() == ca_cert, "the signer publishes its CA for the agents"
        (workdir / "published-ca.crt").write_text(published.data["ca.crt"])
        yield Signing(ca_cert, ca_key, workdir / "published-ca.crt", nodes, workdir)
    finally:
        signer.stop()
        for pod in core.list_namespaced_pod(SYSTEM_NAMESPACE).items:
            if pod.spec.node_name in nodes:
                with contextlib.suppress(ApiException):
                    core.delete_namespaced_pod(pod.metadata.name, SYSTEM_NAMESPACE, grace_period_seconds=0)
        for name in nodes:
            with contextlib.suppress(ApiException):
                core.delete_node(name)


def _condition(
    csr: k8s.V1CertificateSigningRequest, kind: str
) -> k8s.V1CertificateSigningRequestCondition | None:
    for condition in (csr.status.conditions if csr.status else None) or ():
        if condition.type == kind:
            return condition
    return None


def _presented_certificate(port: int, material: TlsMaterial) -> x509.Certificate:
    """The certificate the agent presents to a new connection from the extender's certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=material.ca_pem.decode())
    context.set_alpn_protocols(["h2"])
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"gedge-ext-{uuid.uuid4().hex}"
    scratch.mkdir(mode=0o700)
    try:
        (scratch / "c.pem").write_bytes(material.cert_pem)
        (scratch / "k.pem").write_bytes(material.key_pem)
        context.load_cert_chain(scratch / "c.pem", scratch / "k.pem")
    finally:
        for name in ("c.pem", "k.pem"):
            (scratch / name).unlink(missing_ok=True)
        scratch.rmdir()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=None) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_the_agent_gets_its_nodes_certificate_serves_the_extender_and_renews_without_restart(
    control_plane: ControlPlane,  # noqa: F811
    kube_api: k8s.ApiClient,  # noqa: F811
    signing: Signing,
    tmp_path: Path,
) -> None:
    node = signing.nodes[0]
    kubeconfig = agent_kubeconfig(control_plane, kube_api, node, tmp_path / "agent.kubeconfig")
    pki = tmp_path / "pki"
    agent = spawn_agent(
        "/",
        node,
        "--kubeconfig",
        str(kubeconfig),
        "--no-apply",
        "--no-netlink",
        "--device-plugin-dir",
        str(tmp_path / "device-plugins"),
        "--tls-csr",
        "--tls-cert",
        str(pki / "tls.crt"),
        "--tls-key",
        str(pki / "tls.key"),
        "--tls-ca",
        str(signing.ca_path),
        "--log-level",
        "debug",
    )
    try:
        first = x509.load_pem_x509_certificate((pki / "tls.crt").read_bytes())
        assert first.subject.rfc4514_string() == f"CN={node}"
        assert stat.S_IMODE((pki / "tls.key").stat().st_mode) == 0o600
        first.verify_directly_issued_by(x509.load_pem_x509_certificate(signing.ca_cert))

        extender = TlsMaterial(*issue(signing.ca_cert, signing.ca_key, "gedge-extender"), signing.ca_cert)
        address = f"127.0.0.1:{agent.port}"
        with grpc.secure_channel(
            address, channel_credentials(extender), expect_peer_name_options(node)
        ) as channel:
            reply = agent_pb2_grpc.NodeAgentStub(channel).GetNodeState(
                agent_pb2.GetNodeStateRequest(), timeout=20
            )
            assert reply.state.node_name == node
        assert _presented_certificate(agent.port, extender).serial_number == first.serial_number

        def current_serial() -> int:
            return x509.load_pem_x509_certificate((pki / "tls.crt").read_bytes()).serial_number

        wait_for(current_serial, lambda serial: serial != first.serial_number, timeout=3 * SIGNER_DURATION_S)
        renewed = x509.load_pem_x509_certificate((pki / "tls.crt").read_bytes())
        assert renewed.subject.rfc4514_string() == f"CN={node}"
        assert agent.process.poll() is None, "renewed without a restart"
        assert _presented_certificate(agent.port, extender).serial_number == renewed.serial_number
        with grpc.secure_channel(
            address, channel_credentials(extender), expect_peer_name_options(node)
        ) as channel:
            reply = agent_pb2_grpc.NodeAgentStub(channel).GetNodeState(
                agent_pb2.GetNodeStateRequest(), timeout=20
            )
            assert reply.state.node_name == node

        def metrics() -> str:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=10
            ) as answer:
                return answer.read().decode()

        expiry = "gedge_agent_certificate_expiry_timestamp_seconds " + floatToGoString(
            renewed.not_valid_after_utc.timestamp()
        )
        text = wait_for(metrics, lambda text: expiry in text, timeout=30)
        assert 'gedge_agent_certificate_requests_total{outcome="issued"}' in text
        assert agent.terminate(timeout=30) == 0
    finally:
        agent.kill()
    requested = [line for line in agent.log_lines if '"certificate requested"' in line]
    assert len(requested) >= 2, "one request at start, one renewal"


def test_an_agent_token_asking_for_another_node_or_bound_to_none_is_denied(
    control_plane: ControlPlane,  # noqa: F811
    kube_api: k8s.ApiClient,  # noqa: F811
    signing: Signing,
    tmp_path: Path,
) -> None:
    node_a, node_b = signing.nodes
    on_a = agent_kubeconfig(control_plane, kube_api, node_a, tmp_path / "a.kubeconfig")
    admin = k8s.CertificatesV1Api(kube_api)
    for kubeconfig, asks, reason in (
        (on_a, node_b, "NodeMismatch"),
        (
            token_kubeconfig(control_plane, kube_api, "gedge-agent", tmp_path / "unbound.kubeconfig"),
            node_a,
            "NoNodeBinding",
        ),
    ):
        requester = NodeCertificate(
            _certificates(kubeconfig),
            asks,
            tmp_path / asks / "tls.crt",
            tmp_path / asks / "tls.key",
            signing.ca_path,
            expiration_s=600,
        )
        with pytest.raises(CertificateRequestError, match=f"denied: {reason}") as denied:
            requester.request(threading.Event())
        name = str(denied.value).split()[1]
        csr = admin.read_certificate_signing_request(name)
        condition = _condition(csr, "Denied")
        assert condition is not None and condition.reason == reason and not csr.status.certificate
        assert not (tmp_path / asks / "tls.crt").exists()


def test_another_service_accounts_request_is_left_alone(
    control_plane: ControlPlane,  # noqa: F811
    kube_api: k8s.ApiClient,  # noqa: F811
    signing: Signing,
    tmp_path: Path,
) -> None:
    """Its CSR is created first; once a later agent request is signed, the signer has seen it and left it
    for an administrator: no condition, no certificate."""
    node = signing.nodes[0]
    core, rbac = k8s.CoreV1Api(kube_api), k8s.RbacAuthorizationV1Api(kube_api)
    account = f"intruder-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_service_account(
        SYSTEM_NAMESPACE, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=account))
    )
    rbac.create_cluster_role_binding(
        k8s.V1ClusterRoleBinding(
            metadata=k8s.V1ObjectMeta(name=account),
            role_ref=k8s.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="gedge-agent"
            ),
            subjects=[k8s.RbacV1Subject(kind="ServiceAccount", name=account, namespace=SYSTEM_NAMESPACE)],
        )
    )
    try:
        pod = core.create_namespaced_pod(
            SYSTEM_NAMESPACE,
            k8s.V1Pod(
                metadata=k8s.V1ObjectMeta(generate_name=f"{account}-"),
                spec=k8s.V1PodSpec(
                    node_name=node,
                    service_account_name=account,
                    containers=[k8s.V1Container(name="main", image="pause")],
                ),
            ),
        )
        spec = k8s.V1TokenRequestSpec(
            audiences=[],
            expiration_seconds=3600,
            bound_object_ref=k8s.V1BoundObjectReference(
                api_version="v1", kind="Pod", name=pod.metadata.name, uid=pod.metadata.uid
            ),
        )
        token = core.create_namespaced_service_account_token(
            account, SYSTEM_NAMESPACE, k8s.AuthenticationV1TokenRequest(spec=spec)
        )
        assert control_plane.ca is not None
        path = tmp_path / "intruder.kubeconfig"
        path.write_text(
            kubeconfig_text(control_plane.server, control_plane.ca.cert, token.status.token, account)
        )
        request_pem, _ = make_request(node)
        intruder = _certificates(path).create_certificate_signing_request(
            k8s.V1CertificateSigningRequest(
                metadata=k8s.V1ObjectMeta(generate_name="intruder-"),
                spec=k8s.V1CertificateSigningRequestSpec(
                    request=base64.b64encode(request_pem).decode(),
                    signer_name="gedge.io/agent",
                    usages=["digital signature", "server auth"],
                ),
            )
        )
        assert intruder.spec.extra["authentication.kubernetes.io/node-name"] == [node]

        on_node = agent_kubeconfig(control_plane, kube_api, node, tmp_path / "agent.kubeconfig")
        requester = NodeCertificate(
            _certificates(on_node),
            node,
            tmp_path / "pki" / "tls.crt",
            tmp_path / "pki" / "tls.key",
            signing.ca_path,
            expiration_s=600,
        )
        issued = requester.request(threading.Event())
        approved = k8s.CertificatesV1Api(kube_api).read_certificate_signing_request(issued.csr_name)
        assert _condition(approved, "Approved").reason == "AgentNodeMatches"

        admin = k8s.CertificatesV1Api(kube_api)
        left = admin.read_certificate_signing_request(intruder.metadata.name)
        assert not (left.status and (left.status.conditions or left.status.certificate))

        # An administrator's approval (kubectl certificate approve) is the signer's cue to sign it.
        left.status = k8s.V1CertificateSigningRequestStatus(
            conditions=[
                k8s.V1CertificateSigningRequestCondition(
                    type="Approved", status="True", reason="KubectlApprove", message="by hand"
                )
            ]
        )
        admin.replace_certificate_signing_request_approval(left.metadata.name, left)
        signed = wait_for(
            lambda: admin.read_certificate_signing_request(left.metadata.name),
            lambda csr: csr.status.certificate,
            timeout=60,
        )
        cert = x509.load_pem_x509_certificate(base64.b64decode(signed.status.certificate))
        assert cert.subject.rfc4514_string() == f"CN={node}"
    finally:
        with contextlib.suppress(ApiException):
            rbac.delete_cluster_role_binding(account)


def test_an_agent_without_its_certificate_is_not_ready_and_says_why(
    control_plane: ControlPlane,  # noqa: F811
    kube_api: k8s.ApiClient,  # noqa: F811
    signing: Signing,
    tmp_path: Path,
) -> None:
    """A token bound to no node never gets a certificate: no gRPC port, /readyz 503 naming the denial."""
    kubeconfig = token_kubeconfig(control_plane, kube_api, "gedge-agent", tmp_path / "unbound.kubeconfig")
    command = [
        str(REPO / ".venv" / "bin" / "gedge-agent"),
        "serve",
        "--root=/",
        f"--node-name={signing.nodes[1]}",
        "--listen=127.0.0.1:0",
        "--metrics-listen=127.0.0.1:0",
        f"--kubeconfig={kubeconfig}",
        "--no-apply",
        "--no-netlink",
        f"--device-plugin-dir={tmp_path / 'device-plugins'}",
        "--tls-csr",
        f"--tls-cert={tmp_path / 'pki' / 'tls.crt'}",
        f"--tls-key={tmp_path / 'pki' / 'tls.key'}",
        f"--tls-ca={signing.ca_path}",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **ISOLATED}
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        port = None
        for line in process.stderr:
            lines.append(line)
            if '"metrics serving"' in line:
                port = json.loads(line)["port"]
                break
        assert port is not None, "".join(lines)
        threading.Thread(target=lambda: lines.extend(process.stderr or ()), daemon=True).start()

        def readyz() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as answer:
                    return answer.status, answer.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        code, body = wait_for(readyz, lambda answer: "NoNodeBinding" in answer[1], timeout=60)
        assert code == 503
        assert "certificate: no certificate: CSR gedge-agent-" in body and "denied: NoNodeBinding" in body
        assert "grpc: starting" in body
        assert not (tmp_path / "pki" / "tls.crt").exists()
        assert not any('"agent serving"' in line for line in lines)
        process.terminate()
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
