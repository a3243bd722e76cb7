"""One kubelet device plugin: a gRPC DevicePlugin server for one resource on a unix socket."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path

import grpc

from agent.deviceplugin.devices import PluginDevice
from agent.deviceplugin.hostdevices import HostDeviceError, HostDevices
from agent.deviceplugin.pods import Claim, PendingPodSource, ResolveError, candidates, owner, preferred
from agent.deviceplugin.responses import container_response
from protos.k8s.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
REGISTER_TIMEOUT_S = 5.0
WATCH_WAKEUP_S = 0.5
"""How often an idle ListAndWatch stream checks whether kubelet went away."""


def socket_name(resource: str) -> str:
    """gedge.io/mig-1g.10gb -> gedge-mig-1g.10gb.sock: one socket per resource in the plugin dir."""
    suffix = resource.removeprefix("gedge.io/").replace("/", "-").replace("+", "_")
    return f"gedge-{suffix}.sock"


def _to_proto(device: PluginDevice) -> api_pb2.Device:
    topology = None
    if device.numa_node is not None:
        topology = api_pb2.TopologyInfo(nodes=[api_pb2.NUMANode(ID=device.numa_node)])
    return api_pb2.Device(ID=device.id, health=device.health, topology=topology)


class ResourcePlugin(api_pb2_grpc.DevicePluginServicer):
    """Serves one resource's devices; Allocate hands out exactly what a pod's allocation grants."""

    def __init__(
        self,
        resource: str,
        devices: Sequence[PluginDevice],
        pods: PendingPodSource,
        node_name: str,
        plugin_dir: Path,
        host: HostDevices,
    ) -> None:
        self.resource = resource
        self.node_name = node_name
        self.socket_path = plugin_dir / socket_name(resource)
        self._pods = pods
        self._host = host
        self._devices = tuple(devices)
        self._generation = 0
        self._changed = threading.Condition()
        self._server: grpc.Server | None = None
        self._stopping = threading.Event()

    @property
    def devices(self) -> tuple[PluginDevice, ...]:
        with self._changed:
            return self._devices

    def set_devices(self, devices: Sequence[PluginDevice]) -> None:
        """Replace the device list; open ListAndWatch streams send it when it differs."""
        devices = tuple(devices)
        with self._changed:
            if devices == self._devices:
                return
            self._devices = devices
            self._generation += 1
            self._changed.notify_all()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on a fresh socket (a stale file from an earlier run is removed first)."""
        self.stop()
        self._stopping.clear()
        self.socket_path.unlink(missing_ok=True)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"dp-{socket_name(self.resource)}"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        api_pb2_grpc.add_DevicePluginServicer_to_server(self, server)
        # The socket is born in a private folder (0700) and moved into place once it is 0600: under any
        # umask no one else can connect to it, not even for a moment.
        # Short names: a unix socket's path is bounded (108 bytes) where it is bound, not where it lands.
        staging = Path(tempfile.mkdtemp(prefix=".g", dir=self.socket_path.parent))
        try:
            born = staging / "s"
            server.add_insecure_port(f"unix:{born}")
            server.start()
            os.chmod(born, 0o600)
            os.replace(born, self.socket_path)
        except BaseException:
            server.stop(0)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._server = server

    def stop(self, grace: float = 0.5) -> None:
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
            self.socket_path.unlink(missing_ok=True)

    @property
    def serving(self) -> bool:
        return self._server is not None and self.socket_path.exists()

    def register(self, kubelet_socket: Path) -> None:
        """Tell kubelet this plugin's socket and resource; raises grpc.RpcError when kubelet refuses."""
        request = api_pb2.RegisterRequest(
            version=API_VERSION,
            endpoint=self.socket_path.name,
            resource_name=self.resource,
            options=self.options(),
        )
        with grpc.insecure_channel(f"unix:{kubelet_socket}") as channel:
            api_pb2_grpc.RegistrationStub(channel).Register(request, timeout=REGISTER_TIMEOUT_S)

    @staticmethod
    def options() -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)

    # -- DevicePlugin service ----------------------------------------------------------------------

    def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> api_pb2.DevicePluginOptions:
        return self.options()

    def ListAndWatch(
        self, request: api_pb2.Empty, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.ListAndWatchResponse]:
        with self._changed:
            generation, devices = self._generation, self._devices
        yield api_pb2.ListAndWatchResponse(devices=[_to_proto(d) for d in devices])
        while context.is_active() and not self._stopping.is_set():
            with self._changed:
                if self._generation == generation and not self._stopping.is_set():
                    self._changed.wait(timeout=WATCH_WAKEUP_S)
                if self._generation == generation:
                    continue
                generation, devices = self._generation, self._devices
            yield api_pb2.ListAndWatchResponse(devices=[_to_proto(d) for d in devices])

    def GetPreferredAllocation(
        self, request: api_pb2.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreferredAllocationResponse:
        found = candidates(self._pods.pending_pods(), self.resource, self.node_name)
        responses = []
        for container in request.container_requests:
            try:
                _, ids = preferred(
                    found,
                    self.resource,
                    list(container.available_deviceIDs),
                    list(container.must_include_deviceIDs),
                    container.allocation_size,
                )
            except ResolveError as exc:
                log.warning("GetPreferredAllocation for %s refused: %s", self.resource, exc)
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            responses.append(api_pb2.ContainerPreferredAllocationResponse(deviceIDs=ids))
        return api_pb2.PreferredAllocationResponse(container_responses=responses)

    def Allocate(
        self, request: api_pb2.AllocateRequest, context: grpc.ServicerContext
    ) -> api_pb2.AllocateResponse:
        known = {d.id: d for d in self.devices}
        found = candidates(self._pods.pending_pods(), self.resource, self.node_name)
        served: list[tuple[Claim, list[str]]] = []
        responses = []
        for container in request.container_requests:
            ids = list(container.devices_ids)
            unknown = [i for i in ids if i not in known]
            if unknown:
                context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"{self.resource} has no device(s) {unknown} on {self.node_name}",
                )
            try:
                claim = owner(found, self.resource, ids)
                responses.append(
                    container_response(self.resource, [known[i] for i in sorted(ids)], self._host)
                )
            except ResolveError as exc:
                log.warning("Allocate for %s refused: %s", self.resource, exc)
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            except HostDeviceError as exc:
                message = f"Allocate {self.resource} {sorted(ids)} for {claim.pod.ref}: {exc}"
                log.warning("%s", message)
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, message)
            served.append((claim, ids))
        for claim, ids in served:
            self._mark(claim, ids)
        return api_pb2.AllocateResponse(container_responses=responses)

    def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()

    def _mark(self, claim: Claim, ids: list[str]) -> None:
        done = sorted(claim.pod.served_ids(self.resource) | set(ids))
        try:
            self._pods.mark_allocated(claim.pod, self.resource, done)
        except Exception as exc:
            # The mark only narrows later preferred allocations; kubelet already excludes these ids.
            log.warning("could not mark %s allocated for %s: %s", claim.pod.ref, self.resource, exc)
        log.info("allocated %s %s to %s", self.resource, ids, claim.pod.ref)
