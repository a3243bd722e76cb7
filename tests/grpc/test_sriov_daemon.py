"""SR-IOV through `gedge-agent serve` and its config, on real namespaces and a synthetic sysfs tree.

The node is the issue's small one: PF ens1f0 (i40e) with VF0 on vfio-pci (no netdev) and VF1 on
iavf with netdev ens1f0v1, played by a veth end in the agent's private host namespace. The VF
netlink calls on the PF are the real ones where the kernel answers them (a veth has no VFs:
SR-IOV is unavailable and said so), a recorder where they need hardware.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import grpc
import yaml
from pyroute2 import IPRoute

from agent.apply import CgroupDriver, QosClass
from agent.apply.checkpoint import VfSettings
from gedge_model import Allocation, NetworkGrant, NodeTopology, from_json
from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc
from tests.apply.helpers import (
    build_pod_cgroups,
    namespaces,
    new_container_id,
    new_pod_uid,
    unique,
    v1_sandbox,
)
from tests.apply.netutil import links_in
from tests.discovery.sysfs_builder import SysfsBuilder
from tests.grpc.agents import REPO, spawn_agent

NODE = "sriov-edge"
PF_PCI, VF0_PCI, VF1_PCI = "0000:03:00.0", "0000:03:02.0", "0000:03:02.1"
LAUNCHER = Path(__file__).with_name("recording_vf_agent.py")


def small_node(root: Path) -> None:
    """One NUMA node, PF ens1f0 (i40e, 2 VFs): VF0 on vfio-pci without net/, VF1 on iavf as ens1f0v1."""
    b = SysfsBuilder(root)
    for cpu in (0, 1):
        b.cpu(cpu)
    b.node(0, (0, 1), 1 << 20, (10,))
    port = ["pci0000:00", "0000:00:02.0"]
    b.pci(port, 0x060400, numa=0, driver="pcieport")
    pf = b.pci([*port, PF_PCI], 0x020000, 0x8086, 0x1572, numa=0, driver="i40e")
    vf0 = b.pci([*port, VF0_PCI], 0x020000, 0x8086, 0x154C, numa=0, driver="vfio-pci")
    vf1 = b.pci([*port, VF1_PCI], 0x020000, 0x8086, 0x154C, numa=0, driver="iavf")
    b.sriov(pf, [vf0, vf1], total=8)
    b.netdev(pf, "ens1f0", "3c:fd:fe:00:00:01")
    b.netdev(vf1, "ens1f0v1", "02:00:00:00:03:01")


def add_link(ns: str, name: str) -> None:
    """A netdev `name` in `ns`: one end of a veth pair (this kernel has no dummy driver)."""
    with IPRoute(netns=ns, flags=0) as ipr:
        ipr.link("add", ifname=name, kind="veth", peer=f"{name}p")


def write_config(tmp_path: Path, host: str, **extra) -> Path:
    config = tmp_path / "agent.yaml"
    settings = {
        "netns": host,
        "netlink": False,
        "checkpoint": str(tmp_path / "checkpoint.json"),
        "cgroup_root": str(tmp_path / "no-cgroups"),
        "cgroup_driver": "cgroupfs",
        "health_interval_s": 0,
        **extra,
    }
    config.write_text(yaml.safe_dump(settings))
    return config


def reported(port: int) -> NodeTopology:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        state = agent_pb2_grpc.NodeAgentStub(channel).GetNodeState(
            agent_pb2.GetNodeStateRequest(), timeout=10
        )
    return from_json(NodeTopology, state.state.topology_json)


def events(lines: list[str], name: str) -> list[dict]:
    found = [json.loads(line) for line in lines if line.startswith("{")]
    return [e for e in found if e["event"].startswith(name)]


def test_a_pf_without_vf_support_is_said_once_at_start_and_its_vfs_not_offered(tmp_path: Path) -> None:
    """The real netlink VF control asks the PF (a veth link here): it has no VFs, so the agent logs
    why at start and reports no kernel-netdev VF; the vfio-pci VF stays in its own pool."""
    root, host = tmp_path / "root", unique("gtH")
    small_node(root)
    with namespaces(host):
        add_link(host, "ens1f0")
        add_link(host, "ens1f0v1")
        config = write_config(tmp_path, host, data_routes=["10.20.0.0/16 via 10.9.0.1"])
        agent = spawn_agent(root, NODE, "--config", str(config), metrics_listen="")
        try:
            topology = reported(agent.port)
            (pf,) = [i for i in topology.interfaces if i.name == "ens1f0"]
            assert [(v.pci_address, v.driver) for v in pf.vfs] == [(VF0_PCI, "vfio-pci")]
            (said,) = events(agent.log_lines, "sriov unavailable")
            assert (said["pf"], said["reason"]) == ("ens1f0", "PF ens1f0 reports no VF 0")
            (capabilities,) = events(agent.log_lines, "node capabilities")
            assert capabilities["sriov"] == {"ens1f0": "PF ens1f0 reports no VF 0"}
            assert capabilities["gpu_health"] == "no GPU on this node"
            assert capabilities["device_health"] == "off (health_interval_s: 0)"
            assert capabilities["data_routes"] == ["10.20.0.0/16 via 10.9.0.1"]
            assert agent.terminate() == 0
        finally:
            agent.kill()


def test_vf_granted_through_the_daemon_is_configured_moved_routed_and_given_back(tmp_path: Path) -> None:
    root, host, pod = tmp_path / "root", unique("gtH"), unique("gtP")
    small_node(root)
    vf_log = tmp_path / "vf-calls.jsonl"
    uid, container = new_pod_uid(), new_container_id()
    with namespaces(host, pod), v1_sandbox("gtsriov-") as cgroups:
        build_pod_cgroups(cgroups, CgroupDriver.CGROUPFS, QosClass.BESTEFFORT, uid, [container])
        add_link(host, "ens1f0v1")
        config = write_config(
            tmp_path,
            host,
            data_routes=["10.20.0.0/16 via 10.9.0.1", "192.168.50.0/24"],
            cgroup_root=str(cgroups),
        )
        agent = spawn_agent(
            root,
            NODE,
            "--config",
            str(config),
            metrics_listen="",
            prefix=[sys.executable, str(LAUNCHER)],
            env={"GEDGE_TEST_VF_LOG": str(vf_log), "PYTHONPATH": str(REPO)},
        )
        try:
            topology = reported(agent.port)
            (pf,) = [i for i in topology.interfaces if i.name == "ens1f0"]
            assert [(v.pci_address, v.pool) for v in pf.vfs] == [(VF0_PCI, "vfio"), (VF1_PCI, "netdev")]
            assert [e["pf"] for e in events(agent.log_lines, "sriov available")] == ["ens1f0"]

            grant = NetworkGrant(
                mode="sriov",
                master="ens1f0",
                vf_pci_address=VF1_PCI,
                mac="02:bb:00:00:00:07",
                vlan=120,
                address="10.9.0.5/24",
                rate_mbps=1000,
            )
            allocation = Allocation(uid, "ml", "trainer", NODE, network=grant)
            runtime = agent_pb2.PodRuntime(qos_class="BestEffort", container_ids=[container], netns=pod)
            request = agent_pb2.ApplyRequest(allocation_json=allocation.to_annotation(), runtime=runtime)
            with grpc.insecure_channel(f"127.0.0.1:{agent.port}") as channel:
                client = agent_pb2_grpc.NodeAgentStub(channel)
                client.Apply(request, timeout=20)
                net1 = links_in(pod)["net1"]
                assert (net1.mac, net1.addresses, net1.up) == ("02:bb:00:00:00:07", ("10.9.0.5/24",), True)
                with IPRoute(netns=pod, flags=0) as ipr:
                    routes = {
                        (r.get_attr("RTA_DST"), r["dst_len"], r.get_attr("RTA_GATEWAY"))
                        for r in ipr.get_routes(family=2, table=254)
                    }
                assert {("10.20.0.0", 16, "10.9.0.1"), ("192.168.50.0", 24, None)} <= routes
                assert "ens1f0v1" not in links_in(host)

                client.Release(agent_pb2.ReleaseRequest(pod_uid=uid), timeout=20)
            assert "ens1f0v1" in links_in(host)
            calls = [json.loads(line) for line in vf_log.read_text().splitlines()]
            assert [(c["pf"], c["vf"], c["mac"], c["vlan"], c["max_tx_rate"]) for c in calls] == [
                ("ens1f0", 1, "02:bb:00:00:00:07", 120, 1000),
                ("ens1f0", 1, "02:00:00:00:03:01", 0, 0),
            ]
            assert VfSettings(**{k: v for k, v in calls[1].items() if k not in ("pf", "vf")}) == VfSettings(
                mac="02:00:00:00:03:01"
            )
            assert agent.terminate() == 0
        finally:
            agent.kill()


def test_a_pf_link_going_down_and_up_is_reported_by_the_daemon(tmp_path: Path) -> None:
    """The daemon polls the PF's operstate: down makes the PF and its VFs unhealthy in the watched
    node state and the metrics; up brings them back."""
    root, host = tmp_path / "root", unique("gtH")
    small_node(root)
    operstate = root / "sys/class/net/ens1f0/operstate"
    with namespaces(host):
        add_link(host, "ens1f0v1")
        config = write_config(tmp_path, host, health_interval_s=0.05)
        agent = spawn_agent(
            root,
            NODE,
            "--config",
            str(config),
            prefix=[sys.executable, str(LAUNCHER)],
            env={"GEDGE_TEST_VF_LOG": str(tmp_path / "vf.jsonl"), "PYTHONPATH": str(REPO)},
        )
        try:
            with grpc.insecure_channel(f"127.0.0.1:{agent.port}") as channel:
                stream = agent_pb2_grpc.NodeAgentStub(channel).WatchNodeState(
                    agent_pb2.WatchNodeStateRequest(), timeout=60
                )
                first = from_json(NodeTopology, next(stream).topology_json)
                assert first.unhealthy == ()
                operstate.write_text("down\n")
                for event in stream:
                    topology = from_json(NodeTopology, event.topology_json)
                    if topology.unhealthy:
                        break
                assert {(d.pci_address, d.reason) for d in topology.unhealthy} == {
                    (PF_PCI, "link down on ens1f0"),
                    (VF0_PCI, "link down on ens1f0"),
                    (VF1_PCI, "link down on ens1f0"),
                }
                operstate.write_text("up\n")
                for event in stream:
                    topology = from_json(NodeTopology, event.topology_json)
                    if not topology.unhealthy:
                        break
                assert topology.unhealthy == ()
                stream.cancel()
            metrics = urllib.request.urlopen(
                f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=10
            ).read()
            text = metrics.decode()
            assert 'gedge_agent_device_health_transitions_total{to="unhealthy"} 3.0' in text
            assert 'gedge_agent_device_health_transitions_total{to="healthy"} 3.0' in text
            said = [(e["pci"], e["reason"]) for e in events(agent.log_lines, "device unhealthy")]
            assert (PF_PCI, "link down on ens1f0") in said
            assert agent.terminate() == 0
        finally:
            agent.kill()
