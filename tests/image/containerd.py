"""A private containerd (Debian's package, with runc) for running the project image in tests.

Its root, state and socket live in a temporary folder; the CRI plugin is off (only `ctr`
talks to it) and the native snapshotter is used, so nothing of the host's runtime is touched.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.e2e.processes import HarnessError, ManagedProcess

NAMESPACE = "gedge-image-test"


class PrivateContainerd:
    """containerd on its own socket; `ctr(...)` runs a ctr command against it and returns stdout."""

    def __init__(self) -> None:
        binary = shutil.which("containerd")
        self.ctr_binary = shutil.which("ctr")
        if not binary or not self.ctr_binary or not shutil.which("runc"):
            raise HarnessError("containerd, ctr and runc are needed: install Debian's containerd and runc")
        # Short path: a unix socket's path is limited to 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="gedge-ctrd-", dir="/tmp"))
        self.socket = self.dir / "containerd.sock"
        config = self.dir / "config.toml"
        config.write_text(
            "\n".join(
                [
                    "version = 2",
                    f'root = "{self.dir / "root"}"',
                    f'state = "{self.dir / "state"}"',
                    'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",'
                    ' "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",'
                    ' "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.opt"]',
                    "[grpc]",
                    f'  address = "{self.socket}"',
                    "[ttrpc]",
                    f'  address = "{self.socket}.ttrpc"',
                    "",
                ]
            )
        )
        self.process = ManagedProcess("containerd", [binary, "--config", str(config)], self.dir / "log")

    def start(self) -> PrivateContainerd:
        self.process.start()
        self.process.wait_until(
            lambda: self.socket.exists() and self._ctr_ok(["version"]), timeout=30, what="served its socket"
        )
        return self

    def _ctr_ok(self, args: Sequence[str]) -> bool:
        return self._run(args, check=False).returncode == 0

    def _run(
        self, args: Sequence[str], *, check: bool, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.ctr_binary), "--address", str(self.socket), "--namespace", NAMESPACE, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise HarnessError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        return done

    def ctr(self, *args: str, timeout: float = 300) -> str:
        return self._run(args, check=True, timeout=timeout).stdout

    def stop(self) -> None:
        for task in self._run(["tasks", "list", "--quiet"], check=False).stdout.split():
            self._run(["tasks", "kill", "--signal", "SIGKILL", task], check=False)
        self.process.stop()
        # Mounts the native snapshotter or runc left under our root, deepest first.
        mounts = [
            line.split()[1]
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(self.dir))
        ]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
