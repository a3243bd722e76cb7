"""Twenty agents over different sysfs roots stream into one ClusterCache, over real gRPC on loopback.

Three are real `gedge-agent serve` processes (the CLI contract); the rest run
in-process on one loop. Each test measures what it asserts and prints it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.discovery import discover
from scheduler_extender.cache import AgentTarget, CacheOptions, ClusterCache
from scheduler_extender.cache.targets import dump_agents
from tests.grpc.agents import AgentHost, AgentProcess, spawn_agent

TTL_S = 2.0
COPIES = 14


@dataclass
class Fleet:
    cache: ClusterCache
    roots: dict[str, Path]
    processes: dict[str, AgentProcess]
    host: AgentHost
    started: float


@pytest.fixture(scope="module")
def fleet(snapshot_roots: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("fleet")
    changing = base / "changing-root"
    shutil.copytree(snapshot_roots["16amd64-8n2c"], changing, symlinks=True)
    roots: dict[str, Path] = {name.lower().replace("+", "-"): root for name, root in snapshot_roots.items()}
    roots["live"] = Path("/")
    snapshot_list = sorted(snapshot_roots.values())
    for index in range(COPIES - 1):
        roots[f"copy-{index:02d}"] = snapshot_list[index % len(snapshot_list)]
    roots["changing"] = changing
    assert len(roots) == 20

    spawned = {"changing", "live", sorted(roots)[0]}
    processes = {
        name: spawn_agent(roots[name], name, "--poll-interval-s", "0.2", metrics_listen="")
        for name in spawned
    }
    host = AgentHost()
    targets = [AgentTarget(name, f"127.0.0.1:{processes[name].port}") for name in sorted(spawned)]
    for name in sorted(set(roots) - spawned):
        agent = host.start_agent(roots[name], name)
        targets.append(AgentTarget(name, f"127.0.0.1:{agent.port}"))
    agents_file = base / "agents.yaml"
    agents_file.write_text(dump_agents(targets))
    cache = ClusterCache.from_agents_file(
        agents_file, CacheOptions(ttl_s=TTL_S, backoff_initial_s=0.1, backoff_max_s=0.5)
    )
    started = time.monotonic()
    cache.start()
    try:
        yield Fleet(cache, roots, processes, host, started)
    finally:
        cache.stop()
        for process in processes.values():
            process.kill()
        host.close()


def all_fresh(nodes) -> bool:
    return len(nodes) == 20 and all(view.fresh for view in nodes.values())


def test_twenty_agents_converge_with_their_own_topologies(fleet: Fleet) -> None:
    assert fleet.cache.wait_for(all_fresh, timeout=60), {
        n: v.reason for n, v in fleet.cache.nodes().items() if not v.fresh
    }
    print(f"20 agents fresh in the cache {time.monotonic() - fleet.started:.2f} s after its start")
    nodes = fleet.cache.nodes()
    for name, root in fleet.roots.items():
        if name == "changing":
            continue
        assert nodes[name].state.topology == discover(root, node_name=name), name
        assert nodes[name].address and nodes[name].reason is None
    cpu_counts = {len(v.state.topology.cpus) for v in nodes.values()}
    assert len(cpu_counts) >= 4


def test_topology_change_reaches_the_cache_quickly(fleet: Fleet) -> None:
    assert fleet.cache.wait_for(lambda n: n["changing"].fresh, timeout=30)
    before = fleet.cache.node("changing").state
    assert 5 in before.topology.online_cpus
    started = time.monotonic()
    (fleet.roots["changing"] / "sys/devices/system/cpu/cpu5/online").write_text("0\n")
    assert fleet.cache.wait_for(lambda n: 5 not in n["changing"].state.topology.online_cpus, timeout=30)
    latency = time.monotonic() - started
    print(f"cpu5 offline in a copied snapshot reached the cache in {latency * 1000:.0f} ms")
    after = fleet.cache.node("changing").state
    assert after.generation == before.generation + 1


def test_killed_agent_goes_stale_after_the_ttl_and_recovers(fleet: Fleet) -> None:
    assert fleet.cache.wait_for(all_fresh, timeout=60)
    name = next(n for n in fleet.processes if n not in ("changing", "live"))
    victim = fleet.processes[name]
    generation_before = fleet.cache.node(name).state.generation
    assert fleet.cache.node(name).fresh_until is None, "a live stream has no end of freshness"
    victim.kill()
    killed = time.monotonic()
    time.sleep(TTL_S / 2)
    within = fleet.cache.node(name)
    assert within.fresh, "a node stays fresh within the TTL"
    # The view says when it turns stale by itself, which no listener announces.
    assert within.fresh_until is not None and within.fresh_until - TTL_S <= time.monotonic()
    assert fleet.cache.wait_for(lambda n: not n[name].fresh, timeout=TTL_S + 10)
    stale_after = time.monotonic() - killed
    print(f"killed agent stale after {stale_after:.2f} s (TTL {TTL_S} s)")
    view = fleet.cache.node(name)
    assert f"watch stream to agent at {view.address} gone since" in view.reason
    assert TTL_S * 0.9 <= stale_after <= TTL_S + 5
    assert sum(v.fresh for v in fleet.cache.nodes().values()) == 19

    port = int(view.address.rsplit(":", 1)[1])
    fleet.processes[name] = spawn_agent(
        fleet.roots[name], name, listen=f"127.0.0.1:{port}", metrics_listen=""
    )
    restarted = time.monotonic()
    assert fleet.cache.wait_for(lambda n: n[name].fresh, timeout=20)
    print(f"restarted agent fresh again after {time.monotonic() - restarted:.2f} s")
    assert fleet.cache.node(name).reason is None
    assert fleet.cache.node(name).fresh_until is None
    assert fleet.cache.node(name).state.generation == 1 <= generation_before
    assert fleet.cache.wait_for(all_fresh, timeout=10)


def test_freshness_is_exported_as_a_metric(fleet: Fleet) -> None:
    assert fleet.cache.wait_for(all_fresh, timeout=60)
    registry = fleet.cache.metrics.registry
    assert registry.get_sample_value("gedge_cache_nodes", {"state": "fresh"}) == 20
    assert registry.get_sample_value("gedge_cache_watch_events_total") >= 20
