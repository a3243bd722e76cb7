"""Device plugins over real gRPC on unix sockets, registered with a kubelet stand-in."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from agent.deviceplugin import DevicePluginManager
from agent.deviceplugin.pods import PendingPod
from gedge_model import DeviceGrant
from protos.k8s.deviceplugin.v1beta1 import api_pb2
from tests.deviceplugin.conftest import (
    GPU0,
    MIG_A,
    VF0,
    VF1,
    VF2,
    KubeletStandIn,
    make_topology,
    pending,
)

RESOURCES = {
    "gedge.io/gpu": "gedge-gpu.sock",
    "gedge.io/gpu-shared": "gedge-gpu-shared.sock",
    "gedge.io/mig-1g.10gb": "gedge-mig-1g.10gb.sock",
    "gedge.io/mig-3g.40gb": "gedge-mig-3g.40gb.sock",
    "gedge.io/sriov-vf": "gedge-sriov-vf.sock",
    "gedge.io/rdma": "gedge-rdma.sock",
}
VF = "gedge.io/sriov-vf"


@pytest.fixture
def manager(topology, pods, plugin_dir, host_root) -> Iterator[DevicePluginManager]:
    running = DevicePluginManager(
        lambda: topology, pods, plugin_dir, host_root=host_root, poll_interval_s=0.05
    )
    running.start()
    yield running
    running.stop()


def wait_until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_each_resource_registers_its_socket_and_options(kubelet, manager, plugin_dir):
    got = kubelet.wait_registrations(len(RESOURCES))

    assert {name: r.endpoint for name, r in got.items()} == RESOURCES
    for request in got.values():
        assert request.version == "v1beta1"
        assert request.options.get_preferred_allocation_available
        assert not request.options.pre_start_required
        assert (plugin_dir / request.endpoint).is_socket()
    options = kubelet.plugin(RESOURCES[VF]).GetDevicePluginOptions(api_pb2.Empty(), timeout=5)
    assert options.get_preferred_allocation_available


def test_list_and_watch_sends_devices_with_health_and_numa_then_changes(kubelet, manager):
    kubelet.wait_registrations(len(RESOURCES))
    stream = kubelet.plugin(RESOURCES[VF]).ListAndWatch(api_pb2.Empty(), timeout=20)

    first = next(stream)
    assert [(d.ID, d.health, [n.ID for n in d.topology.nodes]) for d in first.devices] == [
        (VF0, "Healthy", [0]),
        (VF1, "Healthy", [1]),
        (VF2, "Healthy", [0]),
    ]

    manager.update(make_topology(vfs=2), unhealthy={VF1})
    second = next(stream)
    assert [(d.ID, d.health) for d in second.devices] == [(VF0, "Healthy"), (VF1, "Unhealthy")]
    stream.cancel()


def test_resource_that_disappears_is_advertised_empty(kubelet, manager):
    kubelet.wait_registrations(len(RESOURCES))
    stream = kubelet.plugin(RESOURCES["gedge.io/gpu-shared"]).ListAndWatch(api_pb2.Empty(), timeout=20)
    assert len(next(stream).devices) == 2

    manager.update(make_topology(gpu0_replicas=1))

    assert list(next(stream).devices) == []
    stream.cancel()


def test_preferred_allocation_is_the_pending_pods_grant(kubelet, manager, pods):
    kubelet.wait_registrations(len(RESOURCES))
    pods.pods = [pending("u1", "trainer", [DeviceGrant(resource=VF, id=VF1, pci_address=VF1)])]
    plugin = kubelet.plugin(RESOURCES[VF])

    request = api_pb2.PreferredAllocationRequest(
        container_requests=[
            api_pb2.ContainerPreferredAllocationRequest(
                available_deviceIDs=[VF0, VF1, VF2], allocation_size=1
            )
        ]
    )
    response = plugin.GetPreferredAllocation(request, timeout=5)
    assert [list(r.deviceIDs) for r in response.container_responses] == [[VF1]]

    request.container_requests[0].allocation_size = 2
    with pytest.raises(grpc.RpcError) as refused:
        plugin.GetPreferredAllocation(request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ml/trainer has ['0000:3b:02.1']" in refused.value.details()


def _allocate(plugin, *containers: list[str]) -> api_pb2.AllocateResponse:
    request = api_pb2.AllocateRequest(
        container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids) for ids in containers]
    )
    return plugin.Allocate(request, timeout=5)


def test_allocate_hands_out_exactly_the_annotated_vf_and_marks_the_pod(kubelet, manager, pods):
    kubelet.wait_registrations(len(RESOURCES))
    pods.pods = [
        pending("u1", "trainer", [DeviceGrant(resource=VF, id=VF1, pci_address=VF1)], created=1.0),
        pending("u2", "loader", [DeviceGrant(resource=VF, id=VF2, pci_address=VF2)], created=2.0),
    ]

    response = _allocate(kubelet.plugin(RESOURCES[VF]), [VF1])

    assert [dict(r.envs) for r in response.container_responses] == [{"PCIDEVICE_GEDGE_IO_SRIOV_VF": VF1}]
    assert pods.marks == [("ml/trainer", VF, (VF1,))]


def test_allocate_of_gpu_and_mig_returns_uuids_and_device_nodes(kubelet, manager, pods):
    kubelet.wait_registrations(len(RESOURCES))
    pods.pods = [
        pending(
            "u1",
            "trainer",
            [
                DeviceGrant(resource="gedge.io/gpu", id=GPU0, container="main"),
                DeviceGrant(resource="gedge.io/mig-1g.10gb", id=MIG_A, container="side"),
            ],
        )
    ]

    gpu = _allocate(kubelet.plugin(RESOURCES["gedge.io/gpu"]), [GPU0]).container_responses[0]
    mig = _allocate(kubelet.plugin(RESOURCES["gedge.io/mig-1g.10gb"]), [MIG_A]).container_responses[0]

    assert dict(gpu.envs) == {"NVIDIA_VISIBLE_DEVICES": GPU0}
    assert [d.host_path for d in gpu.devices] == ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia0"]
    assert dict(mig.envs) == {"NVIDIA_VISIBLE_DEVICES": MIG_A}
    assert "/dev/nvidia-caps/nvidia-cap67" in [d.host_path for d in mig.devices]
    assert [(ref, resource) for ref, resource, _ in pods.marks] == [
        ("ml/trainer", "gedge.io/gpu"),
        ("ml/trainer", "gedge.io/mig-1g.10gb"),
    ]


def test_allocate_of_devices_no_pod_was_granted_fails_clearly_and_marks_nothing(kubelet, manager, pods):
    kubelet.wait_registrations(len(RESOURCES))
    pods.pods = [pending("u1", "trainer", [DeviceGrant(resource=VF, id=VF1, pci_address=VF1)])]
    plugin = kubelet.plugin(RESOURCES[VF])

    with pytest.raises(grpc.RpcError) as refused:
        _allocate(plugin, [VF1], [VF0])
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "grants ['0000:3b:02.0'] of gedge.io/sriov-vf to one container" in refused.value.details()
    assert "ml/trainer has ['0000:3b:02.1']" in refused.value.details()

    with pytest.raises(grpc.RpcError) as unknown:
        _allocate(plugin, ["0000:99:00.1"])
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "0000:99:00.1" in unknown.value.details()
    assert pods.marks == []


def test_allocate_with_an_invalid_annotation_names_the_pod(kubelet, manager, pods):
    kubelet.wait_registrations(len(RESOURCES))
    pods.pods = [PendingPod(uid="u9", namespace="ml", name="hand-edited", annotation='{"pod_uid": "u9"')]

    with pytest.raises(grpc.RpcError) as refused:
        _allocate(kubelet.plugin(RESOURCES[VF]), [VF0])
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ml/hand-edited: gedge.io/allocation" in refused.value.details()


def test_missing_host_device_node_fails_allocate_naming_pod_and_node(kubelet, manager, pods, host_root):
    kubelet.wait_registrations(len(RESOURCES))
    pods.pods = [pending("u1", "trainer", [DeviceGrant(resource="gedge.io/gpu", id=GPU0)])]
    (host_root / "dev/nvidiactl").unlink()

    with pytest.raises(grpc.RpcError) as refused:
        _allocate(kubelet.plugin(RESOURCES["gedge.io/gpu"]), [GPU0])
    assert "for ml/trainer: /dev/nvidiactl" in refused.value.details()
    assert pods.marks == []


def _restart_kubelet(kubelet: KubeletStandIn, plugin_dir: Path) -> KubeletStandIn:
    """What kubelet does on restart: its socket and every plugin socket vanish, a new kubelet.sock appears."""
    kubelet.stop()
    for path in plugin_dir.iterdir():
        path.unlink()
    return KubeletStandIn(plugin_dir).start()


def test_plugins_restart_and_register_again_when_kubelet_restarts(kubelet, manager, plugin_dir, pods):
    kubelet.wait_registrations(len(RESOURCES))

    restarted = _restart_kubelet(kubelet, plugin_dir)
    try:
        got = restarted.wait_registrations(len(RESOURCES))
        assert {name: r.endpoint for name, r in got.items()} == RESOURCES
        stream = restarted.plugin(RESOURCES[VF]).ListAndWatch(api_pb2.Empty(), timeout=20)
        assert [d.ID for d in next(stream).devices] == [VF0, VF1, VF2]
        stream.cancel()
    finally:
        restarted.stop()


def test_plugins_register_once_kubelet_comes_up_and_retry_a_refusal(topology, pods, plugin_dir, host_root):
    manager = DevicePluginManager(
        lambda: topology, pods, plugin_dir, host_root=host_root, poll_interval_s=0.05
    )
    manager.start()
    late = KubeletStandIn(plugin_dir)
    late.refuse = {VF}
    try:
        assert all(p.serving for p in manager.plugins.values())
        late.start()
        got = late.wait_registrations(len(RESOURCES) - 1)
        assert VF not in got
        late.refuse = set()
        assert late.wait_registrations(1).keys() == {VF}
    finally:
        manager.stop()
        late.stop()
    assert not any(plugin_dir.glob("gedge-*.sock"))


def test_plugin_whose_socket_was_removed_comes_back(kubelet, manager, plugin_dir):
    kubelet.wait_registrations(len(RESOURCES))

    (plugin_dir / RESOURCES[VF]).unlink()

    assert kubelet.wait_registrations(1).keys() == {VF}
    wait_until(lambda: (plugin_dir / RESOURCES[VF]).is_socket())


def test_new_mig_profile_starts_a_new_plugin(kubelet, manager, topology):
    kubelet.wait_registrations(len(RESOURCES))
    gpu = topology.gpus[1]
    extra = replace(gpu.mig_instances[0], uuid="MIG-new", profile="2g.20gb", gpu_instance_id=3)
    changed = replace(
        topology, gpus=(topology.gpus[0], replace(gpu, mig_instances=(*gpu.mig_instances, extra)))
    )

    manager.update(changed)

    got = kubelet.wait_registrations(1)
    assert got["gedge.io/mig-2g.20gb"].endpoint == "gedge-mig-2g.20gb.sock"


def test_two_containers_share_out_a_pod_level_grant_one_allocate_each(kubelet, manager, pods):
    kubelet.wait_registrations(len(RESOURCES))
    grants = [DeviceGrant(resource=VF, id=v, pci_address=v) for v in (VF0, VF2)]
    pods.pods = [replace(pending("u1", "pair", grants), requests={VF: (1, 1)})]
    plugin = kubelet.plugin(RESOURCES[VF])

    def prefer(available: list[str]) -> list[str]:
        ask = api_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=available, allocation_size=1)
        request = api_pb2.PreferredAllocationRequest(container_requests=[ask])
        return list(plugin.GetPreferredAllocation(request, timeout=5).container_responses[0].deviceIDs)

    first = prefer([VF0, VF1, VF2])
    assert first == [VF0]
    assert dict(_allocate(plugin, first).container_responses[0].envs) == {"PCIDEVICE_GEDGE_IO_SRIOV_VF": VF0}
    second = prefer([VF1, VF2])
    assert second == [VF2]
    _allocate(plugin, second)

    assert pods.marks == [("ml/pair", VF, (VF0,)), ("ml/pair", VF, (VF0, VF2))]
    with pytest.raises(grpc.RpcError):
        _allocate(plugin, [VF1])


def test_sockets_are_born_private_under_umask_0(kubelet, topology, pods, plugin_dir, host_root):
    """A socket made under umask 000 and chmod-ed after would be 0777 for a moment; these never are."""
    old = os.umask(0)
    try:
        running = DevicePluginManager(
            lambda: topology, pods, plugin_dir, host_root=host_root, poll_interval_s=0.05
        )
        running.start()
    finally:
        os.umask(old)
    try:
        got = kubelet.wait_registrations(len(RESOURCES))
        modes = {r.endpoint: stat.S_IMODE((plugin_dir / r.endpoint).stat().st_mode) for r in got.values()}
        assert set(modes.values()) == {0o600}, modes
        assert not [p.name for p in plugin_dir.iterdir() if p.name.startswith(".g")]
    finally:
        running.stop()


def test_a_socket_reaches_its_public_path_only_once_it_is_private(
    kubelet, topology, pods, plugin_dir, host_root, monkeypatch
):
    """When its mode is set, the socket is in a 0700 folder and nothing is yet at the path kubelet dials."""
    import agent.deviceplugin.plugin as plugin_module

    seen: list[tuple[Path, int, bool]] = []
    real_chmod = os.chmod

    def watching_chmod(path, mode, *args, **kwargs):
        where = Path(path)
        public = plugin_dir / where.name
        seen.append((where, stat.S_IMODE(where.parent.stat().st_mode), public.exists()))
        return real_chmod(path, mode, *args, **kwargs)

    monkeypatch.setattr(plugin_module.os, "chmod", watching_chmod)
    running = DevicePluginManager(
        lambda: topology, pods, plugin_dir, host_root=host_root, poll_interval_s=0.05
    )
    running.start()
    try:
        kubelet.wait_registrations(len(RESOURCES))
    finally:
        running.stop()
    assert seen
    for where, folder_mode, public_exists in seen:
        assert where.parent != plugin_dir and folder_mode == 0o700, where
        assert not public_exists, where
