"""Reading a sysfs/procfs tree under a root path, the way discovery needs it.

Every read is relative to `root`, so an unpacked snapshot reads exactly like the
live `/`. Symlinks are resolved inside the root (an absolute target is taken
relative to the root, `..` stops at it), so a snapshot never leaks into the
host's /sys. Problems never raise: they become warnings naming the path.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from gedge_model.cpulist import CpulistError, parse_cpulist

_MAX_LINK_HOPS = 40
_MAX_FILE = 1 << 20


class SysfsTree:
    """A root path plus the warnings collected while reading below it."""

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self.root = Path(root)
        self._prefix = os.fspath(root).rstrip("/") + "/"
        self.warnings: list[str] = []
        self._resolved: dict[str, str | None] = {}

    def path(self, rel: str) -> str:
        return self._prefix + rel.lstrip("/")

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def shown(self, rel: str) -> str:
        """How a path is named in warnings: as it would appear on the node (`/sys/...`)."""
        return "/" + rel.strip("/")

    def read(self, rel: str, *, required: bool = False) -> str | None:
        """The stripped text of a file; None when missing (a warning if required) or unreadable."""
        try:
            fd = os.open(self.path(rel), os.O_RDONLY | os.O_NONBLOCK)
            try:
                data = _read_all(fd)
            finally:
                os.close(fd)
        except FileNotFoundError:
            if required:
                self.warn(f"{self.shown(rel)}: missing")
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self.warn(f"{self.shown(rel)}: symlink loop")
            else:
                self.warn(f"{self.shown(rel)}: unreadable ({exc.strerror or exc})")
            return None
        return data.decode("utf-8", errors="replace").strip(" \t\r\n\x00")

    def read_int(self, rel: str, *, base: int = 10, required: bool = False) -> int | None:
        text = self.read(rel, required=required)
        if text is None:
            return None
        try:
            return int(text, base)
        except ValueError:
            self.warn(f"{self.shown(rel)}: not a number: {text[:40]!r}")
            return None

    def read_cpulist(self, rel: str, *, required: bool = False) -> tuple[int, ...] | None:
        text = self.read(rel, required=required)
        if text is None:
            return None
        try:
            return tuple(sorted(parse_cpulist(text, what=self.shown(rel))))
        except CpulistError as exc:
            self.warn(str(exc))
            return None

    def read_cpumask(self, rel: str, *, required: bool = False) -> tuple[int, ...] | None:
        text = self.read(rel, required=required)
        if text is None:
            return None
        try:
            return parse_cpumask(text)
        except ValueError as exc:
            self.warn(f"{self.shown(rel)}: {exc}")
            return None

    def listdir(self, rel: str) -> list[str]:
        """Entry names of a directory, sorted; [] when it is missing (no warning) or unreadable."""
        try:
            return sorted(os.listdir(self.path(rel)))
        except FileNotFoundError:
            return []
        except OSError as exc:
            self.warn(f"{self.shown(rel)}: unreadable ({exc.strerror or exc})")
            return []

    def is_dir(self, rel: str) -> bool:
        return os.path.isdir(self.path(rel))

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.path(rel))

    def link_name(self, rel: str) -> str | None:
        """The last component of a symlink's target (a driver's or a netdev's name)."""
        try:
            return os.readlink(self.path(rel)).rstrip("/").rsplit("/", 1)[-1] or None
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.warn(f"{self.shown(rel)}: unreadable link ({exc.strerror or exc})")
            return None

    def resolve(self, rel: str) -> str | None:
        """The canonical path of `rel` inside the root, relative to it; None (with a warning) on a loop."""
        key = rel.strip("/")
        if key in self._resolved:
            return self._resolved[key]
        result = self._resolve(key)
        self._resolved[key] = result
        return result

    def _resolve(self, rel: str) -> str | None:
        done: list[str] = []
        pending = [p for p in rel.split("/") if p][::-1]
        hops = 0
        while pending:
            part = pending.pop()
            if part == ".":
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = "/".join([*done, part])
            cached = self._resolved.get(candidate)
            if cached is not None:
                done = cached.split("/") if cached else []
                continue
            try:
                mode = os.lstat(self._prefix + candidate).st_mode
            except OSError:
                done.append(part)
                continue
            if not stat.S_ISLNK(mode):
                done.append(part)
                continue
            hops += 1
            if hops > _MAX_LINK_HOPS:
                self.warn(f"{self.shown(rel)}: symlink loop")
                return None
            try:
                target = os.readlink(self._prefix + candidate)
            except OSError as exc:
                self.warn(f"{self.shown(candidate)}: unreadable link ({exc.strerror or exc})")
                return None
            if target.startswith("/"):
                done = []
            pending.extend([p for p in target.split("/") if p][::-1])
        return "/".join(done)


def _read_all(fd: int) -> bytes:
    """Up to 1 MiB; sysfs attributes fit one page, so this is usually one small read."""
    chunks = [os.read(fd, 8192)]
    total = len(chunks[0])
    if total < 8192:
        return chunks[0]
    while chunks[-1] and total < _MAX_FILE:
        chunks.append(os.read(fd, 65536))
        total += len(chunks[-1])
    return b"".join(chunks)[:_MAX_FILE]


def parse_cpumask(text: str) -> tuple[int, ...]:
    """`00000000,0000ffff` (32-bit words, most significant first) to sorted CPU ids."""
    digits = text.strip().replace(",", "")
    if not digits:
        return ()
    try:
        value = int(digits, 16)
    except ValueError:
        raise ValueError(f"bad cpu mask {text[:40]!r}") from None
    return tuple(i for i in range(value.bit_length()) if value >> i & 1)
