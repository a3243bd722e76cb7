"""`gedge-agent bench pinning`: a CPU-bound pod beside a noisy neighbour, shared CPUs vs. its own cpuset.

The tool lays out a private kubepods tree (cgroupfs layout) inside the node's
cgroup v1 cpuset hierarchy: a Guaranteed "workload" pod and a Burstable
"noisy" pod, each with one container cgroup. The noisy pod runs one busy
process per CPU. The workload (a fixed amount of SHA-256 hashing) runs first
with every container on every CPU (the shared pool), then with the cpuset
the agent's ApplyManager gives a pinned pod: exclusive CPUs for the workload,
the rest for everybody else. Runs alternate between the two, so drift in the
machine's load hits both alike.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import tempfile
import time
import uuid
from contextlib import suppress
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from agent.apply import ApplyManager, CgroupDriver, CgroupVersion, PodRuntime, QosClass, StaticPodResolver
from agent.apply.cgroups import CpusetTree, container_cgroup_names, pod_cgroup, remove_cgroup_tree
from agent.bench.common import Progress, raise_if_interrupted, ratio, render_table, run_as_child, spread
from gedge_model import Allocation
from gedge_model.cpulist import format_cpulist

CPUSET_V1 = Path("/sys/fs/cgroup/cpuset")
BLOCK = b"\x5a" * (64 * 1024)


@dataclass(frozen=True)
class Budget:
    work_mib: int
    runs: int

    @classmethod
    def for_mode(cls, short: bool) -> Budget:
        return cls(work_mib=24, runs=2) if short else cls(work_mib=2048, runs=7)


def hash_work(mib: int) -> str:
    """The workload: SHA-256 over `mib` MiB, in 64 KiB blocks."""
    digest = hashlib.sha256()
    for _ in range(mib * 16):
        digest.update(BLOCK)
    return digest.hexdigest()


def _workload(conn: Connection, go: Connection, mib: int) -> None:
    go.recv()
    started = time.perf_counter()
    hash_work(mib)
    conn.send((time.perf_counter() - started, sorted(os.sched_getaffinity(0))))


def _noise(ready: Connection) -> None:
    ready.send(True)
    digest = hashlib.sha256()
    while True:
        digest.update(BLOCK)


class Sandbox:
    """The private kubepods tree, its two pods' container cgroups, and the agent's ApplyManager over it."""

    def __init__(self, prefix: str) -> None:
        if not (CPUSET_V1 / "cpuset.cpus").exists():
            raise RuntimeError(
                f"no cgroup v1 cpuset hierarchy at {CPUSET_V1}; this tool needs it to build its test pods"
            )
        self.top = CPUSET_V1 / prefix
        self.state_dir = Path(tempfile.mkdtemp(prefix="gedge-bench-"))
        self.workload_uid, self.noisy_uid = str(uuid.uuid4()), str(uuid.uuid4())
        self.workload_cid, self.noisy_cid = uuid.uuid4().hex * 2, uuid.uuid4().hex * 2
        self.tree = CpusetTree(self.top, CgroupVersion.V1)

    def __enter__(self) -> Sandbox:
        try:
            self._build()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _mkdir(self, path: Path) -> None:
        path.mkdir()
        for name in ("cpuset.mems", "cpuset.cpus"):
            (path / name).write_text((path.parent / name).read_text())

    def _build(self) -> None:
        if self.top.exists():
            raise RuntimeError(f"{self.top} already exists (another bench running?)")
        self._mkdir(self.top)
        containers = []
        for uid, cid, qos in (
            (self.workload_uid, self.workload_cid, QosClass.GUARANTEED),
            (self.noisy_uid, self.noisy_cid, QosClass.BURSTABLE),
        ):
            pod_dir = pod_cgroup(self.top, CgroupDriver.CGROUPFS, qos, uid)
            for path in [p for p in reversed(pod_dir.parents) if self.top in p.parents] + [pod_dir]:
                if not path.exists():
                    self._mkdir(path)
            container = pod_dir / container_cgroup_names(CgroupDriver.CGROUPFS, cid)[0]
            self._mkdir(container)
            containers.append(container)
        self.workload_cgroup, self.noisy_cgroup = containers
        self.cpus = sorted(self.tree.read(self.top).cpus)
        if len(self.cpus) < 2:
            raise RuntimeError(f"pinning needs at least two CPUs, {self.top} has {format_cpulist(self.cpus)}")
        self.manager = ApplyManager(
            cgroup_root=self.top,
            cgroup_driver=CgroupDriver.CGROUPFS,
            cgroup_version=CgroupVersion.V1,
            checkpoint_path=self.state_dir / "checkpoint.json",
            resolver=StaticPodResolver(
                {
                    self.workload_uid: PodRuntime(QosClass.GUARANTEED, (self.workload_cid,)),
                    self.noisy_uid: PodRuntime(QosClass.BURSTABLE, (self.noisy_cid,)),
                }
            ),
        )

    def exclusive_allocation(self, count: int) -> Allocation:
        return Allocation(
            pod_uid=self.workload_uid,
            namespace="bench",
            name="pinned-workload",
            node=os.uname().nodename,
            cpus=tuple(self.cpus[-count:]),
        )

    @staticmethod
    def attach(cgroup: Path, pid: int) -> None:
        (cgroup / "tasks").write_text(f"{pid}\n")

    def remove(self) -> None:
        manager = getattr(self, "manager", None)
        if manager is not None:
            with suppress(Exception):
                manager.release(self.workload_uid)
        remove_cgroup_tree(self.top)
        shutil.rmtree(self.state_dir, ignore_errors=True)


@dataclass
class RunResult:
    mode: str
    seconds: float
    workload_cpus: list[int]
    noise_cpus: list[int]


def one_run(box: Sandbox, mode: str, mib: int) -> RunResult:
    """Noise on, workload attached to its container cgroup, timed from its own start to its end."""
    ctx = multiprocessing.get_context("fork")
    procs = []
    try:
        noise_cpus: set[int] = set()
        for _ in box.cpus:
            ready_r, ready_w = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=run_as_child, args=(os.getpid(), _noise, ready_w), daemon=True)
            procs.append(proc)
            proc.start()
            assert proc.pid is not None  # set by start()
            box.attach(box.noisy_cgroup, proc.pid)
            ready_r.recv()
            noise_cpus |= os.sched_getaffinity(proc.pid)
        result_r, result_w = ctx.Pipe(duplex=False)
        go_r, go_w = ctx.Pipe(duplex=False)
        worker = ctx.Process(
            target=run_as_child, args=(os.getpid(), _workload, result_w, go_r, mib), daemon=True
        )
        procs.append(worker)
        worker.start()
        assert worker.pid is not None  # set by start()
        box.attach(box.workload_cgroup, worker.pid)
        go_w.send(True)
        deadline = time.monotonic() + 600
        while not result_r.poll(0.1):
            raise_if_interrupted()
            if time.monotonic() > deadline:
                raise RuntimeError("the workload did not finish within 600 s")
        seconds, cpus = result_r.recv()
        return RunResult(mode=mode, seconds=seconds, workload_cpus=cpus, noise_cpus=sorted(noise_cpus))
    finally:
        for proc in procs:
            if proc.pid is None:
                continue
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=5)


def run_pinning(*, short: bool, prefix: str, progress: Progress, exclusive_cpus: int = 1) -> dict[str, Any]:
    budget = Budget.for_mode(short)
    load_before = [round(x, 2) for x in os.getloadavg()]
    runs: list[RunResult] = []
    progress(f"building the cgroup sandbox {CPUSET_V1 / prefix}")
    with Sandbox(prefix) as box:
        if not 1 <= exclusive_cpus < len(box.cpus):
            raise RuntimeError(f"--cpus must be within 1..{len(box.cpus) - 1} on this node")
        allocation = box.exclusive_allocation(exclusive_cpus)
        progress(
            f"CPUs {format_cpulist(box.cpus)}; noisy neighbour: {len(box.cpus)} busy processes; "
            f"workload: SHA-256 over {budget.work_mib} MiB"
        )
        for n in range(1, budget.runs + 1):
            for mode in ("shared", "exclusive"):
                if mode == "exclusive":
                    box.manager.apply(allocation)
                run = one_run(box, mode, budget.work_mib)
                if mode == "exclusive":
                    box.manager.release(box.workload_uid)
                runs.append(run)
                progress(
                    f"run {n}/{budget.runs} {mode:9s}: {run.seconds:.3f} s "
                    f"(workload on CPUs {format_cpulist(run.workload_cpus)}, "
                    f"noise on {format_cpulist(run.noise_cpus)})"
                )
        cpus = box.cpus
    modes: dict[str, dict[str, Any]] = {}
    for mode in ("shared", "exclusive"):
        mine = [r for r in runs if r.mode == mode]
        modes[mode] = {
            "seconds": [round(r.seconds, 4) for r in mine],
            **{k: round(v, 4) for k, v in spread([r.seconds for r in mine]).items()},
            "workload_cpus": mine[-1].workload_cpus,
            "noise_cpus": mine[-1].noise_cpus,
        }
    return {
        "bench": "pinning",
        "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
        "short": short,
        "budget": asdict(budget),
        "node_cpus": cpus,
        "exclusive_cpus": list(allocation.cpus),
        "modes": modes,
        "ratios": {
            "speedup_median": ratio(modes["shared"]["median"], modes["exclusive"]["median"]),
            "spread_stdev": ratio(modes["shared"]["stdev"], modes["exclusive"]["stdev"]),
        },
    }


def format_pinning(report: dict[str, Any]) -> str:
    s, e, r = report["modes"]["shared"], report["modes"]["exclusive"], report["ratios"]

    def cell(value: float | None) -> str:
        return "" if value is None else f"{value}x"

    rows = [
        ("completion median (s)", f"{s['median']:.3f}", f"{e['median']:.3f}", cell(r["speedup_median"])),
        ("completion min (s)", f"{s['min']:.3f}", f"{e['min']:.3f}", ""),
        ("completion max (s)", f"{s['max']:.3f}", f"{e['max']:.3f}", ""),
        ("spread stdev (s)", f"{s['stdev']:.3f}", f"{e['stdev']:.3f}", cell(r["spread_stdev"])),
        ("workload CPUs", format_cpulist(s["workload_cpus"]), format_cpulist(e["workload_cpus"]), ""),
        ("noisy neighbour CPUs", format_cpulist(s["noise_cpus"]), format_cpulist(e["noise_cpus"]), ""),
        ("runs", str(len(s["seconds"])), str(len(e["seconds"])), ""),
    ]
    table = render_table(("", "shared CPUs", "exclusive cpuset", "shared / exclusive"), rows)
    load = report["load_average"]
    return f"{table}\n\nload average (1 min) before/after: {load['before'][0]} / {load['after'][0]}"
