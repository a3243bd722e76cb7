"""Child processes the e2e harness owns: started with logs to files, never outliving the test run."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_SETPRIV = shutil.which("setpriv")


def _dying_with_parent(argv: Sequence[str]) -> list[str]:
    """argv run through util-linux's setpriv, so the kernel kills the child if the test process dies,
    even by SIGKILL. Not a preexec_fn: running Python in a forked child of a process that has
    gRPC loaded runs gRPC's at-fork handlers there, which can abort the child before it execs."""
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv] if _SETPRIV else list(argv)


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HarnessError(RuntimeError):
    """A harness process failed to start or become ready; the message carries its log tail."""


class ManagedProcess:
    """One long-running child whose stdout and stderr go to `log`; `stop()` ends it and only it."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self._env = {**os.environ, **(env or {})}
        self._cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        if self.running:
            raise HarnessError(f"{self.name} is already running (pid {self.pid})")
        with self.log.open("ab") as out:
            out.write(f"--- start: {' '.join(self.argv)}\n".encode())
            out.flush()
            self._popen = subprocess.Popen(
                _dying_with_parent(self.argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env,
                cwd=self._cwd,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> HarnessError:
        status = "running" if self.running else f"exited {self._popen.returncode if self._popen else None}"
        return HarnessError(f"{self.name} {what} ({status}); log {self.log}:\n{self.tail()}")

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str = "became ready") -> None:
        """Poll `ready` until true; fail early with the log tail if the process exits.

        `ready` may raise while the process is coming up (connection refused);
        the last such error is part of the failure message.
        """
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running:
                raise self.failure(f"exited before it {what}")
            try:
                if ready():
                    return
            except Exception as exc:
                last_error = exc
            time.sleep(0.2)
        raise self.failure(f"never {what} within {timeout:.0f}s (last check: {last_error!r})")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Signal the process (SIGTERM by default, SIGKILL for a crash) and reap it."""
        if self._popen is None:
            return
        if self._popen.poll() is None:
            self._popen.send_signal(sig)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait(timeout)
        self._popen = None


def wait_for_port(port: int, host: str = "127.0.0.1") -> bool:
    """True once something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
