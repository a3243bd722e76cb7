"""What a container is given for its devices, read from a host /dev, /proc and /sys tree."""

from __future__ import annotations

import pytest

from agent.deviceplugin.devices import plugin_devices
from agent.deviceplugin.hostdevices import HostDeviceError, HostDevices
from agent.deviceplugin.responses import container_response, pci_env_name
from tests.deviceplugin.conftest import GPU0, MIG_A, MIG_B, VF0, VF2


def _by_id(topology, resource):
    return {d.id: d for d in plugin_devices(topology)[resource]}


def _paths(response) -> list[str]:
    assert all(s.container_path == s.host_path and s.permissions == "rw" for s in response.devices)
    return [s.host_path for s in response.devices]


def test_whole_gpu_gets_its_uuid_and_device_nodes(topology, host_root):
    gpu = _by_id(topology, "gedge.io/gpu")[GPU0]

    response = container_response("gedge.io/gpu", [gpu], HostDevices(host_root))

    assert dict(response.envs) == {"NVIDIA_VISIBLE_DEVICES": GPU0}
    # nvidia-uvm-tools and nvidia-modeset are absent on this host, so they are not passed.
    assert _paths(response) == ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia0"]


def test_time_slice_replicas_expose_the_gpu_uuid_once(topology, host_root):
    replicas = list(_by_id(topology, "gedge.io/gpu-shared").values())

    response = container_response("gedge.io/gpu-shared", replicas, HostDevices(host_root))

    assert dict(response.envs) == {"NVIDIA_VISIBLE_DEVICES": GPU0}
    assert _paths(response)[-1] == "/dev/nvidia0"


def test_mig_instance_gets_its_uuid_parent_node_and_capabilities(topology, host_root):
    mig = _by_id(topology, "gedge.io/mig-1g.10gb")[MIG_A]

    response = container_response("gedge.io/mig-1g.10gb", [mig], HostDevices(host_root))

    assert dict(response.envs) == {"NVIDIA_VISIBLE_DEVICES": MIG_A}
    assert _paths(response) == [
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia1",
        "/dev/nvidia-caps/nvidia-cap66",
        "/dev/nvidia-caps/nvidia-cap67",
    ]


def test_mig_instance_without_capability_minor_is_refused_by_name(topology, host_root):
    mig = _by_id(topology, "gedge.io/mig-3g.40gb")[MIG_B]

    with pytest.raises(HostDeviceError, match=rf"gpu1/gi1/access of {MIG_B}"):
        container_response("gedge.io/mig-3g.40gb", [mig], HostDevices(host_root))


def test_missing_gpu_node_or_driver_file_is_refused_by_name(topology, host_root):
    gpu = _by_id(topology, "gedge.io/gpu")[GPU0]
    (host_root / "dev/nvidia0").unlink()
    with pytest.raises(HostDeviceError, match=rf"/dev/nvidia0 \(GPU {GPU0}\) does not exist"):
        container_response("gedge.io/gpu", [gpu], HostDevices(host_root))

    (host_root / "proc/driver/nvidia/gpus/0000:17:00.0/information").unlink()
    with pytest.raises(HostDeviceError, match=r"device minor of GPU 0000:17:00\.0"):
        container_response("gedge.io/gpu", [gpu], HostDevices(host_root))


def test_vfs_are_named_by_pci_address_in_the_sriov_plugin_variable(topology, host_root):
    vfs = _by_id(topology, "gedge.io/sriov-vf")

    response = container_response("gedge.io/sriov-vf", [vfs[VF0], vfs[VF2]], HostDevices(host_root))

    assert pci_env_name("gedge.io/sriov-vf") == "PCIDEVICE_GEDGE_IO_SRIOV_VF"
    assert dict(response.envs) == {"PCIDEVICE_GEDGE_IO_SRIOV_VF": f"{VF0},{VF2}"}
    assert list(response.devices) == []


def test_rdma_device_gets_its_own_infiniband_nodes_only(topology, host_root):
    hca = _by_id(topology, "gedge.io/rdma")["mlx5_0"]

    response = container_response("gedge.io/rdma", [hca], HostDevices(host_root))

    assert _paths(response) == ["/dev/infiniband/uverbs0", "/dev/infiniband/umad0", "/dev/infiniband/rdma_cm"]
    assert dict(response.envs) == {"PCIDEVICE_GEDGE_IO_RDMA": "0000:5e:00.0"}


def test_rdma_device_without_uverbs_is_refused(topology, host_root):
    hca = _by_id(topology, "gedge.io/rdma")["mlx5_0"]
    (host_root / "sys/class/infiniband_verbs/uverbs0/ibdev").write_text("mlx5_9\n")

    with pytest.raises(HostDeviceError, match="RDMA device mlx5_0 has no uverbs"):
        container_response("gedge.io/rdma", [hca], HostDevices(host_root))
