"""A stand-in for the `pynvml` module where no GPU exists: the same function names, NVML's data shapes.

Only the functions `NvmlGpuSource` calls are here; errors and constants are the real pynvml ones, so
the real error handling runs. The data is shaped after published 8-GPU A100 and H100 servers.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

NVSWITCH = "switch"


def _error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


@dataclass(frozen=True)
class FakeProfile:
    index: int
    """The NVML_GPU_INSTANCE_PROFILE_* constant used to ask for it."""
    profile_id: int
    name: str
    slices: int
    instances: int
    memory_mib: int
    remaining: int


@dataclass(frozen=True)
class FakeMigDevice:
    uuid: str
    gpu_instance_id: int
    compute_instance_id: int
    profile_id: int
    placement_start: int
    placement_size: int


@dataclass
class FakeGpu:
    uuid: str
    name: str
    bus_id: str
    memory_bytes: int
    capability: tuple[int, int]
    links: list[str] = field(default_factory=list)
    """One entry per active NVLink: a peer's NVML bus id, or NVSWITCH."""
    mig_mode: tuple[int, int] = (0, 0)
    profiles: list[FakeProfile] = field(default_factory=list)
    profile_names: bool = True
    """False drops the `name` field, as the version-1 profile struct has none."""
    mig_devices: list[FakeMigDevice] = field(default_factory=list)
    profile_info_v2: bool = True
    """False answers version 2 of the profile query with FunctionNotFound, as drivers before R470 do."""


A100_80GB_PROFILES = [
    FakeProfile(pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE, 19, "1g.10gb", 1, 7, 9728, 7),
    FakeProfile(pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1, 20, "1g.10gb+me", 1, 1, 9728, 1),
    FakeProfile(pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2, 15, "1g.20gb", 1, 4, 19968, 4),
    FakeProfile(pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE, 14, "2g.20gb", 2, 3, 19968, 3),
    FakeProfile(pynvml.NVML_GPU_INSTANCE_PROFILE_3_SLICE, 9, "3g.40gb", 3, 2, 40192, 2),
    FakeProfile(pynvml.NVML_GPU_INSTANCE_PROFILE_4_SLICE, 5, "4g.40gb", 4, 1, 40192, 1),
    FakeProfile(pynvml.NVML_GPU_INSTANCE_PROFILE_7_SLICE, 0, "7g.80gb", 7, 1, 81152, 1),
]

H100_80GB_PROFILES = [
    FakeProfile(pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE, 19, "1g.10gb", 1, 7, 9984, 7),
    FakeProfile(pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1, 20, "1g.10gb+me", 1, 1, 9984, 1),
    FakeProfile(pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2, 15, "1g.20gb", 1, 4, 20096, 4),
    FakeProfile(pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE, 14, "2g.20gb", 2, 3, 20096, 3),
    FakeProfile(pynvml.NVML_GPU_INSTANCE_PROFILE_3_SLICE, 9, "3g.40gb", 3, 2, 40448, 2),
    FakeProfile(pynvml.NVML_GPU_INSTANCE_PROFILE_4_SLICE, 5, "4g.40gb", 4, 1, 40448, 1),
    FakeProfile(pynvml.NVML_GPU_INSTANCE_PROFILE_7_SLICE, 0, "7g.80gb", 7, 1, 81152, 1),
]


