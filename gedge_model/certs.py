"""A small CA for nodes run without Kubernetes: `gedge-agent certs` makes it and the certificates.

Keys are ECDSA P-256; every certificate is good for both TLS server and client
use (an agent serves the extender and an extender calls agents and serves
kube-scheduler). A certificate's identity is its common name, repeated as a DNS
subject alternative name, which is what both sides check (gedge_model.tls).
Private keys are written 0600 from the start.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "gedge-accel CA"
CA_DAYS = 3650
LEAF_DAYS = 365
MAX_DAYS = CA_DAYS
CA_FILES = ("ca.pem", "ca.key")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class CertError(ValueError):
    """A CA or certificate file cannot be read, does not belong together, or a name is unusable."""


@dataclass(frozen=True)
class IssuedFiles:
    """Paths of one certificate and its key (PEM)."""

    cert: Path
    key: Path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write a key so that it is never readable by others, not even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.unlink(missing_ok=True)
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(scratch, path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_bytes(data)
    scratch.chmod(0o644)
    os.replace(scratch, path)


def create_ca(name: str = CA_NAME, days: int = CA_DAYS) -> tuple[bytes, bytes]:
    """A self-signed CA: (certificate PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def check_dns_name(name: str, what: str = "DNS name") -> str:
    """`name` when it is a DNS name of RFC 1123 labels (letters, digits, inner hyphens; 1-63 each,
    253 in all); CertError naming `what` otherwise."""
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise CertError(
            f"{what} {name!r} is not a DNS name (dot-separated labels of 1-63 letters, digits"
            " or inner hyphens, at most 253 characters)"
        )
    return name


def check_days(days: int) -> int:
    """`days` when it is 1..MAX_DAYS; CertError otherwise."""
    if not 1 <= days <= MAX_DAYS:
        raise CertError(f"validity {days} days is outside 1-{MAX_DAYS}")
    return days


def _load_ca(ca_cert_pem: bytes, ca_key_pem: bytes) -> tuple[x509.Certificate, PrivateKeyTypes]:
    """The CA's certificate and key; CertError when either is not PEM or they do not belong together."""
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
        ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except ValueError as exc:
        raise CertError(f"CA certificate or key is not PEM: {exc}") from None
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if ca_cert.public_key().public_bytes(der, spki) != ca_key.public_key().public_bytes(der, spki):
        raise CertError("the CA key does not belong to the CA certificate")
    try:
        constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CertError(
            f"the CA certificate ({ca_cert.subject.rfc4514_string()}) is not a CA"
            " (no basicConstraints CA:TRUE); restore the real CA files"
        )
    return ca_cert, ca_key


def check_ca(ca_cert_pem: bytes, ca_key_pem: bytes) -> None:
    """CertError unless the pair is PEM, the key is the certificate's and it says basicConstraints CA:TRUE."""
    _load_ca(ca_cert_pem, ca_key_pem)


def issue(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    name: str,
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    days: int = LEAF_DAYS,
) -> tuple[bytes, bytes]:
    """A certificate for `name` (common name and first DNS name), server and client use: (cert, key) PEM."""
    check_dns_name(name, "certificate name")
    if len(name) > 64:
        raise CertError(f"certificate name {name!r} is longer than 64 characters (common name limit)")
    for extra in dns:
        check_dns_name(extra)
    check_days(days)
    ca_cert, ca_key = _load_ca(ca_cert_pem, ca_key_pem)
    try:
        addresses = [ipaddress.ip_address(ip) for ip in ips]
    except ValueError as exc:
        raise CertError(f"not an IP address: {exc}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys((name, *dns))]
    names += [x509.IPAddress(a) for a in addresses]
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        # cryptography annotates loaded keys as the union of every key type, signing-incapable ones
        # (X25519, DH) included; a CA whose key cannot sign fails here at run time with its own error.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def ensure_ca(directory: Path, name: str = CA_NAME) -> tuple[bytes, bytes]:
    """The CA in `directory` (ca.pem, ca.key), made there first if neither file exists."""
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    if cert_path.exists() != key_path.exists():
        present, absent = (cert_path, key_path) if cert_path.exists() else (key_path, cert_path)
        raise CertError(f"{present} exists but {absent} does not; restore it or remove both")
    if not cert_path.exists():
        cert_pem, key_pem = create_ca(name)
        _write_private(key_path, key_pem)
        _write_public(cert_path, cert_pem)
        return cert_pem, key_pem
    try:
        return cert_path.read_bytes(), key_path.read_bytes()
    except OSError as exc:
        raise CertError(f"{exc.filename}: {exc.strerror}") from None


def issue_files(
    directory: Path, name: str, *, dns: Sequence[str] = (), ips: Sequence[str] = (), days: int = LEAF_DAYS
) -> IssuedFiles:
    """Issue `name` from the CA in `directory` into NAME.pem and NAME.key there (replacing older ones)."""
    if any(f"{name.lower()}{suffix}" in CA_FILES for suffix in (".pem", ".key")):
        raise CertError(f"certificate name {name!r} would overwrite the CA's files {' and '.join(CA_FILES)}")
    ca_cert, ca_key = ensure_ca(directory)
    cert_pem, key_pem = issue(ca_cert, ca_key, name, dns=dns, ips=ips, days=days)
    files = IssuedFiles(directory / f"{name}.pem", directory / f"{name}.key")
    _write_private(files.key, key_pem)
    _write_public(files.cert, cert_pem)
    return files


def sign_request(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    request: x509.CertificateSigningRequest,
    *,
    duration: datetime.timedelta,
    usages: Sequence[x509.ObjectIdentifier] = (ExtendedKeyUsageOID.SERVER_AUTH,),
) -> bytes:
    """A certificate (PEM) for a checked CSR: its subject and DNS names, `usages` as extended key usage,
    valid from a little before now (a tenth of `duration`, at most 5 minutes: clock skew) for `duration`,
    never past the CA's own end. CertError when the CA files do not belong together."""
    ca_cert, ca_key = _load_ca(ca_cert_pem, ca_key_pem)
    now = _now()
    backdate = min(datetime.timedelta(minutes=5), duration / 10)
    builder = (
        x509.CertificateBuilder()
        .subject_name(request.subject)
        .issuer_name(ca_cert.subject)
        .public_key(request.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate)
        .not_valid_after(min(now + duration, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    try:
        san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        builder = builder.add_extension(san, critical=False)
    except x509.ExtensionNotFound:
        pass
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM)
