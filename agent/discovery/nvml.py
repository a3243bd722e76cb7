"""GPUs through NVML: identity, memory, versions, MIG profiles and instances, NVLink peers.

`NvmlGpuSource` speaks to the `pynvml` module (nvidia-ml-py) and nothing else;
the module is a constructor argument so a stand-in with the same functions can
drive exactly this code where no GPU exists. No NVML library, no driver or no
GPU is a normal node: zero GPUs and one log line.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Protocol

from gedge_model import Gpu, MigInstance, MigProfile, NvLink
from gedge_model.allocation import is_mig_profile

log = logging.getLogger(__name__)

_BUS_ID = re.compile(r"^([0-9a-fA-F]{1,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")

Warn = Callable[[str], None]


class GpuSource(Protocol):
    def gpus(self, warn: Warn) -> tuple[Gpu, ...]:
        """The node's GPUs with their PCI addresses in sysfs form; problems go to `warn`."""


def normalize_bus_id(bus_id: str | bytes) -> str | None:
    """NVML's `00000000:17:00.0` to the sysfs form `0000:17:00.0` (wider domains keep their digits)."""
    text = bus_id.decode("ascii", errors="replace") if isinstance(bus_id, bytes) else bus_id
    m = _BUS_ID.match(text.strip().rstrip("\x00"))
    if not m:
        return None
    domain = int(m.group(1), 16)
    return f"{domain:04x}:{m.group(2).lower()}:{m.group(3).lower()}.{m.group(4)}"


