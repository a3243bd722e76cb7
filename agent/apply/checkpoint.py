"""The agent's record of what it applied, and of what it is about to do.

Before any change the agent writes an intent (the operation and everything
needed to undo it); after the change it writes the result and clears the
intent. Every write is atomic (temp file, fsync, rename, fsync of the folder),
so after a kill -9 the file holds either the state before or after a write,
and a pending intent says exactly which work to finish or undo.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from gedge_common.files import FileLoadError, read_bounded
from gedge_model import Allocation
from gedge_model.codec import ModelDecodeError, from_json, to_json

FORMAT_VERSION = 1
MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024


class CheckpointError(RuntimeError):
    """The checkpoint file is unreadable or malformed; the message names it."""


@dataclass(frozen=True)
class VfSettings:
    """A VF's settings on its PF, as read before the pod took it (restored on release)."""

    mac: str | None = None
    vlan: int = 0
    spoofchk: bool = True
    trust: bool = False
    min_tx_rate: int = 0
    max_tx_rate: int = 0
    link_state: int = 0


@dataclass(frozen=True)
class NicRecord:
    """Everything needed to find and undo a pod's data-path interface, in any half-done state.

    Links the agent made or moved carry `marker` as their interface alias, which
    survives moves between namespaces, so undo finds them wherever they are.
    """

    mode: str
    pod_netns: str
    host_netns: str | None
    ifname: str
    marker: str
    host_name: str
    pf: str | None = None
    vf_index: int | None = None
    vf_original: VfSettings | None = None


@dataclass(frozen=True)
class PodRecord:
    allocation: Allocation
    nic: NicRecord | None = None
    reserved: bool = False
    """Held but not yet attached: the pod's runtime was unknown when it was applied, so its CPUs are
    out of the shared pool and its devices taken, while its cgroups and NIC wait for the runtime."""
    reserved_at: float | None = None
    """Wall-clock seconds (epoch) the reservation was made; None in checkpoints from before it was kept."""


@dataclass(frozen=True)
class Intent:
    op: str
    """`apply` or `release`."""
    record: PodRecord


@dataclass(frozen=True)
class CheckpointData:
    version: int = FORMAT_VERSION
    pods: tuple[PodRecord, ...] = ()
    intent: Intent | None = None

    def pod(self, pod_uid: str) -> PodRecord | None:
        return next((p for p in self.pods if p.allocation.pod_uid == pod_uid), None)

    def with_pod(self, record: PodRecord) -> CheckpointData:
        others = tuple(p for p in self.pods if p.allocation.pod_uid != record.allocation.pod_uid)
        return replace(self, pods=(*others, record))

    def without_pod(self, pod_uid: str) -> CheckpointData:
        return replace(self, pods=tuple(p for p in self.pods if p.allocation.pod_uid != pod_uid))


class CheckpointStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> CheckpointData:
        try:
            text = read_bounded(self.path, what="checkpoint", limit=MAX_CHECKPOINT_BYTES)
        except FileLoadError as exc:
            if exc.missing:
                return CheckpointData()
            raise CheckpointError(f"cannot read {exc}") from None
        try:
            data = from_json(CheckpointData, text)
        except ModelDecodeError as exc:
            raise CheckpointError(f"checkpoint {self.path} is malformed: {exc}") from None
        if data.version != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {self.path} has format {data.version}, expected {FORMAT_VERSION}"
            )
        return data

    def remove_stale_temps(self) -> None:
        """Temp files a crash left mid-save (the real file is intact: the rename never happened)."""
        if self.path.parent.is_dir():
            for stale in self.path.parent.glob(f".{self.path.name}.*"):
                stale.unlink(missing_ok=True)

    def save(self, data: CheckpointData) -> None:
        """Atomically replace the file; a temp file left by a crash mid-save is removed first."""
        folder = self.path.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.remove_stale_temps()
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=folder)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(to_json(data, indent=1))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
