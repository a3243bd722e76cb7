"""Real cgroup v1 cpuset trees, cgroup v2 look-alike trees and network namespaces for the apply tests."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from pyroute2 import IPRoute, netns

from agent.apply.cgroups import remove_cgroup_tree

CPUSET_V1 = Path("/sys/fs/cgroup/cpuset")


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def new_pod_uid() -> str:
    return str(uuid.uuid4())


def new_container_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def make_v1_cgroup(path: Path) -> Path:
    """mkdir plus the parent's cpus/mems: a v1 cpuset starts empty and takes no task until both are set."""
    path.mkdir()
    for name in ("cpuset.mems", "cpuset.cpus"):
        (path / name).write_text((path.parent / name).read_text())
    return path


def remove_v1_tree(top: Path) -> None:
    """Kill the tasks left in the tree, then rmdir bottom-up."""
    remove_cgroup_tree(top, attempts=50)


@contextmanager
def v1_sandbox(prefix: str = "gtest-") -> Iterator[Path]:
    """A private subtree of the real cpuset hierarchy, to stand for a node's cgroup root."""
    top = make_v1_cgroup(CPUSET_V1 / unique(prefix))
    try:
        yield top
    finally:
        remove_v1_tree(top)


def make_v2_cgroup(path: Path, cpus: str = "", mems: str = "", effective: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cpuset.cpus").write_text(cpus + "\n")
    (path / "cpuset.mems").write_text(mems + "\n")
    if effective is not None:
        (path / "cpuset.cpus.effective").write_text(effective + "\n")
        (path / "cpuset.mems.effective").write_text((mems or "0") + "\n")
    return path


def start_in_cgroup(cgroup: Path) -> subprocess.Popen:
    proc = subprocess.Popen(["sleep", "120"])
    (cgroup / "tasks").write_text(f"{proc.pid}\n")
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def host_link_names() -> set[str]:
    with IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


@contextmanager
def namespaces(*names: str) -> Iterator[tuple[str, ...]]:
    for name in names:
        netns.create(name)
    try:
        yield names
    finally:
        for name in names:
            with suppress(OSError):
                netns.remove(name)


@contextmanager
def veth_pair(a: str, b: str, ns_a: str | None = None, ns_b: str | None = None) -> Iterator[None]:
    """A veth pair with each end up in the given namespace (None: this one)."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=a, kind="veth", peer=b)
        for name, ns in ((a, ns_a), (b, ns_b)):
            index = ipr.link_lookup(ifname=name)[0]
            if ns is not None:
                ipr.link("set", index=index, net_ns_fd=ns)
    for name, ns in ((a, ns_a), (b, ns_b)):
        with IPRoute(netns=ns, flags=0) if ns else IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
    try:
        yield
    finally:
        for name, ns in ((a, ns_a), (b, ns_b)):
            if ns is not None and not os.path.exists(f"/var/run/netns/{ns}"):
                continue
            with IPRoute(netns=ns, flags=0) if ns else IPRoute() as ipr:
                for index in ipr.link_lookup(ifname=name):
                    with suppress(Exception):
                        ipr.link("del", index=index)


def build_pod_cgroups(
    root: Path, driver, qos, pod_uid: str, container_ids: list[str], *, v1: bool = True
) -> list[Path]:
    """The pod's and its containers' cgroups the way kubelet and the runtime lay them out."""
    from agent.apply.cgroups import container_cgroup_names, kubepods_dir, pod_cgroup

    pod_dir = pod_cgroup(root, driver, qos, pod_uid)
    chain = [p for p in reversed(pod_dir.parents) if root in p.parents] + [pod_dir]
    assert chain[0] == kubepods_dir(root, driver)
    for path in chain:
        if not path.exists():
            make_v1_cgroup(path) if v1 else make_v2_cgroup(path)
    made = []
    for cid in container_ids:
        path = pod_dir / container_cgroup_names(driver, cid)[0]
        made.append(make_v1_cgroup(path) if v1 else make_v2_cgroup(path))
    return made
