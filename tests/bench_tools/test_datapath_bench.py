"""The datapath bench builds the overlay and the agent's data path right, measures, and leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns

from agent.apply.checkpoint import VfSettings
from agent.bench.datapath import DATA_PODS, OVERLAY_MTU, OVERLAY_PODS, VNI, DataPath, OverlayPath, VfChoice
from tests.apply.helpers import namespaces, unique, veth_pair
from tests.apply.netutil import links_in, udp_passes

REPO = Path(__file__).resolve().parents[2]


def leftover_namespaces(prefix: str) -> list[str]:
    return (
        [n for n in os.listdir("/var/run/netns") if n.startswith(prefix)]
        if os.path.isdir("/var/run/netns")
        else []
    )


def vxlan_id(ns: str, name: str) -> int:
    with IPRoute(netns=ns, flags=0) as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=name)[0])[0]
        return link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA").get_attr("IFLA_VXLAN_ID")


def master_of(ns: str, name: str) -> str | None:
    with IPRoute(netns=ns, flags=0) as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=name)[0])[0]
        master = link.get_attr("IFLA_MASTER")
        return ipr.get_links(master)[0].get_attr("IFLA_IFNAME") if master else None


def test_overlay_is_veth_bridge_vxlan_and_carries_traffic() -> None:
    prefix = unique("gbt")
    with OverlayPath(prefix) as (a, b):
        for i, pod in enumerate((a, b)):
            eth0 = links_in(pod.netns)["eth0"]
            assert (eth0.kind, eth0.mtu, eth0.addresses) == ("veth", OVERLAY_MTU, (f"{OVERLAY_PODS[i]}/24",))
            host = f"{prefix}-oh{i + 1}"
            host_links = links_in(host)
            assert host_links["br0"].kind == "bridge"
            assert host_links["vx0"].kind == "vxlan"
            assert vxlan_id(host, "vx0") == VNI
            assert master_of(host, "vx0") == "br0"
            assert master_of(host, "vp0") == "br0"
        assert udp_passes(a.netns, b.netns, b.ip)
    assert leftover_namespaces(prefix) == []


def test_data_path_is_the_agents_macvlan_and_carries_traffic() -> None:
    prefix = unique("gbt")
    with DataPath(prefix) as (a, b):
        for i, pod in enumerate((a, b)):
            net1 = links_in(pod.netns)["net1"]
            assert net1.kind == "macvlan"
            assert net1.addresses == (f"{DATA_PODS[i]}/24",)
            assert net1.alias.startswith("gedge:")
            host_kinds = {v.kind for v in links_in(f"{prefix}-dh{i + 1}").values()}
            assert host_kinds == {None, "veth"}
        assert udp_passes(a.netns, b.netns, b.ip)
    assert leftover_namespaces(prefix) == []


def test_cli_short_json_reports_both_paths() -> None:
    prefix = unique("gbt")
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "bench", "datapath", "--short", "--json", "--prefix", prefix],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["bench"] == "datapath" and report["short"] is True
    for key in ("overlay", "data"):
        path = report["paths"][key]
        assert path["pingpong_samples"] > 0
        assert 0 < path["rtt_p50_us"] <= path["rtt_p99_us"]
        assert path["throughput_mbps"] > 0
    assert set(report["ratios"]) == {"round_trips_per_s", "rtt_p50", "rtt_p99", "throughput"}
    assert "measuring overlay" in proc.stderr and "measuring data path" in proc.stderr
    assert leftover_namespaces(prefix) == []


def test_table_output() -> None:
    prefix = unique("gbt")
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "bench", "datapath", "--short", "--quiet", "--prefix", prefix],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert "overlay" in lines[0] and "data path" in lines[0]
    assert any(line.startswith("ping-pong p99 (us)") for line in lines)
    assert leftover_namespaces(prefix) == []


def test_sigterm_mid_run_removes_everything() -> None:
    prefix = unique("gbt")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "bench", "datapath", "--prefix", prefix],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "measuring" in line:
                break
        assert leftover_namespaces(prefix), "the bench should have built its namespaces by now"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            for name in leftover_namespaces(prefix):
                pyroute2_netns.remove(name)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert leftover_namespaces(prefix) == []


class RecordingVfControl:
    """The PF's VF netlink calls need SR-IOV hardware; this stands in and keeps what was set."""

    def __init__(self) -> None:
        self.state: dict[tuple[str, int], VfSettings] = {}

    def get(self, pf: str, vf: int) -> VfSettings:
        return self.state.get((pf, vf), VfSettings(mac=f"02:00:00:00:00:0{vf}"))

    def set(self, pf: str, vf: int, settings: VfSettings) -> None:
        self.state[(pf, vf)] = settings


