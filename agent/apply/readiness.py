"""Whether the agent can drive this node's cgroups: kubelet's cgroup driver, the kubepods tree, permission.

The driver comes from configuration when it says one; otherwise from kubelet's
config file (`cgroupDriver` in /var/lib/kubelet/config.yaml), otherwise from the
shape of the kubepods tree (`kubepods.slice/` is systemd, `kubepods/` cgroupfs).
When none of these tells, or the tree is missing or not writable, the node is
blocked: nothing is applied, and the reason says what to fix.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.apply.cgroups import CgroupDriver, kubepods_dir
from gedge_common.files import FileLoadError, load_yaml

log = structlog.get_logger(__name__)

KUBELET_CONFIG = "/var/lib/kubelet/config.yaml"
MAX_KUBELET_CONFIG_BYTES = 1024 * 1024


class DriverUnknown(RuntimeError):
    """kubelet's cgroup driver cannot be told; the message names what was looked at."""


@dataclass(frozen=True)
class Readiness:
    """`reason` is a CamelCase word (Ready, CgroupDriverUnknown, CgroupTreeMissing, CgroupNotWritable)."""

    ready: bool
    reason: str
    message: str
    driver: CgroupDriver | None = None
    driver_source: str = ""
    """Where the driver came from: config, kubelet config file path, or the kubepods tree."""


def kubelet_config_driver(path: Path) -> CgroupDriver | None:
    """`cgroupDriver` from kubelet's config file; None when the file or the key is absent.

    Raises DriverUnknown when the file cannot be read or names another driver."""
    try:
        raw = load_yaml(path, what="kubelet config", limit=MAX_KUBELET_CONFIG_BYTES)
    except FileLoadError as exc:
        if exc.missing:
            return None
        raise DriverUnknown(str(exc)) from None
    if not isinstance(raw, dict) or "cgroupDriver" not in raw:
        return None
    value = raw["cgroupDriver"]
    try:
        return CgroupDriver(value)
    except ValueError:
        raise DriverUnknown(
            f"kubelet config {path}: cgroupDriver {value!r} is neither systemd nor cgroupfs"
        ) from None


def tree_driver(root: Path) -> CgroupDriver:
    """The driver the kubepods tree under `root` shows; DriverUnknown when it shows none or both."""
    systemd = kubepods_dir(root, CgroupDriver.SYSTEMD).is_dir()
    cgroupfs = kubepods_dir(root, CgroupDriver.CGROUPFS).is_dir()
    if systemd and cgroupfs:
        raise DriverUnknown(f"both kubepods.slice and kubepods exist under {root}: set cgroup_driver")
    if systemd:
        return CgroupDriver.SYSTEMD
    if cgroupfs:
        return CgroupDriver.CGROUPFS
    raise DriverUnknown(f"no kubepods.slice or kubepods cgroup under {root} (is kubelet running?)")


def resolve_driver(configured: str, kubelet_config: Path, root: Path) -> tuple[CgroupDriver, str]:
    """(driver, where it came from): configuration, else kubelet's config file, else the tree."""
    if configured:
        return CgroupDriver(configured), "config"
    from_file = kubelet_config_driver(kubelet_config)
    if from_file is not None:
        return from_file, str(kubelet_config)
    return tree_driver(root), f"kubepods tree under {root}"


def check(configured: str, kubelet_config: Path, root: Path) -> Readiness:
    """One look at the node: can its cgroups be driven now?"""
    try:
        driver, source = resolve_driver(configured, kubelet_config, root)
    except DriverUnknown as exc:
        return Readiness(False, "CgroupDriverUnknown", f"kubelet's cgroup driver is unknown: {exc}")
    base = kubepods_dir(root, driver)
    if not base.is_dir():
        return Readiness(
            False,
            "CgroupTreeMissing",
            f"no {base} for kubelet's {driver.value} driver (from {source}); wrong cgroup_root or driver?",
            driver,
            source,
        )
    cpus = base / "cpuset.cpus"
    if not os.access(cpus, os.R_OK | os.W_OK):
        return Readiness(
            False,
            "CgroupNotWritable",
            f"cannot write {cpus} (read-only mount or no permission): the agent needs the host's cgroups",
            driver,
            source,
        )
    return Readiness(True, "Ready", f"{driver.value} driver (from {source}), {base}", driver, source)


class ApplyGate:
    """The node's Readiness, re-checked on `refresh()`; listeners hear every change of reason."""

    def __init__(self, configured: str, kubelet_config: Path, root: Path) -> None:
        self.configured = configured
        self.kubelet_config = Path(kubelet_config)
        self.root = Path(root)
        self._lock = threading.Lock()
        self._current: Readiness | None = None
        self._listeners: list[Callable[[Readiness], object]] = []

    def add_listener(self, listener: Callable[[Readiness], object]) -> None:
        self._listeners.append(listener)

    @property
    def current(self) -> Readiness:
        with self._lock:
            current = self._current
        return current if current is not None else self.refresh()

    def blocked(self) -> str | None:
        """Why nothing can be applied now, or None when the node is ready."""
        current = self.current
        return None if current.ready else current.message

    def refresh(self) -> Readiness:
        now = check(self.configured, self.kubelet_config, self.root)
        with self._lock:
            before, self._current = self._current, now
        if before is None or (before.reason, before.message) != (now.reason, now.message):
            if now.ready:
                log.info("cgroups ready", driver=now.driver, source=now.driver_source)
            else:
                log.error("cannot apply allocations on this node", reason=now.reason, error=now.message)
            for listener in self._listeners:
                listener(now)
        return now