def mig_profile_name(slices: int, memory_mib: int, total_memory_bytes: int) -> str:
    """The `Ng.Mgb` name NVIDIA's tools give a GPU-instance profile.

    Memory is the profile's share of the GPU rounded up to eighths, times the
    GPU's memory in whole GiB (so 80384 MiB on an 80 GiB A100 is `7g.80gb`).
    """
    total_gib = -(-total_memory_bytes // (1 << 30))
    if total_gib <= 0:
        return f"{slices}g.{-(-memory_mib // 1024)}gb"
    fraction = math.ceil(memory_mib * (1 << 20) / total_memory_bytes * 8) / 8
    return f"{slices}g.{round(fraction * total_gib)}gb"


@dataclass(frozen=True)
class _LinkEnds:
    gpu_peers: dict[str, int]
    switch_links: int


class NvmlGpuSource:
    """GPUs as NVML reports them; `nvml` defaults to the real `pynvml` module."""

    def __init__(self, nvml: ModuleType | Any | None = None) -> None:
        self._nvml = nvml

    def gpus(self, warn: Warn) -> tuple[Gpu, ...]:
        nvml: Any = self._nvml
        if nvml is None:
            try:
                import pynvml
            except ImportError as exc:
                log.info("no NVML python module (%s): 0 GPUs", exc)
                return ()
            nvml = pynvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            log.info("NVML unavailable (%s): 0 GPUs", _error_text(exc))
            return ()
        try:
            return self._read_all(nvml, warn)
        finally:
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError as exc:
                warn(f"NVML shutdown failed: {_error_text(exc)}")

    def _read_all(self, nvml: Any, warn: Warn) -> tuple[Gpu, ...]:
        count = _call(nvml, warn, "device count", nvml.nvmlDeviceGetCount) or 0
        if count == 0:
            log.info("NVML reports no GPU: 0 GPUs")
            return ()
        driver = _text(_call(nvml, warn, "driver version", nvml.nvmlSystemGetDriverVersion))
        cuda = _cuda_version(nvml, warn)
        gpus: list[Gpu] = []
        links: dict[str, _LinkEnds] = {}
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                gpu = self._read_gpu(nvml, warn, index, handle, driver, cuda)
            except nvml.NVMLError as exc:
                warn(f"GPU {index}: skipped, NVML error {_error_text(exc)}")
                continue
            if gpu is None:
                continue
            gpus.append(gpu)
            links[gpu.pci_address] = _nvlink_ends(nvml, warn, index, handle)
        return tuple(replace(g, nvlinks=_nvlinks(g.pci_address, links)) for g in gpus)

    def _read_gpu(
        self, nvml: Any, warn: Warn, index: int, handle: Any, driver: str | None, cuda: str | None
    ) -> Gpu | None:
        pci = _pci_info(nvml, handle)
        address = normalize_bus_id(pci.busId)
        if address is None:
            warn(f"GPU {index}: NVML bus id {pci.busId!r} is not a PCI address; skipped")
            return None
        memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
        capability = _call(
            nvml, warn, f"GPU {index} compute capability", nvml.nvmlDeviceGetCudaComputeCapability, handle
        )
        mig_current, mig_pending = False, False
        mode = _call(nvml, warn, f"GPU {index} MIG mode", nvml.nvmlDeviceGetMigMode, handle)
        if mode is not None:
            enabled = nvml.NVML_DEVICE_MIG_ENABLE
            mig_current, mig_pending = mode[0] == enabled, mode[1] == enabled
        profiles: tuple[MigProfile, ...] = ()
        instances: tuple[MigInstance, ...] = ()
        if mig_current:
            profiles = _mig_profiles(nvml, warn, index, handle, memory)
            instances = _mig_instances(nvml, warn, index, handle, profiles)
        return Gpu(
            index=index,
            uuid=_text(nvml.nvmlDeviceGetUUID(handle)) or f"GPU-index-{index}",
            name=_text(nvml.nvmlDeviceGetName(handle)) or "",
            pci_address=address,
            memory_bytes=memory,
            driver_version=driver,
            cuda_driver_version=cuda,
            compute_capability=f"{capability[0]}.{capability[1]}" if capability else None,
            mig_current=mig_current,
            mig_pending=mig_pending,
            mig_profiles=profiles,
            mig_instances=instances,
        )


def _pci_info(nvml: Any, handle: Any) -> Any:
    try:
        return nvml.nvmlDeviceGetPciInfo_v3(handle)
    except nvml.NVMLError_FunctionNotFound:
        return nvml.nvmlDeviceGetPciInfo(handle)


def _cuda_version(nvml: Any, warn: Warn) -> str | None:
    getter = getattr(nvml, "nvmlSystemGetCudaDriverVersion_v2", None) or nvml.nvmlSystemGetCudaDriverVersion
    version = _call(nvml, warn, "CUDA driver version", getter)
    if not version:
        return None
    return f"{version // 1000}.{version % 1000 // 10}"


def _mig_profiles(nvml: Any, warn: Warn, index: int, handle: Any, memory: int) -> tuple[MigProfile, ...]:
    profiles: dict[int, MigProfile] = {}
    for profile in range(nvml.NVML_GPU_INSTANCE_PROFILE_COUNT):
        try:
            info = _profile_info(nvml, handle, profile)
        except (nvml.NVMLError_NotSupported, nvml.NVMLError_InvalidArgument, nvml.NVMLError_NotFound):
            continue
        except nvml.NVMLError as exc:
            warn(f"GPU {index}: MIG profile {profile}: {_error_text(exc)}")
            continue
        if info.id in profiles:
            continue
        remaining = _call(
            nvml,
            warn,
            f"GPU {index} MIG profile {info.id} capacity",
            nvml.nvmlDeviceGetGpuInstanceRemainingCapacity,
            handle,
            info.id,
        )
        name = (_text(getattr(info, "name", None)) or "").removeprefix("MIG ").strip()
        if not name:
            name = mig_profile_name(info.sliceCount, info.memorySizeMB, memory) + _profile_suffix(
                nvml, profile
            )
        if not is_mig_profile(name):
            warn(f"GPU {index}: MIG profile {name!r} is outside NVML's naming; not advertised")
        profiles[info.id] = MigProfile(
            name=name,
            profile_id=int(info.id),
            slices=int(info.sliceCount),
            memory_mib=int(info.memorySizeMB),
            total=int(info.instanceCount),
            available=int(remaining or 0),
        )
    return tuple(sorted(profiles.values(), key=lambda p: (p.slices, p.memory_mib, p.profile_id)))


def _profile_info(nvml: Any, handle: Any, profile: int) -> Any:
    """The version-2 profile struct (it carries the name); drivers before R470 only know version 1."""
    try:
        return nvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, profile)
    except nvml.NVMLError_FunctionNotFound:
        return nvml.nvmlDeviceGetGpuInstanceProfileInfo(handle, profile, 1)


_PROFILE_SUFFIXES = {
    "NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1": "+me",
    "NVML_GPU_INSTANCE_PROFILE_2_SLICE_REV1": "+me",
    "NVML_GPU_INSTANCE_PROFILE_1_SLICE_ALL_ME": "+me.all",
    "NVML_GPU_INSTANCE_PROFILE_2_SLICE_ALL_ME": "+me.all",
    "NVML_GPU_INSTANCE_PROFILE_1_SLICE_NO_ME": "-me",
    "NVML_GPU_INSTANCE_PROFILE_2_SLICE_NO_ME": "-me",
    "NVML_GPU_INSTANCE_PROFILE_1_SLICE_GFX": "+gfx",
    "NVML_GPU_INSTANCE_PROFILE_2_SLICE_GFX": "+gfx",
    "NVML_GPU_INSTANCE_PROFILE_3_SLICE_GFX": "+gfx",
    "NVML_GPU_INSTANCE_PROFILE_4_SLICE_GFX": "+gfx",
}


