"""Device plugins for AMD GPUs and FPGA/ASIC cards over real gRPC, on topologies discovered from sysfs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent.deviceplugin import DevicePluginManager, plugin_devices
from agent.discovery import discover
from gedge_model import DeviceGrant, NodeTopology
from protos.k8s.deviceplugin.v1beta1 import api_pb2
from tests.deviceplugin.conftest import InMemoryPods, KubeletStandIn, pending
from tests.discovery.amd_box import build_mi300x
from tests.discovery.card_box import AGILEX, ALVEO_USER, D5005, VFIO_ASIC, build_card_box

AMD = "gedge.io/amd-gpu"
FPGA = "gedge.io/fpga"
ASIC = "gedge.io/asic"


def _allocate(plugin, *containers: list[str]) -> api_pb2.AllocateResponse:
    request = api_pb2.AllocateRequest(
        container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids) for ids in containers]
    )
    return plugin.Allocate(request, timeout=5)


@pytest.fixture
def amd_root(tmp_path: Path) -> Path:
    return build_mi300x(tmp_path / "mi300x").root


@pytest.fixture
def card_root(tmp_path: Path) -> Path:
    return build_card_box(tmp_path / "cards").root


def running(
    topology: NodeTopology, pods: InMemoryPods, plugin_dir: Path, host_root: Path
) -> DevicePluginManager:
    manager = DevicePluginManager(
        lambda: topology, pods, plugin_dir, host_root=host_root, poll_interval_s=0.05
    )
    manager.start()
    return manager


@pytest.fixture
def amd_plugins(amd_root, pods, plugin_dir, kubelet: KubeletStandIn) -> Iterator[NodeTopology]:
    topology = discover(amd_root, node_name="edge-1")
    manager = running(topology, pods, plugin_dir, amd_root)
    kubelet.wait_registrations(1)
    yield topology
    manager.stop()


@pytest.fixture
def card_plugins(card_root, pods, plugin_dir, kubelet: KubeletStandIn) -> Iterator[NodeTopology]:
    topology = discover(card_root, node_name="edge-1")
    manager = running(topology, pods, plugin_dir, card_root)
    kubelet.wait_registrations(3)  # fpga, asic, sriov-vf
    yield topology
    manager.stop()


def test_devices_per_resource(amd_root: Path, card_root: Path) -> None:
    amd = plugin_devices(discover(amd_root))
    assert list(amd) == [AMD]
    first = amd[AMD][0]
    assert (first.id, first.numa_node, first.device_nodes) == (
        "0000:05:00.0",
        0,
        ("/dev/kfd", "/dev/dri/renderD128"),
    )
    found = plugin_devices(discover(card_root))
    assert [d.id for d in found[FPGA]] == [D5005, ALVEO_USER, AGILEX]
    assert [(d.id, d.numa_node, d.device_nodes) for d in found[ASIC]] == [
        (VFIO_ASIC, 1, ("/dev/vfio/87", "/dev/vfio/vfio"))
    ]


def test_allocate_of_amd_gpus_gives_kfd_and_exactly_their_render_nodes(amd_plugins, kubelet, pods) -> None:
    granted = ["0000:65:00.0", "0000:75:00.0"]
    pods.pods = [pending("u1", "trainer", [DeviceGrant(AMD, a, a) for a in granted])]

    response = _allocate(kubelet.plugin("gedge-amd-gpu.sock"), granted).container_responses[0]

    assert dict(response.envs) == {"PCIDEVICE_GEDGE_IO_AMD_GPU": ",".join(granted)}
    assert [(d.container_path, d.host_path, d.permissions) for d in response.devices] == [
        ("/dev/kfd", "/dev/kfd", "rw"),
        ("/dev/dri/renderD130", "/dev/dri/renderD130", "rw"),
        ("/dev/dri/renderD131", "/dev/dri/renderD131", "rw"),
    ]
    assert pods.marks == [("ml/trainer", AMD, tuple(granted))]


def test_allocate_of_each_fpga_stack_returns_its_nodes(card_plugins, kubelet, pods) -> None:
    pods.pods = [
        pending("u1", "dfl", [DeviceGrant(FPGA, D5005, D5005)], created=1.0),
        pending("u2", "xrt", [DeviceGrant(FPGA, ALVEO_USER, ALVEO_USER)], created=2.0),
        pending("u3", "vfio", [DeviceGrant(ASIC, VFIO_ASIC, VFIO_ASIC)], created=3.0),
    ]
    fpga = kubelet.plugin("gedge-fpga.sock")

    dfl = _allocate(fpga, [D5005]).container_responses[0]
    xrt = _allocate(fpga, [ALVEO_USER]).container_responses[0]
    vfio = _allocate(kubelet.plugin("gedge-asic.sock"), [VFIO_ASIC]).container_responses[0]

    assert [d.host_path for d in dfl.devices] == ["/dev/dfl-port.0"]
    assert dict(dfl.envs) == {"PCIDEVICE_GEDGE_IO_FPGA": D5005}
    assert [d.host_path for d in xrt.devices] == ["/dev/dri/renderD129", "/dev/xclmgmt34816"]
    assert [d.host_path for d in vfio.devices] == ["/dev/vfio/87", "/dev/vfio/vfio"]
    assert dict(vfio.envs) == {"PCIDEVICE_GEDGE_IO_ASIC": VFIO_ASIC}


def test_node_without_the_vendor_device_nodes_is_refused_clearly(
    amd_plugins, kubelet, pods, amd_root
) -> None:
    (amd_root / "dev/kfd").unlink()
    pods.pods = [pending("u1", "trainer", [DeviceGrant(AMD, "0000:05:00.0", "0000:05:00.0")])]

    with pytest.raises(grpc.RpcError) as refused:
        _allocate(kubelet.plugin("gedge-amd-gpu.sock"), ["0000:05:00.0"])

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == (
        "Allocate gedge.io/amd-gpu ['0000:05:00.0'] for ml/trainer: /dev/kfd "
        "(gedge.io/amd-gpu 0000:05:00.0) does not exist on this node"
    )
    assert pods.marks == []


def test_card_granted_to_another_pod_is_not_handed_out(card_plugins, kubelet, pods) -> None:
    pods.pods = [pending("u1", "dfl", [DeviceGrant(FPGA, D5005, D5005)])]
    with pytest.raises(grpc.RpcError) as refused:
        _allocate(kubelet.plugin("gedge-fpga.sock"), [AGILEX])
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"ml/dfl has ['{D5005}']" in refused.value.details()
