"""Extender latency and throughput: filter + prioritize for one pod over 100, 1,000 and 5,000 nodes.

The extender runs as it does in production (aiohttp on loopback, nodeCacheCapable:
kube-scheduler sends node names) in a child process pinned to one CPU core; this
process plays kube-scheduler on another core over one keep-alive connection.
Nodes are a seeded mix of the placement engine's model machines (DGX-like 8-GPU
boxes with VFs and RDMA, PCIe workstations, edge boxes) with seeded pods
already placed on them, so free devices differ from node to node.

Per cluster size it prints:
- steady: p50/p99 of filter+prioritize per pod, pods of a few shapes arriving
  in turn, each bound to the best node before the next (so the bound node's
  answer is recomputed, the others come from the per-node memo);
- cold: p50/p99 of filter+prioritize for a pod shape not seen before (place()
  on every node);
- pods/s: full filter -> prioritize -> bind cycles per second of wall time, and
  pods/CPU-s: the same per second of the extender process's own CPU time (its
  capacity on one core, whatever else the machine runs); the bind's far side
  records the allocation in memory: no API server.
And once: the mean time of one place() call, to show what a cold filter is made of.
Rows `N/W` repeat the steady run as kube-scheduler calls by default: it stops
looking after W feasible nodes (percentageOfNodesToScore, adaptive: 10% of
5,000) and sends the extender only those, from a rotating start.
Goal: steady p99 <= 10 ms at 5,000 nodes, >= 300 pods/s.

    .venv/bin/python bench/extender.py [--sizes 100,1000,5000] [--pods 300]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cli_args import counted, counts  # noqa: E402

from gedge_model import Allocation, NodeState, NodeTopology  # noqa: E402
from scheduler_extender.placement import PlacementConfig, parse_pod_request, place  # noqa: E402
from scheduler_extender.placement.engine import Placement  # noqa: E402
from tests.support.synthetic import dgx_like, edge_box, pcie_workstation  # noqa: E402

SEED = 20240601


def pod(name: str, limits: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "bench",
            "uid": f"uid-{name}",
            "annotations": {"gedge.io/topology-aware": "true", **(annotations or {})},
        },
        "spec": {
            "schedulerName": "gedge-scheduler",
            "containers": [
                {
                    "name": "main",
                    "image": "registry.example/app:1",
                    "resources": {"limits": limits, "requests": limits},
                }
            ],
        },
    }


SHAPES = [
    ({"gedge.io/gpu": "1"}, {}),
    ({"gedge.io/gpu": "2", "cpu": "8", "memory": "16Gi"}, {"gedge.io/cpu-pinning": "true"}),
    (
        {"gedge.io/gpu": "1", "gedge.io/sriov-vf": "1", "gedge.io/rdma": "1"},
        {"gedge.io/communication": '["SRIOV","RDMA"]'},
    ),
    ({"gedge.io/gpu-shared": "1"}, {}),
]


def build_states(count: int) -> dict[str, NodeState]:
    """A seeded cluster: 60% DGX-like, 25% workstations, 15% edge boxes, a few pods on each."""
    rng = random.Random(SEED)
    states: dict[str, NodeState] = {}
    for i in range(count):
        name = f"node-{i:05d}"
        kind = rng.random()
        topology: NodeTopology
        if kind < 0.6:
            topology = dgx_like(name, timeslice_replicas=rng.choice((1, 1, 4)))
        elif kind < 0.85:
            topology = pcie_workstation(name)
        else:
            topology = edge_box(name, gpus=rng.choice((1, 2)))
        state = NodeState(topology)
        held: list[Allocation] = []
        for j in range(rng.randint(0, 3)):
            limits, annotations = rng.choice(SHAPES)
            request = parse_pod_request(pod(f"pre-{i}-{j}", limits, annotations))
            outcome = place(state, request, PlacementConfig(), held)
            if isinstance(outcome, Placement):
                held.append(outcome.allocation)
        states[name] = NodeState(topology, tuple(held), generation=1)
    return states


class RecordingBinder:
    def __init__(self) -> None:
        self.bound = 0

    def bind(self, allocation: Allocation) -> None:
        self.bound += 1


def serve_child(count: int, conn: Any) -> None:
    """The extender process: one core, nodes built here, port sent back to the parent."""
    os.sched_setaffinity(0, {0})
    import asyncio
    import logging

    import structlog
    import uvloop

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    from scheduler_extender.http.app import build_app, start_server, tune_gc
    from scheduler_extender.node_source import StaticNodeSource
    from scheduler_extender.verbs import Extender

    extender = Extender(StaticNodeSource(build_states(count)), RecordingBinder())
    tune_gc()

    async def main() -> None:
        runner, port = await start_server(build_app(extender), "127.0.0.1", 0)
        conn.send(port)
        while await asyncio.get_running_loop().run_in_executor(None, conn.recv) == "cpu":
            conn.send(time.process_time())
        await runner.cleanup()

    uvloop.run(main())  # as `gedge-extender serve` runs it


class Client:
    def __init__(self, port: int) -> None:
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, verb: str, body: Any) -> Any:
        # Compact, as kube-scheduler's Go encoder writes it.
        data = json.dumps(body, separators=(",", ":"))
        self.http.request("POST", f"/{verb}", data, {"Content-Type": "application/json"})
        response = self.http.getresponse()
        payload = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"{verb}: {response.status} {payload}")
        return payload

    def cycle(self, spec: dict[str, Any], names: list[str], bind: bool) -> float:
        start = time.perf_counter()
        filtered = self.post("filter", {"Pod": spec, "Nodes": None, "NodeNames": names})
        passed = filtered["NodeNames"] or []
        scores = self.post("prioritize", {"Pod": spec, "Nodes": None, "NodeNames": passed}) if passed else []
        elapsed = time.perf_counter() - start
        if bind and scores:
            best = max(scores, key=lambda s: s["Score"])["Host"]
            meta = spec["metadata"]
            self.post(
                "bind",
                {
                    "PodName": meta["name"],
                    "PodNamespace": meta["namespace"],
                    "PodUID": meta["uid"],
                    "Node": best,
                },
            )
        return elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def feasible_window(count: int) -> int:
    """How many feasible nodes kube-scheduler looks for (percentageOfNodesToScore left adaptive)."""
    percentage = max(5, 50 - count // 125)
    return max(100, count * percentage // 100)


def bench_size(count: int, pods: int, window: int | None = None) -> dict[str, float]:
    """`window`: names per call, taken from a rotating start as kube-scheduler's search does."""
    parent, child = multiprocessing.Pipe()
    worker = multiprocessing.Process(target=serve_child, args=(count, child), daemon=True)
    worker.start()
    port = parent.recv()
    try:
        if len(os.sched_getaffinity(0)) > 1:
            os.sched_setaffinity(0, os.sched_getaffinity(0) - {0})
        client = Client(port)
        names = [f"node-{i:05d}" for i in range(count)]
        cold = []
        for k in range(5):
            limits = {"gedge.io/gpu": "1", "cpu": str(2 + 2 * k)}
            cold.append(
                client.cycle(pod(f"cold-{k}", limits, {"gedge.io/cpu-pinning": "true"}), names, False)
            )
        for warm in range(len(SHAPES)):
            limits, annotations = SHAPES[warm]
            client.cycle(pod(f"warm-{warm}", limits, annotations), names, False)
        steady = []
        parent.send("cpu")
        cpu_before = parent.recv()
        started = time.perf_counter()
        for i in range(pods):
            limits, annotations = SHAPES[i % len(SHAPES)]
            some = names
            if window is not None:
                start = (i * window) % count
                some = (names[start:] + names[:start])[:window]
            steady.append(client.cycle(pod(f"p-{count}-{i}", limits, annotations), some, True))
        wall = time.perf_counter() - started
        parent.send("cpu")
        cpu = parent.recv() - cpu_before
    finally:
        parent.send("stop")
        worker.join(timeout=30)
    return {
        "steady_p50": percentile(steady, 0.5) * 1000,
        "steady_p99": percentile(steady, 0.99) * 1000,
        "cold_p50": percentile(cold, 0.5) * 1000,
        "cold_max": max(cold) * 1000,
        "pods_per_s": pods / wall,
        "pods_per_cpu_s": pods / cpu,
    }


