"""What a container gets for its devices: environment variables and device nodes.

GPUs follow NVIDIA's device plugin (NVIDIA_VISIBLE_DEVICES with GPU or MIG
UUIDs plus /dev/nvidia* specs), VFs and RDMA devices follow the SR-IOV device
plugin (PCIDEVICE_<RESOURCE> with PCI addresses, /dev/infiniband nodes; a
vfio-pci VF adds /dev/vfio/vfio and its IOMMU group's /dev/vfio/<group>). AMD GPUs
and FPGA/ASIC cards get PCIDEVICE_<RESOURCE> and exactly their own device nodes
(/dev/kfd and the GPU's /dev/dri/renderDN, as ROCm's device plugin does; the
card's DFL/OPAE port, XRT render and management nodes, or VFIO group).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from agent.deviceplugin.devices import PluginDevice
from agent.deviceplugin.hostdevices import HostDeviceError, HostDevices
from protos.k8s.deviceplugin.v1beta1 import api_pb2

NVIDIA_VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
NVIDIA_CONTROL_DEVICES = ("/dev/nvidiactl",)
NVIDIA_OPTIONAL_DEVICES = ("/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")
RDMA_OPTIONAL_DEVICES = ("/dev/infiniband/rdma_cm",)
VFIO_CONTAINER_DEVICE = "/dev/vfio/vfio"
PERMISSIONS = "rw"


def pci_env_name(resource: str) -> str:
    """PCIDEVICE_<resource upper-cased, non-alphanumerics as _>, the SR-IOV device plugin's form."""
    return "PCIDEVICE_" + re.sub(r"[^A-Z0-9]", "_", resource.upper())


def _spec(path: str) -> api_pb2.DeviceSpec:
    return api_pb2.DeviceSpec(container_path=path, host_path=path, permissions=PERMISSIONS)


def _required(host: HostDevices, path: str, why: str) -> str:
    if not host.exists(path):
        raise HostDeviceError(f"{path} ({why}) does not exist on this node")
    return path


def _gpu_response(devices: Sequence[PluginDevice], host: HostDevices) -> api_pb2.ContainerAllocateResponse:
    visible: list[str] = []
    paths: list[str] = [_required(host, p, "NVIDIA control device") for p in NVIDIA_CONTROL_DEVICES]
    paths += [p for p in NVIDIA_OPTIONAL_DEVICES if host.exists(p)]
    mig_minors: dict[str, int] | None = None
    for device in devices:
        if device.gpu is None:
            raise HostDeviceError(f"device {device.id} of {device.resource} names no GPU")
        minor = host.nvidia_minor(device.gpu.pci_address)
        paths.append(_required(host, f"/dev/nvidia{minor}", f"GPU {device.gpu.uuid}"))
        if device.mig is None:
            visible.append(device.gpu.uuid)
            continue
        visible.append(device.id)
        if mig_minors is None:
            mig_minors = host.mig_capability_minors()
        gi = f"gpu{minor}/gi{device.mig.gpu_instance_id}"
        for cap in (f"{gi}/access", f"{gi}/ci{device.mig.compute_instance_id}/access"):
            if cap not in mig_minors:
                raise HostDeviceError(f"MIG capability {cap} of {device.id} is not in mig-minors")
            paths.append(_required(host, f"/dev/nvidia-caps/nvidia-cap{mig_minors[cap]}", f"MIG {device.id}"))
    return api_pb2.ContainerAllocateResponse(
        envs={NVIDIA_VISIBLE_DEVICES: ",".join(dict.fromkeys(visible))},
        devices=[_spec(p) for p in dict.fromkeys(paths)],
    )


def _pci_env(resource: str, devices: Sequence[PluginDevice]) -> dict[str, str]:
    addresses = [d.pci_address for d in devices if d.pci_address]
    return {pci_env_name(resource): ",".join(addresses)} if addresses else {}


def _rdma_response(
    resource: str, devices: Sequence[PluginDevice], host: HostDevices
) -> api_pb2.ContainerAllocateResponse:
    paths: list[str] = []
    for device in devices:
        names = host.rdma_char_devices(device.rdma_name or device.id)
        verbs = [n for n in names if n.startswith("uverbs")]
        if not verbs:
            raise HostDeviceError(
                f"RDMA device {device.id} has no uverbs device under sys/class/infiniband_verbs"
            )
        paths += [_required(host, f"/dev/infiniband/{n}", f"RDMA {device.id}") for n in verbs]
        paths += [
            f"/dev/infiniband/{n}" for n in names if n not in verbs and host.exists(f"/dev/infiniband/{n}")
        ]
    paths += [p for p in RDMA_OPTIONAL_DEVICES if host.exists(p)]
    return api_pb2.ContainerAllocateResponse(
        envs=_pci_env(resource, devices), devices=[_spec(p) for p in dict.fromkeys(paths)]
    )


def _nodes_response(
    resource: str, devices: Sequence[PluginDevice], host: HostDevices
) -> api_pb2.ContainerAllocateResponse:
    paths = [
        _required(host, path, f"{resource} {device.id}") for device in devices for path in device.device_nodes
    ]
    return api_pb2.ContainerAllocateResponse(
        envs=_pci_env(resource, devices), devices=[_spec(p) for p in dict.fromkeys(paths)]
    )


def _vfio_response(
    resource: str, devices: Sequence[PluginDevice], host: HostDevices
) -> api_pb2.ContainerAllocateResponse:
    paths = [_required(host, VFIO_CONTAINER_DEVICE, "VFIO container")]
    for device in devices:
        group = host.iommu_group(device.pci_address or device.id)
        paths.append(_required(host, f"/dev/vfio/{group}", f"IOMMU group of VF {device.id}"))
    return api_pb2.ContainerAllocateResponse(
        envs=_pci_env(resource, devices), devices=[_spec(p) for p in dict.fromkeys(paths)]
    )


def container_response(
    resource: str, devices: Sequence[PluginDevice], host: HostDevices
) -> api_pb2.ContainerAllocateResponse:
    """The response for one container's devices of one resource; HostDeviceError when a node is missing."""
    if any(d.gpu is not None for d in devices):
        return _gpu_response(devices, host)
    if any(d.rdma_name is not None for d in devices):
        return _rdma_response(resource, devices, host)
    if any(d.device_nodes for d in devices):
        return _nodes_response(resource, devices, host)
    if any(d.vfio for d in devices):
        return _vfio_response(resource, devices, host)
    return api_pb2.ContainerAllocateResponse(envs=_pci_env(resource, devices))
