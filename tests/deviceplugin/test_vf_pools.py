"""VF pools as the device plugins advertise and hand them out: kernel-netdev VFs vs vfio-pci VFs."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from agent.deviceplugin.devices import UNHEALTHY, plugin_devices
from agent.deviceplugin.hostdevices import HostDeviceError, HostDevices
from agent.deviceplugin.responses import container_response
from gedge_model import DeviceHealth
from tests.deviceplugin.conftest import GPU0, MIG_A, VF0, VF1, VF2, make_topology


def test_vfio_vfs_form_their_own_resource_and_unbound_vfs_none() -> None:
    topology = make_topology(vfio=(1,))
    (pf,) = topology.interfaces
    unbound = dataclasses.replace(pf.vfs[2], driver=None, netdev=None)
    topology = dataclasses.replace(
        topology, interfaces=(dataclasses.replace(pf, vfs=(pf.vfs[0], pf.vfs[1], unbound)),)
    )
    devices = plugin_devices(topology)
    assert [d.id for d in devices["gedge.io/sriov-vf"]] == [VF0]
    assert [(d.id, d.vfio) for d in devices["gedge.io/sriov-vf-vfio"]] == [(VF1, True)]
    assert all(d.id != VF2 for found in devices.values() for d in found)


def test_vfio_vf_gets_its_iommu_group_node_and_the_pci_variable(tmp_path: Path) -> None:
    devices = {d.id: d for d in plugin_devices(make_topology(vfio=(1, 2)))["gedge.io/sriov-vf-vfio"]}
    host = tmp_path / "host"
    for name in ("vfio", "41"):
        (host / "dev/vfio").mkdir(parents=True, exist_ok=True)
        (host / "dev/vfio" / name).write_text("")
    groups = host / "sys/kernel/iommu_groups"
    for vf, group in ((VF1, "41"), (VF2, "42")):
        (groups / group).mkdir(parents=True)
        (host / "sys/bus/pci/devices" / vf).mkdir(parents=True)
        os.symlink(
            f"../../../../kernel/iommu_groups/{group}", host / "sys/bus/pci/devices" / vf / "iommu_group"
        )

    response = container_response("gedge.io/sriov-vf-vfio", [devices[VF1]], HostDevices(host))
    assert dict(response.envs) == {"PCIDEVICE_GEDGE_IO_SRIOV_VF_VFIO": VF1}
    assert [(s.host_path, s.container_path, s.permissions) for s in response.devices] == [
        ("/dev/vfio/vfio", "/dev/vfio/vfio", "rw"),
        ("/dev/vfio/41", "/dev/vfio/41", "rw"),
    ]
    with pytest.raises(
        HostDeviceError, match=r"/dev/vfio/42 \(IOMMU group of VF 0000:3b:02.2\) does not exist"
    ):
        container_response("gedge.io/sriov-vf-vfio", [devices[VF2]], HostDevices(host))
    os.unlink(host / "sys/bus/pci/devices" / VF2 / "iommu_group")
    with pytest.raises(HostDeviceError, match=r"PCI function 0000:3b:02\.2 has no IOMMU group"):
        container_response("gedge.io/sriov-vf-vfio", [devices[VF2]], HostDevices(host))


def test_unhealthy_pci_functions_are_reported_unhealthy_with_everything_on_them() -> None:
    topology = dataclasses.replace(
        make_topology(),
        unhealthy=(DeviceHealth("0000:af:00.0", "xid 79"), DeviceHealth(VF1, "link down on ens1f0")),
    )
    devices = plugin_devices(topology)
    health = {(r, d.id): d.health for r, found in devices.items() for d in found}
    assert health[("gedge.io/sriov-vf", VF1)] == UNHEALTHY
    assert health[("gedge.io/mig-1g.10gb", MIG_A)] == UNHEALTHY, "a MIG instance of the sick GPU"
    assert health[("gedge.io/sriov-vf", VF0)] == health[("gedge.io/gpu", GPU0)] == "Healthy"


def test_the_agent_refuses_an_unhealthy_device_to_a_new_pod_but_not_to_its_holder() -> None:
    from agent.service.inventory import allocation_conflicts
    from gedge_model import Allocation, DeviceGrant, NodeState

    sick = dataclasses.replace(make_topology(), unhealthy=(DeviceHealth(VF1, "link down on ens1f0"),))
    grant = DeviceGrant("gedge.io/sriov-vf", VF1, VF1)
    holder = Allocation("u1", "ml", "old", "edge-1", devices=(grant,))
    state = NodeState(sick, (holder,))
    assert allocation_conflicts(state, holder) == []
    newcomer = Allocation("u2", "ml", "new", "edge-1", devices=(grant,))
    assert allocation_conflicts(NodeState(sick), newcomer) == [
        f"device gedge.io/sriov-vf={VF1} is unhealthy (link down on ens1f0)"
    ]


def test_both_pools_through_real_plugins_on_a_discovered_sysfs_tree(kubelet, plugin_dir: Path) -> None:
    """The issue's node (VF0 on vfio-pci without net/, VF1 on iavf with ens1f0v1), discovered from a
    synthetic sysfs tree that also holds /dev/vfio and the IOMMU groups: kubelet is offered VF1 as
    gedge.io/sriov-vf and VF0 as gedge.io/sriov-vf-vfio, and Allocate hands out VF0's group node."""
    from agent.deviceplugin import DevicePluginManager
    from gedge_model import DeviceGrant
    from protos.k8s.deviceplugin.v1beta1 import api_pb2
    from tests.deviceplugin.conftest import InMemoryPods, pending
    from tests.extender.test_vf_pools_and_health import small_node

    root = plugin_dir / "host"
    topology = dataclasses.replace(small_node(root), node_name="edge-1")
    vf0, vf1 = "0000:03:02.0", "0000:03:02.1"
    (root / "sys/kernel/iommu_groups/17").mkdir(parents=True)
    os.symlink(
        "../../../../kernel/iommu_groups/17",
        root / "sys/devices/pci0000:00/0000:00:02.0" / vf0 / "iommu_group",
    )
    for name in ("vfio", "17"):
        (root / "dev/vfio").mkdir(parents=True, exist_ok=True)
        (root / "dev/vfio" / name).write_text("")
    pods = InMemoryPods(
        [pending("u1", "dpdk", [DeviceGrant("gedge.io/sriov-vf-vfio", vf0, vf0)], created=1.0)]
    )
    manager = DevicePluginManager(lambda: topology, pods, plugin_dir, host_root=root, poll_interval_s=0.05)
    manager.start()
    try:
        got = kubelet.wait_registrations(2)
        assert set(got) == {"gedge.io/sriov-vf", "gedge.io/sriov-vf-vfio"}
        netdev = next(kubelet.plugin("gedge-sriov-vf.sock").ListAndWatch(api_pb2.Empty(), timeout=10))
        assert [d.ID for d in netdev.devices] == [vf1]
        request = api_pb2.AllocateRequest(
            container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=[vf0])]
        )
        response = kubelet.plugin("gedge-sriov-vf-vfio.sock").Allocate(request, timeout=10)
        (container,) = response.container_responses
        assert dict(container.envs) == {"PCIDEVICE_GEDGE_IO_SRIOV_VF_VFIO": vf0}
        assert [d.host_path for d in container.devices] == ["/dev/vfio/vfio", "/dev/vfio/17"]
        assert pods.marks == [("ml/dpdk", "gedge.io/sriov-vf-vfio", (vf0,))]
    finally:
        manager.stop()
