"""One reader of listen addresses for the agent's keys and the extender's and controller's flags."""

from __future__ import annotations

import socket

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
        ("host:70000", "is not HOST:PORT"),
        ("host:-1", "is not HOST:PORT"),
        ("host:٣", "is not HOST:PORT"),
        ("::1:80", "goes in brackets"),
        ("[::1:80", "goes in brackets"),
        ("[nonsense]:80", "is not an IPv6 address"),
        ("[]:80", "is not an IPv6 address"),
    ],
)
def test_bad_addresses_name_the_flag_and_the_value(text: str, why: str) -> None:
    with pytest.raises(ListenError) as caught:
        parse_listen(text, "--metrics-listen")
    assert str(caught.value).startswith(f"--metrics-listen: {text!r}")
    assert why in str(caught.value)


def test_the_agent_reports_the_config_key() -> None:
    with pytest.raises(ConfigError, match=r"^metrics_listen: '::1:9100': an IPv6 host goes in brackets"):
        load_config(flags={"metrics_listen": "::1:9100"}, environ={"GEDGE_AGENT_INSECURE": "true"})


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
