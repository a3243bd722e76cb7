"""Link events through netlink (pyroute2) trigger a re-discovery at once, without waiting for the poll."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from pyroute2 import IPRoute, netns

from tests.grpc.agents import AgentHost


def netlink_discoveries(agent) -> float:
    return (
        agent.metrics.registry.get_sample_value("gedge_agent_discoveries_total", {"trigger": "netlink"})
        or 0.0
    )


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_veth_created_in_the_watched_namespace_triggers_rediscovery(
    agent_host: AgentHost, snapshot_roots: dict[str, Path]
) -> None:
    name = f"gtnl{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        agent = agent_host.start_agent(
            snapshot_roots["16amd64-8n2c"],
            "edge-netlink",
            netlink=True,
            netns=name,
            poll_interval_s=60.0,
            full_rediscovery_interval_s=600.0,
        )
        try:
            time.sleep(0.5)
            before = netlink_discoveries(agent)
            started = time.monotonic()
            with IPRoute(netns=name) as ipr:
                ipr.link("add", ifname="gtnla", kind="veth", peer="gtnlb")
            assert wait_until(lambda: netlink_discoveries(agent) > before, timeout=5)
            print(
                f"veth creation triggered a re-discovery after {(time.monotonic() - started) * 1000:.0f} ms"
            )
            poll_runs = agent.metrics.registry.get_sample_value(
                "gedge_agent_discoveries_total", {"trigger": "poll"}
            )
            assert poll_runs is None
        finally:
            agent_host.stop_agent(agent)
    finally:
        netns.remove(name)
