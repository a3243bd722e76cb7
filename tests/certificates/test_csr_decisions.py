"""The gedge.io/agent approver's verdicts and the signer's certificates, on CSR objects as served."""

from __future__ import annotations

import base64
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client as k8s

from agent.certificates import USAGES, make_request, rotation_deadline
from gedge_model.certs import create_ca, sign_request
from scheduler_extender.csr_signer import AGENT_USER, NODE_NAME_KEY, SIGNER_NAME, decide

AGENT = AGENT_USER


def csr_object(
    request_pem: bytes,
    *,
    user: str = AGENT,
    node: str | None = "edge-a",
    usages: tuple[str, ...] = USAGES,
) -> k8s.V1CertificateSigningRequest:
    return k8s.V1CertificateSigningRequest(
        metadata=k8s.V1ObjectMeta(name="gedge-agent-edge-a-x1"),
        spec=k8s.V1CertificateSigningRequestSpec(
            request=base64.b64encode(request_pem).decode(),
            signer_name=SIGNER_NAME,
            usages=list(usages),
            username=user,
            extra={NODE_NAME_KEY: [node]} if node else None,
        ),
    )


def request_with(names: list[x509.GeneralName], cn: str = "edge-a") -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_the_agent_asking_for_its_own_node_is_approved() -> None:
    request, _ = make_request("edge-a")
    verdict = decide(csr_object(request))
    assert (verdict.approve, verdict.reason) == (True, "AgentNodeMatches")


def test_the_agent_asking_for_another_node_is_denied_naming_both() -> None:
    request, _ = make_request("edge-b")
    verdict = decide(csr_object(request, node="edge-a"))
    assert (verdict.approve, verdict.reason) == (False, "NodeMismatch")
    assert "'edge-b'" in verdict.message and "['edge-a']" in verdict.message


def test_a_token_bound_to_no_node_is_denied() -> None:
    request, _ = make_request("edge-a")
    verdict = decide(csr_object(request, node=None))
    assert (verdict.approve, verdict.reason) == (False, "NoNodeBinding")


def test_another_requester_is_left_for_an_administrator() -> None:
    request, _ = make_request("edge-a")
    verdict = decide(csr_object(request, user="system:serviceaccount:default:intruder"))
    assert verdict.approve is None and verdict.reason == "NotAnAgent"


@pytest.mark.parametrize(
    ("request_pem", "usages", "says"),
    [
        (request_with([x509.DNSName("edge-a"), x509.DNSName("edge-b")]), USAGES, "only the DNS name"),
        (request_with([x509.DNSName("edge-a"), x509.RFC822Name("a@b")]), USAGES, "only the DNS name"),
        (request_with([]), (*USAGES, "client auth"), "usages must"),
        (request_with([]), ("digital signature",), "usages must"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", USAGES, "PEM"),
    ],
)
def test_a_malformed_request_is_denied(request_pem: bytes, usages: tuple[str, ...], says: str) -> None:
    verdict = decide(csr_object(request_pem, usages=usages))
    assert (verdict.approve, verdict.reason) == (False, "InvalidRequest")
    assert says in verdict.message


def test_the_signed_certificate_is_the_requests_for_server_use_and_short_lived() -> None:
    ca_cert, ca_key = create_ca()
    request_pem, key_pem = make_request("edge-a")
    request = x509.load_pem_x509_csr(request_pem)
    pem = sign_request(ca_cert, ca_key, request, duration=datetime.timedelta(minutes=10))
    cert = x509.load_pem_x509_certificate(pem)
    ca = x509.load_pem_x509_certificate(ca_cert)
    cert.verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key(key_pem, None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge-a"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["edge-a"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == datetime.timedelta(minutes=11), "10 minutes, backdated by a tenth for clock skew"
    deadline = rotation_deadline(cert, 0.8)
    assert deadline == cert.not_valid_before_utc + lifetime * 0.8
