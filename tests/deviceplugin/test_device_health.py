"""Device health end to end on a synthetic H100 box: an Xid from the NVML stand-in, a VF gone from
sysfs and a NIC link going down reach kubelet (a real registration server and ListAndWatch), the
agent's gRPC report and the extender's filter; recovery is reported too."""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent.config import DEFAULT_SKIP_XIDS
from agent.deviceplugin import DevicePluginManager
from agent.discovery import discover
from agent.discovery.nvml import NvmlGpuSource
from agent.health import HealthMonitor, XidWatcher, sysfs_problems
from agent.metrics import AgentMetrics
from agent.service.server import AgentRuntime
from gedge_model import NodeState, NodeTopology, from_json
from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc
from protos.k8s.deviceplugin.v1beta1 import api_pb2
from scheduler_extender.placement import PodRequest, Refusal, place
from tests.deviceplugin.conftest import InMemoryPods
from tests.discovery.fake_nvml import FakeNvml
from tests.discovery.gpu_box import Box, build_box
from tests.grpc.agents import AgentHost

NODE = "h100-box"


def health_of(response) -> dict[str, str]:
    return {d.ID: d.health for d in response.devices}


def gpu_request(gpus: int) -> PodRequest:
    return PodRequest("ml", "trainer", "uid-trainer", gpus=gpus, topology_aware=True)


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return build_box(tmp_path / "box", "H100")


@pytest.fixture
def agent(box: Box) -> Iterator[AgentRuntime]:
    host = AgentHost()
    runtime = host.start_agent(
        box.root,
        NODE,
        discover=lambda: discover(box.root, node_name=NODE, gpu_source=NvmlGpuSource(box.nvml)),
    )
    yield runtime
    host.stop_agent(runtime)
    host.close()


def reported(runtime: AgentRuntime) -> NodeTopology:
    with grpc.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        stub = agent_pb2_grpc.NodeAgentStub(channel)
        state = stub.GetNodeState(agent_pb2.GetNodeStateRequest(), timeout=10)
    return from_json(NodeTopology, state.state.topology_json)


def test_xid_vanished_vf_and_link_down_reach_kubelet_the_report_and_the_filter(
    box: Box, agent: AgentRuntime, kubelet, plugin_dir: Path
) -> None:
    store = agent.store
    assert store is not None
    metrics = AgentMetrics()
    changes: list[tuple[dict, dict]] = []

    def changed(added, recovered) -> None:
        changes.append((dict(added), dict(recovered)))
        metrics.record_health(monitor.unhealthy, len(added), len(recovered))

    monitor = HealthMonitor(box.root, store, interval_s=0, on_change=changed)
    manager = DevicePluginManager(lambda: store.current().state.topology, InMemoryPods(), plugin_dir)
    advertising = [True]
    store.add_listener(lambda snap: advertising[0] and manager.update(snap.state.topology))
    manager.start()
    xid = XidWatcher(monitor.mark, DEFAULT_SKIP_XIDS, nvml=box.nvml)
    try:
        kubelet.wait_registrations(3)
        gpus = kubelet.plugin("gedge-gpu.sock").ListAndWatch(api_pb2.Empty(), timeout=30)
        vfs = kubelet.plugin("gedge-sriov-vf.sock").ListAndWatch(api_pb2.Empty(), timeout=30)
        first = health_of(next(gpus))
        assert len(first) == 8 and set(first.values()) == {"Healthy"}
        assert set(health_of(next(vfs)).values()) == {"Healthy"}

        assert xid.start() is None
        sick_gpu = box.nvml.gpus[2]
        box.nvml.xid_event(sick_gpu, 13)  # an application error: skipped
        box.nvml.xid_event(sick_gpu, 79)  # fallen off the bus
        after_xid = health_of(next(gpus))
        assert {uuid for uuid, h in after_xid.items() if h == "Unhealthy"} == {sick_gpu.uuid}
        gpu_pci = box.gpu_addresses[2]
        assert [(d.pci_address, d.reason) for d in reported(agent).unhealthy] == [(gpu_pci, "xid 79")]

        topology = reported(agent)
        refused = place(NodeState(topology), gpu_request(8))
        assert isinstance(refused, Refusal) and "gedge.io/gpu" in refused.reason
        granted = place(NodeState(topology), gpu_request(7))
        assert not isinstance(granted, Refusal)
        assert gpu_pci not in {d.pci_address for d in granted.allocation.devices}

        (nic,) = [i for i in topology.interfaces if i.pci_address == box.nic_addresses[0]]
        gone = nic.vfs[0].pci_address
        os.unlink(box.root / "sys/bus/pci/devices" / gone)
        assert monitor.check()
        assert health_of(next(vfs))[gone] == "Unhealthy"

        operstate = box.root / "sys/class/net" / nic.name / "operstate"
        operstate.write_text("down\n")
        assert monitor.check()
        down = health_of(next(vfs))
        assert down[nic.vfs[1].pci_address] == "Unhealthy"
        assert reported(agent).health_of(nic.pci_address) == f"link down on {nic.name}"
        rdma = kubelet.plugin("gedge-rdma.sock").ListAndWatch(api_pb2.Empty(), timeout=30)
        rdma_health = health_of(next(rdma))
        assert [name for name, h in rdma_health.items() if h == "Unhealthy"] == ["mlx5_0"]
        rdma.cancel()

        operstate.write_text("up\n")
        assert monitor.check()
        back = health_of(next(vfs))
        assert (back[nic.vfs[1].pci_address], back[gone]) == ("Healthy", "Unhealthy")
        assert not monitor.check(), "nothing changed since"
        assert changes[-1][1] == {
            nic.pci_address: f"link down on {nic.name}",
            nic.vfs[1].pci_address: f"link down on {nic.name}",
        }
        assert (
            metrics.registry.get_sample_value(
                "gedge_agent_unhealthy_devices", {"pci_address": gpu_pci, "reason": "xid 79"}
            )
            == 1
        )
        assert (
            metrics.registry.get_sample_value(
                "gedge_agent_device_health_transitions_total", {"to": "healthy"}
            )
            == 2
        )
        gpus.cancel()
        vfs.cancel()
    finally:
        advertising[0] = False
        xid.stop()
        manager.stop()


