"""The SR-IOV and device-health settings, and the SR-IOV gate's decisions, without hardware."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.apply.checkpoint import VfSettings
from agent.apply.nic import DataRoute, SriovError
from agent.apply.nic.capability import SriovGate, has_capability
from agent.commands.serve import data_routes, sriov_gate
from agent.config import DEFAULT_SKIP_XIDS, AgentConfig, ConfigError, load_config
from gedge_model import NetInterface, NodeTopology, VirtualFunction

PLAIN = {"GEDGE_AGENT_INSECURE": "true"}
"""TLS is not what these tests are about."""


def test_defaults_and_every_source_form(tmp_path: Path) -> None:
    config = load_config(environ=PLAIN)
    assert (config.sriov_vf_control, config.data_routes, config.health_interval_s) == ("netlink", (), 1.0)
    assert config.gpu_health and config.gpu_health_skip_xids == DEFAULT_SKIP_XIDS == (13, 31, 43, 45, 68, 109)
    file = tmp_path / "agent.yaml"
    file.write_text(
        "data_routes: ['10.20.0.0/16 via 10.9.0.1', 'fd00::/64']\ngpu_health_skip_xids: [13]\n"
        "sriov_vf_control: 'off'\nhealth_interval_s: 0\n"
    )
    config = load_config(config_file=file, environ={**PLAIN, "GEDGE_AGENT_GPU_HEALTH": "false"})
    assert config.data_routes == ("10.20.0.0/16 via 10.9.0.1", "fd00::/64")
    assert (config.gpu_health_skip_xids, config.sriov_vf_control, config.gpu_health) == ((13,), "off", False)
    assert data_routes(config) == (DataRoute("10.20.0.0/16", "10.9.0.1"), DataRoute("fd00::/64"))
    env = load_config(
        environ={
            **PLAIN,
            "GEDGE_AGENT_GPU_HEALTH_SKIP_XIDS": "13, 31",
            "GEDGE_AGENT_DATA_ROUTES": "10.0.0.0/8",
        }
    )
    assert (env.gpu_health_skip_xids, env.data_routes) == ((13, 31), ("10.0.0.0/8",))


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"GEDGE_AGENT_SRIOV_VF_CONTROL": "sysfs"}, "sriov_vf_control must be one of"),
        ({"GEDGE_AGENT_DATA_ROUTES": "10.0.0.0/8 through 10.0.0.1"}, "is not 'DST' or 'DST via GATEWAY'"),
        (
            {"GEDGE_AGENT_DATA_ROUTES": "10.0.0.1/8"},
            "data_routes: '10.0.0.1/8': 10.0.0.1/8 has host bits set",
        ),
        ({"GEDGE_AGENT_DATA_ROUTES": "10.0.0.0/8 via fe80::1"}, "different IP versions"),
        ({"GEDGE_AGENT_HEALTH_INTERVAL_S": "-1"}, "health_interval_s must be 0"),
        ({"GEDGE_AGENT_GPU_HEALTH_SKIP_XIDS": "13,x"}, "gpu_health_skip_xids has a bad value"),
        ({"GEDGE_AGENT_GPU_HEALTH_SKIP_XIDS": "-4"}, "gpu_health_skip_xids must be Xid numbers"),
    ],
)
def test_bad_values_name_the_key(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(environ=environ)


class ScriptedVfControl:
    def __init__(self, refuse: dict[str, str]) -> None:
        self.refuse = refuse
        self.asked: list[tuple[str, int]] = []

    def get(self, pf: str, vf: int) -> VfSettings:
        self.asked.append((pf, vf))
        if pf in self.refuse:
            raise SriovError(self.refuse[pf])
        return VfSettings()

    def set(self, pf: str, vf: int, settings: VfSettings) -> None:
        raise AssertionError("the gate only reads")


def node(*pfs: NetInterface) -> NodeTopology:
    return NodeTopology(node_name="n", interfaces=pfs)


def pf(name: str, bus: int, drivers: tuple[str | None, ...]) -> NetInterface:
    vfs = tuple(
        VirtualFunction(i, f"0000:{bus:02x}:02.{i}", f"{name}v{i}" if d == "iavf" else None, d)
        for i, d in enumerate(drivers)
    )
    return NetInterface(name, f"0000:{bus:02x}:00.0", sriov_totalvfs=8, sriov_numvfs=len(vfs), vfs=vfs)


def test_gate_asks_each_pf_once_and_drops_only_the_kernel_netdev_vfs_of_refusing_ones() -> None:
    control = ScriptedVfControl({"ens2f0": "PF ens2f0 refused: Operation not supported"})
    gate = SriovGate(control)
    good, bad = pf("ens1f0", 0x03, ("iavf", "iavf")), pf("ens2f0", 0x81, ("vfio-pci", "iavf", None))
    topology = node(good, bad)
    out = gate(topology)
    assert out.interfaces[0] == good
    assert [(v.pci_address, v.driver) for v in out.interfaces[1].vfs] == [
        ("0000:81:02.0", "vfio-pci"),
        ("0000:81:02.2", None),
    ]
    assert gate(topology) == out
    assert control.asked == [("ens1f0", 0), ("ens2f0", 0)], "one question per PF, ever"
    assert gate.verdicts() == {"ens1f0": None, "ens2f0": "PF ens2f0 refused: Operation not supported"}


def test_gate_without_vf_control_or_apply_keeps_no_kernel_netdev_vf(tmp_path: Path) -> None:
    topology = node(pf("ens1f0", 0x03, ("iavf", "vfio-pci")))
    for config, reason in (
        (AgentConfig(root=str(tmp_path), apply=False), "apply is off"),
        (AgentConfig(root=str(tmp_path), sriov_vf_control="off"), "sriov_vf_control is off"),
    ):
        gate = sriov_gate(config, None)
        assert [v.driver for v in gate(topology).interfaces[0].vfs] == ["vfio-pci"]
        assert reason in (gate.verdicts()["ens1f0"] or "")
    plain = node(dataclasses.replace(pf("eth0", 0x05, ()), sriov_totalvfs=0))
    assert SriovGate(ScriptedVfControl({}))(plain) is plain


def test_capability_bits_are_read_from_proc_status(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000001000\n")
    assert has_capability(12, status) and not has_capability(21, status)
    status.write_text("Name:\tx\n")
    assert not has_capability(12, status)
    assert not has_capability(12, tmp_path / "missing")
