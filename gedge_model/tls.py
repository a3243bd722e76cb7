"""mTLS for every gRPC link between agents and the extender: credentials and peer identity.

A node's identity is the name in its certificate (common name or DNS subject
alternative name); both sides load PEM files and check them before serving, so
a wrong path or a key that does not belong to the certificate fails at start
with the file named, not at the first handshake.
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

MAX_PEM_BYTES = 1024 * 1024


class TlsConfigError(ValueError):
    """TLS files are missing, unreadable, not PEM, or do not belong together; the message names the file."""


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes of one side's certificate chain, its private key, and the CA that signs peers."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes

    @property
    def names(self) -> frozenset[str]:
        return certificate_names(self.cert_pem)


def load_tls(cert: str | Path, key: str | Path, ca: str | Path) -> TlsMaterial:
    """Read and cross-check cert, key and CA; raises TlsConfigError naming the file at fault."""
    cert_pem, key_pem, ca_pem = (
        _read_pem(Path(p), label) for p, label in ((cert, "certificate"), (key, "key"), (ca, "CA"))
    )
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise TlsConfigError(f"TLS certificate {cert}: not a PEM certificate ({exc})") from None
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsConfigError(f"TLS key {key}: not an unencrypted PEM private key ({exc})") from None
    try:
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError as exc:
        raise TlsConfigError(f"TLS CA {ca}: not PEM certificates ({exc})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(
        serialization.Encoding.DER, public
    ) != private_key.public_key().public_bytes(serialization.Encoding.DER, public):
        raise TlsConfigError(f"TLS key {key} does not belong to certificate {cert}")
    return TlsMaterial(cert_pem, key_pem, ca_pem)


def _fingerprint(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class TlsFiles:
    """Cert, key and CA files that may be replaced while serving (cert-manager, `gedge-agent certs`).

    `current()` re-reads the files when any of them changed (a new inode, size or
    mtime: an in-place write or a symlink swap as kubelet does for Secret volumes).
    A replacement that does not load, or that `check` refuses, is logged by the
    caller through `on_error` and the previous material stays in use. The first files must load:
    the constructor raises TlsConfigError (or what `check` raises) naming the file at fault.
    """

    def __init__(
        self,
        cert: str | Path,
        key: str | Path,
        ca: str | Path,
        *,
        check: Callable[[TlsMaterial], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.paths = (Path(cert), Path(key), Path(ca))
        self._check = check
        self._on_error = on_error
        self._lock = threading.Lock()
        self._seen = self._fingerprints()
        self._material = self._load()
        self.generation = 1
        """How many different materials were loaded (1: the first one)."""

    def _fingerprints(self) -> tuple[object, ...]:
        return tuple(_fingerprint(p) for p in self.paths)

    def _load(self) -> TlsMaterial:
        material = load_tls(*self.paths)
        if self._check is not None:
            self._check(material)
        return material

    def reload(self) -> TlsMaterial | None:
        """The new material if the files changed and load; None when unchanged or not usable."""
        with self._lock:
            seen = self._fingerprints()
            if seen == self._seen:
                return None
            self._seen = seen
            try:
                material = self._load()
            except TlsConfigError as exc:
                if self._on_error is not None:
                    self._on_error(str(exc))
                return None
            if material == self._material:
                return None
            self._material = material
            self.generation += 1
            return material

    def current(self) -> TlsMaterial:
        """The latest usable material (reloaded first if the files changed)."""
        self.reload()
        return self._material


def _read_pem(path: Path, label: str) -> bytes:
    """At most MAX_PEM_BYTES are read, whatever the size says (/dev/zero, a pipe: size 0, endless)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise TlsConfigError(f"TLS {label} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_PEM_BYTES:
        raise TlsConfigError(f"TLS {label} {path}: larger than {MAX_PEM_BYTES} bytes")
    return data


def server_credentials(material: TlsMaterial, *, require_client_cert: bool = True) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(material.key_pem, material.cert_pem)],
        root_certificates=material.ca_pem,
        require_client_auth=require_client_cert,
    )


def reloading_server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Server credentials that pick up replaced files at the next handshake; client certificates required."""

    def configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.key_pem, material.cert_pem)], root_certificates=material.ca_pem
        )

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        material = files.reload()
        return configuration(material) if material is not None else None

    # grpc documents None from the fetcher as "keep the current configuration"; grpc-stubs omits it.
    return grpc.dynamic_ssl_server_credentials(
        configuration(files.current()),
        fetch,  # type: ignore[arg-type]
        require_client_authentication=True,
    )


def channel_credentials(material: TlsMaterial) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca_pem,
        private_key=material.key_pem,
        certificate_chain=material.cert_pem,
    )


def expect_peer_name_options(name: str) -> list[tuple[str, str]]:
    """Channel options that make the TLS handshake accept only a server certificate issued for `name`."""
    return [("grpc.ssl_target_name_override", name), ("grpc.default_authority", name)]


def certificate_names(pem_or_der: bytes) -> frozenset[str]:
    """The certificate's common name(s) and DNS subject alternative names."""
    cert = (
        x509.load_pem_x509_certificate(pem_or_der)
        if pem_or_der.lstrip().startswith(b"-----")
        else x509.load_der_x509_certificate(pem_or_der)
    )
    names = {str(attr.value) for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names.update(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    return frozenset(names)


def peer_identities(auth_context: Mapping[str, Iterable[bytes | str]]) -> frozenset[str]:
    """Names a gRPC server sees for its TLS peer (`context.auth_context()`); empty without TLS."""
    names: set[str] = set()
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth_context.get(key, ()):
            names.add(value.decode() if isinstance(value, bytes) else str(value))
    return frozenset(names)


def fetch_peer_names(host: str, port: int, material: TlsMaterial, timeout: float = 2.0) -> frozenset[str]:
    """Handshake with a TLS server as a client of `material` and return the names of its certificate.

    Used to say why a gRPC handshake failed (an agent presenting another node's
    certificate); raises ssl.SSLError when the certificate does not verify against the CA.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=material.ca_pem.decode())
    context.set_alpn_protocols(["h2"])
    _load_client_chain(context, material)
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=None) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if der is None:
        return frozenset()
    return certificate_names(der)


def _load_client_chain(context: ssl.SSLContext, material: TlsMaterial) -> None:
    """ssl loads a chain only from files: write the PEMs to a private folder for the duration of the call."""
    with tempfile.TemporaryDirectory(prefix="gedge-tls-") as scratch:
        cert_path, key_path = Path(scratch) / "cert.pem", Path(scratch) / "key.pem"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(material.key_pem)
        cert_path.write_bytes(material.cert_pem)
        context.load_cert_chain(cert_path, key_path)
