"""kill -9 after every step of an apply (and of a release), then restart and reconcile.

Each run starts from the same clean node, lets a separate process apply the
allocation until it SIGKILLs itself after step N, then a new manager reconciles:
a live pod must end with its full allocation, a gone pod with nothing, and in
both cases no cgroup, interface or reserved CPU may be left over.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.apply import ApplyManager, CgroupDriver, CgroupVersion, PodRuntime, QosClass, StaticPodResolver
from agent.apply.nic import NicApplier, macvlan_host_name, marker_for
from gedge_model import Allocation, NetworkGrant
from tests.apply.helpers import (
    build_pod_cgroups,
    namespaces,
    new_container_id,
    new_pod_uid,
    start_in_cgroup,
    stop,
    unique,
    v1_sandbox,
    veth_pair,
)
from tests.apply.netutil import links_in

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")


@dataclass
class Scene:
    root: Path
    checkpoint: Path
    spec_path: Path
    host: str
    pod: str
    shared: str
    pod_netns: str
    pods: dict
    procs: dict
    allocation: Allocation

    def manager(self, live: set[str] | None = None) -> ApplyManager:
        pods = {u: p for u, p in self.pods.items() if live is None or u in live}
        resolver = StaticPodResolver(
            {
                uid: PodRuntime(qos=QosClass(p["qos"]), container_ids=tuple(p["cids"]), netns=p["netns"])
                for uid, p in pods.items()
            }
        )
        return ApplyManager(
            cgroup_root=self.root,
            cgroup_driver=CgroupDriver.CGROUPFS,
            cgroup_version=CgroupVersion.V1,
            checkpoint_path=self.checkpoint,
            resolver=resolver,
            nic=NicApplier(host_netns=self.host),
        )

    def write_spec(self, op: str, kill_at: int) -> None:
        spec = {
            "kill_at": kill_at,
            "op": op,
            "pods": self.pods,
            "pod_uid": self.pod,
            "cgroup_root": str(self.root),
            "checkpoint": str(self.checkpoint),
            "host_netns": self.host,
            "allocation": self.allocation.to_annotation(),
        }
        self.spec_path.write_text(json.dumps(spec))

    def run(self, op: str, kill_at: int) -> tuple[int, list[str]]:
        self.write_spec(op, kill_at)
        proc = subprocess.run(
            [sys.executable, "-m", "tests.apply.crash_worker", str(self.spec_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        steps = [line for line in proc.stdout.splitlines() if line and " " not in line and line != "ready"]
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
        return proc.returncode, steps

    def run_killed_after(self, op: str, delay_s: float) -> None:
        """Start the op and SIGKILL it from outside `delay_s` after it is ready: mid-step, mid-write."""
        self.write_spec(op, -1)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.apply.crash_worker", str(self.spec_path)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "ready":
                break
        time.sleep(delay_s)
        proc.kill()
        proc.communicate(timeout=30)

    def affinity(self, uid: str) -> set[int]:
        return set(os.sched_getaffinity(self.procs[uid].pid))

    def assert_fully_applied(self) -> None:
        assert self.affinity(self.pod) == {1}
        assert self.affinity(self.shared) == {0}
        net1 = links_in(self.pod_netns)["net1"]
        assert (net1.mtu, net1.addresses, net1.alias) == (1400, ("10.74.0.9/24",), marker_for(self.pod))
        saved = json.loads(self.checkpoint.read_text())
        assert saved["intent"] is None
        assert [p["allocation"]["pod_uid"] for p in saved["pods"]] == [self.pod]
        self.assert_no_stray_links()

    def assert_nothing_held(self) -> None:
        assert self.affinity(self.pod) == {0, 1}
        assert self.affinity(self.shared) == {0, 1}
        assert set(links_in(self.pod_netns)) == {"lo"}
        if self.checkpoint.exists():
            saved = json.loads(self.checkpoint.read_text())
            assert saved["intent"] is None and saved["pods"] == []
        self.assert_no_stray_links()

    def assert_no_stray_links(self) -> None:
        host_links = links_in(self.host)
        assert macvlan_host_name(self.pod) not in host_links
        assert {v.kind for v in host_links.values()} <= {None, "veth"}
        assert not [p for p in self.checkpoint.parent.iterdir() if p.name.startswith(".")]


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    host, pod_ns, master, wire = unique("gtH"), unique("gtP"), unique("gd"), unique("gw")
    with v1_sandbox() as top, namespaces(host, pod_ns), veth_pair(master, wire, host, host):
        pod, shared = new_pod_uid(), new_pod_uid()
        pods, procs = {}, {}
        for uid, qos, netns in ((pod, QosClass.GUARANTEED, pod_ns), (shared, QosClass.BURSTABLE, None)):
            cid = new_container_id()
            (path,) = build_pod_cgroups(top, CgroupDriver.CGROUPFS, qos, uid, [cid])
            procs[uid] = start_in_cgroup(path)
            pods[uid] = {"qos": qos.value, "cids": [cid], "netns": netns}
        grant = NetworkGrant(mode="macvlan", master=master, mtu=1400, address="10.74.0.9/24")
        allocation = Allocation(
            pod_uid=pod, namespace="ml", name="train", node="edge-1", cpus=(1,), network=grant
        )
        (tmp_path / "state").mkdir()
        try:
            yield Scene(
                root=top,
                checkpoint=tmp_path / "state" / "checkpoint.json",
                spec_path=tmp_path / "spec.json",
                host=host,
                pod=pod,
                shared=shared,
                pod_netns=pod_ns,
                pods=pods,
                procs=procs,
                allocation=allocation,
            )
        finally:
            for proc in procs.values():
                stop(proc)


def test_kill_at_every_apply_step_then_reconcile(scene: Scene) -> None:
    code, steps = scene.run("apply", -1)
    assert code == 0
    assert steps[0] == "intent" and steps[-1] == "commit"
    assert {"nic:created", "nic:moved", "nic:configured"} <= set(steps)
    assert sum(s.startswith("cpuset:") for s in steps) == 2
    scene.assert_fully_applied()
    scene.manager().release(scene.pod)
    scene.assert_nothing_held()

    for kill_at in range(len(steps)):
        for pod_alive in (True, False):
            code, _ = scene.run("apply", kill_at)
            assert code == -signal.SIGKILL, f"step {kill_at} ({steps[kill_at]}) did not kill"
            live = {scene.pod, scene.shared} if pod_alive else {scene.shared}
            report = scene.manager(live).reconcile(live)
            where = f"killed after {steps[kill_at]} (pod {'alive' if pod_alive else 'gone'})"
            if pod_alive:
                scene.assert_fully_applied()
                assert report.finished == (scene.pod,) or steps[kill_at] == "commit", where
                scene.manager().release(scene.pod)
            else:
                assert scene.pod in report.undone + report.released, where
            scene.assert_nothing_held()


def test_kill_at_every_release_step_then_reconcile(scene: Scene) -> None:
    scene.manager().apply(scene.allocation)
    code, steps = scene.run("release", -1)
    assert code == 0 and steps[0] == "intent" and "nic:released" in steps
    scene.assert_nothing_held()
    for kill_at in range(len(steps)):
        scene.manager().apply(scene.allocation)
        scene.assert_fully_applied()
        code, _ = scene.run("release", kill_at)
        assert code == -signal.SIGKILL
        live = {scene.pod, scene.shared}
        scene.manager(live).reconcile(live)
        scene.assert_nothing_held()


def test_kill_at_every_reserve_step_then_settle_without_a_pod_list(scene: Scene) -> None:
    """A reservation cut short is undone, one that committed stays reserved; either way the pod's
    runtime then attaches it fully. The restarted manager knows no runtimes, as after an agent restart
    without Kubernetes."""
    code, steps = scene.run("reserve", -1)
    assert code == 0 and steps[0] == "intent" and steps[-1] == "commit"
    assert not [s for s in steps if s.startswith("nic:")]
    assert scene.manager().reserved_pod_uids() == {scene.pod}
    assert scene.affinity(scene.shared) == {0}
    assert set(links_in(scene.pod_netns)) == {"lo"}
    scene.manager().release(scene.pod)
    scene.assert_nothing_held()

    for kill_at in range(len(steps)):
        code, _ = scene.run("reserve", kill_at)
        assert code == -signal.SIGKILL, f"step {kill_at} ({steps[kill_at]}) did not kill"
        restarted = scene.manager(set())
        restarted.reconcile_recorded()
        where = f"killed after {steps[kill_at]}"
        saved = json.loads(scene.checkpoint.read_text())
        assert saved["intent"] is None, where
        if steps[kill_at] == "commit":
            assert restarted.reserved_pod_uids() == {scene.pod}, where
            assert scene.affinity(scene.shared) == {0}, where
        else:
            assert restarted.applied() == (), where
            scene.assert_nothing_held()
        attaching = scene.manager()
        attaching.apply(scene.allocation)
        assert attaching.reserved_pod_uids() == frozenset()
        scene.assert_fully_applied()
        attaching.release(scene.pod)
        scene.assert_nothing_held()


def test_apply_after_a_crash_settles_the_pending_work_first(scene: Scene) -> None:
    """Without a reconcile in between, the next call finds the intent and still ends consistent."""
    code, _ = scene.run("apply", 3)
    assert code == -signal.SIGKILL
    manager = scene.manager()
    manager.apply(scene.allocation)
    scene.assert_fully_applied()
    manager.release(scene.pod)
    scene.assert_nothing_held()


def test_kill_from_outside_at_arbitrary_moments(scene: Scene) -> None:
    """Kills that land inside a step (mid netlink call, mid checkpoint write) are as safe as between steps.

    After the restart's reconcile the node is consistent (the pod fully applied, or, when the kill came
    before the intent was written, not at all); the agent's next apply for the live pod completes it.
    """
    started = time.perf_counter()
    code, _ = scene.run("apply", -1)
    assert code == 0
    scene.manager().release(scene.pod)
    budget = min(time.perf_counter() - started, 2.0)
    outcomes = set()
    for n in range(8):
        scene.run_killed_after("apply", budget * n / 40)
        live = {scene.pod, scene.shared}
        restarted = scene.manager(live)
        restarted.reconcile(live)
        if restarted.applied():
            scene.assert_fully_applied()
            outcomes.add("finished")
        else:
            scene.assert_nothing_held()
            outcomes.add("not begun")
        restarted.apply(scene.allocation)
        scene.assert_fully_applied()
        restarted.release(scene.pod)
        scene.assert_nothing_held()
    assert "finished" in outcomes