def test_xid_events_name_the_gpu_or_all_and_unknown_types_are_ignored(box: Box) -> None:
    marks: queue.Queue[tuple[str, str]] = queue.Queue()
    watcher = XidWatcher(lambda pci, why: marks.put((pci, why)), (13,), nvml=box.nvml)
    assert watcher.start() is None
    try:
        assert set(box.nvml.registered.values()) == {box.nvml.nvmlEventTypeXidCriticalError}
        box.nvml.xid_event(box.nvml.gpus[0], 48, event_type=box.nvml.nvmlEventTypeDoubleBitEccError)
        box.nvml.xid_event(box.nvml.gpus[0], 13)
        box.nvml.xid_event(None, 62)
        everyone = {marks.get(timeout=10) for _ in box.gpu_addresses}
        assert everyone == {(pci, "xid 62") for pci in box.gpu_addresses}
        box.nvml.xid_event(box.nvml.gpus[5], 48)
        assert marks.get(timeout=10) == (box.gpu_addresses[5], "xid 48")
    finally:
        watcher.stop()
    assert marks.empty()
    assert box.nvml.calls[-2:] == ["nvmlEventSetFree", "nvmlShutdown"]


def test_xid_watching_says_why_it_cannot_start(box: Box) -> None:
    assert XidWatcher(lambda *_: None, nvml=FakeNvml([], init_error=9)).start() == (
        "NVML unavailable (Driver Not Loaded)"
    )
    assert XidWatcher(lambda *_: None, nvml=FakeNvml([])).start() == "NVML reports no GPU"
    box.nvml.supported_events = 0
    assert XidWatcher(lambda *_: None, nvml=box.nvml).start() == "no GPU reports Xid events"
    assert not box.nvml.initialized


def test_sysfs_problems_on_a_healthy_box_are_none(box: Box) -> None:
    topology = discover(box.root, node_name=NODE, gpu_source=NvmlGpuSource(box.nvml))
    assert sysfs_problems(box.root, topology) == {}
    os.unlink(box.root / "sys/bus/pci/devices" / box.gpu_addresses[1])
    assert sysfs_problems(box.root, topology) == {box.gpu_addresses[1]: "vanished from sysfs"}


def test_changes_are_node_events_through_the_kubernetes_client(tmp_path: Path) -> None:
    from kubernetes.client import ApiClient, Configuration, CoreV1Api

    from agent.health import kubernetes_node_events
    from tests.extender.fake_apiserver import FakeApiServer
    from tests.extender.servers import ServerThread

    fake = FakeApiServer()
    with ServerThread(fake.app()) as server, ApiClient(Configuration(host=server.url)) as client:
        report = kubernetes_node_events(CoreV1Api(client), NODE)
        report({"0000:17:00.0": "xid 79"}, {"0000:3b:02.1": "link down on ens1f0"})
    got = [
        (e["type"], e["reason"], e["involvedObject"]["kind"], e["involvedObject"]["name"], e["message"])
        for e in fake.events
    ]
    assert got == [
        (
            "Warning",
            "DeviceUnhealthy",
            "Node",
            NODE,
            "device 0000:17:00.0 is unhealthy: xid 79; it is no longer granted",
        ),
        (
            "Normal",
            "DeviceHealthy",
            "Node",
            NODE,
            "device 0000:3b:02.1 is healthy again (was: link down on ens1f0)",
        ),
    ]
