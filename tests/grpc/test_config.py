"""Agent configuration: defaults < YAML < GEDGE_AGENT_* < flags, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig, ConfigError, grpc_address, load_config, parse_listen

DEPLOYED = Path(__file__).resolve().parents[2] / "deploy" / "agent" / "configmap.yaml"


def test_defaults_match_the_cli_contract(tmp_path: Path) -> None:
    config = load_config(environ={}, flags={"insecure": True})
    assert (config.listen, config.metrics_listen, config.root) == ("0.0.0.0:50051", "0.0.0.0:9400", "/")
    assert not config.tls_enabled
    assert config.tls_allowed_clients == ("gedge-extender",)


def test_tls_is_required_unless_insecure_is_asked_for(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"TLS is required: give tls_cert, tls_key and tls_ca"):
        load_config(environ={})
    tls = {"tls_cert": "n.pem", "tls_key": "n.key", "tls_ca": "ca.pem"}
    assert load_config(environ={}, flags=tls).tls_enabled
    with pytest.raises(ConfigError, match=r"insecure \(plaintext\) and tls_cert/tls_key/tls_ca exclude"):
        load_config(environ={"GEDGE_AGENT_INSECURE": "true"}, flags=tls)
    with pytest.raises(ConfigError, match="tls_allowed_clients is empty"):
        load_config(environ={"GEDGE_AGENT_TLS_ALLOWED_CLIENTS": ""}, flags=tls)


def test_tls_csr_needs_where_to_write_in_one_folder() -> None:
    csr = {"tls_csr": True, "tls_cert": "/pki/tls.crt", "tls_key": "/pki/tls.key", "tls_ca": "/ca/ca.crt"}
    config = load_config(environ={"GEDGE_AGENT_TLS_CSR_EXPIRATION_S": "3600"}, flags=csr)
    assert config.tls_csr and config.tls_csr_expiration_s == 3600
    with pytest.raises(ConfigError, match="tls_csr needs tls_cert and tls_key"):
        load_config(environ={}, flags={"tls_csr": True, "insecure": True})
    with pytest.raises(ConfigError, match="must be in one folder"):
        load_config(environ={}, flags={**csr, "tls_key": "/other/tls.key"})
    with pytest.raises(ConfigError, match="tls_csr_expiration_s must be at least 600, got 60"):
        load_config(environ={}, flags={**csr, "tls_csr_expiration_s": 60})


def test_sources_override_in_order(tmp_path: Path) -> None:
    file = tmp_path / "agent.yaml"
    file.write_text("listen: 10.0.0.1:1\nnode_name: from-file\npoll_interval_s: 2\nnetlink: false\n")
    environ = {
        "GEDGE_AGENT_NODE_NAME": "from-env",
        "GEDGE_AGENT_POLL_INTERVAL_S": "0.25",
        "GEDGE_AGENT_INSECURE": "yes",
        "PATH": "/bin",
    }
    config = load_config(config_file=file, environ=environ, flags={"node_name": "from-flag", "listen": None})
    assert config.listen == "10.0.0.1:1"
    assert config.node_name == "from-flag"
    assert config.poll_interval_s == 0.25
    assert config.netlink is False and not config.netlink_enabled


def test_deployed_configmap_is_accepted(tmp_path: Path) -> None:
    import yaml

    text = yaml.safe_load(DEPLOYED.read_text())["data"]["agent.yaml"]
    file = tmp_path / "agent.yaml"
    file.write_text(text)
    config = load_config(config_file=file, environ={})
    assert config.listen == "0.0.0.0:50051"
    assert config.tls_enabled and not config.insecure


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("lisen: 1.2.3.4:5\n", "unknown key(s) ['lisen']"),
        ("- a\n", "expected a mapping"),
        ("poll_interval_s: fast\n", "poll_interval_s has a bad value 'fast'"),
        ("listen: nowhere\n", "listen: 'nowhere' is not HOST:PORT"),
        ("tls_cert: /x.pem\n", "must be given together"),
        ("poll_interval_s: 0\n", "poll_interval_s must be positive"),
        ("max_receive_message_bytes: 10\n", "max_receive_message_bytes must be within"),
        ("root: /does/not/exist\n", "root '/does/not/exist' is not a directory"),
    ],
)
def test_bad_file_values_name_the_key(tmp_path: Path, content: str, message: str) -> None:
    file = tmp_path / "agent.yaml"
    file.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_config(config_file=file, environ={})
    assert message in str(info.value)


def test_unknown_environment_setting_is_an_error() -> None:
    with pytest.raises(ConfigError, match="GEDGE_AGENT_LISTN: unknown setting"):
        load_config(environ={"GEDGE_AGENT_LISTN": ":1"})


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.yaml"):
        load_config(config_file=tmp_path / "absent.yaml", environ={})


def test_listen_forms() -> None:
    assert parse_listen(":50051") == ("0.0.0.0", 50051)
    assert parse_listen("[::1]:7") == ("::1", 7)
    assert grpc_address("[::1]:7") == "[::1]:7"
    assert AgentConfig(root="/", netlink=None).netlink_enabled


PLAIN = {"GEDGE_AGENT_INSECURE": "true"}


def test_reserved_cpus_is_a_cpu_list_from_any_source(tmp_path: Path) -> None:
    file = tmp_path / "agent.yaml"
    file.write_text("reserved_cpus: 0,2-3\n")
    assert load_config(config_file=file, environ=PLAIN).reserved_cpu_set == frozenset({0, 2, 3})
    from_env = load_config(environ={**PLAIN, "GEDGE_AGENT_RESERVED_CPUS": "1"})
    assert from_env.reserved_cpu_set == frozenset({1})
    assert load_config(environ=PLAIN).reserved_cpu_set == frozenset()
    with pytest.raises(ConfigError, match=r"reserved_cpus: '0-x' is not a Linux cpu list"):
        load_config(flags={"reserved_cpus": "0-x"}, environ=PLAIN)
