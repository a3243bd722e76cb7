"""Under Kubernetes an agent whose pod watch cannot apply says so in its report, and the extender
places nothing on its node until it can.

A real in-process agent over real gRPC on loopback streams into a ClusterCache; its readiness
changes as `gedge-agent serve --kubeconfig` changes it when kubelet's cgroup driver or the kubepods
tree is missing, and back. The extender's filter refuses the node naming the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from scheduler_extender.cache import AgentTarget, CacheOptions, ClusterCache
from scheduler_extender.cache.targets import dump_agents
from scheduler_extender.node_source import NodeView
from scheduler_extender.verbs import Extender
from scheduler_extender.wire import decode_extender_args
from tests.extender.conftest import RecordingBinder, pod
from tests.grpc.agents import AgentHost

NODE = "blocked-node"
REASON = "CgroupDriverUnknown: no kubelet config names the cgroup driver"


def test_a_node_whose_agent_cannot_apply_is_refused_until_it_can(
    snapshot_roots: dict[str, Path], tmp_path: Path
) -> None:
    host = AgentHost()
    agent = host.start_agent(snapshot_roots["16amd64-8n2c"], NODE)
    agent.reports_not_applying = True  # as `serve` sets it under Kubernetes
    agents = tmp_path / "agents.yaml"
    agents.write_text(dump_agents([AgentTarget(NODE, f"127.0.0.1:{agent.port}")]))
    cache = ClusterCache.from_agents_file(agents, CacheOptions(backoff_initial_s=0.1, backoff_max_s=0.5))
    cache.start()
    extender = Extender(cache, RecordingBinder())
    pinned = pod("pinned", limits={"cpu": "1", "memory": "1Gi"}, annotations={"gedge.io/cpu-pinning": "true"})

    asked = decode_extender_args({"Pod": pinned, "Nodes": None, "NodeNames": [NODE]})

    def view(nodes: Mapping[str, NodeView]) -> NodeView | None:
        return nodes.get(NODE)

    try:
        assert cache.wait_for(lambda nodes: (v := view(nodes)) is not None and v.fresh, timeout=30)
        assert agent.store is not None
        generation = agent.store.current().state.generation

        host.call(agent.set_ready(False, REASON))
        assert cache.wait_for(lambda nodes: (v := view(nodes)) is not None and not v.fresh, timeout=30)
        assert agent.store.current().state.generation == generation + 1
        answer = extender.filter(asked)
        assert answer["NodeNames"] == []
        failed = {**(answer.get("FailedNodes") or {}), **(answer.get("FailedAndUnresolvableNodes") or {})}
        assert failed == {NODE: f"agent cannot apply: {REASON}"}

        host.call(agent.set_ready(False, REASON))  # the same word again: no new report
        assert agent.store.current().state.generation == generation + 1

        host.call(agent.set_ready(True))
        assert cache.wait_for(lambda nodes: (v := view(nodes)) is not None and v.fresh, timeout=30)
        assert extender.filter(asked)["NodeNames"] == [NODE]
    finally:
        cache.stop()
        host.stop_agent(agent)
        host.close()