def _profile_suffix(nvml: Any, profile: int) -> str:
    """Media-engine and graphics variants of a profile carry a suffix in their name (`1g.10gb+me`)."""
    for constant, suffix in _PROFILE_SUFFIXES.items():
        if getattr(nvml, constant, None) == profile:
            return suffix
    return ""


def _mig_instances(
    nvml: Any, warn: Warn, index: int, handle: Any, profiles: tuple[MigProfile, ...]
) -> tuple[MigInstance, ...]:
    """Every MIG device (a compute instance inside a GPU instance) with its UUID and placement."""
    by_id = {p.profile_id: p.name for p in profiles}
    count = (
        _call(nvml, warn, f"GPU {index} MIG device count", nvml.nvmlDeviceGetMaxMigDeviceCount, handle) or 0
    )
    found: list[MigInstance] = []
    for slot in range(count):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except nvml.NVMLError_NotFound:
            continue
        except nvml.NVMLError as exc:
            warn(f"GPU {index}: MIG device {slot}: {_error_text(exc)}")
            continue
        try:
            gi_id = int(nvml.nvmlDeviceGetGpuInstanceId(mig))
            ci_id = int(nvml.nvmlDeviceGetComputeInstanceId(mig))
            uuid = _text(nvml.nvmlDeviceGetUUID(mig)) or ""
            gi_info = nvml.nvmlGpuInstanceGetInfo(nvml.nvmlDeviceGetGpuInstanceById(handle, gi_id))
        except nvml.NVMLError as exc:
            warn(f"GPU {index}: MIG device {slot}: {_error_text(exc)}")
            continue
        profile = by_id.get(int(gi_info.profileId))
        if profile is None:
            warn(f"GPU {index}: MIG device {uuid} has unknown GPU-instance profile {gi_info.profileId}")
            profile = f"profile-{gi_info.profileId}"
        found.append(
            MigInstance(
                uuid=uuid,
                profile=profile,
                gpu_instance_id=gi_id,
                compute_instance_id=ci_id,
                placement_start=int(gi_info.placement.start),
                placement_size=int(gi_info.placement.size),
            )
        )
    return tuple(sorted(found, key=lambda m: (m.gpu_instance_id, m.compute_instance_id)))


def _nvlink_ends(nvml: Any, warn: Warn, index: int, handle: Any) -> _LinkEnds:
    peers: dict[str, int] = {}
    switch_links = 0
    for link in range(nvml.NVML_NVLINK_MAX_LINKS):
        try:
            if nvml.nvmlDeviceGetNvLinkState(handle, link) != nvml.NVML_FEATURE_ENABLED:
                continue
        except (nvml.NVMLError_NotSupported, nvml.NVMLError_InvalidArgument):
            break
        except nvml.NVMLError as exc:
            warn(f"GPU {index}: NVLink {link} state: {_error_text(exc)}")
            continue
        try:
            kind = nvml.nvmlDeviceGetNvLinkRemoteDeviceType(handle, link)
        except nvml.NVMLError:
            kind = nvml.NVML_NVLINK_DEVICE_TYPE_GPU
        if kind == nvml.NVML_NVLINK_DEVICE_TYPE_SWITCH:
            switch_links += 1
            continue
        if kind != nvml.NVML_NVLINK_DEVICE_TYPE_GPU:
            continue
        try:
            remote = normalize_bus_id(nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId)
        except nvml.NVMLError as exc:
            warn(f"GPU {index}: NVLink {link} remote: {_error_text(exc)}")
            continue
        if remote is not None:
            peers[remote] = peers.get(remote, 0) + 1
    return _LinkEnds(peers, switch_links)


def _nvlinks(address: str, ends: dict[str, _LinkEnds]) -> tuple[NvLink, ...]:
    """Direct links count per peer; through NVSwitch every GPU on the fabric is a peer,
    with as many links as the smaller side brings (what `nvidia-smi topo -m` shows as NV#)."""
    mine = ends[address]
    counts = {peer: n for peer, n in mine.gpu_peers.items() if peer != address and peer in ends}
    if mine.switch_links:
        for peer, theirs in ends.items():
            if peer != address and theirs.switch_links:
                counts[peer] = counts.get(peer, 0) + min(mine.switch_links, theirs.switch_links)
    return tuple(NvLink(peer, n) for peer, n in sorted(counts.items()))


def _call(nvml: Any, warn: Warn, what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """An optional NVML query: None when unsupported, None and a warning naming `what` on other errors."""
    try:
        return fn(*args)
    except nvml.NVMLError_NotSupported:
        return None
    except nvml.NVMLError as exc:
        warn(f"NVML {what}: {_error_text(exc)}")
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").rstrip("\x00")
    return str(value)


def _error_text(exc: Exception) -> str:
    try:
        return str(exc)
    except Exception:
        return type(exc).__name__
