"""Cluster cache at scale: 1,000 agents' watch streams into one ClusterCache, over real gRPC on loopback.

Agents run in a few worker processes (many in-process agent servers on one loop
each), serving real topologies discovered from the sysfs snapshots in
../shared/fixtures and from this machine, each under its own node name. The
cache runs in this process, so what is measured here is the cache alone:

- time from `start()` until every node is fresh,
- resident memory the cache added, per node,
- CPU the cache uses while idle (streams open, nothing changing),
- how long one topology change takes to reach the cache with 1,000 streams open.

    .venv/bin/python bench/cache.py                 # 1,000 agents
    .venv/bin/python bench/cache.py --agents 200 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from gedge_model import NodeTopology
    from scheduler_extender.node_source import NodeView

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def base_topologies(scratch: Path) -> list[NodeTopology]:
    from agent.discovery import discover
    from tests.conftest import snapshot_names, unpack_snapshot

    roots = [unpack_snapshot(name, scratch) for name in snapshot_names()] + [Path("/")]
    return [discover(root) for root in roots]


# --- worker: many agents on one loop -------------------------------------------------------------


def worker(first: int, count: int, topology_files: list[str]) -> None:
    from agent.config import AgentConfig
    from agent.service.server import AgentRuntime
    from gedge_model import NodeTopology, from_json

    raise_fd_limit()
    bases = [from_json(NodeTopology, Path(f).read_text()) for f in topology_files]

    def constant(topology: NodeTopology) -> Callable[[], NodeTopology]:
        return lambda: topology

    async def main() -> None:
        agents: dict[str, AgentRuntime] = {}
        for index in range(first, first + count):
            name = f"bench-{index:04d}"
            topology = dataclasses.replace(bases[index % len(bases)], node_name=name)
            config = AgentConfig(
                root="/",
                node_name=name,
                listen="127.0.0.1:0",
                metrics_listen="",
                netlink=False,
                poll_interval_s=3600,
                full_rediscovery_interval_s=7200,
                insecure=True,
            )
            runtime = AgentRuntime(config=config, applier=None, discover=constant(topology))
            await runtime.start()
            agents[name] = runtime
        print(json.dumps({name: runtime.port for name, runtime in agents.items()}), flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            # "change NAME": that agent's node loses its last online CPU (a topology change).
            command, _, name = line.strip().partition(" ")
            if command == "change" and name in agents:
                store = agents[name].store
                assert store is not None  # set by start()
                topology = store.current().state.topology
                cpus = topology.cpus
                last = max((c.id for c in cpus if c.online), default=None)
                changed = tuple(dataclasses.replace(c, online=False) if c.id == last else c for c in cpus)
                store.set_topology(dataclasses.replace(topology, cpus=changed))
        for runtime in agents.values():
            await runtime.stop(0)

    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(main())


# --- driver ----------------------------------------------------------------------------------------


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--worker", nargs=2, type=int, metavar=("FIRST", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--topologies", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.topologies)
        return 0

    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    raise_fd_limit()
    from gedge_model import to_json
    from scheduler_extender.cache import AgentTarget, CacheOptions, ClusterCache

    started_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gedge-bench-cache-") as scratch:
        bases = base_topologies(Path(scratch))
        files = []
        for index, topology in enumerate(bases):
            path = Path(scratch) / f"topology-{index}.json"
            path.write_text(to_json(topology))
            files.append(str(path))
        sizes = sorted(len(Path(f).read_text()) for f in files)
        share = -(-args.agents // args.workers)
        workers = []
        for first in range(0, args.agents, share):
            count = min(share, args.agents - first)
            workers.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--worker", str(first), str(count), "--topologies", *files],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        ports: dict[str, int] = {}
        owner: dict[str, subprocess.Popen[str]] = {}
        for process in workers:
            assert process.stdout is not None
            started = json.loads(process.stdout.readline())
            ports.update(started)
            owner.update(dict.fromkeys(started, process))
        agents_up = time.monotonic() - started_all
        targets = [AgentTarget(name, f"127.0.0.1:{port}") for name, port in sorted(ports.items())]

        before = rss_mib()
        cache = ClusterCache(targets, CacheOptions(ttl_s=30, backoff_initial_s=0.2, backoff_max_s=2.0))
        me = psutil.Process()
        cpu_before = me.cpu_times()
        began = time.monotonic()
        cache.start()
        converged = cache.wait_for(lambda n: all(v.fresh for v in n.values()), timeout=90)
        converge_s = time.monotonic() - began
        cpu_converge = sum(me.cpu_times()[:2]) - sum(cpu_before[:2])
        fresh = sum(v.fresh for v in cache.nodes().values())
        time.sleep(1.0)
        after = rss_mib()

        cpu_idle_start, idle_began = me.cpu_times(), time.monotonic()
        time.sleep(args.idle_seconds)
        idle_cpu = (sum(me.cpu_times()[:2]) - sum(cpu_idle_start[:2])) / (time.monotonic() - idle_began)

        latencies = []
        for name in sorted(ports)[:: max(1, len(ports) // 5)][:5]:
            view = cache.node(name)
            assert view is not None
            generation = view.state.generation
            process = owner[name]
            assert process.stdin is not None
            sent = time.monotonic()
            process.stdin.write(f"change {name}\n")
            process.stdin.flush()

            def moved(nodes: Mapping[str, NodeView], name: str = name, g: int = generation) -> bool:
                return nodes[name].state.generation > g

            if cache.wait_for(moved, timeout=10):
                latencies.append(time.monotonic() - sent)

        cache.stop()
        for process in workers:
            assert process.stdin is not None
            process.stdin.close()
        for process in workers:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()

    n = len(targets)
    print(f"agents: {n} in {len(workers)} worker processes (started in {agents_up:.1f} s)")
    print(
        f"topology JSON per node: {sizes[0] / 1024:.1f} .. {sizes[-1] / 1024:.1f} KiB ({len(bases)} machines)"
    )
    print(
        f"converged: {fresh}/{n} fresh in {converge_s:.2f} s"
        f"{'' if converged else ' (NOT all fresh within 90 s)'}; cache CPU {cpu_converge:.2f} s"
    )
    print(f"cache memory: {after - before:.1f} MiB RSS added, {(after - before) * 1024 / n:.1f} KiB per node")
    print(f"cache CPU at idle: {idle_cpu * 100:.2f} % of one core over {args.idle_seconds:g} s")
    if latencies:
        median = sorted(latencies)[len(latencies) // 2]
        print(
            f"change to cache with {n} streams open: median {median * 1000:.0f} ms, "
            f"max {max(latencies) * 1000:.0f} ms ({len(latencies)} changes)"
        )
    print(f"total {time.monotonic() - started_all:.1f} s")
    return 0 if converged else 1


if __name__ == "__main__":
    sys.exit(main())
