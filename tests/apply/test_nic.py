"""The data-path NIC on real namespaces: macvlan and a VF (its netdev played by a veth end)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from agent.apply.checkpoint import VfSettings
from agent.apply.nic import (
    DataRoute,
    NetlinkVfControl,
    NicApplier,
    NicError,
    SriovError,
    macvlan_host_name,
    marker_for,
    set_num_vfs,
    vf_index,
    vf_netdev,
)
from gedge_model import NetworkGrant
from tests.apply.helpers import namespaces, new_pod_uid, unique, veth_pair
from tests.apply.netutil import links_in, udp_passes

VF_PCI = "0000:3b:02.3"


class FakeVfControl:
    """Stands in for the PF's VF netlink calls, which need SR-IOV hardware."""

    def __init__(self, initial: VfSettings) -> None:
        self.state: dict[tuple[str, int], VfSettings] = {}
        self.initial = initial
        self.calls: list[tuple[str, int, VfSettings]] = []

    def get(self, pf: str, vf: int) -> VfSettings:
        return self.state.get((pf, vf), self.initial)

    def set(self, pf: str, vf: int, settings: VfSettings) -> None:
        self.calls.append((pf, vf, settings))
        self.state[(pf, vf)] = settings


def record_steps(steps: list[str]):
    return steps.append


@pytest.fixture
def macvlan_node():
    """A host namespace with a data NIC (one end of a veth pair, up) and two pod namespaces."""
    host, pod1, pod2 = unique("gtH"), unique("gtP"), unique("gtP")
    master, wire = unique("gd"), unique("gw")
    with namespaces(host, pod1, pod2), veth_pair(master, wire, host, host):
        yield host, pod1, pod2, master


def test_macvlan_reaches_the_pod_and_carries_traffic(macvlan_node) -> None:
    host, pod1, pod2, master = macvlan_node
    nic = NicApplier(host_netns=host, routes=(DataRoute("10.79.0.0/16", "10.77.0.254"),))
    uid1, uid2 = new_pod_uid(), new_pod_uid()
    grant1 = NetworkGrant(
        mode="macvlan", master=master, mtu=1400, address="10.77.0.1/24", mac="02:aa:00:00:00:01"
    )
    grant2 = NetworkGrant(mode="macvlan", master=master, mtu=1400, address="10.77.0.2/24")
    rec1 = nic.plan(uid1, grant1, pod1)
    rec2 = nic.plan(uid2, grant2, pod2)
    steps: list[str] = []
    nic.apply(rec1, grant1, steps.append)
    nic.apply(rec2, grant2, steps.append)
    assert steps[:4] == ["nic:created", "nic:host-link", "nic:moved", "nic:configured"]

    net1 = links_in(pod1)["net1"]
    assert (net1.kind, net1.mtu, net1.mac, net1.up) == ("macvlan", 1400, "02:aa:00:00:00:01", True)
    assert net1.addresses == ("10.77.0.1/24",)
    assert net1.alias == marker_for(uid1)
    with IPRoute(netns=pod1, flags=0) as ipr:
        routes = {r.get_attr("RTA_DST"): r.get_attr("RTA_GATEWAY") for r in ipr.get_routes(table=254)}
    assert routes["10.79.0.0"] == "10.77.0.254"
    assert macvlan_host_name(uid1) not in links_in(host)
    assert nic.is_applied(rec1)
    assert udp_passes(pod1, pod2, "10.77.0.2")

    nic.apply(rec1, grant1, steps.append)
    assert list(links_in(pod1)) == ["lo", "net1"]

    nic.release(rec1)
    nic.release(rec2)
    assert set(links_in(pod1)) == {"lo"}
    assert set(links_in(pod2)) == {"lo"}
    assert not nic.is_applied(rec1)
    assert {v.kind for v in links_in(host).values()} == {None, "veth"}
    nic.release(rec1)


@pytest.mark.parametrize("stop_at", ["nic:created", "nic:host-link", "nic:moved"])
def test_release_undoes_a_half_done_macvlan(macvlan_node, stop_at: str) -> None:
    host, pod1, _, master = macvlan_node
    nic = NicApplier(host_netns=host)
    uid = new_pod_uid()
    grant = NetworkGrant(mode="macvlan", master=master, address="10.77.0.1/24")
    record = nic.plan(uid, grant, pod1)

    class Stop(Exception):
        pass

    def step(name: str) -> None:
        if name == stop_at:
            raise Stop

    with pytest.raises(Stop):
        nic.apply(record, grant, step)
    assert len(links_in(host)) + len(links_in(pod1)) > 4
    nic.release(record)
    assert set(links_in(pod1)) == {"lo"}
    assert macvlan_host_name(uid) not in links_in(host)


