"""Where kubelet puts a pod's and a container's cgroup, and reading/writing their cpusets.

The layout follows kubelet's naming for both cgroup drivers:

    systemd:  kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/
              cri-containerd-<id>.scope | crio-<id>.scope | docker-<id>.scope
    cgroupfs: kubepods/burstable/pod<uid>/<id> | crio-<id>

Guaranteed pods sit directly under kubepods. `root` is the hierarchy that holds
kubepods: /sys/fs/cgroup/cpuset on cgroup v1, /sys/fs/cgroup on v2 (or any tree
laid out the same way).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from enum import StrEnum
from pathlib import Path

from agent.apply.cpuset import Cpuset, plan_cpuset_writes
from gedge_model.cpulist import CpulistError, format_cpulist, parse_cpulist

_POD_UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_CONTAINER_ID = re.compile(r"^[0-9a-f]{12,128}$")
_RUNTIME_PREFIX = re.compile(r"^(containerd|cri-o|docker)://")
_CGROUPFS_POD = re.compile(r"^pod([0-9a-f-]{36})$")
_SYSTEMD_POD = re.compile(r"^kubepods(?:-burstable|-besteffort)?-pod([0-9a-f_]{36})\.slice$")


class CgroupError(RuntimeError):
    """A cgroup could not be found, read or written; the message names the path."""


class CgroupDriver(StrEnum):
    SYSTEMD = "systemd"
    CGROUPFS = "cgroupfs"


class CgroupVersion(StrEnum):
    V1 = "v1"
    V2 = "v2"


class QosClass(StrEnum):
    GUARANTEED = "Guaranteed"
    BURSTABLE = "Burstable"
    BESTEFFORT = "BestEffort"


def validate_pod_uid(uid: str) -> str:
    """Pod UIDs end up in paths, so only the Kubernetes UUID form passes."""
    if not _POD_UID.match(uid):
        raise ValueError(f"bad pod UID {uid!r} (expected a lower-case UUID)")
    return uid


def normalize_container_id(container_id: str) -> str:
    """`containerd://<hex>` (pod status form) or bare hex -> bare hex, validated."""
    bare = _RUNTIME_PREFIX.sub("", container_id)
    if not _CONTAINER_ID.match(bare):
        raise ValueError(f"bad container ID {container_id!r} (expected hex, optionally runtime://)")
    return bare


def kubepods_dir(root: Path, driver: CgroupDriver) -> Path:
    return root / ("kubepods.slice" if driver is CgroupDriver.SYSTEMD else "kubepods")


def pod_cgroup(root: Path, driver: CgroupDriver, qos: QosClass, pod_uid: str) -> Path:
    uid = validate_pod_uid(pod_uid)
    base = kubepods_dir(root, driver)
    if driver is CgroupDriver.SYSTEMD:
        escaped = uid.replace("-", "_")
        if qos is QosClass.GUARANTEED:
            return base / f"kubepods-pod{escaped}.slice"
        tier = qos.value.lower()
        return base / f"kubepods-{tier}.slice" / f"kubepods-{tier}-pod{escaped}.slice"
    if qos is QosClass.GUARANTEED:
        return base / f"pod{uid}"
    return base / qos.value.lower() / f"pod{uid}"


def container_cgroup_names(driver: CgroupDriver, container_id: str) -> tuple[str, ...]:
    bare = normalize_container_id(container_id)
    if driver is CgroupDriver.SYSTEMD:
        return (f"cri-containerd-{bare}.scope", f"crio-{bare}.scope", f"docker-{bare}.scope")
    return (bare, f"crio-{bare}")


def container_cgroup(
    root: Path, driver: CgroupDriver, qos: QosClass, pod_uid: str, container_id: str
) -> Path:
    """The container's cgroup directory; an error names every place looked at when it is missing."""
    pod_dir = pod_cgroup(root, driver, qos, pod_uid)
    candidates = [pod_dir / name for name in container_cgroup_names(driver, container_id)]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise CgroupError(
        f"pod {pod_uid}: no cgroup for container {container_id} (looked at {', '.join(map(str, candidates))})"
    )


def pod_uid_of(name: str, driver: CgroupDriver) -> str | None:
    if driver is CgroupDriver.SYSTEMD:
        m = _SYSTEMD_POD.match(name)
        return m.group(1).replace("_", "-") if m else None
    m = _CGROUPFS_POD.match(name)
    return m.group(1) if m else None


