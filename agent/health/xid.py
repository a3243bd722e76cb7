"""GPU health from NVML events: a critical Xid makes the GPU unhealthy, as NVIDIA's device plugin does.

`XidWatcher` registers every GPU for `nvmlEventTypeXidCriticalError` in one NVML event set and
waits on it in a thread (`nvmlEventSetWait_v2`, a bounded wait so stop() is prompt). Xids in the
skip list (application errors by default: 13, 31, 43, 45, 68, 109) are logged and ignored. An
event that names no GPU, or NVML reporting a GPU lost, marks every GPU. Talks to the `pynvml`
module only; a stand-in with the same functions drives the same code where no GPU exists.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from typing import Any

import structlog

from agent.discovery.nvml import _pci_info, normalize_bus_id

log = structlog.get_logger("gedge.agent.health.xid")

WAIT_MS = 1000
"""Longest single wait for an event; bounds how long stop() takes."""

Mark = Callable[[str, str], None]
"""(GPU PCI address, reason) -> None."""


def _bus_id(nvml: Any, handle: Any) -> str | None:
    return normalize_bus_id(_pci_info(nvml, handle).busId)


class XidWatcher:
    """Marks GPUs unhealthy on critical Xid events; `start()` says why when it cannot watch."""

    def __init__(self, mark: Mark, skip_xids: Collection[int] = (), nvml: Any = None) -> None:
        self._mark = mark
        self._skip = frozenset(skip_xids)
        self._nvml = nvml
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None
        self._gpus: list[str] = []

    def start(self) -> str | None:
        """Register every GPU and start waiting; the reason it cannot (no NVML, no GPU), else None."""
        nvml = self._nvml
        if nvml is None:
            try:
                import pynvml
            except ImportError as exc:
                return f"no NVML python module ({exc})"
            nvml = self._nvml = pynvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            return f"NVML unavailable ({exc})"
        try:
            reason = self._register(nvml)
        except nvml.NVMLError as exc:
            reason = f"NVML event setup failed ({exc})"
        if reason is not None:
            self._close(nvml)
            return reason
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="nvml-xid-events", daemon=True)
        self._thread.start()
        return None

    def _register(self, nvml: Any) -> str | None:
        count = nvml.nvmlDeviceGetCount()
        if count == 0:
            return "NVML reports no GPU"
        self._event_set = nvml.nvmlEventSetCreate()
        for index in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            address = _bus_id(nvml, handle)
            if address is None:
                log.warning("GPU has an unreadable PCI bus id; its Xid events are not watched", index=index)
                continue
            try:
                supported = nvml.nvmlDeviceGetSupportedEventTypes(handle)
                if not supported & nvml.nvmlEventTypeXidCriticalError:
                    log.warning("GPU does not report Xid events; its health is not watched", pci=address)
                    continue
                nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, self._event_set)
            except nvml.NVMLError as exc:
                log.warning("GPU Xid events cannot be watched", pci=address, error=str(exc))
                continue
            self._gpus.append(address)
        if not self._gpus:
            return "no GPU reports Xid events"
        log.info("watching GPU Xid events", gpus=self._gpus, skip_xids=sorted(self._skip))
        return None

    def _run(self) -> None:
        nvml = self._nvml
        while not self._stop.is_set():
            try:
                data = nvml.nvmlEventSetWait_v2(self._event_set, WAIT_MS)
            except nvml.NVMLError_Timeout:
                continue
            except nvml.NVMLError as exc:
                if getattr(exc, "value", None) == nvml.NVML_ERROR_GPU_IS_LOST:
                    for address in self._gpus:
                        self._mark(address, "GPU lost (NVML)")
                    continue
                log.warning("waiting for NVML events failed; GPU health is no longer watched", error=str(exc))
                return
            self.handle(data)

    def handle(self, data: Any) -> None:
        """One NVML event: mark its GPU (every GPU when the event names none) unless skipped."""
        nvml = self._nvml
        if data.eventType != nvml.nvmlEventTypeXidCriticalError:
            return
        xid = int(data.eventData)
        if xid in self._skip:
            log.info("Xid in the skip list, GPU kept healthy", xid=xid)
            return
        address = None
        if data.device:
            try:
                address = _bus_id(nvml, data.device)
            except nvml.NVMLError as exc:
                log.warning("Xid event names a GPU NVML cannot describe", xid=xid, error=str(exc))
        for target in [address] if address in self._gpus else self._gpus:
            self._mark(target, f"xid {xid}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._nvml is not None and self._event_set is not None:
            self._close(self._nvml)

    def _close(self, nvml: Any) -> None:
        try:
            if self._event_set is not None:
                nvml.nvmlEventSetFree(self._event_set)
                self._event_set = None
            nvml.nvmlShutdown()
        except nvml.NVMLError as exc:
            log.warning("NVML shutdown failed", error=str(exc))