def test_vf_data_path_moves_both_vfs_in_and_gives_them_back(tmp_path: Path) -> None:
    """Two veth ends in a host namespace play the VF netdevs; the NIC's switch is the veth link."""
    prefix, host = unique("gbt"), unique("gbtH")
    vf_names = (unique("gvf"), unique("gvf"))
    pcis = ("0000:5e:02.0", "0000:5e:02.1")
    device = tmp_path / "sys/class/net/pf0/device"
    device.mkdir(parents=True)
    for i, (pci, name) in enumerate(zip(pcis, vf_names, strict=True)):
        os.symlink(f"../../../../bus/pci/devices/{pci}", device / f"virtfn{i}")
        (tmp_path / "sys/bus/pci/devices" / pci / "net" / name).mkdir(parents=True)
    control = RecordingVfControl()
    with namespaces(host), veth_pair(*vf_names, host, host):
        choice = VfChoice(pf="pf0", vf_pcis=pcis, sysfs_root=tmp_path, host_netns=host, vf_control=control)
        data = DataPath(prefix, choice)
        assert "0000:5e:02.0" in data.detail
        with data as (a, b):
            for i, pod in enumerate((a, b)):
                assert links_in(pod.netns)["net1"].addresses == (f"{DATA_PODS[i]}/24",)
            assert not set(vf_names) & set(links_in(host))
            assert set(control.state) == {("pf0", 0), ("pf0", 1)}
            assert udp_passes(a.netns, b.netns, b.ip)
        assert set(vf_names) <= set(links_in(host))
        for vf in (0, 1):
            assert control.state[("pf0", vf)] == VfSettings(mac=f"02:00:00:00:00:0{vf}")
    assert leftover_namespaces(prefix) == []


def test_cli_refuses_a_vf_choice_without_two_vfs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "bench", "datapath", "--sriov-pf", "pf0", "--vf", "0000:5e:02.0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "exactly two --vf" in proc.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["datapath", "--vf", "0000:5e:02.0"], "--vf needs --sriov-pf PF"),
        (
            ["datapath", "--sriov-pf", "nosuchpf0", "--vf", "0000:5e:02.0", "--vf", "0000:5e:02.1"],
            "--sriov-pf nosuchpf0: no such network interface on this node",
        ),
        (["pinning", "--sriov-pf", "pf0"], "--sriov-pf and --vf are for datapath"),
        (["datapath", "--cpus", "1"], "--cpus is for pinning"),
    ],
)
def test_cli_names_the_flag_at_fault_before_building_anything(args: list[str], expected: str) -> None:
    prefix = unique("gbt")
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "bench", *args, "--short", "--prefix", prefix],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"gedge-agent bench {args[0]}: {expected}"), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert leftover_namespaces(prefix) == []


def test_cli_names_a_misspelt_tool_as_the_usage_shows_it() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "bench", "datapth"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "{datapath,pinning}" in proc.stderr.splitlines()[-2]  # the usage's last line
    assert proc.stderr.splitlines()[-1] == (
        "gedge-agent bench: error: argument {datapath,pinning}: invalid choice: 'datapth' "
        "(choose from 'datapath', 'pinning')"
    )