def test_macvlan_in_the_agents_own_namespace() -> None:
    pod = unique("gtP")
    master, wire = unique("gd"), unique("gw")
    with namespaces(pod), veth_pair(master, wire):
        nic = NicApplier()
        uid = new_pod_uid()
        grant = NetworkGrant(mode="macvlan", master=master, ifname="data0", mtu=1300, address="10.76.0.9/24")
        record = nic.plan(uid, grant, f"/var/run/netns/{pod}")
        nic.apply(record, grant, lambda _: None)
        assert links_in(pod)["data0"].mtu == 1300
        nic.release(record)
        assert set(links_in(pod)) == {"lo"}
        assert macvlan_host_name(uid) not in links_in(None)


def test_bad_grants_are_refused_before_any_change(macvlan_node) -> None:
    host, pod1, _, master = macvlan_node
    nic = NicApplier(host_netns=host)
    uid = new_pod_uid()
    before = (links_in(host), links_in(pod1))
    cases = [
        (NetworkGrant(mode="macvlan", master=master, vlan=100), "VLAN 100 needs a VF"),
        (NetworkGrant(mode="macvlan", master=master, address="10.0.0.1"), "needs a prefix length"),
        (NetworkGrant(mode="macvlan", master=master, address="10.0.0.300/24"), "bad address"),
        (NetworkGrant(mode="macvlan", master="nosuchnic0"), "data NIC nosuchnic0 not found"),
        (NetworkGrant(mode="sriov", master=master, vf_pci_address=VF_PCI), "no VF control"),
    ]
    for grant, message in cases:
        with pytest.raises(NicError, match=message):
            nic.plan(uid, grant, pod1)
    with pytest.raises(NicError, match="does not exist"):
        nic.plan(uid, NetworkGrant(mode="macvlan", master=master), unique("gtNone"))
    with pytest.raises(NicError, match="name or an absolute path"):
        nic.plan(uid, NetworkGrant(mode="macvlan", master=master), "rel/../path")
    assert (links_in(host), links_in(pod1)) == before


def test_name_clash_in_the_pod_fails_and_release_cleans_up(macvlan_node) -> None:
    host, pod1, pod2, master = macvlan_node
    with veth_pair("net1", unique("gx"), pod1, pod2):
        nic = NicApplier(host_netns=host)
        grant = NetworkGrant(mode="macvlan", master=master)
        record = nic.plan(new_pod_uid(), grant, pod1)
        with pytest.raises(NicError, match="already has an interface named net1"):
            nic.apply(record, grant, lambda _: None)
        nic.release(record)
        assert links_in(pod1)["net1"].kind == "veth"
        assert len(links_in(pod1)) == 2


def make_sriov_sysfs(root: Path, pf: str, vf_netdev_name: str) -> None:
    device = root / "sys/class/net" / pf / "device"
    device.mkdir(parents=True)
    (device / "sriov_totalvfs").write_text("8\n")
    (device / "sriov_numvfs").write_text("4\n")
    for n, fn in enumerate(range(4)):
        os.symlink(f"../../../../bus/pci/devices/0000:3b:02.{fn}", device / f"virtfn{n}")
    (root / "sys/bus/pci/devices" / VF_PCI / "net" / vf_netdev_name).mkdir(parents=True)


def test_vf_is_configured_on_the_pf_moved_renamed_and_given_back(tmp_path: Path) -> None:
    host, pod, far = unique("gtH"), unique("gtP"), unique("gtF")
    vf, peer, pf = unique("gvf"), unique("gwp"), unique("gpf")
    make_sriov_sysfs(tmp_path, pf, vf)
    original = VfSettings(mac="02:00:00:00:00:33", vlan=0, spoofchk=True, trust=False)
    control = FakeVfControl(original)
    with namespaces(host, pod, far), veth_pair(vf, peer, host, far):
        with IPRoute(netns=far, flags=0) as ipr:
            ipr.addr("add", index=ipr.link_lookup(ifname=peer)[0], address="10.78.0.1", prefixlen=24)
        nic = NicApplier(sysfs_root=tmp_path, vf_control=control, host_netns=host)
        uid = new_pod_uid()
        grant = NetworkGrant(
            mode="sriov",
            master=pf,
            vf_pci_address=VF_PCI,
            mac="02:bb:00:00:00:07",
            vlan=120,
            mtu=1450,
            address="10.78.0.2/24",
            rate_mbps=2000,
            trust=True,
            spoofchk=False,
        )
        record = nic.plan(uid, grant, pod)
        assert (record.pf, record.vf_index, record.host_name, record.vf_original) == (pf, 3, vf, original)
        nic.apply(record, grant, lambda _: None)

        assert control.state[(pf, 3)] == VfSettings(
            mac="02:bb:00:00:00:07", vlan=120, spoofchk=False, trust=True, max_tx_rate=2000
        )
        net1 = links_in(pod)["net1"]
        assert (net1.mtu, net1.mac, net1.addresses, net1.up) == (
            1450,
            "02:bb:00:00:00:07",
            ("10.78.0.2/24",),
            True,
        )
        assert vf not in links_in(host)
        assert udp_passes(pod, far, "10.78.0.1")

        nic.release(record)
        back = links_in(host)[vf]
        assert (back.alias, back.addresses, back.up) == (None, (), False)
        assert set(links_in(pod)) == {"lo"}
        assert control.state[(pf, 3)] == original
        nic.release(record)
        assert vf in links_in(host)


