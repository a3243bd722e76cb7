"""Netlink sockets bound to a network namespace (None: the agent's own)."""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import IPRoute
from pyroute2 import config as pyroute2_config
from pyroute2.netlink.exceptions import NetlinkError

NETNS_RUN_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
_libc = ctypes.CDLL(None, use_errno=True)

# IPRoute(netns=...) forks a child that opens the socket in the namespace, and SIGTERMs it when it
# lingers. A forked child keeps the daemon's SIGTERM handler and asyncio's signal wakeup fd, so that
# SIGTERM reached the daemon's own loop and shut the agent down. The child resets SIGTERM first.
pyroute2_config.disable_mp_signal = True


class NetnsError(RuntimeError):
    """A network namespace is missing or unusable; the message names it."""


def netns_path(netns: str) -> str:
    """A bare name lives under /var/run/netns; a path (/proc/<pid>/ns/net, CRI's) is taken as is."""
    path = netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)
    if not os.path.isabs(path) or ".." in path.split("/"):
        raise NetnsError(f"netns {netns!r} must be a name or an absolute path")
    return path


def netlink_socket_in(path: str) -> int:
    """The fd of a NETLINK_ROUTE socket that lives in the namespace at `path`.

    A short-lived thread enters the namespace (setns changes only the calling thread) and makes the
    socket there; a netlink socket keeps its namespace for life. pyroute2's own way forks a child,
    which in a daemon with gRPC threads can crash the child and signal the daemon's event loop."""
    found: list[int | OSError] = []

    def enter_and_open() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
                found.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE).detach())
            finally:
                os.close(fd)
        except OSError as exc:
            found.append(exc)

    thread = threading.Thread(target=enter_and_open, name="netns-socket")
    thread.start()
    thread.join()
    (result,) = found
    if isinstance(result, OSError):
        raise NetnsError(f"cannot enter network namespace {path}: {result.strerror or result}")
    return result


@contextmanager
def netlink(netns: str | None) -> Iterator[IPRoute]:
    """IPRoute in `netns`; it never creates a namespace that is not there."""
    if netns is None:
        with IPRoute() as ipr:
            yield ipr
        return
    path = netns_path(netns)
    if not os.path.exists(path):
        raise NetnsError(f"network namespace {path} does not exist")
    fd = netlink_socket_in(path)
    try:
        ipr = IPRoute(fileno=fd)
    except (OSError, NetlinkError) as exc:
        os.close(fd)
        raise NetnsError(f"cannot use a netlink socket in {path}: {exc}") from None
    with ipr:
        yield ipr


@contextmanager
def netns_fd(netns: str) -> Iterator[int]:
    """An open fd of the namespace, as IFLA_NET_NS_FD wants it."""
    path = netns_path(netns)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise NetnsError(f"cannot open network namespace {path}: {exc.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)


def netns_exists(netns: str) -> bool:
    return os.path.exists(netns_path(netns))
