"""The agent publishes a new certificate and key together, the key never readable by others."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.certificates import DATA_LINK, write_pair
from gedge_model.certs import create_ca, issue
from gedge_model.tls import TlsFiles


@pytest.fixture
def ca(tmp_path: Path) -> tuple[bytes, bytes, Path]:
    cert, key = create_ca()
    path = tmp_path / "ca.crt"
    path.write_bytes(cert)
    return cert, key, path


def test_pairs_replace_each_other_whole_and_the_reader_follows(
    tmp_path: Path, ca: tuple[bytes, bytes, Path]
) -> None:
    ca_cert, ca_key, ca_path = ca
    folder = tmp_path / "pki"
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    old = os.umask(0)
    try:
        first = issue(ca_cert, ca_key, "edge-a")
        write_pair(cert_path, key_path, *first)
    finally:
        os.umask(old)
    assert (cert_path.read_bytes(), key_path.read_bytes()) == first
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600, "0600 even under umask 000"
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    assert os.readlink(cert_path) == f"{DATA_LINK}/tls.crt"
    assert os.readlink(key_path) == f"{DATA_LINK}/tls.key"
    files = TlsFiles(cert_path, key_path, ca_path)
    assert files.current().cert_pem == first[0]

    first_folder = folder / os.readlink(folder / DATA_LINK)
    second = issue(ca_cert, ca_key, "edge-a")
    write_pair(cert_path, key_path, *second)
    assert (cert_path.read_bytes(), key_path.read_bytes()) == second
    assert not first_folder.exists(), "the replaced pair is removed"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("..2")) == [
        DATA_LINK,
        "tls.crt",
        "tls.key",
    ]
    reloaded = files.reload()
    assert reloaded is not None and reloaded.cert_pem == second[0] and files.generation == 2


def test_plain_files_of_an_older_layout_become_links(tmp_path: Path, ca: tuple[bytes, bytes, Path]) -> None:
    ca_cert, ca_key, _ = ca
    folder = tmp_path / "pki"
    folder.mkdir()
    (folder / "tls.crt").write_text("old")
    (folder / "tls.key").write_text("old")
    pair = issue(ca_cert, ca_key, "edge-a")
    write_pair(folder / "tls.crt", folder / "tls.key", *pair)
    assert (folder / "tls.crt").is_symlink() and (folder / "tls.crt").read_bytes() == pair[0]


def test_cert_and_key_in_two_folders_are_refused(tmp_path: Path, ca: tuple[bytes, bytes, Path]) -> None:
    pair = issue(ca[0], ca[1], "edge-a")
    with pytest.raises(ValueError, match="must be in one folder"):
        write_pair(tmp_path / "a" / "tls.crt", tmp_path / "b" / "tls.key", *pair)
