"""Approves and signs the agents' node certificates: Kubernetes CertificateSigningRequests of signer
`gedge.io/agent`.

An agent asks with its service account's token, which kubelet binds to the agent's
pod; the API server then records the pod's node in the CSR
(`spec.extra["authentication.kubernetes.io/node-name"]`, Kubernetes 1.30 and later).
The approver approves a request only when it comes from the agent's service account,
names exactly that node (common name and only DNS name), and asks for server use only;
a request from that account naming another node, or from a token bound to no node, is
Denied with the reason. Requests from anyone else are left for an administrator
(`kubectl certificate approve`). Every approved request that is well-formed is signed
with the CA read from files (a mounted Secret: its key never leaves this process) for
`duration` at most, and the CA's certificate is published in a ConfigMap for the agents
to trust the extender's client certificate.
"""

from __future__ import annotations

import base64
import datetime
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gedge_model.certs import CertError, sign_request

log = structlog.get_logger("gedge.extender.csr_signer")

SIGNER_NAME = "gedge.io/agent"
NODE_NAME_KEY = "authentication.kubernetes.io/node-name"
AGENT_USER = "system:serviceaccount:gedge-system:gedge-agent"
SERVER_USAGES = frozenset({"digital signature", "key encipherment", "server auth"})
MIN_DURATION = datetime.timedelta(seconds=10)


@dataclass(frozen=True)
class Verdict:
    """What the approver does with one request: approve, deny, or leave it (`approve` None)."""

    approve: bool | None
    reason: str
    message: str


def parse_request(csr: Any) -> x509.CertificateSigningRequest:
    """The PKCS#10 request of a CSR object; ValueError naming what is wrong with it."""
    try:
        pem = base64.b64decode(csr.spec.request, validate=True)
        request = x509.load_pem_x509_csr(pem)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"spec.request is not a PEM certificate request ({exc})") from None
    if not request.is_signature_valid:
        raise ValueError("spec.request's signature does not verify")
    return request


