"""The node's serving certificate from Kubernetes: a CertificateSigningRequest to signer gedge.io/agent.

At start, and again past 70-90% of the certificate's life (as kubelet's certificate
manager), the agent makes a new ECDSA P-256 key, asks for a certificate naming its
node (common name and DNS name, usages digital signature and server auth), waits
until the signer has issued it, and writes key and certificate together: both go into
a fresh folder next to `tls_cert` that a `..data` link is swapped to in one rename,
and `tls_cert`/`tls_key` are links through it (as kubelet lays out Secret volumes), so
a reader never sees a key of one certificate with another. The key is written 0600
from the start. The gRPC server picks the new files up at its next handshake.
"""

from __future__ import annotations

import base64
import datetime
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gedge_model.tls import TlsConfigError, certificate_names, load_tls

log = structlog.get_logger("gedge.agent.certificates")

SIGNER_NAME = "gedge.io/agent"
USAGES = ("digital signature", "server auth")
MIN_EXPIRATION_S = 600
"""The API server refuses a CSR asking for less (spec.expirationSeconds)."""
DATA_LINK = "..data"


class CertificateRequestError(RuntimeError):
    """The CSR was denied or failed, or the issued certificate is unusable; the message says which and why."""


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes
    csr_name: str


def rotation_deadline(cert: x509.Certificate, fraction: float) -> datetime.datetime:
    """When to ask for the next certificate: `fraction` (0..1) of the way from notBefore to notAfter."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * fraction


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_request(node: str) -> tuple[bytes, bytes]:
    """(PKCS#10 request PEM, private key PEM) for `node`: common name and only DNS name."""
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(node)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return request.public_bytes(serialization.Encoding.PEM), key_pem


def write_pair(cert_path: Path, key_path: Path, cert_pem: bytes, key_pem: bytes) -> None:
    """Publish a certificate and its key at once (see the module docstring); older pairs are removed."""
    folder = cert_path.parent
    if key_path.parent != folder:
        raise ValueError(f"tls_cert {cert_path} and tls_key {key_path} must be in one folder")
    folder.mkdir(parents=True, exist_ok=True)
    fresh = folder / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{os.getpid()}.{random.randrange(1 << 30)}"
    fresh.mkdir(mode=0o755)
    fd = os.open(fresh / key_path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem)
        out.flush()
        os.fsync(out.fileno())
    fd = os.open(fresh / cert_path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(cert_pem)
        out.flush()
        os.fsync(out.fileno())
    link = folder / DATA_LINK
    scratch = folder / f"{DATA_LINK}.tmp"
    scratch.unlink(missing_ok=True)
    scratch.symlink_to(fresh.name)
    previous = os.readlink(link) if link.is_symlink() else None
    os.replace(scratch, link)
    for path in (cert_path, key_path):
        target = f"{DATA_LINK}/{path.name}"
        if not (path.is_symlink() and os.readlink(path) == target):
            entry = path.with_name(f".{path.name}.tmp")
            entry.unlink(missing_ok=True)
            entry.symlink_to(target)
            os.replace(entry, path)
    if previous and previous != fresh.name and previous.startswith(".."):
        shutil.rmtree(folder / previous, ignore_errors=True)


class NodeCertificate:
    """Keeps `cert_path`/`key_path` holding a current certificate for `node` from signer gedge.io/agent.

    `certificates` is a kubernetes CertificatesV1Api. `on_state(reason | None)` hears what the agent is
    waiting for (None: a usable certificate is in place)."""

    def __init__(
        self,
        certificates: Any,
        node: str,
        cert_path: str | Path,
        key_path: str | Path,
        ca_path: str | Path,
        *,
        expiration_s: int = 86400,
        on_state: Callable[[str | None], None] | None = None,
        on_certificate: Callable[[x509.Certificate], None] | None = None,
        on_request: Callable[[str], None] | None = None,
        jitter: Callable[[], float] = lambda: random.uniform(0.7, 0.9),
    ) -> None:
        if expiration_s < MIN_EXPIRATION_S:
            raise ValueError(f"expiration must be at least {MIN_EXPIRATION_S} s, got {expiration_s}")
        self.api = certificates
        self.node = node
        self.cert_path, self.key_path, self.ca_path = Path(cert_path), Path(key_path), Path(ca_path)
        self.expiration_s = expiration_s
        self.on_state = on_state or (lambda _reason: None)
        self.on_certificate = on_certificate or (lambda _cert: None)
        """Hears every certificate put or found in place."""
        self.on_request = on_request or (lambda _outcome: None)
        """Hears how each request ended: issued, denied, failed or error."""
        self.jitter = jitter
        self.deadline: datetime.datetime | None = None
        """When the certificate in place is to be replaced; None: none usable is in place."""

    def current(self) -> x509.Certificate | None:
        """The certificate in place if it loads with its key, names this node and is still valid."""
        try:
            material = load_tls(self.cert_path, self.key_path, self.ca_path)
        except TlsConfigError:
            return None
        cert = x509.load_pem_x509_certificate(material.cert_pem)
        if self.node not in material.names or cert.not_valid_after_utc <= _now():
            return None
        return cert

    def request(self, stop: threading.Event, *, poll_s: float = 10.0) -> Issued:
        """Create a CSR, wait for its certificate (or `stop`), write it; CertificateRequestError when the
        request is denied or fails. The request's key never leaves this process but in the key file."""
        from kubernetes import client as k8s

        request_pem, key_pem = make_request(self.node)
        body = k8s.V1CertificateSigningRequest(
            metadata=k8s.V1ObjectMeta(
                generate_name=f"gedge-agent-{self.node[:200]}-",
                labels={"app.kubernetes.io/name": "gedge-agent", "app.kubernetes.io/part-of": "gedge-accel"},
            ),
            spec=k8s.V1CertificateSigningRequestSpec(
                request=base64.b64encode(request_pem).decode(),
                signer_name=SIGNER_NAME,
                usages=list(USAGES),
                expiration_seconds=self.expiration_s,
            ),
        )
        created = self.api.create_certificate_signing_request(body)
        name = created.metadata.name
        self.on_state(
            f"waiting for CertificateSigningRequest {name} to be approved and signed by {SIGNER_NAME}"
        )
        log.info("certificate requested", csr=name, node=self.node, signer=SIGNER_NAME)
        cert_pem = self._wait(name, created, stop, poll_s)
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise CertificateRequestError(f"CSR {name}: the issued certificate is not PEM ({exc})") from None
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        ours = serialization.load_pem_private_key(key_pem, None).public_key().public_bytes(der, public)
        if cert.public_key().public_bytes(der, public) != ours:
            raise CertificateRequestError(f"CSR {name}: the issued certificate is not for the requested key")
        if self.node not in certificate_names(cert_pem):
            raise CertificateRequestError(
                f"CSR {name}: the issued certificate names {sorted(certificate_names(cert_pem))}, "
                f"not this node {self.node!r}"
            )
        write_pair(self.cert_path, self.key_path, cert_pem, key_pem)
        self.deadline = rotation_deadline(cert, self.jitter())
        self.on_certificate(cert)
        log.info(
            "certificate in place",
            csr=name,
            not_after=cert.not_valid_after_utc.isoformat(),
            renew_at=self.deadline.isoformat(),
        )
        return Issued(cert_pem, key_pem, name)

    def _wait(self, name: str, csr: Any, stop: threading.Event, poll_s: float) -> bytes:
        from kubernetes import watch

        while True:
            found = self._outcome(name, csr)
            if found is not None:
                return found
            if stop.is_set():
                raise CertificateRequestError(f"CSR {name}: stopped while waiting")
            watcher = watch.Watch()
            for event in watcher.stream(
                self.api.list_certificate_signing_request,
                field_selector=f"metadata.name={name}",
                resource_version=csr.metadata.resource_version,
                timeout_seconds=max(1, int(poll_s)),
            ):
                csr = event["object"]
                if self._outcome(name, csr) is not None or stop.is_set():
                    watcher.stop()
                    break
            else:
                csr = self.api.read_certificate_signing_request(name)

    @staticmethod
    def _outcome(name: str, csr: Any) -> bytes | None:
        status = csr.status
        for condition in (status.conditions if status else None) or ():
            if condition.type in ("Denied", "Failed") and condition.status == "True":
                raise CertificateRequestError(
                    f"CSR {name} {condition.type.lower()}: {condition.reason}: {condition.message}"
                )
        if status is not None and status.certificate:
            return base64.b64decode(status.certificate)
        return None

    def ensure(self, stop: threading.Event, *, retry_s: float = 5.0, max_retry_s: float = 300.0) -> bool:
        """Until `stop`: a usable certificate in place (the one there, or a new one). True once it is."""
        cert = self.current()
        if cert is not None:
            self.deadline = rotation_deadline(cert, self.jitter())
            self.on_certificate(cert)
            self.on_state(None)
            log.info("certificate in place", path=str(self.cert_path), renew_at=self.deadline.isoformat())
            return True
        return self._request_until_issued(stop, retry_s, max_retry_s)

    def _request_until_issued(self, stop: threading.Event, retry_s: float, max_retry_s: float) -> bool:
        wait = retry_s
        while not stop.is_set():
            if not self.ca_path.exists():
                self.on_state(f"waiting for the CA certificate {self.ca_path}")
                stop.wait(retry_s)
                continue
            try:
                self.request(stop)
                self.on_request("issued")
                self.on_state(None)
                return True
            except Exception as exc:  # API errors, denials: say why and ask again later
                if stop.is_set():
                    break
                self.on_request(_outcome_of(exc))
                reason = (
                    str(exc) if isinstance(exc, CertificateRequestError) else f"{type(exc).__name__}: {exc}"
                )
                log.error("certificate request failed; asking again", error=reason, retry_s=wait)
                if self.current() is None:
                    self.on_state(f"no certificate: {reason}")
                stop.wait(wait)
                wait = min(wait * 2, max_retry_s)
        return False

    def rotate_forever(
        self, stop: threading.Event, *, retry_s: float = 5.0, max_retry_s: float = 300.0
    ) -> None:
        """Replace the certificate at each deadline until `stop` (the one in place serves meanwhile)."""
        while not stop.is_set():
            deadline = self.deadline or _now()
            if stop.wait(max(0.0, (deadline - _now()).total_seconds())):
                return
            self._request_until_issued(stop, retry_s, max_retry_s)


def _outcome_of(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, CertificateRequestError):
        return "denied" if " denied: " in text else "failed"
    return "error"
