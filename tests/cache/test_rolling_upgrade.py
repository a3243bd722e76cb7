"""A newer agent's report (fields this extender does not know) is read, not refused: rolling upgrades.

The agent here is a real gRPC server on loopback speaking the NodeAgent contract with
a report from "the next version": extra fields at the top of the topology, inside a
nested object and in an allocation. The cache takes the node, counts the unknown
fields and logs them once; the strict decoder (user input, checkpoints) still refuses.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from structlog.testing import capture_logs

from gedge_model import Allocation, ModelDecodeError, NodeTopology, from_json, to_dict
from gedge_model.codec import REPORT_VERSION
from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc
from scheduler_extender.cache import AgentTarget, CacheOptions, ClusterCache
from tests.support.synthetic import edge_box

NODE = "edge-next"


def newer_report() -> tuple[str, str]:
    topology = to_dict(edge_box(NODE, gpus=1))
    topology["power_budget_watts"] = 300
    first_list = next(k for k, v in topology.items() if isinstance(v, list) and v and isinstance(v[0], dict))
    topology[first_list][0]["firmware"] = "2.1"
    allocation = to_dict(Allocation("uid-1", "ml", "p", NODE))
    allocation["priority_class"] = "gold"
    return json.dumps(topology), json.dumps([allocation])


class NextAgent(agent_pb2_grpc.NodeAgentServicer):
    def __init__(self) -> None:
        self.stop = threading.Event()

    def WatchNodeState(self, request, context):
        topology, allocations = newer_report()
        for generation in (1, 2):
            yield agent_pb2.NodeStateEvent(
                node_name=NODE,
                generation=generation,
                agent_instance="next",
                topology_json=topology if generation == 1 else "",
                allocations_json=allocations,
                report_version=REPORT_VERSION + 1,
            )
        while context.is_active() and not self.stop.wait(0.1):
            pass


@pytest.fixture
def next_agent() -> Iterator[int]:
    servicer = NextAgent()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    agent_pb2_grpc.add_NodeAgentServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        servicer.stop.set()
        server.stop(0).wait()


def test_a_newer_agents_report_is_taken_and_its_unknown_fields_counted(next_agent: int) -> None:
    cache = ClusterCache([AgentTarget(NODE, f"127.0.0.1:{next_agent}")], CacheOptions(ttl_s=30))
    with capture_logs() as logs:
        cache.start()
        try:
            assert cache.wait_for(lambda nodes: NODE in nodes and nodes[NODE].fresh, timeout=30)
            view = cache.node(NODE)
            assert view is not None and view.state.generation >= 1
            assert [a.pod_uid for a in view.state.allocations] == ["uid-1"]
            assert view.state.topology.node_name == NODE
            assert cache.wait_for(lambda nodes: nodes[NODE].state.generation == 2, timeout=30)
        finally:
            cache.stop()
    registry = cache.metrics.registry
    counted = registry.get_sample_value("gedge_cache_report_unknown_fields_total", {"node": NODE})
    assert counted == 3 + 1, "three in the first event, the allocation's again in the second"
    noted = [entry for entry in logs if entry["event"] == "agent report has unknown fields"]
    assert sorted((e["path"], tuple(e["fields"])) for e in noted) == sorted(
        [
            ("NodeTopology", ("power_budget_watts",)),
            (noted_path(noted, "firmware"), ("firmware",)),
            ("allocations[]", ("priority_class",)),
        ]
    ), "each kind logged once, not per event"
    assert all(e["report_version"] == REPORT_VERSION + 1 for e in noted)
    assert cache.metrics.registry.get_sample_value(
        "gedge_cache_agent_rejections_total", {"node": NODE, "reason": "malformed"}
    ) in (None, 0.0)


def noted_path(noted: list[dict], field: str) -> str:
    (path,) = [e["path"] for e in noted if field in e["fields"]]
    assert path.startswith("NodeTopology.") and path.endswith("[]")
    return path


def test_user_input_and_strict_readers_still_refuse_unknown_fields() -> None:
    topology, allocations = newer_report()
    with pytest.raises(ModelDecodeError, match="unknown field"):
        from_json(NodeTopology, topology)
    with pytest.raises(ModelDecodeError, match="unknown field"):
        Allocation.from_annotation(json.dumps(json.loads(allocations)[0]))