def request_problem(csr: Any, request: x509.CertificateSigningRequest) -> str | None:
    """Why the request cannot be a node certificate (one name, server use), or None."""
    names = [str(a.value) for a in request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(names) != 1 or not names[0]:
        return f"the request must name exactly one common name, got {names}"
    try:
        san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    dns = san.get_values_for_type(x509.DNSName)
    if len(list(san)) != len(dns) or any(name != names[0] for name in dns):
        return (
            f"subject alternative names must be only the DNS name {names[0]!r}, got {[str(n) for n in san]}"
        )
    usages = set(csr.spec.usages or ())
    if "server auth" not in usages or not usages <= SERVER_USAGES:
        return (
            f"usages must include 'server auth' and be within {sorted(SERVER_USAGES)}, got {sorted(usages)}"
        )
    return None


def decide(csr: Any, agent_user: str = AGENT_USER) -> Verdict:
    """The approver's verdict on one CSR of our signer (pure: reads only the object)."""
    spec = csr.spec
    if spec.username != agent_user:
        return Verdict(None, "NotAnAgent", f"requested by {spec.username!r}, not the agent {agent_user!r}")
    try:
        request = parse_request(csr)
    except ValueError as exc:
        return Verdict(False, "InvalidRequest", str(exc))
    problem = request_problem(csr, request)
    if problem is not None:
        return Verdict(False, "InvalidRequest", problem)
    (name,) = [str(a.value) for a in request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    nodes = list((spec.extra or {}).get(NODE_NAME_KEY) or ())
    if not nodes:
        return Verdict(
            False,
            "NoNodeBinding",
            f"the requester's token names no node ({NODE_NAME_KEY}): "
            "only a token bound to the agent's pod may ask for a node certificate",
        )
    if nodes != [name]:
        return Verdict(
            False, "NodeMismatch", f"the request names node {name!r} but the requester runs on {nodes}"
        )
    return Verdict(True, "AgentNodeMatches", f"the agent on node {name!r} asks for its own certificate")


def _condition(csr: Any, kind: str) -> Any:
    for condition in (csr.status.conditions if csr.status else None) or ():
        if condition.type == kind and condition.status == "True":
            return condition
    return None


class CaFiles:
    """The signing CA's certificate and key (PEM files, e.g. a mounted Secret), read at each use."""

    def __init__(self, cert: str | Path, key: str | Path) -> None:
        self.cert, self.key = Path(cert), Path(key)

    def read(self) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM); CertError naming the file that cannot be read."""
        try:
            return self.cert.read_bytes(), self.key.read_bytes()
        except OSError as exc:
            raise CertError(f"CA file {exc.filename}: {exc.strerror or exc}") from None


class AgentCsrSigner:
    """Approves, denies and signs `gedge.io/agent` CSRs as they appear (`run`), or one by one (`handle`)."""

    def __init__(
        self,
        certificates: Any,
        ca: CaFiles,
        *,
        duration: datetime.timedelta = datetime.timedelta(hours=24),
        agent_user: str = AGENT_USER,
        publish_ca: Callable[[bytes], None] | None = None,
    ) -> None:
        if duration < MIN_DURATION:
            raise ValueError(f"certificate duration must be at least {MIN_DURATION}, got {duration}")
        self.api = certificates
        self.ca = ca
        self.duration = duration
        self.agent_user = agent_user
        self.publish_ca = publish_ca
        self._published: bytes | None = None
        self._left: set[str] = set()
        self._signed: set[str] = set()

    def handle(self, csr: Any) -> str:
        """Act on one CSR; returns what was done (approved, denied, signed, left, failed, nothing)."""
        if csr.spec.signer_name != SIGNER_NAME:
            return "nothing"
        name = csr.metadata.name
        if _condition(csr, "Denied") or _condition(csr, "Failed"):
            return "nothing"
        if not _condition(csr, "Approved"):
            verdict = decide(csr, self.agent_user)
            if verdict.approve is None:
                if name not in self._left:
                    self._left.add(name)
                    log.info("CSR left for an administrator", csr=name, why=verdict.message)
                return "left"
            self._add_condition(
                csr, "Approved" if verdict.approve else "Denied", verdict.reason, verdict.message
            )
            csr = self.api.replace_certificate_signing_request_approval(name, csr)
            log.info(
                "CSR approved" if verdict.approve else "CSR denied",
                csr=name,
                requester=csr.spec.username,
                reason=verdict.reason,
                message=verdict.message,
            )
            if not verdict.approve:
                return "denied"
        if (csr.status and csr.status.certificate) or name in self._signed:
            return "nothing"
        return self._sign(csr)

    def _sign(self, csr: Any) -> str:
        name = csr.metadata.name
        try:
            request = parse_request(csr)
            problem = request_problem(csr, request)
            if problem is not None:
                raise ValueError(problem)
        except ValueError as exc:
            self._add_condition(csr, "Failed", "InvalidRequest", str(exc))
            self.api.replace_certificate_signing_request_status(name, csr)
            log.warning("approved CSR not signed", csr=name, error=str(exc))
            return "failed"
        duration = self.duration
        if csr.spec.expiration_seconds:
            duration = max(
                MIN_DURATION, min(duration, datetime.timedelta(seconds=csr.spec.expiration_seconds))
            )
        ca_cert, ca_key = self.ca.read()
        usages = [ExtendedKeyUsageOID.SERVER_AUTH]
        pem = sign_request(ca_cert, ca_key, request, duration=duration, usages=usages)
        csr.status.certificate = base64.b64encode(pem).decode()
        self.api.replace_certificate_signing_request_status(name, csr)
        self._signed.add(name)
        log.info("CSR signed", csr=name, valid_for_s=duration.total_seconds())
        return "signed"

    @staticmethod
    def _add_condition(csr: Any, kind: str, reason: str, message: str) -> None:
        from kubernetes import client as k8s

        if csr.status is None:
            csr.status = k8s.V1CertificateSigningRequestStatus()
        csr.status.conditions = [
            *(csr.status.conditions or ()),
            k8s.V1CertificateSigningRequestCondition(
                type=kind,
                status="True",
                reason=reason,
                message=message,
                last_update_time=datetime.datetime.now(datetime.UTC),
            ),
        ]

    def publish(self) -> None:
        """Hand the CA certificate to `publish_ca` when it changed since the last time."""
        if self.publish_ca is None:
            return
        cert, _ = self.ca.read()
        if cert != self._published:
            self.publish_ca(cert)
            self._published = cert

    def _handle_logged(self, csr: Any) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.handle(csr)
        except ApiException as exc:
            # 409: the object changed meanwhile; the watch brings the new version.
            log.warning("CSR not updated", csr=csr.metadata.name, status=exc.status, error=exc.reason)
        except CertError as exc:
            log.error("CSR not signed: CA unusable", csr=csr.metadata.name, error=str(exc))

    def run(self, stop: threading.Event, *, watch_timeout_s: int = 60) -> None:
        """List then watch `gedge.io/agent` CSRs until `stop`; re-list after every watch window."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        selector = f"spec.signerName={SIGNER_NAME}"
        while not stop.is_set():
            try:
                self.publish()
                listed = self.api.list_certificate_signing_request(field_selector=selector)
                for csr in listed.items:
                    self._handle_logged(csr)
                watcher = watch.Watch()
                for event in watcher.stream(
                    self.api.list_certificate_signing_request,
                    field_selector=selector,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=watch_timeout_s,
                ):
                    if stop.is_set():
                        watcher.stop()
                        break
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._handle_logged(event["object"])
            except (ApiException, CertError, OSError) as exc:
                log.warning("CSR watch failed; listing again", error=str(exc))
                stop.wait(2.0)
            except Exception as exc:  # urllib3 protocol errors: the apiserver went away
                log.warning("CSR watch broke; listing again", error=repr(exc))
                stop.wait(2.0)


def configmap_publisher(core: Any, namespace: str, name: str, key: str = "ca.crt") -> Callable[[bytes], None]:
    """Write the CA certificate into ConfigMap namespace/name (created when missing)."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    def publish(cert: bytes) -> None:
        body = k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(
                name=name, namespace=namespace, labels={"app.kubernetes.io/part-of": "gedge-accel"}
            ),
            data={key: cert.decode()},
        )
        try:
            core.replace_namespaced_config_map(name, namespace, body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            core.create_namespaced_config_map(namespace, body)
        log.info("CA certificate published", configmap=f"{namespace}/{name}", key=key)

    return publish
