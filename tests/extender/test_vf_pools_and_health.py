"""The extender over VF pools and device health: the issue's small node, discovered from sysfs.

PF ens1f0 (i40e, 2 VFs): VF0 0000:03:02.0 on vfio-pci without net/, VF1 0000:03:02.1 on iavf with
netdev ens1f0v1. A pod with `gedge.io/communication: '["SRIOV"]'` must get VF1, or be refused at
filter with the reason; an unhealthy device is never granted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.discovery import discover
from gedge_model import DeviceHealth, NodeState, NodeTopology
from scheduler_extender.bind.assume import AssumeCache
from scheduler_extender.http.app import build_app
from scheduler_extender.node_source import StaticNodeSource
from scheduler_extender.placement import Placement, PodRequest, free_capacity, place
from scheduler_extender.verbs import Extender
from tests.discovery.sysfs_builder import SysfsBuilder
from tests.extender.conftest import RecordingBinder, pod
from tests.extender.servers import ServerThread, post

NODE = "sriov-edge"
VF0, VF1 = "0000:03:02.0", "0000:03:02.1"
SRIOV = {"gedge.io/communication": '["SRIOV"]'}


def small_node(root: Path, *, vf1_driver: str = "iavf") -> NodeTopology:
    b = SysfsBuilder(root)
    for cpu in (0, 1):
        b.cpu(cpu)
    b.node(0, (0, 1), 1 << 20, (10,))
    port = ["pci0000:00", "0000:00:02.0"]
    b.pci(port, 0x060400, numa=0, driver="pcieport")
    pf = b.pci([*port, "0000:03:00.0"], 0x020000, 0x8086, 0x1572, numa=0, driver="i40e")
    vf0 = b.pci([*port, VF0], 0x020000, 0x8086, 0x154C, numa=0, driver="vfio-pci")
    vf1 = b.pci([*port, VF1], 0x020000, 0x8086, 0x154C, numa=0, driver=vf1_driver)
    b.sriov(pf, [vf0, vf1], total=8)
    b.netdev(pf, "ens1f0", "3c:fd:fe:00:00:01")
    if vf1_driver == "iavf":
        b.netdev(vf1, "ens1f0v1", "02:00:00:00:03:01")
    return discover(root, node_name=NODE)


class Cluster:
    def __init__(self, topology: NodeTopology) -> None:
        self.source = StaticNodeSource({NODE: NodeState(topology)})
        self.binder = RecordingBinder()
        self.extender = Extender(self.source, self.binder, cache=AssumeCache(), warn=lambda *_: None)
        self.url = ""

    def filter(self, pod_json: dict) -> dict:
        status, result = post(f"{self.url}/filter", {"Pod": pod_json, "Nodes": None, "NodeNames": [NODE]})
        assert status == 200
        return result

    def bind(self, pod_json: dict) -> dict:
        meta = pod_json["metadata"]
        body = {"PodName": meta["name"], "PodNamespace": "ml", "PodUID": meta["uid"], "Node": NODE}
        return post(f"{self.url}/bind", body)[1]


@pytest.fixture
def serve() -> Iterator:
    servers: list[ServerThread] = []

    def start(topology: NodeTopology) -> Cluster:
        cluster = Cluster(topology)
        server = ServerThread(build_app(cluster.extender, max_body=1024 * 1024))
        server.__enter__()
        servers.append(server)
        cluster.url = server.url
        return cluster

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def test_the_vf_with_a_kernel_netdev_is_the_one_granted(tmp_path: Path, serve) -> None:
    topology = small_node(tmp_path)
    (pf,) = [i for i in topology.interfaces if i.name == "ens1f0"]
    assert [(v.pci_address, v.driver, v.netdev) for v in pf.vfs] == [
        (VF0, "vfio-pci", None),
        (VF1, "iavf", "ens1f0v1"),
    ]
    cluster = serve(topology)
    p = pod("dataplane", annotations=SRIOV)
    assert cluster.filter(p)["NodeNames"] == [NODE]
    assert cluster.bind(p) == {"Error": ""}
    (allocation,) = cluster.binder.bound
    assert allocation.network is not None
    assert (allocation.network.mode, allocation.network.vf_pci_address) == ("sriov", VF1)
    assert allocation.device_ids("gedge.io/sriov-vf") == (VF1,)

    second = pod("second", annotations=SRIOV)
    result = cluster.filter(second)
    assert result["NodeNames"] == []
    assert "gedge.io/sriov-vf" in result["FailedNodes"][NODE]


def test_a_node_with_only_a_vfio_vf_is_refused_at_filter_naming_the_resource(tmp_path: Path, serve) -> None:
    cluster = serve(small_node(tmp_path, vf1_driver="vfio-pci"))
    result = cluster.filter(pod("dataplane", annotations=SRIOV))
    assert result["NodeNames"] == []
    assert "gedge.io/sriov-vf" in result["FailedNodes"][NODE]


def test_an_unhealthy_vf_is_never_granted(tmp_path: Path, serve) -> None:
    topology = small_node(tmp_path)
    sick = dataclasses.replace(topology, unhealthy=(DeviceHealth(VF1, "link down on ens1f0"),))
    cluster = serve(sick)
    result = cluster.filter(pod("dataplane", annotations=SRIOV))
    assert result["NodeNames"] == []
    assert "gedge.io/sriov-vf" in result["FailedNodes"][NODE]


def test_vfio_vfs_are_granted_as_pci_devices_beside_the_data_path_vf(tmp_path: Path, serve) -> None:
    cluster = serve(small_node(tmp_path))
    both = pod("dpdk", annotations=SRIOV, limits={"gedge.io/sriov-vf-vfio": "1"})
    assert cluster.filter(both)["NodeNames"] == [NODE]
    assert cluster.bind(both) == {"Error": ""}
    (allocation,) = cluster.binder.bound
    assert allocation.device_ids("gedge.io/sriov-vf-vfio") == (VF0,)
    assert allocation.network is not None and allocation.network.vf_pci_address == VF1

    more = pod("more", limits={"gedge.io/sriov-vf-vfio": "1"})
    result = cluster.filter(more)
    assert result["NodeNames"] == []
    assert "needs 1 gedge.io/sriov-vf-vfio, 0 free" in result["FailedNodes"][NODE]


def two_socket_vfio_node(root: Path) -> NodeTopology:
    """NUMA 0 holds CPUs 0-1 and PF 0000:81:00.0, NUMA 1 CPUs 2-3 and PF 0000:03:00.0; each PF has one
    VF on vfio-pci (NUMA 1's has the lower address)."""
    b = SysfsBuilder(root)
    for cpu, numa in ((0, 0), (1, 0), (2, 1), (3, 1)):
        b.cpu(cpu, package=numa)
    b.node(0, (0, 1), 1 << 20, (10, 21))
    b.node(1, (2, 3), 1 << 20, (21, 10))
    for numa, bus, name in ((1, 0x03, "ens1f0"), (0, 0x81, "ens2f0")):
        host = f"pci0000:{bus - 1:02x}"
        pf = b.pci([host, f"0000:{bus:02x}:00.0"], 0x020000, 0x8086, 0x1572, numa=numa, driver="i40e")
        vf = b.pci([host, f"0000:{bus:02x}:02.0"], 0x020000, 0x8086, 0x154C, numa=numa, driver="vfio-pci")
        b.sriov(pf, [vf], total=8)
        b.netdev(pf, name, f"3c:fd:fe:00:00:{bus:02x}")
    return discover(root, node_name=NODE)


def test_vfio_vf_follows_the_numa_node_of_the_pinned_cpus(tmp_path: Path) -> None:
    state = NodeState(two_socket_vfio_node(tmp_path))
    assert free_capacity(state)["gedge.io/sriov-vf-vfio"] == 2
    request = PodRequest("ml", "p", "uid-p", sriov_vfio=1, cpus=2, cpu_pinning=True, topology_aware=True)
    placement = place(state, request)
    assert isinstance(placement, Placement), placement
    (vf,) = [d for d in placement.allocation.devices if d.resource == "gedge.io/sriov-vf-vfio"]
    cpu_numa = {0: 0, 1: 0, 2: 1, 3: 1}
    assert {cpu_numa[c] for c in placement.allocation.cpus} == {vf.numa_node}

    unaware = place(state, dataclasses.replace(request, topology_aware=False, cpus=0, cpu_pinning=False))
    assert isinstance(unaware, Placement)
    assert unaware.allocation.device_ids("gedge.io/sriov-vf-vfio") == ("0000:03:02.0",), "first by address"