class FakeNvml:
    """Module-like: `FakeNvml(gpus).nvmlInit()` etc.; NVML* constants and errors come from pynvml."""

    def __init__(
        self,
        gpus: list[FakeGpu],
        *,
        driver: str = "550.54.15",
        cuda: int = 12040,
        init_error: int | None = None,
    ) -> None:
        self._gpus = gpus
        self.driver = driver
        self._cuda = cuda
        self._init_error = init_error
        self._inits = 0
        """NVML counts nvmlInit calls; it stays up until as many nvmlShutdown calls."""
        self.calls: list[str] = []
        self.events: queue.Queue[Any] = queue.Queue()
        """What nvmlEventSetWait_v2 returns next: an event (see `xid_event`) or an NVMLError to raise."""
        self.registered: dict[str, int] = {}
        """GPU uuid -> event types registered for it."""
        self.supported_events = pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventTypeDoubleBitEccError

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("NVML", "nvmlEventType")):
            return getattr(pynvml, name)
        raise AttributeError(name)

    @property
    def initialized(self) -> bool:
        return self._inits > 0

    @property
    def gpus(self) -> list[FakeGpu]:
        return self._gpus

    def _gpu(self, handle: Any) -> FakeGpu:
        if not self.initialized:
            raise _error(pynvml.NVML_ERROR_UNINITIALIZED)
        if not isinstance(handle, FakeGpu):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return handle

    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if self._init_error is not None:
            raise _error(self._init_error)
        self._inits += 1

    def nvmlShutdown(self) -> None:
        self.calls.append("nvmlShutdown")
        if not self.initialized:
            raise _error(pynvml.NVML_ERROR_UNINITIALIZED)
        self._inits -= 1

    def nvmlDeviceGetCount(self) -> int:
        if not self.initialized:
            raise _error(pynvml.NVML_ERROR_UNINITIALIZED)
        return len(self._gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        if not self.initialized:
            raise _error(pynvml.NVML_ERROR_UNINITIALIZED)
        if not 0 <= index < len(self._gpus):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._gpus[index]

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return self._cuda

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        if isinstance(handle, FakeMigDevice):
            return handle.uuid
        return self._gpu(handle).uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetPciInfo_v3(self, handle: Any) -> Any:
        return SimpleNamespace(busId=self._gpu(handle).bus_id.encode())

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        total = self._gpu(handle).memory_bytes
        return SimpleNamespace(total=total, free=total, used=0)

    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> tuple[int, int]:
        return self._gpu(handle).capability

    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:
        gpu = self._gpu(handle)
        if not gpu.profiles:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return list(gpu.mig_mode)

    def nvmlDeviceGetGpuInstanceProfileInfo(self, handle: Any, profile: int, version: int = 2) -> Any:
        gpu = self._gpu(handle)
        if version == 2 and not gpu.profile_info_v2:
            raise _error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        if not 0 <= profile < pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        for p in gpu.profiles:
            if p.index == profile:
                info = SimpleNamespace(
                    id=p.profile_id, sliceCount=p.slices, instanceCount=p.instances, memorySizeMB=p.memory_mib
                )
                if gpu.profile_names and version == 2:
                    info.name = f"MIG {p.name}".encode()
                return info
        raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetGpuInstanceRemainingCapacity(self, handle: Any, profile_id: int) -> int:
        for p in self._gpu(handle).profiles:
            if p.profile_id == profile_id:
                return p.remaining
        raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        return 7 if self._gpu(handle).profiles else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int) -> FakeMigDevice:
        devices = self._gpu(handle).mig_devices
        if index >= len(devices):
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)
        return devices[index]

    def nvmlDeviceGetGpuInstanceId(self, mig: FakeMigDevice) -> int:
        return mig.gpu_instance_id

    def nvmlDeviceGetComputeInstanceId(self, mig: FakeMigDevice) -> int:
        return mig.compute_instance_id

    def nvmlDeviceGetGpuInstanceById(self, handle: Any, gpu_instance_id: int) -> FakeMigDevice:
        for mig in self._gpu(handle).mig_devices:
            if mig.gpu_instance_id == gpu_instance_id:
                return mig
        raise _error(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlGpuInstanceGetInfo(self, instance: FakeMigDevice) -> Any:
        return SimpleNamespace(
            id=instance.gpu_instance_id,
            profileId=instance.profile_id,
            placement=SimpleNamespace(start=instance.placement_start, size=instance.placement_size),
        )

    def nvmlDeviceGetNvLinkState(self, handle: Any, link: int) -> int:
        gpu = self._gpu(handle)
        if link >= 18:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return pynvml.NVML_FEATURE_ENABLED if link < len(gpu.links) else pynvml.NVML_FEATURE_DISABLED

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, handle: Any, link: int) -> int:
        peer = self._gpu(handle).links[link]
        return (
            pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH if peer == NVSWITCH else pynvml.NVML_NVLINK_DEVICE_TYPE_GPU
        )

    def nvmlDeviceGetNvLinkRemotePciInfo(self, handle: Any, link: int) -> Any:
        peer = self._gpu(handle).links[link]
        return SimpleNamespace(busId=(b"00000000:c1:00.0" if peer == NVSWITCH else peer.encode()))

    # -- events, as NVML's event set API shapes them ----------------------------------------------

    def nvmlEventSetCreate(self) -> object:
        if not self.initialized:
            raise _error(pynvml.NVML_ERROR_UNINITIALIZED)
        return object()

    def nvmlEventSetFree(self, event_set: object) -> None:
        self.calls.append("nvmlEventSetFree")

    def nvmlDeviceGetSupportedEventTypes(self, handle: Any) -> int:
        self._gpu(handle)
        return self.supported_events

    def nvmlDeviceRegisterEvents(self, handle: Any, event_types: int, event_set: object) -> None:
        gpu = self._gpu(handle)
        self.registered[gpu.uuid] = self.registered.get(gpu.uuid, 0) | event_types

    def nvmlEventSetWait_v2(self, event_set: object, timeout_ms: int) -> Any:
        try:
            item = self.events.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            raise _error(pynvml.NVML_ERROR_TIMEOUT) from None
        if isinstance(item, Exception):
            raise item
        return item

    def xid_event(self, gpu: FakeGpu | None, xid: int, event_type: int | None = None) -> None:
        """Queue an event as c_nvmlEventData_t carries it (device None: NVML named no GPU)."""
        self.events.put(
            SimpleNamespace(
                device=gpu,
                eventType=pynvml.nvmlEventTypeXidCriticalError if event_type is None else event_type,
                eventData=xid,
                gpuInstanceId=0xFFFFFFFF,
                computeInstanceId=0xFFFFFFFF,
            )
        )
