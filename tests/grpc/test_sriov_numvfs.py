"""`sriov_numvfs` in the agent config: each PF gets its VF count at start, through the sysfs write path."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from agent.commands.serve import set_vf_counts
from agent.config import AgentConfig, ConfigError, load_config
from tests.entry_points import entry_point
from tests.grpc.agents import spawn_agent


def make_pf(root: Path, pf: str, total: int, current: int = 0) -> Path:
    """A PF as sysfs shows it: sys/class/net/<pf>/device with sriov_totalvfs and sriov_numvfs."""
    device = root / "sys/class/net" / pf / "device"
    device.mkdir(parents=True)
    (device / "sriov_totalvfs").write_text(f"{total}\n")
    (device / "sriov_numvfs").write_text(f"{current}\n")
    return device / "sriov_numvfs"


def config_for(root: Path, counts: dict[str, int]) -> AgentConfig:
    return AgentConfig(root=str(root), sriov_numvfs=counts, insecure=True).validate()


def test_counts_are_written_to_each_pf(tmp_path: Path) -> None:
    first, second = make_pf(tmp_path, "ens1f0", 8), make_pf(tmp_path, "ens1f1", 8, current=2)
    set_vf_counts(config_for(tmp_path, {"ens1f0": 4, "ens1f1": 6}))
    assert (first.read_text(), second.read_text()) == ("4\n", "6\n")
    set_vf_counts(config_for(tmp_path, {"ens1f0": 0}))
    assert first.read_text() == "0\n"


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({"ens1f0": 2, "ens9": 2}, "sriov_numvfs: ens9 is not an SR-IOV PF"),
        ({"ens1f0": 2, "ens1f1": 9}, "sriov_numvfs: ens1f1: 9 VFs requested, the device supports 0..8"),
    ],
)
def test_a_bad_pf_is_named_and_no_pf_is_changed(tmp_path: Path, counts: dict, message: str) -> None:
    first, second = make_pf(tmp_path, "ens1f0", 8), make_pf(tmp_path, "ens1f1", 8)
    with pytest.raises(ConfigError, match=message):
        set_vf_counts(config_for(tmp_path, counts))
    assert (first.read_text(), second.read_text()) == ("0\n", "0\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sriov_numvfs: {ens1f0: -1}\n", "PF ens1f0 has a negative VF count -1"),
        ("sriov_numvfs: {'bad/name': 1}\n", "'bad/name' is not a network interface name"),
        ("sriov_numvfs: [ens1f0]\n", "sriov_numvfs has a bad value"),
        ("sriov_numvfs: {ens1f0: 2}\napply: false\n", r"sriov_numvfs \(PFs \['ens1f0'\]\) changes the node"),
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "agent.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(config_file=file, environ={})


def test_environment_form() -> None:
    config = load_config(
        environ={"GEDGE_AGENT_SRIOV_NUMVFS": "ens1f0=4, ens2f0=0", "GEDGE_AGENT_INSECURE": "1"}
    )
    assert config.sriov_numvfs == {"ens1f0": 4, "ens2f0": 0}
    with pytest.raises(ConfigError, match="GEDGE_AGENT_SRIOV_NUMVFS: sriov_numvfs has a bad value"):
        load_config(environ={"GEDGE_AGENT_SRIOV_NUMVFS": "ens1f0"})


def test_agent_sets_the_counts_at_start_and_refuses_a_bad_pf(tmp_path: Path) -> None:
    root = tmp_path / "root"
    numvfs = make_pf(root, "gtpf0", 16)
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({"sriov_numvfs": {"gtpf0": 8}, "checkpoint": str(tmp_path / "cp.json")}))
    agent = spawn_agent(root, "sriov-node", "--config", str(config), "--no-netlink", metrics_listen="")
    try:
        assert numvfs.read_text() == "8\n"
        events = [json.loads(line) for line in agent.log_lines if line.startswith("{")]
        set_events = [e for e in events if e["event"] == "sriov_numvfs set"]
        assert [(e["pf"], e["vfs"], e["changed"]) for e in set_events] == [("gtpf0", 8, True)]
        assert agent.terminate() == 0
    finally:
        agent.kill()

    config.write_text(yaml.safe_dump({"sriov_numvfs": {"gtpf9": 1}, "checkpoint": str(tmp_path / "cp.json")}))
    result = subprocess.run(
        [
            entry_point("gedge-agent"),
            "serve",
            "--root",
            str(root),
            "--config",
            str(config),
            "--insecure",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "sriov_numvfs: gtpf9 is not an SR-IOV PF" in result.stderr