def test_vf_lookup_errors_name_the_device(tmp_path: Path) -> None:
    make_sriov_sysfs(tmp_path, "pf0", "vfnet0")
    assert vf_index(tmp_path, "pf0", "0000:3b:02.1") == 1
    assert vf_netdev(tmp_path, VF_PCI) == "vfnet0"
    assert vf_netdev(tmp_path, "0000:3b:02.1") is None
    with pytest.raises(SriovError, match=r"0000:3b:09\.0 is not a VF of pf0"):
        vf_index(tmp_path, "pf0", "0000:3b:09.0")
    with pytest.raises(SriovError, match="bad VF PCI address"):
        vf_index(tmp_path, "pf0", "../x")
    with pytest.raises(SriovError, match="bad PF interface name"):
        vf_index(tmp_path, "pf/../0", VF_PCI)


def test_set_num_vfs_through_sysfs(tmp_path: Path) -> None:
    make_sriov_sysfs(tmp_path, "pf0", "vfnet0")
    numvfs = tmp_path / "sys/class/net/pf0/device/sriov_numvfs"
    assert set_num_vfs(tmp_path, "pf0", 4) is False
    assert set_num_vfs(tmp_path, "pf0", 6) is True
    assert numvfs.read_text() == "6\n"
    assert set_num_vfs(tmp_path, "pf0", 0) is True
    assert numvfs.read_text() == "0\n"
    with pytest.raises(SriovError, match=r"9 VFs requested, the device supports 0\.\.8"):
        set_num_vfs(tmp_path, "pf0", 9)
    with pytest.raises(SriovError, match="eth9 is not an SR-IOV PF"):
        set_num_vfs(tmp_path, "eth9", 1)


def test_real_vf_control_reports_a_device_without_vfs() -> None:
    """The netlink implementation really runs: a veth has no VFs and refuses VF settings."""
    host = unique("gtH")
    a, b = unique("gva"), unique("gvb")
    with namespaces(host), veth_pair(a, b, host, host):
        control = NetlinkVfControl(host_netns=host)
        with pytest.raises(SriovError, match=f"PF {a} reports no VF 0"):
            control.get(a, 0)
        with pytest.raises(SriovError, match=f"PF {a} refused settings for VF 0"):
            control.set(a, 0, VfSettings(mac="02:00:00:00:00:01", vlan=5))
        with pytest.raises(SriovError, match="PF nosuchpf0 not found"):
            control.get("nosuchpf0", 0)


def test_vf_without_a_host_netdev_is_refused(tmp_path: Path) -> None:
    make_sriov_sysfs(tmp_path, "pf0", "vfnet0")
    pod = unique("gtP")
    with namespaces(pod):
        nic = NicApplier(sysfs_root=tmp_path, vf_control=FakeVfControl(VfSettings()))
        grant = NetworkGrant(mode="sriov", master="pf0", vf_pci_address="0000:3b:02.1")
        with pytest.raises(NicError, match=r"no netdev in the host \(driver: none\)"):
            nic.plan(new_pod_uid(), grant, pod)
        vfio = tmp_path / "sys/bus/pci/drivers/vfio-pci"
        vfio.mkdir(parents=True)
        (tmp_path / "sys/bus/pci/devices/0000:3b:02.1").mkdir(parents=True)
        os.symlink(vfio, tmp_path / "sys/bus/pci/devices/0000:3b:02.1/driver")
        with pytest.raises(NicError, match=r"\(driver: vfio-pci\); a VF without a kernel netdev is never"):
            nic.plan(new_pod_uid(), grant, pod)
        grant = replace(grant, vf_pci_address=VF_PCI)
        assert nic.plan(new_pod_uid(), grant, pod).host_name == "vfnet0"
