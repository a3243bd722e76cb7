"""Device plugin test bed: a node topology, a host /dev+/proc+/sys tree, pods in memory, and kubelet.

kubelet is the one stand-in: a real gRPC Registration server on kubelet.sock
in a real plugin folder that, like kubelet, dials each plugin's socket.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import pytest

from agent.deviceplugin.pods import PendingPod, allocated_annotation
from gedge_model import (
    Allocation,
    DeviceGrant,
    Gpu,
    MigInstance,
    NetInterface,
    NodeTopology,
    NumaNode,
    PciDevice,
    RdmaDevice,
    VirtualFunction,
)
from protos.k8s.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc

NODE = "edge-1"
GPU0 = "GPU-11111111-2222-3333-4444-555555555555"
GPU1 = "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
MIG_A = "MIG-0a0a0a0a-0000-1111-2222-333333333333"
MIG_B = "MIG-0b0b0b0b-0000-1111-2222-333333333333"
VF0 = "0000:3b:02.0"
VF1 = "0000:3b:02.1"
VF2 = "0000:3b:02.2"


def _pci(address: str, numa: int | None, class_id: int = 0x030200) -> PciDevice:
    return PciDevice(
        address=address,
        class_id=class_id,
        vendor_id=0x10DE,
        device_id=0x20B0,
        host_bridge="0000:00",
        numa_node=numa,
    )


def make_topology(*, vfs: int = 3, gpu0_replicas: int = 2, vfio: Sequence[int] = ()) -> NodeTopology:
    """Two GPUs (GPU0 whole + time-sliced on NUMA 0, GPU1 in MIG mode on NUMA 1), a PF with VFs on iavf
    (those in `vfio` on vfio-pci, without a netdev), one HCA."""
    vf_list = tuple(
        VirtualFunction(index=i, pci_address=f"0000:3b:02.{i}", driver="vfio-pci")
        if i in vfio
        else VirtualFunction(index=i, pci_address=f"0000:3b:02.{i}", netdev=f"ens1f0v{i}", driver="iavf")
        for i in range(vfs)
    )
    return NodeTopology(
        node_name=NODE,
        numa_nodes=(NumaNode(id=0, cpus=(0, 1)), NumaNode(id=1, cpus=(2, 3))),
        pci_devices=(
            _pci("0000:17:00.0", 0),
            _pci("0000:af:00.0", 1),
            _pci("0000:3b:00.0", 0, 0x020000),
            _pci(VF0, None, 0x020000),
            _pci(VF1, 1, 0x020000),
            _pci("0000:5e:00.0", 1, 0x020700),
        ),
        interfaces=(
            NetInterface(
                name="ens1f0", pci_address="0000:3b:00.0", sriov_totalvfs=8, sriov_numvfs=vfs, vfs=vf_list
            ),
        ),
        rdma_devices=(RdmaDevice(name="mlx5_0", pci_address="0000:5e:00.0"),),
        gpus=(
            Gpu(
                index=0,
                uuid=GPU0,
                name="A100",
                pci_address="0000:17:00.0",
                memory_bytes=40 << 30,
                timeslice_replicas=gpu0_replicas,
            ),
            Gpu(
                index=1,
                uuid=GPU1,
                name="A100",
                pci_address="0000:af:00.0",
                memory_bytes=40 << 30,
                mig_current=True,
                mig_instances=(
                    MigInstance(uuid=MIG_A, profile="1g.10gb", gpu_instance_id=7, compute_instance_id=0),
                    MigInstance(uuid=MIG_B, profile="3g.40gb", gpu_instance_id=1, compute_instance_id=0),
                ),
            ),
        ),
    )


@pytest.fixture
def topology() -> NodeTopology:
    return make_topology()


def _write(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def host_root(tmp_path: Path) -> Path:
    """The host as the NVIDIA driver and the RDMA stack lay it out (GPU0 is minor 0, GPU1 minor 1)."""
    root = tmp_path / "host"
    for name in (
        "nvidiactl",
        "nvidia-uvm",
        "nvidia0",
        "nvidia1",
        "nvidia-caps/nvidia-cap66",
        "nvidia-caps/nvidia-cap67",
    ):
        _write(root / "dev" / name)
    for name in ("uverbs0", "uverbs1", "umad0", "rdma_cm"):
        _write(root / "dev/infiniband" / name)
    _write(
        root / "proc/driver/nvidia/gpus/0000:17:00.0/information", "Model: A100\nDevice Minor: 0\nIRQ: 1\n"
    )
    _write(root / "proc/driver/nvidia/gpus/0000:af:00.0/information", "Model: A100\nDevice Minor: 1\n")
    _write(
        root / "proc/driver/nvidia-caps/mig-minors",
        "config 1\nmonitor 2\ngpu1/gi7/access 66\ngpu1/gi7/ci0/access 67\ngpu0/gi1/access 12\n",
    )
    _write(root / "sys/class/infiniband_verbs/uverbs0/ibdev", "mlx5_0\n")
    _write(root / "sys/class/infiniband_verbs/uverbs1/ibdev", "mlx5_1\n")
    _write(root / "sys/class/infiniband_mad/umad0/ibdev", "mlx5_0\n")
    return root


def allocation_for(uid: str, name: str, grants: Sequence[DeviceGrant], node: str = NODE) -> Allocation:
    return Allocation(pod_uid=uid, namespace="ml", name=name, node=node, devices=tuple(grants))


def pending(uid: str, name: str, grants: Sequence[DeviceGrant], created: float = 0.0, **kw) -> PendingPod:
    annotation = allocation_for(uid, name, grants, **kw).to_annotation()
    return PendingPod(uid=uid, namespace="ml", name=name, annotation=annotation, created=created)


@dataclass
class InMemoryPods:
    """PendingPodSource over a list; marks are applied to the listed pods as the API would."""

    pods: list[PendingPod] = field(default_factory=list)
    marks: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)

    def pending_pods(self) -> Sequence[PendingPod]:
        return list(self.pods)

    def mark_allocated(self, pod: PendingPod, resource: str, device_ids: Sequence[str]) -> None:
        self.marks.append((pod.ref, resource, tuple(device_ids)))
        key = allocated_annotation(resource)
        self.pods = [
            replace(p, marks={**p.marks, key: ",".join(device_ids)}) if p.uid == pod.uid else p
            for p in self.pods
        ]


class KubeletStandIn(api_pb2_grpc.RegistrationServicer):
    """kubelet's Registration service on <plugin dir>/kubelet.sock; dials plugins like kubelet does."""

    def __init__(self, plugin_dir: Path) -> None:
        self.plugin_dir = plugin_dir
        self.registrations: queue.Queue[api_pb2.RegisterRequest] = queue.Queue()
        self.refuse: set[str] = set()
        self._server: grpc.Server | None = None
        self._channels: list[grpc.Channel] = []

    def Register(self, request, context):
        if request.resource_name in self.refuse:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{request.resource_name} is taken")
        self.registrations.put(request)
        return api_pb2.Empty()

    def start(self) -> KubeletStandIn:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_RegistrationServicer_to_server(self, server)
        server.add_insecure_port(f"unix:{self.plugin_dir / 'kubelet.sock'}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None

    def wait_registrations(self, count: int, timeout: float = 10.0) -> dict[str, api_pb2.RegisterRequest]:
        got: dict[str, api_pb2.RegisterRequest] = {}
        while len(got) < count:
            request = self.registrations.get(timeout=timeout)
            got[request.resource_name] = request
        return got

    def plugin(self, endpoint: str) -> api_pb2_grpc.DevicePluginStub:
        channel = grpc.insecure_channel(f"unix:{self.plugin_dir / endpoint}")
        self._channels.append(channel)
        return api_pb2_grpc.DevicePluginStub(channel)


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    """A short folder under /tmp: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="gdp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def kubelet(plugin_dir: Path) -> Iterator[KubeletStandIn]:
    stand_in = KubeletStandIn(plugin_dir).start()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def pods() -> InMemoryPods:
    """Pending pods the plugins read, held in memory (the kubelet pod source's one stand-in)."""
    return InMemoryPods()
