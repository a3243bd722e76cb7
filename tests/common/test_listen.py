"""One reader of listen addresses for the agent's keys and the extender's and controller's flags."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from gedge_common.listen import ListenError, join_host_port, parse_listen


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        (":50051", ("0.0.0.0", 50051)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:7", ("::1", 7)),
        ("[::]:65535", ("::", 65535)),
        ("[fe80::1%eth0]:9", ("fe80::1%eth0", 9)),
    ],
)
def test_host_port_forms(text: str, parsed: tuple[str, int]) -> None:
    assert parse_listen(text) == parsed
    host, port = parsed
    assert parse_listen(join_host_port(host, port)) == parsed


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("nowhere", "is not HOST:PORT"),
        ("host:", "is not HOST:PORT"),
        ("host:http", "is not HOST:PORT"),
        ("host:70000", "port 70000 is out of range (0-65535"),
        ("[::1]:99999", "port 99999 is out of range (0-65535"),
        ("999.0.0.1:80", "host '999.0.0.1' is not an IPv4 address, [IPv6] address or DNS name"),
        ("1.2.3.4.5:80", "host '1.2.3.4.5' is not an IPv4 address"),
        (" 127.0.0.1:80", "host ' 127.0.0.1' is not"),
        ("bad_name:80", "host 'bad_name' is not"),
        ("-edge:80", "host '-edge' is not"),
        ("host:-1", "is not HOST:PORT"),
        ("host:٣", "is not HOST:PORT"),
        ("::1:80", "goes in brackets"),
        ("[::1:80", "goes in brackets"),
        ("[nonsense]:80", "is not an IPv6 address"),
        ("[]:80", "is not an IPv6 address"),
        ("host:" + "9" * 5000, "is out of range (0-65535"),
        ("host:000080", "is out of range (0-65535"),
    ],
)
def test_bad_addresses_name_the_flag_and_the_value(text: str, why: str) -> None:
    with pytest.raises(ListenError) as caught:
        parse_listen(text, "--metrics-listen")
    assert str(caught.value).startswith(f"--metrics-listen: {text!r}")
    assert why in str(caught.value)


def test_the_agent_reports_the_config_key() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^flag --metrics-listen: metrics_listen: '::1:9100': an IPv6 host goes in brackets",
    ):
        load_config(flags={"metrics_listen": "::1:9100"}, environ={"GEDGE_AGENT_INSECURE": "true"})


def test_the_agent_names_the_file_or_variable_a_bad_address_came_from(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("listen: 5\n")
    with pytest.raises(ConfigError, match=rf"^config {config}: listen: '5' is not HOST:PORT"):
        load_config(config_file=config, environ={"GEDGE_AGENT_INSECURE": "true"})
    with pytest.raises(
        ConfigError, match=r"^environment GEDGE_AGENT_LISTEN: listen: '::1:80': an IPv6 host goes in brackets"
    ):
        load_config(environ={"GEDGE_AGENT_INSECURE": "true", "GEDGE_AGENT_LISTEN": "::1:80"})
    with pytest.raises(ConfigError, match=r"^environment GEDGE_AGENT_METRICS_LISTEN: metrics_listen: .*host"):
        load_config(environ={"GEDGE_AGENT_INSECURE": "true", "GEDGE_AGENT_METRICS_LISTEN": "999.0.0.1:80"})
    config.write_text("listen: edge-1.example.org:50051\nmetrics_listen: ''\n")
    loaded = load_config(config_file=config, environ={"GEDGE_AGENT_INSECURE": "true"}, serving=False)
    assert (loaded.listen, loaded.metrics_listen) == ("edge-1.example.org:50051", "")


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this machine")
def test_a_parsed_v6_address_binds() -> None:
    host, port = parse_listen("[::1]:0")
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        pytest.skip("IPv6 sockets are off here")
    with sock:
        try:
            sock.bind((host, port))
        except OSError:
            pytest.skip("no ::1 on this machine")
        assert sock.getsockname()[0] == "::1"
