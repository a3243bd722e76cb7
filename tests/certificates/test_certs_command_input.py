"""`gedge-agent certs` keeps its CA: names that would overwrite it, a leaf in the CA's place,
and unusable names, DNS names and validity are refused with exit 2 and the flag or name at fault."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from gedge_model.certs import CertError, create_ca, issue, issue_files
from tests.entry_points import entry_point


def certs(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [entry_point("gedge-agent"), "certs", *argv], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("name", ["ca", "CA"])
def test_a_name_that_would_overwrite_the_ca_is_refused(tmp_path: Path, name: str) -> None:
    pki = tmp_path / "pki"
    assert certs("--dir", str(pki), "edge-1").returncode == 0
    ca_before = (pki / "ca.pem").read_bytes(), (pki / "ca.key").read_bytes()
    result = certs("--dir", str(pki), name)
    assert result.returncode == 2
    assert f"NAME {name!r} would overwrite the CA's files ca.pem and ca.key" in result.stderr
    assert ((pki / "ca.pem").read_bytes(), (pki / "ca.key").read_bytes()) == ca_before
    with pytest.raises(CertError, match="would overwrite the CA's files"):
        issue_files(pki, name)


def test_a_leaf_in_the_cas_place_does_not_sign(tmp_path: Path) -> None:
    ca_cert, ca_key = create_ca()
    leaf_cert, leaf_key = issue(ca_cert, ca_key, "edge-1")
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "ca.pem").write_bytes(leaf_cert)
    (pki / "ca.key").write_bytes(leaf_key)
    result = certs("--dir", str(pki), "edge-2")
    assert result.returncode == 2
    assert "CN=edge-1" in result.stderr and "is not a CA" in result.stderr
    assert not (pki / "edge-2.pem").exists()


def test_a_ca_key_of_another_ca_does_not_sign(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "ca.pem").write_bytes(create_ca()[0])
    (pki / "ca.key").write_bytes(create_ca()[1])
    result = certs("--dir", str(pki), "edge-2")
    assert result.returncode == 2
    assert "the CA key does not belong to the CA certificate" in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--days", "100000000", "x"], "--days: validity 100000000 days is outside 1-3650"),
        (["--days", "0", "x"], "--days: validity 0 days is outside 1-3650"),
        (["édge"], "NAME 'édge' is not a DNS name"),
        (["-bad"], None),
        (["edge_1"], "NAME 'edge_1' is not a DNS name"),
        (["--dns", "bad name", "x"], "--dns 'bad name' is not a DNS name"),
        (["--dns", "a..b", "x"], "--dns 'a..b' is not a DNS name"),
    ],
)
def test_unusable_input_is_refused_before_any_file_is_written(
    tmp_path: Path, argv: list[str], message: str | None
) -> None:
    pki = tmp_path / "pki"
    result = certs("--dir", str(pki), *argv)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    if message is not None:
        assert message in result.stderr
    assert not pki.exists()


def test_dns_names_and_a_long_validity_within_the_bound_are_issued(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    result = certs("--dir", str(pki), "--days", "3650", "--dns", "edge-1.example.org", "Edge-1")
    assert result.returncode == 0, result.stderr
    cert = x509.load_pem_x509_certificate((pki / "Edge-1.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["Edge-1", "edge-1.example.org"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ip", "1.2.3", "edge-1"], "--ip '1.2.3' is not an IPv4 or IPv6 address"),
        (["--dir", "{file}", "edge-1"], "--dir {file}: not a directory"),
    ],
)
def test_an_address_or_folder_it_cannot_use_names_its_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    from agent.cli import main

    file = tmp_path / "a-file"
    file.write_text("")
    argv = [arg.format(file=file) for arg in argv]
    if "--dir" not in argv:
        argv = ["--dir", str(tmp_path / "pki"), *argv]
    assert main(["certs", *argv]) == 2
    assert capsys.readouterr().err == f"gedge-agent certs: error: {message.format(file=file)}\n"
    assert not (tmp_path / "pki").exists()
