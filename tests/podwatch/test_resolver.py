"""The pod watch feeding the real ApplyManager: QoS, container ids and netns from what the watch saw."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.apply.cgroups import CgroupDriver, CgroupVersion, QosClass
from agent.apply.manager import ApplyManager
from agent.podwatch import PodStatusResolver, PodWatcher, pod_view
from tests.apply.helpers import (
    build_pod_cgroups,
    make_v2_cgroup,
    namespaces,
    new_container_id,
    new_pod_uid,
    unique,
)
from tests.podwatch.conftest import NODE, allocation, pod


@pytest.fixture
def named_netns() -> Iterator[str]:
    with namespaces(unique("gpw")) as (name,):
        yield name


def _start_in(netns_name: str) -> subprocess.Popen:
    """A real process in the named namespace, as a pod's container process would be."""
    proc = subprocess.Popen(["ip", "netns", "exec", netns_name, "sleep", "60"])
    target = os.stat(f"/var/run/netns/{netns_name}").st_ino
    deadline = time.monotonic() + 10
    while True:
        try:
            if os.stat(f"/proc/{proc.pid}/ns/net").st_ino == target:
                return proc
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("process never entered the namespace")
        time.sleep(0.01)


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup"
    make_v2_cgroup(root)
    make_v2_cgroup(root / "kubepods", "0-7", "0-1", effective="0-7")
    return root


def test_resolver_finds_qos_containers_and_the_named_netns(tmp_path, named_netns):
    root = _tree(tmp_path)
    uid, cid = new_pod_uid(), new_container_id()
    (container,) = build_pod_cgroups(root, CgroupDriver.CGROUPFS, QosClass.BURSTABLE, uid, [cid], v1=False)
    proc = _start_in(named_netns)
    try:
        (container / "cgroup.procs").write_text(f"{proc.pid}\n")
        resolver = PodStatusResolver(root, CgroupDriver.CGROUPFS)
        resolver.observe(
            pod_view(pod(uid, container_ids=[f"containerd://{cid}"], phase="Running", qos="Burstable"))
        )

        runtime = resolver.resolve(uid)

        assert runtime is not None
        assert runtime.qos is QosClass.BURSTABLE
        assert runtime.container_ids == (f"containerd://{cid}",)
        assert runtime.netns == f"/var/run/netns/{named_netns}"
        # Without a named entry the process's own namespace path stands in.
        bare = PodStatusResolver(root, CgroupDriver.CGROUPFS, netns_dir=tmp_path / "empty")
        bare.observe(
            pod_view(pod(uid, container_ids=[f"containerd://{cid}"], phase="Running", qos="Burstable"))
        )
        assert bare.resolve(uid).netns == f"/proc/{proc.pid}/ns/net"
    finally:
        proc.kill()
        proc.wait()


def test_resolver_knows_nothing_of_unseen_finished_or_forgotten_pods(tmp_path):
    resolver = PodStatusResolver(_tree(tmp_path), CgroupDriver.CGROUPFS)
    uid = new_pod_uid()
    assert resolver.resolve(uid) is None

    resolver.observe(pod_view(pod(uid, started=1, phase="Succeeded")))
    assert resolver.resolve(uid) is None

    resolver.observe(pod_view(pod(uid, started=1, phase="Running")))
    assert resolver.resolve(uid).netns is None
    resolver.forget(uid)
    assert resolver.resolve(uid) is None


def _event(kind: str, obj) -> dict:
    return {"type": kind, "object": obj}


def test_watch_events_drive_the_apply_manager_on_a_cgroup_tree(tmp_path):
    root = _tree(tmp_path)
    pinned_uid, shared_uid = new_pod_uid(), new_pod_uid()
    pinned_cid, shared_cid = new_container_id(), new_container_id()
    driver = CgroupDriver.CGROUPFS
    (pinned_dir,) = build_pod_cgroups(root, driver, QosClass.GUARANTEED, pinned_uid, [pinned_cid], v1=False)
    (shared_dir,) = build_pod_cgroups(root, driver, QosClass.BESTEFFORT, shared_uid, [shared_cid], v1=False)
    resolver = PodStatusResolver(root, driver)

    def manager() -> ApplyManager:
        return ApplyManager(
            cgroup_root=root,
            cgroup_driver=driver,
            cgroup_version=CgroupVersion.V2,
            checkpoint_path=tmp_path / "checkpoint.json",
            resolver=resolver,
        )

    applier = manager()
    watcher = PodWatcher(None, NODE, applier, observer=resolver, reconcile_applier=applier.reconcile)
    watcher.start_from([])
    pinned = pod(
        pinned_uid,
        alloc=allocation(pinned_uid, cpus=(2, 3)),
        qos="Guaranteed",
        container_ids=[f"containerd://{pinned_cid}"],
        phase="Running",
    )
    watcher.handle_event(_event("ADDED", pinned))

    assert (pinned_dir / "cpuset.cpus").read_text() == "2-3\n"
    assert (shared_dir / "cpuset.cpus").read_text() == "0-1,4-7\n"

    # The agent restarts while the pod is gone: reconcile frees its CPUs for everyone else.
    restarted_applier = manager()
    restarted = PodWatcher(
        None, NODE, restarted_applier, observer=resolver, reconcile_applier=restarted_applier.reconcile
    )
    restarted.start_from([])

    assert restarted_applier.applied() == ()
    assert (shared_dir / "cpuset.cpus").read_text() == "0-7\n"


def test_deleted_pod_gives_its_cpus_back_to_the_shared_pool(tmp_path):
    root = _tree(tmp_path)
    uid, cid = new_pod_uid(), new_container_id()
    other_uid, other_cid = new_pod_uid(), new_container_id()
    driver = CgroupDriver.CGROUPFS
    (own,) = build_pod_cgroups(root, driver, QosClass.GUARANTEED, uid, [cid], v1=False)
    (other,) = build_pod_cgroups(root, driver, QosClass.BURSTABLE, other_uid, [other_cid], v1=False)
    resolver = PodStatusResolver(root, driver)
    applier = ApplyManager(
        cgroup_root=root,
        cgroup_driver=driver,
        cgroup_version=CgroupVersion.V2,
        checkpoint_path=tmp_path / "checkpoint.json",
        resolver=resolver,
    )
    watcher = PodWatcher(None, NODE, applier, observer=resolver)
    running = pod(
        uid,
        alloc=allocation(uid, cpus=(6, 7)),
        qos="Guaranteed",
        container_ids=[f"docker://{cid}"],
        phase="Running",
    )

    watcher.handle_event(_event("MODIFIED", running))
    assert (own / "cpuset.cpus").read_text() == "6-7\n"
    assert (other / "cpuset.cpus").read_text() == "0-5\n"

    watcher.handle_event(_event("DELETED", running))
    assert applier.applied() == ()
    assert (other / "cpuset.cpus").read_text() == "0-7\n"
    assert resolver.resolve(uid) is None
