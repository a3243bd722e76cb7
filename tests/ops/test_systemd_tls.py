"""The systemd units' ExecStart lines, run as systemd would run them, start with TLS and talk to each other.

systemd is not PID 1 here, so each unit's command line is expanded as systemd
does (%H, ${CREDENTIALS_DIRECTORY} filled from LoadCredential=) with /etc/gedge
moved under a temporary folder and the fixed loopback ports swapped for free ones.
The certificates come from `gedge-agent certs`, as the units' comments say.
"""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from gedge_model.tls import channel_credentials, expect_peer_name_options, load_tls
from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc
from scheduler_extender.commands.demo import free_port
from tests.entry_points import entry_point
from tests.grpc.agents import REPO

HOST = socket.gethostname()


def unit_command(unit: str, etc: Path, credentials: Path, ports: dict[str, str]) -> list[str]:
    """The unit's ExecStart as systemd runs it, with /etc/gedge -> `etc` and LoadCredential= copied."""
    text = (REPO / "systemd" / unit).read_text()
    for line in text.splitlines():
        if line.startswith("LoadCredential="):
            name, source = line.removeprefix("LoadCredential=").split(":", 1)
            shutil.copy(source.replace("/etc/gedge", str(etc)), credentials / name)
    (exec_start,) = [
        line.removeprefix("ExecStart=") for line in text.splitlines() if line.startswith("ExecStart=")
    ]
    line = exec_start.replace("%H", HOST).replace("${CREDENTIALS_DIRECTORY}", str(credentials))
    line = line.replace("/etc/gedge", str(etc))
    for fixed, free in ports.items():
        line = line.replace(fixed, free)
    argv = [arg for arg in shlex.split(line) if not arg.startswith("$GEDGE_")]
    assert argv[0].startswith("/usr/local/bin/")
    return [entry_point(Path(argv[0]).name), *argv[1:]]


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    etc = tmp_path / "etc-gedge"
    result = subprocess.run(
        [
            entry_point("gedge-agent"),
            "certs",
            "--dir",
            str(etc / "pki"),
            HOST,
            "gedge-extender",
            "kube-scheduler",
            "--ip",
            "127.0.0.1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return etc


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log.open("wb"))


def _events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def _wait(condition, what: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what}: {log.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture
def running(etc: Path, tmp_path: Path) -> Iterator[tuple[int, int, int, Path]]:
    agent_port, https_port, metrics_port = free_port(), free_port(), free_port()
    (etc / "agent.yaml").write_text(
        yaml.safe_dump(
            {
                "listen": f"127.0.0.1:{agent_port}",
                "metrics_listen": "",
                "apply": False,
                "netlink": False,
                "checkpoint": str(tmp_path / "checkpoint.json"),
                "device_plugin_dir": str(tmp_path / "dp"),
            }
        )
    )
    (etc / "agents.yaml").write_text(yaml.safe_dump([{"node": HOST, "address": f"127.0.0.1:{agent_port}"}]))
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    agent_log, extender_log = tmp_path / "agent.log", tmp_path / "extender.log"
    agent = _spawn(unit_command("gedge-agent.service", etc, credentials, {}), agent_log)
    ports = {"127.0.0.1:8888": f"127.0.0.1:{https_port}", "127.0.0.1:9401": f"127.0.0.1:{metrics_port}"}
    extender = _spawn(unit_command("gedge-extender.service", etc, credentials, ports), extender_log)
    try:
        _wait(
            lambda: any(e["event"] == "agent serving" for e in _events(agent_log)), "agent", agent, agent_log
        )
        _wait(
            lambda: any(e["event"] == "serving" for e in _events(extender_log)),
            "extender",
            extender,
            extender_log,
        )
        yield agent_port, https_port, metrics_port, extender_log
    finally:
        for process in (extender, agent):
            process.terminate()
            process.wait(20)


def test_units_run_with_tls_and_reach_each_other(etc: Path, running: tuple[int, int, int, Path]) -> None:
    agent_port, https_port, metrics_port, extender_log = running
    pki = etc / "pki"
    material = load_tls(pki / "gedge-extender.pem", pki / "gedge-extender.key", pki / "ca.pem")
    with grpc.secure_channel(
        f"127.0.0.1:{agent_port}", channel_credentials(material), expect_peer_name_options(HOST)
    ) as channel:
        state = agent_pb2_grpc.NodeAgentStub(channel).GetNodeState(
            agent_pb2.GetNodeStateRequest(), timeout=30
        )
    assert state.state.node_name == HOST
    assert any(e["event"] == "serving" and e["https"] for e in _events(extender_log))

    scheduler = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    scheduler.load_cert_chain(pki / "kube-scheduler.pem", pki / "kube-scheduler.key")
    probe = {
        "Pod": {"metadata": {"name": "p", "namespace": "default", "uid": "u"}, "spec": {"containers": []}},
        "Nodes": None,
        "NodeNames": [HOST],
    }

    def judged() -> dict | None:
        request = urllib.request.Request(
            f"https://127.0.0.1:{https_port}/filter",
            data=json.dumps(probe).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10, context=scheduler) as reply:
            result = json.loads(reply.read())
        return result if result["NodeNames"] == [HOST] else None

    deadline = time.monotonic() + 120
    while (result := judged()) is None:
        assert time.monotonic() < deadline, "the extender never held the agent's report over mTLS"
        time.sleep(0.2)
    assert result["NodeNames"] == [HOST]

    anonymous = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"https://127.0.0.1:{https_port}/filter", data=b"{}", context=anonymous)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=10) as reply:
        assert reply.read() == b"ok"
