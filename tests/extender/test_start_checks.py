"""`gedge-extender serve` and `csr-signer` refuse bad flags, TLS files, CAs and cluster configs at start:
one line naming the flag, exit 2, before anything is dialled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import yaml

from gedge_model.certs import create_ca, issue
from scheduler_extender.cli import main


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_cert, ca_key = create_ca()
    leaf_cert, leaf_key = issue(ca_cert, ca_key, "gedge-extender", dns=["localhost"])
    other_cert, other_key = create_ca("another-ca")
    files = {
        "ca.pem": ca_cert,
        "ca.key": ca_key,
        "leaf.pem": leaf_cert,
        "leaf.key": leaf_key,
        "other.key": other_key,
        "other.pem": other_cert,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in files}


@pytest.fixture
def agents(tmp_path: Path) -> Path:
    path = tmp_path / "agents.yaml"
    path.write_text("- node: edge-1\n  address: 127.0.0.1:1\n")
    return path


def _serve(agents: Path, *extra: str) -> list[str]:
    return ["serve", "--agents", str(agents), "--listen", "127.0.0.1:0", "--metrics-listen=", *extra]


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-connections-per-client", "0"),
        ("--max-body-bytes", "-1"),
        ("--body-timeout-s", "-3"),
        ("--idle-timeout-s", "-1"),
        ("--idle-timeout-s", "0"),
        ("--stale-after-s", "-1"),
        ("--reserve-ttl-s", "-5"),
        ("--tls-reload-interval-s", "0"),
        ("--tls-reload-interval-s", "-1"),
    ],
)
def test_serve_refuses_a_limit_that_is_not_positive(
    agents: Path, flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_serve(agents, "--insecure"), flag, value]) == 2
    err = capsys.readouterr().err
    assert f"{flag} must be positive, got" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "flag",
    [
        "--max-body-bytes",
        "--body-timeout-s",
        "--idle-timeout-s",
        "--stale-after-s",
        "--reserve-ttl-s",
        "--tls-reload-interval-s",
    ],
)
@pytest.mark.parametrize("value", ["inf", "1e309", "nan", "-0"])
def test_serve_refuses_a_limit_that_never_bounds(
    agents: Path, flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if flag == "--max-body-bytes" and value != "-0":
        return  # an int flag: argparse refuses inf and nan itself
    assert main([*_serve(agents, "--insecure"), f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{flag} must be positive, got" in err or f"{flag} must be finite, got inf" in err, err


@pytest.mark.parametrize("value", ["nan", "inf", "1e309", "-1"])
def test_place_refuses_a_wait_that_never_ends_or_is_negative(
    agents: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pod = agents.with_name("pod.yaml")
    pod.write_text("kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: m, image: x}]}\n")
    args = ["place", "--agents", str(agents), "--pod", str(pod), "--insecure", f"--wait-s={value}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("gedge-extender place: --wait-s must be finite and not negative, got "), err
    assert err.count("\n") == 1, err


@pytest.mark.parametrize("flag", ["--listen", "--metrics-listen"])
def test_serve_names_the_listen_flag_whose_port_is_taken(
    agents: Path, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        args = [
            "serve",
            "--agents",
            str(agents),
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen=",
        ]
        args += [f"{flag}={address}"]
        assert main(args) == 1
    err = capsys.readouterr().err
    assert f'"error": "{flag} {address}: ' in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["serve", "--agents=", "--insecure", "--metrics-listen="],
            '"error": "--agents is empty: name the file"',
        ),
        (
            ["serve", "--kubeconfig=", "--insecure", "--metrics-listen="],
            '"error": "--kubeconfig is empty: name the file"',
        ),
        (
            ["place", "--agents=", "--pod", "pod.yaml", "--insecure"],
            "gedge-extender place: --agents is empty: name the file",
        ),
        (
            ["place", "--topology=", "--pod", "pod.yaml"],
            "gedge-extender place: --topology is empty: name the file",
        ),
    ],
)
def test_an_empty_file_flag_is_refused_naming_it(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err


AGENTS_FILE_FAULTS = [
    pytest.param(None, "No such file or directory", id="missing"),
    pytest.param("- [unclosed\n", "not YAML", id="bad-yaml"),
    pytest.param(
        "node: edge-1\naddress: 127.0.0.1:1\n", "expected a list of {node, address}, got dict", id="shape"
    ),
    pytest.param("- {address: '127.0.0.1:1'}\n", "entry 0: key node is missing", id="no-node"),
    pytest.param("- {node: edge-1}\n", "entry 0 (node edge-1): key address is missing", id="no-address"),
    pytest.param(
        "- {node: edge-1, address: '127.0.0.1:1'}\n- {node: edge-1, address: '127.0.0.1:2'}\n",
        "entry 1: node edge-1 is listed twice (also entry 0)",
        id="duplicate",
    ),
]


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1:\u0665\u0660", "is not HOST:PORT with a port in 1..65535"),
        ("edge:" + "9" * 5000, "is not HOST:PORT with a port in 1..65535"),
        ("edge:000080", "is not HOST:PORT with a port in 1..65535"),
        ("127.0.0.1:0", "is not HOST:PORT with a port in 1..65535"),
        ("127.0.0.1:70000", "is not HOST:PORT with a port in 1..65535"),
        ("127.0.0.1", "is not HOST:PORT with a port in 1..65535"),
        (":50051", "bad host"),
        ("::1:50051", "bad host"),
        ("[:]:50051", "bad IPv6 host"),
        ("[fe80::1%eth0]:50051", "bad IPv6 host"),
        ("999.1.1.1:50051", "bad host"),
        ("a" * 300 + ":50051", "bad host"),
        ("a" * 64 + ".example:50051", "bad host"),
    ],
)
def test_an_agent_address_that_is_not_host_port_is_refused_naming_the_entry(
    tmp_path: Path, address: str, why: str
) -> None:
    from scheduler_extender.cache.targets import AgentsFileError, load_agents_file

    path = _agents_file(tmp_path, yaml.safe_dump([{"node": "edge-1", "address": address}]))
    with pytest.raises(AgentsFileError) as caught:
        load_agents_file(path, what="--agents")
    message = str(caught.value)
    assert message.startswith(f"--agents {path}: entry 0 (node edge-1): ") and why in message, message


def test_an_agents_file_over_one_mib_is_refused_before_parsing(tmp_path: Path) -> None:
    from scheduler_extender.cache.targets import AgentsFileError, load_agents_file

    entry = "- {node: edge-1, address: '127.0.0.1:1'}\n"
    path = _agents_file(tmp_path, entry + "#" * (1024 * 1024))
    with pytest.raises(AgentsFileError) as caught:
        load_agents_file(path, what="--agents")
    assert str(caught.value) == f"--agents {path}: larger than 1048576 bytes"
    path.write_text(entry + "#" * (1024 * 1024 - len(entry) - 1))
    assert [t.node for t in load_agents_file(path)] == ["edge-1"]


@pytest.mark.parametrize("address", ["127.0.0.1:50051", "edge-1.example:1", "[::1]:65535", "Edge-1:80"])
def test_an_agent_address_that_is_host_port_is_kept(tmp_path: Path, address: str) -> None:
    from scheduler_extender.cache.targets import load_agents_file

    path = _agents_file(tmp_path, yaml.safe_dump([{"node": "edge-1", "address": address}]))
    assert [t.address for t in load_agents_file(path)] == [address]


def _agents_file(tmp_path: Path, content: str | None) -> Path:
    path = tmp_path / "agents.yaml"
    if content is not None:
        path.write_text(content)
    return path


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--leader-elect-lease", "no-slash"], "--leader-elect-lease 'no-slash' is not NAMESPACE/NAME"),
        (["--leader-elect-lease", "a/b/c"], "--leader-elect-lease 'a/b/c' is not NAMESPACE/NAME"),
        (["--leader-elect-lease", "ns/"], "--leader-elect-lease 'ns/' is not NAMESPACE/NAME"),
        (["--leader-elect-lease", "/lease"], "--leader-elect-lease '/lease' is not NAMESPACE/NAME"),
        (["--leader-elect-lease", "Ops/lease"], "--leader-elect-lease 'Ops/lease' is not NAMESPACE/NAME"),
        (["--leader-elect-identity", ""], "--leader-elect-identity '' is not a replica name"),
        (["--leader-elect-identity", " "], "--leader-elect-identity ' ' is not a replica name"),
        (
            ["--leader-elect-identity", "$(POD_NAME)"],
            "--leader-elect-identity '$(POD_NAME)' is not a replica",
        ),
    ],
)
def test_serve_refuses_bad_leader_election_flags_before_reaching_the_cluster(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    serve = ["serve", "--kubeconfig", "/nonexistent/kubeconfig", "--insecure", "--metrics-listen="]
    assert main([*serve, "--leader-elect", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert "/nonexistent/kubeconfig" not in err, "refused before the kubeconfig is even read"


def test_serve_refuses_leader_election_without_kubernetes_or_its_settings_without_it(
    agents: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_serve(agents, "--insecure"), "--leader-elect"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--leader-elect needs Kubernetes" in err, err
    assert "edge-1" not in err, "refused before the agents are dialled"
    serve = ["serve", "--kubeconfig", "/nonexistent/kubeconfig", "--insecure", "--metrics-listen="]
    for flag in ("--leader-elect-lease=ops/lease", "--leader-elect-identity=extender-0"):
        assert main([*serve, flag]) == 2
        err = capsys.readouterr().err
        assert f"{flag.split('=')[0]} is given without --leader-elect" in err and err.count("\n") == 1, err


@pytest.mark.parametrize(("content", "fault"), AGENTS_FILE_FAULTS)
def test_serve_names_the_agents_flag_file_and_entry_at_fault(
    tmp_path: Path, content: str | None, fault: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _agents_file(tmp_path, content)
    assert main([*_serve(path, "--insecure")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"--agents {path}: " in err and fault in err, err


@pytest.mark.parametrize(("content", "fault"), AGENTS_FILE_FAULTS)
def test_place_names_the_agents_flag_file_and_entry_at_fault(
    tmp_path: Path, content: str | None, fault: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _agents_file(tmp_path, content)
    pod = tmp_path / "pod.yaml"
    pod.write_text("kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: m, image: x}]}\n")
    assert main(["place", "--agents", str(path), "--pod", str(pod), "--insecure"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gedge-extender place: --agents {path}: "), err
    assert err.count("\n") == 1 and fault in err, err


@pytest.mark.parametrize("command", ["serve", "place"])
def test_every_flag_has_help(command: str) -> None:
    import argparse
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(f"scheduler_extender.commands.{command}").register(parser)
    options = [action for action in parser._actions if action.option_strings]
    assert len(options) > 5
    for action in options:
        assert action.help and action.help.strip(), f"{command} {action.option_strings[0]} has no help"


@pytest.mark.parametrize(
    ("flag", "bad"),
    [
        ("--tls-cert", "missing"),
        ("--tls-key", "missing"),
        ("--tls-client-ca", "missing"),
        ("--tls-key", "other.key"),
        ("--tls-client-ca", "leaf.key"),
    ],
)
def test_serve_checks_its_own_tls_files_before_dialling_the_agents(
    agents: Path, pki: dict[str, Path], flag: str, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {"--tls-cert": pki["leaf.pem"], "--tls-key": pki["leaf.key"], "--tls-client-ca": pki["ca.pem"]}
    files[flag] = pki[bad] if bad in pki else pki["ca.pem"].with_name("missing.pem")
    tls = [part for pair in files.items() for part in (pair[0], str(pair[1]))]
    agent_tls = ["--agent-tls-cert", str(pki["leaf.pem"]), "--agent-tls-key", str(pki["leaf.key"])]
    code = main([*_serve(agents, *tls, *agent_tls, "--agent-tls-ca", str(pki["ca.pem"]))])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{flag} {files[flag]}" in err and "Traceback" not in err
    assert "edge-1" not in err


@pytest.mark.parametrize("bad", ["/dev/zero", "huge"])
@pytest.mark.parametrize("flag", ["--tls-cert", "--tls-key", "--tls-client-ca"])
def test_serve_reads_no_more_of_a_tls_file_than_a_pem_can_be(
    agents: Path, pki: dict[str, Path], flag: str, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from gedge_model.tls import MAX_PEM_BYTES

    huge = agents.with_name("huge.pem")
    with open(huge, "wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    files = {"--tls-cert": pki["leaf.pem"], "--tls-key": pki["leaf.key"], "--tls-client-ca": pki["ca.pem"]}
    files[flag] = huge if bad == "huge" else Path(bad)
    tls = [part for pair in files.items() for part in (pair[0], str(pair[1]))]
    agent_tls = ["--agent-tls-cert", str(pki["leaf.pem"]), "--agent-tls-key", str(pki["leaf.key"])]
    assert main([*_serve(agents, *tls, *agent_tls, "--agent-tls-ca", str(pki["ca.pem"]))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{flag} {files[flag]}: larger than {MAX_PEM_BYTES} bytes" in err, err


@pytest.mark.parametrize("command", ["serve", "place"])
@pytest.mark.parametrize(
    ("flag", "bad"),
    [
        (f, b)
        for f in ("--agent-tls-cert", "--agent-tls-key", "--agent-tls-ca")
        for b in ("/dev/zero", "garbage")
    ],
)
def test_agent_tls_files_are_read_bounded_and_named_by_their_flag(
    agents: Path, pki: dict[str, Path], command: str, flag: str, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = agents.with_name("garbage.pem")
    garbage.write_bytes(bytes(range(256)) * 8)
    files = {
        "--agent-tls-cert": pki["leaf.pem"],
        "--agent-tls-key": pki["leaf.key"],
        "--agent-tls-ca": pki["ca.pem"],
    }
    files[flag] = garbage if bad == "garbage" else Path(bad)
    agent_tls = [part for pair in files.items() for part in (pair[0], str(pair[1]))]
    if command == "serve":
        server = [
            "--tls-cert",
            str(pki["leaf.pem"]),
            "--tls-key",
            str(pki["leaf.key"]),
            "--tls-client-ca",
            str(pki["ca.pem"]),
        ]
        args = _serve(agents, *server, *agent_tls)
    else:
        pod = agents.with_name("pod.yaml")
        pod.write_text("kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: m, image: x}]}\n")
        args = ["place", "--agents", str(agents), "--pod", str(pod), *agent_tls]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{flag} {files[flag]}: " in err and "Traceback" not in err, err


@pytest.mark.parametrize("kubeconfig", ["/nonexistent/kubeconfig", "/etc/passwd"])
def test_serve_and_csr_signer_refuse_a_kubeconfig_that_does_not_load(
    kubeconfig: str, pki: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--kubeconfig", kubeconfig, "--insecure", "--metrics-listen="]) == 2
    err = capsys.readouterr().err
    assert f"--kubeconfig {kubeconfig}" in err and "Traceback" not in err
    signer = ["csr-signer", "--kubeconfig", kubeconfig, "--ca-cert", str(pki["ca.pem"])]
    assert main([*signer, "--ca-key", str(pki["ca.key"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no cluster: --kubeconfig {kubeconfig}" in err


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested deeper than 64 levels"),
        (
            "a: &a [x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
            ),
            "aliases expand to",
        ),
        (None, "larger than 16777216 bytes"),
    ],
    ids=["deep", "billion-laughs", "huge"],
)
def test_serve_refuses_a_kubeconfig_too_deep_or_large_to_parse(
    tmp_path: Path, content: str | None, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    if content is None:
        with open(kubeconfig, "wb") as handle:
            handle.truncate(64 * 1024 * 1024)
    else:
        kubeconfig.write_text(content)
    assert main(["serve", "--kubeconfig", str(kubeconfig), "--insecure", "--metrics-listen="]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--kubeconfig {kubeconfig}: {why}" in err, err


def test_in_cluster_outside_a_pod_is_one_line(
    monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    signer = ["csr-signer", "--in-cluster", "--ca-cert", str(pki["ca.pem"]), "--ca-key", str(pki["ca.key"])]
    assert main(signer) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no cluster: --in-cluster" in err


@pytest.mark.parametrize(
    ("cert", "key", "problem"),
    [
        ("leaf.pem", "leaf.key", "is not a CA"),
        ("ca.pem", "other.key", "does not belong"),
        ("ca.pem", "ca.pem", "not PEM"),
    ],
)
def test_csr_signer_refuses_a_ca_that_cannot_sign(
    pki: dict[str, Path], cert: str, key: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["csr-signer", "--kubeconfig", "/nonexistent", "--ca-cert", str(pki[cert])]
    assert main([*args, "--ca-key", str(pki[key])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--ca-cert {pki[cert]}" in err and problem in err


@pytest.mark.parametrize("configmap", ["a/b/c", "a/", "Bad/name", "ns/x_y", "/name"])
def test_csr_signer_refuses_a_configmap_that_is_not_namespace_slash_name(
    pki: dict[str, Path], configmap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["csr-signer", "--kubeconfig", "/nonexistent", "--ca-cert", str(pki["ca.pem"])]
    assert main([*args, "--ca-key", str(pki["ca.key"]), "--ca-configmap", configmap]) == 2
    assert f"--ca-configmap {configmap!r} is not NAMESPACE/NAME" in capsys.readouterr().err