def place_cost() -> float:
    """Mean seconds of one place() call over the cluster's node kinds, for a GPU + pinned-CPU pod."""
    states = list(build_states(200).values())
    request = parse_pod_request(
        pod("probe", {"gedge.io/gpu": "1", "cpu": "4"}, {"gedge.io/cpu-pinning": "true"})
    )
    for state in states:
        place(state, request)
    start = time.perf_counter()
    for state in states:
        place(state, request)
    return (time.perf_counter() - start) / len(states)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=counts, default=[100, 1000, 5000], help="cluster sizes (nodes), comma-separated"
    )
    parser.add_argument(
        "--pods", type=counted(1), default=300, help="pods per cluster size in the steady run"
    )
    parser.add_argument(
        "--window",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run with as many names per call as kube-scheduler sends by default (N/window rows)",
    )
    args = parser.parse_args()
    sizes: list[int] = args.sizes
    print(f"extender on one core (CPU 0), kube-scheduler's side on the others; {os.cpu_count()} CPUs here")
    print(
        f"{'nodes':>9} {'steady p50':>11} {'steady p99':>11} {'cold p50':>9} {'cold max':>9} "
        f"{'pods/s':>7} {'pods/CPU-s':>10}"
    )
    rows: list[tuple[int, int | None]] = [(count, None) for count in sizes]
    if args.window:
        rows += [(count, feasible_window(count)) for count in sizes if feasible_window(count) < count]
    for count, window in rows:
        r = bench_size(count, args.pods, window)
        label = f"{count}" if window is None else f"{count}/{window}"
        print(
            f"{label:>9} {r['steady_p50']:>9.2f}ms {r['steady_p99']:>9.2f}ms {r['cold_p50']:>7.1f}ms "
            f"{r['cold_max']:>7.1f}ms {r['pods_per_s']:>7.0f} {r['pods_per_cpu_s']:>10.0f}",
            flush=True,
        )
    print(f"one place() call: {place_cost() * 1e6:.0f} us (a cold filter is nodes x this)")
    print("goal: steady p99 <= 10 ms at 5,000 nodes; >= 300 pods/s")


if __name__ == "__main__":
    main()
