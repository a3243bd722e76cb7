"""A throwaway CA for tests, made with the product's own gedge_model.certs (what `gedge-agent certs` uses)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gedge_model import certs


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    ca: Path


class TestCa:
    """A CA valid for a day in `folder` (NAME.pem); `issue` writes leaves beside it."""

    __test__ = False

    def __init__(self, folder: Path, name: str = "gedge-test-ca") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.cert_pem, self.key_pem = certs.create_ca(name, days=1)
        self.ca_path = folder / f"{name}.pem"
        self.ca_path.write_bytes(self.cert_pem)

    def issue(self, name: str) -> Issued:
        """A leaf for `name` (CN and DNS SAN, plus 127.0.0.1), usable as server and client."""
        cert_pem, key_pem = certs.issue(self.cert_pem, self.key_pem, name, ips=("127.0.0.1",), days=1)
        cert_path = self.folder / f"{name}.crt"
        key_path = self.folder / f"{name}.key"
        cert_path.write_bytes(cert_pem)
        key_path.write_bytes(key_pem)
        return Issued(cert_path, key_path, self.ca_path)