def container_cgroups_by_pod(root: Path, driver: CgroupDriver) -> dict[str, tuple[Path, ...]]:
    """Every pod cgroup under kubepods (any QoS tier) -> its container cgroups (sandbox included)."""
    base = kubepods_dir(root, driver)
    found: dict[str, tuple[Path, ...]] = {}
    if not base.is_dir():
        return found
    tiers = [base, *(p for p in base.iterdir() if p.is_dir() and pod_uid_of(p.name, driver) is None)]
    for tier in tiers:
        for pod_dir in tier.iterdir():
            uid = pod_uid_of(pod_dir.name, driver) if pod_dir.is_dir() else None
            if uid is not None:
                found[uid] = tuple(sorted(p for p in pod_dir.iterdir() if p.is_dir()))
    return found


class CpusetTree:
    """Reads and writes cpuset.cpus / cpuset.mems under one hierarchy root, in a legal order."""

    def __init__(self, root: Path, version: CgroupVersion) -> None:
        self.root = root
        self.version = version

    def _effective_name(self, kind: str) -> str:
        if self.version is CgroupVersion.V1:
            return f"cpuset.effective_{kind}"
        return f"cpuset.{kind}.effective"

    def _read(self, path: Path, name: str) -> frozenset[int]:
        try:
            text = (path / name).read_text()
        except OSError as exc:
            raise CgroupError(f"cannot read {path / name}: {exc.strerror}") from None
        try:
            return parse_cpulist(text, what=str(path / name))
        except CpulistError as exc:
            raise CgroupError(str(exc)) from None

    def read(self, path: Path) -> Cpuset:
        return Cpuset(self._read(path, "cpuset.cpus"), self._read(path, "cpuset.mems"))

    def effective(self, path: Path) -> Cpuset:
        """What the cgroup may really use (v2 empty cpuset.cpus means inherited)."""
        sets = []
        for kind in ("cpus", "mems"):
            name = self._effective_name(kind)
            sets.append(self._read(path, name if (path / name).exists() else f"cpuset.{kind}"))
        return Cpuset(sets[0], sets[1])

    def _write(self, path: Path, value: Cpuset) -> None:
        for kind, ids in (("mems", value.mems), ("cpus", value.cpus)):
            target = path / f"cpuset.{kind}"
            try:
                if parse_cpulist(target.read_text()) == ids:
                    continue
                target.write_text(format_cpulist(ids) + "\n")
            except OSError as exc:
                detail = "a child cgroup uses more" if exc.errno == errno.EBUSY else exc.strerror
                raise CgroupError(f"cannot write {format_cpulist(ids)!r} to {target}: {detail}") from None

    def apply(
        self, targets: Mapping[Path, Cpuset], on_write: Callable[[Path, Cpuset], None] | None = None
    ) -> list[tuple[Path, Cpuset]]:
        """Take every target cgroup to its cpuset; returns the writes made, in order."""
        for path in targets:
            if self.root not in path.parents:
                raise CgroupError(f"{path} is outside the cgroup root {self.root}")
        current: dict[Path, Cpuset] = {}
        for path in targets:
            for p in (path, *path.parents):
                if p == self.root:
                    break
                if p not in current:
                    current[p] = self.read(p)
        writes = plan_cpuset_writes(self.root, current, targets)
        for path, value in writes:
            self._write(path, value)
            if on_write is not None:
                on_write(path, value)
        return writes


def detect_cgroup_layout(mount: Path = Path("/sys/fs/cgroup")) -> tuple[Path, CgroupVersion, CgroupDriver]:
    """The cpuset hierarchy root, cgroup version and kubelet's cgroup driver on this node.

    Unified (v2) when `mount` itself is a cgroup2 root, else the v1 cpuset
    hierarchy under it; the driver shows in kubelet's top cgroup name.
    """
    controllers = mount / "cgroup.controllers"
    if controllers.exists():
        if "cpuset" not in controllers.read_text().split():
            raise CgroupError(f"cgroup v2 at {mount} has no cpuset controller enabled")
        root, version = mount, CgroupVersion.V2
    elif (mount / "cpuset" / "cpuset.cpus").exists():
        root, version = mount / "cpuset", CgroupVersion.V1
    else:
        raise CgroupError(f"no cpuset hierarchy under {mount} (neither cgroup v2 nor v1 cpuset)")
    if (root / "kubepods.slice").is_dir():
        return root, version, CgroupDriver.SYSTEMD
    if (root / "kubepods").is_dir():
        return root, version, CgroupDriver.CGROUPFS
    raise CgroupError(f"no kubepods cgroup under {root} (is kubelet running on this node?)")


def remove_cgroup_tree(top: Path, attempts: int = 100) -> None:
    """Kill the tasks left anywhere in the tree, then rmdir it bottom-up (a cgroup goes once empty)."""
    if not top.exists():
        return
    dirs = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: -len(p.parts))
    for d in dirs:
        with suppress(OSError):
            for pid in (d / "cgroup.procs").read_text().split():
                with suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
    for d in dirs:
        for _ in range(attempts):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)
